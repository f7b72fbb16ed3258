"""Issue 8, detection: dithered and bitonal images, faces cut by the border, close-up crops.

Each attack input is checked twice: the bare CenterFace detector misses the face (the attack is real,
and is what the tool did before ``RobustDetector``) and ``load_detector()`` finds it.
"""

import json

import numpy as np
import PIL.Image
import pytest

from face_anon import AnonymizeOptions, anonymize_photo, load_image
from face_anon.apps.cli import main
from face_anon.detection import CenterFaceDetector, RobustDetector, load_detector
from face_anon.detection.robust import dither_energy

from .attack_inputs import (
    bayer,
    close_up,
    corner_face,
    cut_face,
    dither_scene,
    floyd_steinberg,
    grey,
    halftone,
    iou,
    visible_box,
)
from .photo_helpers import SCENE, Placement, astronaut, background, compose, match_faces


@pytest.fixture(scope="module")
def robust(detector):
    return RobustDetector(detector)


def _found(faces, placements):
    return sum(face is not None for _, face in match_faces(faces, placements))


def _rgb(bitonal):
    return np.repeat(bitonal[:, :, None], 3, axis=2)


DITHERS = {
    "floyd_steinberg": floyd_steinberg,
    "bayer_8x8": bayer,
    "halftone": lambda g: halftone(g, period=4 if g.shape[1] <= 640 else 6),  # newspaper at scan size
}

# ------------------------------------------------------------------------------------------------ dither


@pytest.mark.parametrize("width", [640, 1280])
@pytest.mark.parametrize("kind", sorted(DITHERS))
def test_every_face_of_a_dithered_photo_is_found(detector, robust, kind, width):
    rgb, placements = dither_scene(width)
    image = _rgb(DITHERS[kind](grey(rgb)))
    assert _found(detector.detect(image), placements) < len(placements)  # the bare detector misses faces
    faces = robust.detect(image)
    assert _found(faces, placements) == len(placements)
    assert len(faces) <= len(placements) + 1  # at most one false alarm on a dither pattern


def test_dithered_pictures_without_faces_stay_without_faces(robust):
    scene = grey(background(640, 400))
    for bitonal in (floyd_steinberg(scene), bayer(scene), halftone(scene, 4)):
        assert dither_energy(bitonal) > robust.dither_threshold  # taken for a dithered image ...
        assert robust.detect(_rgb(bitonal)) == []  # ... and still no face in it


def test_photos_are_not_taken_for_dithered_images(scene):
    # What separates the two: the fine-scale energy of photos stays far below the threshold.
    assert dither_energy(grey(scene)) < RobustDetector.__init__.__kwdefaults__["dither_threshold"] / 3


@pytest.fixture(scope="module")
def bitonal_files(tmp_path_factory):
    """The same Floyd-Steinberg scan as a 1-bit PNG, a Group 4 TIFF, an 8-bit RGB PNG and a JPEG."""
    folder = tmp_path_factory.mktemp("bitonal")
    rgb, placements = dither_scene(1280)
    one_bit = PIL.Image.fromarray(grey(rgb)).convert("1")
    one_bit.save(folder / "scan.png")
    one_bit.save(folder / "fax.tif", compression="group4")
    one_bit.convert("RGB").save(folder / "converted.png")
    one_bit.convert("RGB").save(folder / "converted.jpg", quality=75)
    return folder, placements


def test_bitonal_files_reach_the_detector_as_the_same_picture(bitonal_files, robust):
    folder, placements = bitonal_files
    assert PIL.Image.open(folder / "fax.tif").info["compression"] == "group4"
    arrays = {name: load_image(folder / name).rgb for name in ("scan.png", "fax.tif", "converted.png")}
    assert set(np.unique(arrays["scan.png"]).tolist()) == {0, 255}
    for array in arrays.values():
        np.testing.assert_array_equal(array, arrays["scan.png"])
    # JPEG blurs the dots but keeps the pattern: still taken for a dithered image, every face found.
    jpeg = load_image(folder / "converted.jpg").rgb
    assert _found(robust.detect(jpeg), placements) == len(placements)


def test_a_fax_is_anonymized_through_the_command_line(bitonal_files, tmp_path):
    folder, placements = bitonal_files
    report = tmp_path / "report.json"
    output = tmp_path / "fax_blurred.tif"
    assert main([str(folder / "fax.tif"), "-o", str(output), "--mode", "blur", "--json", str(report), "-q"]) == 0
    (entry,) = json.loads(report.read_text())
    assert entry["status"] == "ok" and len(entry["faces"]) >= len(placements)
    before = np.asarray(PIL.Image.open(folder / "fax.tif").convert("L"), dtype=np.int16)
    after = np.asarray(PIL.Image.open(output).convert("L"), dtype=np.int16)
    for placement in placements:
        x, y = (int(v) for v in placement.centre)
        half = int(placement.face_size * 0.2)
        window = (slice(y - half, y + half), slice(x - half, x + half))
        assert np.abs(after[window] - before[window]).mean() > 40  # the dots are gone: blurred grey
    np.testing.assert_array_equal(after[:, -40:], before[:, -40:])  # far from every face: untouched


# ------------------------------------------------------------------------------------------------ border

# (border, visible fraction of the face's box, face scale): each missed by the bare detector.
CUT_FACES = [
    ("left", 0.3, 1.0),
    ("left", 0.3, 2.5),
    ("right", 0.25, 1.0),
    ("right", 0.3, 2.5),
    ("top", 0.25, 0.3),
    ("bottom", 0.4, 1.0),
    ("bottom", 0.4, 2.5),
]


@pytest.mark.parametrize("border, visible, scale", CUT_FACES)
def test_faces_cut_by_the_border_are_found(detector, robust, border, visible, scale):
    image, placement = cut_face(border, visible, scale)
    target = visible_box(placement, (640, 480))
    assert not any(iou(face.box, target) > 0.3 for face in detector.detect(image))
    (face,) = robust.detect(image)
    assert iou(face.box, target) > 0.5
    x0, y0, x1, y1 = face.box
    assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480  # clipped to the image
    # Landmarks may be those of the face and its mirror image (the margin the detector saw): the
    # crop is cut with the same mirror (crop_face), and test_the_visible_part_... checks the cover.


@pytest.mark.parametrize("border", ["left", "right", "top", "bottom"])
def test_a_face_beside_the_border_is_found_once(robust, border):
    """The mirrored margins show every face near a border twice; the mirror image is not a face."""
    for visible in (0.6, 0.8, 1.0):
        image, placement = cut_face(border, visible, 1.0)
        faces = robust.detect(image)
        assert len(faces) == 1, (visible, [face.box for face in faces])
        assert iou(faces[0].box, visible_box(placement, (640, 480))) > 0.5


# (corner, visible fraction of the box's width and height, face scale): the first four are seen only
# where the two mirrored margins meet (the bare detector and either margin alone miss them).
CORNER_FACES = [
    ("top left", (0.3, 0.5), 0.5),
    ("top right", (0.3, 0.5), 2.0),
    ("bottom left", (0.3, 0.5), 2.0),
    ("bottom right", (0.3, 0.5), 2.0),
    ("top left", (0.7, 0.5), 0.5),
    ("bottom right", (0.5, 0.7), 0.5),
]


@pytest.mark.parametrize("corner, visible, scale", CORNER_FACES)
def test_faces_cut_by_two_borders_are_found(detector, robust, corner, visible, scale):
    image, placement = corner_face(corner, visible, scale)
    target = visible_box(placement, (640, 480))
    assert not any(iou(face.box, target) > 0.3 for face in detector.detect(image))
    faces = robust.detect(image)
    assert len(faces) == 1 and iou(faces[0].box, target) > 0.3


def test_a_corner_seen_four_times_is_not_a_face(detector, robust):
    """Where the mirrored margins meet, the astronaut's black corner looks like a 19 x 23 px face
    (score 0.41 without the corner rule); too small to be a face cut by two borders."""
    for image in (np.asarray(astronaut()), np.asarray(astronaut())[:, ::-1]):
        image = np.ascontiguousarray(image)
        assert [face.box for face in robust.detect(image)] == [face.box for face in detector.detect(image)]


def _found_at(faces, placements):
    """How many ``placements`` have a face whose box centre is near theirs."""
    return sum(
        any(
            abs((f.box[0] + f.box[2]) / 2 - p.centre[0]) < 0.3 * p.face_size + 5
            and abs((f.box[1] + f.box[3]) / 2 - p.centre[1]) < 0.4 * p.face_size + 5
            for f in faces
        )
        for p in placements
    )


def test_small_faces_in_a_large_photo_are_found(detector, robust):
    """A 12-megapixel photo is detected at 1920 px, where 30 px faces shrink below what CenterFace
    finds; the full-resolution tiles find them, each once (one sits on a seam between two tiles)."""
    width, height = 4000, 3000
    # Tiles start at x = 0, 1040, 2080 (1920 px wide): x = 1925 is cut by the first tile's right edge.
    placements = [
        Placement((x, y), 0.25) for x, y in [(600, 900), (1925, 900), (3400, 900), (1200, 2200), (2900, 2400)]
    ]
    image = compose(width, height, placements)
    assert _found_at(detector.detect(image), placements) == 0
    faces = robust.detect(image)
    assert _found_at(faces, placements) == len(placements) == len(faces)
    assert _found_at(RobustDetector(detector, tiles=False).detect(image), placements) == 0  # control


@pytest.mark.parametrize(
    "length, starts", [(1920, [0]), (1921, [0, 1]), (4000, [0, 1040, 2080]), (8000, [0, 1520, 3040, 4560, 6080])]
)
def test_tiles_cover_the_image_with_overlap(length, starts):
    from face_anon.detection.robust import TILE_OVERLAP, _tile_starts

    assert _tile_starts(length, 1920) == starts
    assert starts[-1] + min(length, 1920) == length
    assert all(b - a <= 1920 - TILE_OVERLAP for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("kind, zoom", [("eyes", 3), ("eyes", 5), ("eyes_nose", 3)])
def test_close_up_crops_of_part_of_a_face_are_found(detector, robust, kind, zoom):
    image = close_up(kind, zoom)
    assert detector.detect(image) == []
    (face,) = robust.detect(image)
    height, width = image.shape[:2]
    eyes = face.landmark_array[:2]
    # Both eyes where the crop shows them: a third and two thirds across, in the strip's height.
    assert np.all((eyes[:, 1] > 0) & (eyes[:, 1] < height)) and eyes[0, 0] < width / 2 < eyes[1, 0]


def test_the_visible_part_of_a_cut_face_is_anonymized():
    """Through ``anonymize_photo`` (blur): a face 70% outside the left border is blurred where it
    shows, everything else keeps its bytes; the bare detector left it as it was."""
    image, placement = cut_face("left", 0.3, 2.5)
    options = AnonymizeOptions(mode="blur")
    assert anonymize_photo(image, detector=load_detector(robust=False), options=options).status == "no_faces"
    result = anonymize_photo(image, detector=load_detector(), options=options)
    assert result.status == "ok" and len(result.faces) == 1
    after = np.asarray(result.image, dtype=np.int16)
    changed = np.abs(after - image.astype(np.int16)).max(axis=2) > 0
    (eye_x, eye_y), mouth_y = placement.landmarks()[1].round().astype(int), round(placement.landmarks()[4, 1])
    assert 3 < eye_x < 20  # the right eye shows (the mouth corner sits just outside) ...
    assert changed[eye_y - 5 : eye_y + 6, : eye_x + 6].all()  # ... and is blurred, as is the mouth's half
    assert changed[mouth_y - 5 : mouth_y + 6, :10].all()
    x0, y0, x1, y1 = (int(v) for v in visible_box(placement, (640, 480)))
    # The cover follows the features found (forehead to mouth): most of the visible box, up to the border.
    assert changed[y0:y1, x0:x1].mean() > 0.6 and changed[y0:y1, 0].mean() > 0.6
    assert not changed[:, x1 + 60 :].any()  # the rest of the picture: exact


def test_an_eyes_only_crop_is_anonymized():
    image = close_up("eyes", 4)
    result = anonymize_photo(image, detector=load_detector(), options=AnonymizeOptions(mode="black"))
    assert result.status == "ok"
    after = np.asarray(result.image)
    points = result.faces[0].landmark_array[:2].round().astype(int)
    for x, y in points:
        assert after[y - 3 : y + 4, x - 3 : x + 4].max() <= 8  # each eye blacked out


# ------------------------------------------------------------------------------------------------ wrapper


def test_the_first_pass_is_the_bare_detector_unchanged(detector, robust, scene):
    bare = detector.detect(scene)
    faces = robust.detect(scene)
    assert len(faces) == len(bare) == len(SCENE)
    assert sorted(faces, key=lambda f: f.box) == sorted(bare, key=lambda f: f.box)  # same boxes, same landmarks


def test_load_detector_is_robust_by_default():
    detector = load_detector(threshold=0.4)
    assert isinstance(detector, RobustDetector) and isinstance(detector.base, CenterFaceDetector)
    assert detector.base.threshold == 0.4 and detector.eye_scale == detector.base.eye_scale
    assert isinstance(load_detector(robust=False), CenterFaceDetector)
    with pytest.raises(ValueError, match=r"min_visible: got 0"):
        RobustDetector(detector.base, min_visible=0)
    with pytest.raises(ValueError, match=r"image: got an array of shape \(8, 8\)"):
        detector.detect(np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (31, 33), (5, 700), (700, 5)])
def test_tiny_and_thin_images_have_no_faces(robust, shape):
    assert robust.detect(np.full((*shape, 3), 128, np.uint8)) == []
