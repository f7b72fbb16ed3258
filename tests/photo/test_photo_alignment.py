"""FFHQ alignment: the recipe's geometry, the round trip on an aligned face, and warping."""

import math

import cv2
import numpy as np
import pytest

from face_anon import AnonymizeOptions, find_faces
from face_anon.geometry.alignment import crop_face, ffhq_alignment, transform_points, warp

from .photo_helpers import ASTRONAUT_LANDMARKS, astronaut


def _alignment_error(alignment):
    """Scale, rotation (degrees) and centre shift (pixels) of an alignment against the identity."""
    size = alignment.size
    centre = np.array([(size - 1) / 2, (size - 1) / 2])
    shift = transform_points(alignment.matrix, centre[None])[0] - centre
    return alignment.scale, alignment.angle, float(np.hypot(*shift))


def test_recipe_geometry_on_a_hand_made_face():
    # Eyes 40 px apart at y = 100, mouth corners 30 px apart 50 px lower.
    landmarks = np.array([[100, 100], [140, 100], [120, 125], [105, 150], [135, 150]], dtype=float)
    alignment = ffhq_alignment(landmarks, 360)
    # x axis = eye_to_eye + eye_to_mouth turned = (40 + 50, 0); half side = max(2 * 40, 1.8 * 50) = 90.
    assert alignment.scale == pytest.approx(360 / 180)
    assert alignment.angle == pytest.approx(0.0, abs=1e-9)
    # The centre e + 0.1 * eye_to_mouth = (120, 105) lands in the middle of the crop.
    assert transform_points(alignment.matrix, [[120, 105]])[0] == pytest.approx([179.5, 179.5])
    # The eye line is horizontal in the crop, left eye on the left.
    eyes = transform_points(alignment.matrix, landmarks[:2])
    assert eyes[0, 1] == pytest.approx(eyes[1, 1]) and eyes[0, 0] < eyes[1, 0]
    # eye_scale shrinks only the eye distance: with 0.5 the mouth term decides the size.
    assert ffhq_alignment(landmarks, 360, eye_scale=0.5).scale == pytest.approx(360 / 180)
    assert ffhq_alignment(landmarks * 2, 360).scale == pytest.approx(360 / 360)


@pytest.mark.parametrize(
    "angle, scale, shift", [(30.0, 1.0, (0, 0)), (-75.0, 0.4, (50, -20)), (180.0, 2.5, (-10, 300))]
)
def test_alignment_follows_the_face(angle, scale, shift):
    landmarks = ASTRONAUT_LANDMARKS
    moved = cv2.getRotationMatrix2D((220.0, 120.0), angle, scale)
    moved[:, 2] += shift
    before = ffhq_alignment(landmarks, 512)
    after = ffhq_alignment(transform_points(moved, landmarks), 512)
    # Aligning the moved face undoes the move: after o moved == before.
    composed = after.matrix[:, :2] @ moved
    composed[:, 2] += after.matrix[:, 2]
    np.testing.assert_allclose(composed, before.matrix, atol=1e-6)
    assert after.scale == pytest.approx(before.scale / scale)


def test_an_aligned_face_aligns_to_itself(detector):
    """The FFHQ round trip, on a face aligned by this code (the real FFHQ files are checked by hand)."""
    options = AnonymizeOptions()
    (face,) = find_faces(astronaut(), detector, options)
    aligned = crop_face(astronaut(), ffhq_alignment(face.landmark_array, 512, eye_scale=detector.eye_scale))
    faces = find_faces(aligned, detector, options)
    assert len(faces) == 1
    scale, rotation, shift = _alignment_error(
        ffhq_alignment(faces[0].landmark_array, 512, eye_scale=detector.eye_scale)
    )
    assert abs(scale - 1) < 0.05 and abs(rotation) < 3 and shift < 8, (scale, rotation, shift)


def test_crop_reflects_at_the_image_border():
    image = np.zeros((200, 300, 3), np.uint8)
    image[:, :150] = (200, 40, 40)
    image[:, 150:] = (40, 40, 200)
    # A face whose crop reaches 60 px past the left border.
    landmarks = np.array([[40, 90], [80, 90], [60, 110], [45, 130], [75, 130]], dtype=float)
    crop = crop_face(image, ffhq_alignment(landmarks, 128))
    assert crop.min(axis=(0, 1)).tolist() != [0, 0, 0]  # no black fill where the image ends
    assert (crop.reshape(-1, 3) == (200, 40, 40)).all(axis=1).mean() > 0.9


def test_warp_does_not_alias_when_shrinking():
    checker = (np.indices((512, 512)).sum(axis=0) % 2 * 255).astype(np.uint8)
    shrink = np.array([[0.125, 0, 0], [0, 0.125, 0]])
    smooth = warp(checker, shrink, (64, 64))
    assert abs(float(smooth.mean()) - 127.5) < 3 and smooth.std() < 3
    aliased = cv2.warpAffine(checker, shrink, (64, 64), flags=cv2.INTER_LINEAR)
    assert abs(float(aliased.mean()) - 127.5) > 50  # a plain warp samples one colour of the checker


@pytest.mark.parametrize(
    "landmarks, message",
    [
        (np.full((5, 2), np.nan), "landmarks: got an array of shape"),
        (np.zeros((4, 2)), r"landmarks: got an array of shape \(4, 2\)"),
        (np.zeros((5, 2)), "degenerate"),
    ],
)
def test_bad_landmarks_are_refused(landmarks, message):
    with pytest.raises(ValueError, match=message):
        ffhq_alignment(landmarks, 512)


def test_bad_size_is_refused():
    with pytest.raises(ValueError, match="size: got 1"):
        ffhq_alignment(ASTRONAUT_LANDMARKS, 1)
    assert math.isclose(ffhq_alignment(ASTRONAUT_LANDMARKS, 2).size, 2)
