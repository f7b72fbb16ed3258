"""``face-anon-evaluate`` end to end: the calibration controls land where they must, the report files
hold the JSON's numbers, bad inputs get clear errors."""

import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
from identity import identity_helpers as people

from face_anon.apps.evaluate import main
from face_anon.detection import Face
from face_anon.evaluation import EvaluationOptions, evaluate

from .evaluation_helpers import DETECTOR_THRESHOLD, PHOTOS, anonymize_folder


def _run(original, anonymized, tmp_path, *extra):
    report_json = tmp_path / "report.json"
    status = main(
        [str(original), str(anonymized), "--json", str(report_json), "--report-dir", str(tmp_path / "r"), "-q"]
        + ["--threshold", str(DETECTOR_THRESHOLD), *extra]
    )
    return status, json.loads(report_json.read_text())


@pytest.fixture(scope="module")
def control_runs(originals, controls, tmp_path_factory):
    """Each control evaluated once by the command: name -> (exit status, JSON report, report folder)."""
    runs = {}
    for name, folder in controls.items():
        out = tmp_path_factory.mktemp(f"evaluation-{name}")
        status, report = _run(originals, folder, out)
        runs[name] = (status, report, out / "r")
    return runs


def test_an_unchanged_copy_is_fully_reidentified(control_runs):
    status, report, _ = control_runs["copy"]
    assert status == 0
    assert report["counts"]["faces"] == 3 and report["counts"]["identifiable_faces"] == 3
    assert report["reidentification_rate"] == 1.0
    assert report["rank1_rate"] == 1.0
    assert report["detection_retention"] == 1.0
    assert report["landmark_error"] == 0.0 and report["yaw_difference"] == 0.0 and report["roll_difference"] == 0.0
    assert all(face["distance"] == 0.0 and face["reidentified"] for face in report["faces"])
    assert "flicker_ratio" not in report  # photos only


@pytest.mark.parametrize("mode", ["blur", "black"])
def test_blur_and_black_boxes_are_not_reidentified_nor_detected(control_runs, mode):
    status, report, _ = control_runs[mode]
    assert status == 0
    assert report["reidentification_rate"] == 0.0
    assert report["detection_retention"] <= 1 / 3
    assert all(face["distance"] > 0.6 for face in report["faces"])


def test_undetected_faces_are_embedded_where_the_original_face_was(originals, controls, control_runs, embedder):
    """An independent computation of one row: the black-boxed astronaut embedded at the original landmarks."""
    _, report, _ = control_runs["black"]
    row = next(face for face in report["faces"] if face["file"] == "astronaut.png")
    assert row["detected"] is False
    face = Face(tuple(row["original_box"]), row["original_score"], tuple(map(tuple, row["original_landmarks"])))
    before = embedder.embed(np.asarray(PIL.Image.open(originals / "astronaut.png").convert("RGB")), [face])[0]
    after = embedder.embed(np.asarray(PIL.Image.open(controls["black"] / "astronaut.png").convert("RGB")), [face])[0]
    assert row["distance"] == pytest.approx(float(np.linalg.norm(after - before)), abs=2e-3)


def test_the_tiny_models_output_is_evaluated(originals, detector, tiny_pipeline, tmp_path):
    from face_anon.orchestration.options import AnonymizeOptions

    options = AnonymizeOptions(crop_size=32, num_inference_steps=2, seed=0)
    anonymized = anonymize_folder(originals, tmp_path / "tiny", detector, options, pipeline=tiny_pipeline)
    status, report = _run(originals, anonymized, tmp_path)
    assert status == 0 and report["counts"]["faces"] == 3
    for key in ("reidentification_rate", "rank1_rate", "detection_retention"):
        assert 0.0 <= report[key] <= 1.0
    # The tiny model paints noise over the face: it is not the same person any more.
    assert report["reidentification_rate"] < 1.0


def test_the_report_files_hold_the_jsons_numbers(control_runs):
    _, report, folder = control_runs["blur"]
    markdown = (folder / "report.md").read_text()
    assert f"| re-identification rate | {100 * report['reidentification_rate']:.1f}% |" in markdown
    assert f"| rank-1 rate | {100 * report['rank1_rate']:.1f}% |" in markdown
    assert f"| detection retention | {100 * report['detection_retention']:.1f}% |" in markdown
    assert "![Identity distances](distances.png)" in markdown
    assert "not comparable one-to-one" in markdown
    for name in PHOTOS:
        assert f"| {name} | photo | ok | 1 |" in markdown
    with PIL.Image.open(folder / "distances.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    histogram = report["distances"]["histogram"]
    assert sum(histogram["counts"]) == report["distances"]["count"] == 3
    distances = sorted(face["distance"] for face in report["faces"])
    assert report["distances"]["min"] == pytest.approx(distances[0], abs=1e-4)
    assert report["distances"]["max"] == pytest.approx(distances[-1], abs=1e-4)
    assert report["distances_between_originals"]["count"] == 3  # three people, three pairs


# ------------------------------------------------------------------------------------------------ video


def _clip(count=5):
    """The astronaut's face drifting right by 4 px a frame, 256 x 256."""
    image = people.astronaut()
    return [np.ascontiguousarray(image[0:256, 100 - 4 * i : 356 - 4 * i]) for i in range(count)]


def test_video_controls(tmp_path, detector):
    from face_anon.orchestration.options import AnonymizeOptions
    from face_anon.orchestration.photo import anonymize_photos

    frames = _clip()
    (tmp_path / "original").mkdir()
    (tmp_path / "copy").mkdir()
    (tmp_path / "blurred").mkdir()
    people.write_video(tmp_path / "original" / "clip.mp4", frames)
    (tmp_path / "copy" / "clip.mp4").write_bytes((tmp_path / "original" / "clip.mp4").read_bytes())
    blurred = [
        np.asarray(r.image) for r in anonymize_photos(frames, detector=detector, options=AnonymizeOptions(mode="blur"))
    ]
    people.write_video(tmp_path / "blurred" / "clip.mp4", blurred)

    status, same = _run(tmp_path / "original", tmp_path / "copy", tmp_path)
    assert status == 0
    assert same["reidentification_rate"] == 1.0 and same["detection_retention"] == 1.0
    assert same["flicker_ratio"] == 1.0
    assert same["identity_stability"] == same["identity_stability_original"] > 0.95
    assert [t["frames"] for t in same["tracks"]] == [5]  # one person, one track through every frame
    assert [f["frame"] for f in same["faces"]] == [0, 1, 2, 3, 4]

    status, blur = _run(tmp_path / "original", tmp_path / "blurred", tmp_path, "--frame-step", "2")
    assert status == 0
    assert blur["reidentification_rate"] == 0.0
    assert [f["frame"] for f in blur["faces"]] == [0, 2, 4]
    assert blur["files"][0]["evaluated_frames"] == 3 and blur["files"][0]["frames"] == 5


def test_videos_with_different_frame_counts_are_an_error_row(tmp_path):
    frames = _clip()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    people.write_video(tmp_path / "a" / "clip.mp4", frames)
    people.write_video(tmp_path / "b" / "clip.mp4", frames[:3])
    status, report = _run(tmp_path / "a", tmp_path / "b", tmp_path)
    assert status == 1
    assert report["files"][0]["status"] == "error" and "frame counts" in report["files"][0]["error"]


# ------------------------------------------------------------------------------------------------ bad inputs


def _error(capsys, *argv):
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_unpaired_files_are_refused_by_name(originals, controls, tmp_path, capsys):
    partial = tmp_path / "partial"
    for name in ("astronaut.png", "extra.png"):
        people.save(people.astronaut(), partial / name)
    err = _error(capsys, originals, partial, "--json", tmp_path / "r.json", "-q")
    assert "only in ORIGINAL (cameraman.png, people/hopper.png)" in err and "only in ANONYMIZED (extra.png)" in err
    assert not (tmp_path / "r.json").exists()
    # --skip-unpaired evaluates the one pair there is and lists the others.
    status, report = _run(originals, partial, tmp_path, "--skip-unpaired")
    assert status == 0 and report["counts"]["files"] == 1
    assert report["unpaired"] == ["cameraman.png", "extra.png", "people/hopper.png"]


def test_unreadable_and_mismatched_images_are_error_rows(originals, controls, tmp_path):
    broken = tmp_path / "broken"
    (broken / "people").mkdir(parents=True)
    (broken / "astronaut.png").write_bytes(b"\x89PNG but not really")
    people.save(people.resized(people.cameraman(), 0.5), broken / "cameraman.png")
    people.save(people.hopper(), broken / "people" / "hopper.png")
    status, report = _run(originals, broken, tmp_path)
    assert status == 1
    rows = {row["file"]: row for row in report["files"]}
    assert rows["astronaut.png"]["status"] == "error" and "ANONYMIZED" in rows["astronaut.png"]["error"]
    assert rows["cameraman.png"]["status"] == "error" and "same size" in rows["cameraman.png"]["error"]
    assert rows["people/hopper.png"]["status"] == "ok"
    assert report["counts"]["files_failed"] == 2 and report["reidentification_rate"] == 1.0


def test_bad_arguments(originals, controls, tmp_path, capsys):
    assert "does not exist" in _error(capsys, tmp_path / "nowhere", controls["copy"], "--json", tmp_path / "r.json")
    single = originals / "astronaut.png"
    assert "give two files or two folders" in _error(capsys, single, controls["copy"], "--json", tmp_path / "r.json")
    assert "one of the inputs" in _error(capsys, single, controls["copy"] / "astronaut.png", "--json", single)
    inside = controls["copy"] / "evaluation"
    assert "an input folder" in _error(
        capsys, originals, controls["copy"], "--json", tmp_path / "r.json", "--report-dir", inside
    )
    assert "--frame-step" in _error(
        capsys, originals, controls["copy"], "--json", tmp_path / "r.json", "--frame-step", "0"
    )


def test_two_single_files_pair_whatever_their_names(originals, controls, tmp_path):
    status, report = _run(originals / "astronaut.png", controls["blur"] / "astronaut.png", tmp_path)
    assert status == 0 and report["counts"]["files"] == 1 and report["reidentification_rate"] == 0.0


def test_library_call_matches_the_command(originals, controls, control_runs, detector, embedder):
    report = evaluate(originals, controls["blur"], detector=detector, embedder=embedder, options=EvaluationOptions())
    _, from_command, _ = control_runs["blur"]
    assert report["faces"] == from_command["faces"]
    for key in ("reidentification_rate", "rank1_rate", "detection_retention", "distances"):
        assert report[key] == from_command[key]


def test_the_command_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "face_anon.apps.evaluate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "ORIGINAL" in out and "--report-dir" in out


def test_without_dlib_the_command_says_what_to_install(originals, controls, tmp_path):
    code = (
        "import sys; sys.modules['dlib'] = None; "  # as if dlib-bin were not installed
        "from face_anon.apps.evaluate import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [str(originals), str(controls["copy"]), "--json", str(tmp_path / "r.json"), "-q"]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert done.returncode == 2
    assert "needs dlib" in done.stderr and "pip install 'face-anon[identity]'" in done.stderr
    assert not (tmp_path / "r.json").exists()
