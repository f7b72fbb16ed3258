"""Face detection: the bundled CenterFace model finds every pasted face, with usable landmarks."""

import hashlib
import io

import cv2
import numpy as np
import PIL.Image
import pytest

from face_anon.detection import CenterFaceDetector, Face, default_centerface_path, load_detector

from .photo_helpers import SCENE, SCENE_SIZE, Placement, background, compose, match_faces


SHIPPED_SHA256 = "2a07d8e39749dfdab7955a463c1285cdb1025ef4a7868542b68c08a1f1140e4c"


def test_shipped_model_is_the_prepared_centerface_with_its_licence():
    import onnxruntime

    path = default_centerface_path()
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHIPPED_SHA256
    licence = path.parent.joinpath("LICENSE-centerface.txt").read_text()
    assert "MIT License" in licence and "Star-Clouds" in licence
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.name == "image" and image.shape == ["batch", 3, "height", "width"]
    assert [o.name for o in session.get_outputs()] == ["heatmap", "scale", "offset", "landmarks"]


def _assert_all_found(faces, placements, landmark_tolerance):
    assert len(faces) == len(placements), [f.box for f in faces]
    for placement, face in match_faces(faces, placements):
        assert face is not None, f"missed {placement}"
        assert 0.7 < face.size / placement.face_size < 1.35, (placement, face.size)
        error = np.abs(face.landmark_array - placement.landmarks()).max() / placement.face_size
        assert error < landmark_tolerance, (placement, error)


def test_every_pasted_face_is_found_with_its_landmarks(detector, scene):
    faces = detector.detect(scene)
    # Raw single-pass landmarks wobble (sideways faces most); the refined ones are checked in
    # test_photo_anonymize.py.
    _assert_all_found(faces, SCENE, landmark_tolerance=0.25)
    assert faces == sorted(faces, key=lambda f: -f.score)
    for face in faces:
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= SCENE_SIZE[0] and 0 <= y0 < y1 <= SCENE_SIZE[1]
    # The face cut by the right border is clipped there, its landmarks stay where the face is.
    (cut,) = [f for p, f in match_faces(faces, SCENE) if p.centre[0] == 1250]
    assert cut.box[2] == SCENE_SIZE[0]


def _jpeg(image, quality):
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(PIL.Image.open(buffer).convert("RGB"))


def _rot90(placements, width):
    # np.rot90 turns the picture counter-clockwise: (x, y) -> (y, width - 1 - x).
    return [Placement((p.centre[1], width - 1 - p.centre[0]), p.scale, p.angle + 90) for p in placements]


@pytest.mark.parametrize("condition", ["dark", "blurred", "jpeg_quality_10", "rotated_90"])
def test_detection_is_robust(detector, scene, condition):
    placements = SCENE
    if condition == "dark":
        image = (scene.astype(np.float32) * 0.3).astype(np.uint8)
    elif condition == "blurred":
        image = cv2.GaussianBlur(scene, (0, 0), 1.2)
    elif condition == "jpeg_quality_10":
        image = _jpeg(scene, 10)
    else:
        # Sideways faces need some size: the 36 px one scores only 0.13 on its side (a known limit).
        placements = [p for p in SCENE if p.face_size >= 50]
        image = np.ascontiguousarray(np.rot90(compose(*SCENE_SIZE, placements)))
        placements = _rot90(placements, SCENE_SIZE[0])
    faces = detector.detect(image)
    assert len(faces) == len(placements)
    assert all(face is not None for _, face in match_faces(faces, placements))


def test_large_photos_are_detected_on_a_downscaled_copy(detector):
    factor = 2.5
    placements = [
        Placement((c[0] * factor, c[1] * factor), s * factor, a)
        for c, s, a in [((200, 200), 0.8, 0), ((900, 500), 0.5, 20)]
    ]
    image = compose(int(1280 * factor), int(720 * factor), placements)
    assert max(image.shape) > detector.max_side
    faces = detector.detect(image)
    _assert_all_found(faces, placements, landmark_tolerance=0.25)


def test_no_faces_in_a_faceless_picture(detector):
    assert detector.detect(background(640, 480)) == []


@pytest.mark.parametrize("shape", [(1, 1), (31, 33), (5, 700)])
def test_tiny_and_thin_images_have_no_faces(detector, shape):
    assert detector.detect(np.full((*shape, 3), 128, np.uint8)) == []


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"threshold: got 1.5"):
        CenterFaceDetector(threshold=1.5)
    with pytest.raises(ValueError, match=r"detector: got 'dlib', expected one of: centerface"):
        load_detector("dlib")
    detector_ = CenterFaceDetector()
    with pytest.raises(ValueError, match=r"image: got an array of shape \(8, 8\)"):
        detector_.detect(np.zeros((8, 8), np.uint8))


def test_face_report_format():
    face = Face((1.0, 2.0, 30.456, 40.0), 0.912345, ((1.111, 2.0),) * 5)
    assert face.to_json() == {"box": [1.0, 2.0, 30.46, 40.0], "score": 0.9123, "landmarks": [[1.11, 2.0]] * 5}
    assert face.size == pytest.approx(38.0)
