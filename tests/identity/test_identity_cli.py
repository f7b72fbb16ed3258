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


# The group photo: the astronaut (face 0) and the cameraman (face 1), side by side.
HALF = 512


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


def _changed(before, after, box):
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return np.abs(after[y0:y1, x0:x1].astype(int) - before[y0:y1, x0:x1].astype(int)).mean()


def test_keep_leaves_the_reference_person_byte_identical(group, tmp_path):
    photo, reference = group
    before = np.asarray(PIL.Image.open(photo))
    status, after, faces = _anonymize(tmp_path, photo, "--keep", reference)
    assert status == 0
    np.testing.assert_array_equal(after[:, :HALF], before[:, :HALF])  # the astronaut's half, untouched
    assert _changed(before, after, faces[1]["box"]) > 10  # the cameraman blurred
    assert [f["action"] for f in faces] == ["kept", "blurred"]
    assert faces[0]["matched_reference"] == str(reference) and faces[0]["distance"] < 0.55
    assert faces[1]["matched_reference"] is None and faces[1]["distance"] > 0.65


def test_only_anonymizes_the_reference_person_alone(group, tmp_path):
    photo, reference = group
    before = np.asarray(PIL.Image.open(photo))
    status, after, faces = _anonymize(tmp_path, photo, "--only", reference)
    assert status == 0
    np.testing.assert_array_equal(after[:, HALF:], before[:, HALF:])  # the cameraman's half, untouched
    assert _changed(before, after, faces[0]["box"]) > 10
    assert [f["action"] for f in faces] == ["blurred", "kept"]
    assert faces[0]["matched_reference"] == str(reference)


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
    assert faces[0]["action"] == "blurred" and faces[0]["reason"].startswith("uncertain")
    assert faces[0]["matched_reference"] is None and faces[0]["distance"] == pytest.approx(distance, abs=1e-3)
    assert _changed(before, after, faces[0]["box"]) > 10


def test_keep_faces_by_index(group, tmp_path):
    photo, _ = group
    before = np.asarray(PIL.Image.open(photo))
    status, after, faces = _anonymize(tmp_path, photo, "--keep-faces", "1")
    assert status == 0 and [f["action"] for f in faces] == ["blurred", "kept"]
    np.testing.assert_array_equal(after[:, HALF:], before[:, HALF:])
    # An index the photo does not have fails that photo: nothing is written.
    status, after, faces = _anonymize(tmp_path, photo, "--keep-faces", "0,2", name="bad.png")
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
    assert status == 0 and [f["action"] for f in faces] == ["blurred", "kept"]


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
    assert "--only" in err and "2 faces found" in err
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
