"""``face-anon --keep / --only / --keep-faces``: who stays as they are, in pixels and in the report."""

import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from face_anon.apps.cli import main
from face_anon.identity import IdentitySelector, load_references

from . import identity_helpers as people


# The group photo: the astronaut (face 0, the best score) and the cameraman (face 1), side by side, and
# where the detector puts their boxes. The detector may report more (a false alarm); such faces are
# never identifiable, so never kept.
PEOPLE = {"astronaut": (182, 58, 270, 178), "cameraman": (709, 145, 831, 291)}


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    folder = tmp_path_factory.mktemp("group")
    photo = people.save(people.side_by_side(people.astronaut(), people.cameraman()), folder / "group.png")
    # The reference: another photo of the astronaut (smaller, JPEG-compressed).
    reference = people.save(people.jpeg(people.resized(people.astronaut(), 0.8), 70), folder / "alice.jpg")
    return photo, reference


def _anonymize(tmp_path, photo, *extra, name="out.png"):
    out, report = tmp_path / name, tmp_path / f"{name}.json"
    status = main([str(photo), "-o", str(out), "--mode", "blur", "--json", str(report), "-q", *map(str, extra)])
    faces = json.loads(report.read_text())[0]["faces"] if report.exists() else None
    image = np.asarray(PIL.Image.open(out)) if out.exists() else None
    return status, image, faces


def _row(faces, person):
    """The report row of ``person``'s face (its box overlaps the known one)."""
    from face_anon.evaluation.metrics import box_iou

    (row,) = [face for face in faces if box_iou(face["box"], PEOPLE[person]) > 0.5]
    return row


def _region(person, grow=0.25):
    """``person``'s face box grown by ``grow`` of its size on each side, as array slices."""
    x0, y0, x1, y1 = PEOPLE[person]
    dx, dy = grow * (x1 - x0), grow * (y1 - y0)
    return slice(max(0, int(y0 - dy)), int(y1 + dy)), slice(max(0, int(x0 - dx)), int(x1 + dx))


def _changed(before, after, person):
    region = _region(person, grow=0.0)
    return np.abs(after[region].astype(int) - before[region].astype(int)).mean()


def _others(faces, *people_kept):
    kept = [_row(faces, person) for person in people_kept]
    return [face for face in faces if face not in kept]


def test_keep_leaves_the_reference_person_byte_identical(group, tmp_path):
    photo, reference = group
    before = np.asarray(PIL.Image.open(photo))
    status, after, faces = _anonymize(tmp_path, photo, "--keep", reference)
    assert status == 0
    np.testing.assert_array_equal(after[_region("astronaut")], before[_region("astronaut")])
    assert _changed(before, after, "cameraman") > 10
    astronaut, cameraman = _row(faces, "astronaut"), _row(faces, "cameraman")
    assert astronaut["action"] == "kept" and cameraman["action"] == "blurred"
    assert astronaut["matched_reference"] == str(reference) and astronaut["distance"] < 0.55
    assert cameraman["matched_reference"] is None and cameraman["distance"] > 0.65
    assert all(face["action"] == "blurred" for face in _others(faces, "astronaut"))


def test_only_anonymizes_the_reference_person_alone(group, tmp_path):
    photo, reference = group
    before = np.asarray(PIL.Image.open(photo))
    status, after, faces = _anonymize(tmp_path, photo, "--only", reference)
    assert status == 0
    np.testing.assert_array_equal(after[_region("cameraman")], before[_region("cameraman")])
    assert _changed(before, after, "astronaut") > 10
    astronaut, cameraman = _row(faces, "astronaut"), _row(faces, "cameraman")
    assert astronaut["action"] == "blurred" and cameraman["action"] == "kept"
    assert astronaut["matched_reference"] == str(reference)
    # A face too small to identify is uncertain: anonymized in "only" mode too.
    assert all(face["action"] == "blurred" for face in _others(faces, "cameraman"))


@pytest.mark.parametrize("mode", ["--keep", "--only"])
def test_an_uncertain_match_is_anonymized(group, tmp_path, detector, embedder, find, mode):
    """Put the threshold right at the astronaut's distance: her match is uncertain, so she is anonymized
    in both modes (in keep mode she would otherwise be kept)."""
    photo, reference = group
    before = np.asarray(PIL.Image.open(photo))
    gallery = load_references([reference], detector=detector, embedder=embedder)
    distance = float(IdentitySelector(embedder=embedder, gallery=gallery).matches(before, find(before))[0].distance)
    status, after, faces = _anonymize(
        tmp_path, photo, mode, reference, "--match-threshold", distance, "--uncertainty-band", 0.05
    )
    assert status == 0
    astronaut = _row(faces, "astronaut")
    assert astronaut["action"] == "blurred" and astronaut["reason"].startswith("uncertain")
    assert astronaut["matched_reference"] is None and astronaut["distance"] == pytest.approx(distance, abs=1e-3)
    assert _changed(before, after, "astronaut") > 10


def test_keep_faces_by_index(group, tmp_path):
    photo, _ = group
    before = np.asarray(PIL.Image.open(photo))
    status, after, faces = _anonymize(tmp_path, photo, "--keep-faces", "1")
    assert status == 0 and faces.index(_row(faces, "cameraman")) == 1
    assert _row(faces, "cameraman")["action"] == "kept" and _row(faces, "astronaut")["action"] == "blurred"
    np.testing.assert_array_equal(after[_region("cameraman")], before[_region("cameraman")])
    # An index the photo does not have fails that photo: nothing is written.
    status, after, faces = _anonymize(tmp_path, photo, "--keep-faces", "0,9", name="bad.png")
    assert status == 1 and after is None


def test_changing_the_references_redoes_a_resumed_output(group, tmp_path):
    photo, reference = group
    assert _anonymize(tmp_path, photo, "--keep", reference)[0] == 0
    report = tmp_path / "again.json"
    main(
        [
            str(photo),
            "-o",
            str(tmp_path / "out.png"),
            "--mode",
            "blur",
            "--keep",
            str(reference),
            "--json",
            str(report),
            "-q",
        ]
    )
    assert json.loads(report.read_text())[0]["status"] == "skipped"
    status, after, faces = _anonymize(tmp_path, photo, "--only", reference)
    assert status == 0 and _row(faces, "cameraman")["action"] == "kept"


def _refused(capsys, tmp_path, *argv):
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv] + ["-o", str(tmp_path / "out"), "--mode", "blur", "-q"])
    assert stop.value.code == 2
    assert not (tmp_path / "out").exists()  # refused before any work
    return capsys.readouterr().err


def test_bad_reference_photos_stop_the_run_before_any_work(group, tmp_path, capsys):
    photo, reference = group
    empty = people.save(people.background(200, 150), tmp_path / "nobody.png")
    err = _refused(capsys, tmp_path, photo, "--keep", empty)
    assert "--keep" in err and "nobody.png" in err and "no face found" in err
    err = _refused(capsys, tmp_path, photo, "--only", photo)
    assert "--only" in err and "faces found" in err and "shows one person" in err
    err = _refused(capsys, tmp_path, photo, "--keep", reference, "--only", reference)
    assert "cannot be combined" in err
    err = _refused(capsys, tmp_path, photo, reference, "--keep-faces", "0")
    assert "--keep-faces" in err and "one input photo" in err


def test_the_track_hook_decides_a_person_once(detector, embedder, find, group):
    _, reference = group
    gallery = load_references([reference], detector=detector, embedder=embedder)
    selector = IdentitySelector(embedder=embedder, gallery=gallery, mode="keep")
    frames = [people.rotated(people.astronaut(), angle) for angle in (-6, 0, 6)]
    astronaut = selector.track(0, [(frame, find(frame)[0]) for frame in frames])
    cameraman = selector.track(1, [(people.cameraman(), find(people.cameraman())[0])])
    assert astronaut.keep and astronaut.matched_reference == str(reference)
    assert not cameraman.keep and cameraman.matched_reference is None


def test_without_dlib_keep_says_what_to_install(group, tmp_path):
    photo, reference = group
    code = "import sys; sys.modules['dlib'] = None; from face_anon.apps.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [str(photo), "-o", str(tmp_path / "out"), "--mode", "blur", "--keep", str(reference), "-q"]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--keep: face identity needs dlib" in done.stderr and "face-anon[identity]" in done.stderr
    assert not (tmp_path / "out").exists()


def test_keep_in_a_video_decides_once_per_track(group, tmp_path):
    _, reference = group
    scene = people.side_by_side(people.astronaut(), people.cameraman())
    frames = [np.ascontiguousarray(scene[:, 8 * i : 8 * i + 1000]) for i in range(4)]  # both drift left
    clip = people.write_video(tmp_path / "clip.mp4", frames)
    report = tmp_path / "r.json"
    status = main(
        [str(clip), "-o", str(tmp_path / "out.mp4"), "--mode", "blur", "--keep", str(reference)]
        + ["--json", str(report), "-q"]
    )
    assert status == 0
    tracks = json.loads(report.read_text())[0]["tracks"]
    kept = [t for t in tracks if t["action"] == "kept"]
    assert len(kept) == 1 and kept[0]["matched_reference"] == str(reference) and kept[0]["detected"] == 4
    # Everyone else (the cameraman; a one-frame false alarm is "uncertain") is blurred on every frame.
    assert all(t["action"] == "blurred" for t in tracks if t is not kept[0]) and len(tracks) >= 2
    before, after = people.read_video(clip), people.read_video(tmp_path / "out.mp4")
    assert len(after) == 4
    for i, (a, b) in enumerate(zip(before, after)):
        astronaut = (slice(60, 180), slice(180 - 8 * i, 270 - 8 * i))
        cameraman = (slice(150, 290), slice(710 - 8 * i, 830 - 8 * i))
        assert np.abs(a[astronaut].astype(int) - b[astronaut]).mean() < 4.0  # kept: re-encoding noise only
        assert np.abs(a[cameraman].astype(int) - b[cameraman]).mean() > 8.0  # blurred
