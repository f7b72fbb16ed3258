"""The face-anon command end to end: the tiny model in a fresh interpreter, redaction in process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from face_anon.apps.cli import main
from face_anon.detection import CenterFaceDetector
from face_anon.geometry.alignment import ffhq_alignment
from face_anon.geometry.blending import face_mask, face_region

from .photo_helpers import SCENE, SCENE_SIZE, Placement, background, compose


REPO = Path(__file__).resolve().parents[2]
REPORT_KEYS = {"input", "output", "status", "error", "reason", "faces", "skipped", "notes"}
FACE_KEYS = {"box", "score", "landmarks", "action", "error", "reason", "matched_reference", "distance"}


def _run_cli(*args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "face_anon", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    PIL.Image.fromarray(compose(*SCENE_SIZE, SCENE)).save(folder / "group.png")
    (folder / "more").mkdir()
    PIL.Image.fromarray(compose(480, 360, [Placement((240, 180), 1.1)], seed=3)).save(folder / "more" / "single.png")
    PIL.Image.fromarray(background(200, 150)).save(folder / "more" / "empty.png")
    return folder


def _outside_masks_unchanged(before, after, faces, size):
    """No pixel outside the faces' masks changed (masks rebuilt from the report's landmarks)."""
    union = np.zeros(before.shape[:2], bool)
    for face in faces:
        alignment = ffhq_alignment(np.array(face["landmarks"]), size, eye_scale=CenterFaceDetector.eye_scale)
        region = face_region(alignment, face_mask(size), (before.shape[1], before.shape[0]))
        union[region.y0 : region.y1, region.x0 : region.x1] |= region.alpha > 0
    changed = np.any(before != after, axis=2)
    return not (changed & ~union).any(), changed


def test_tiny_model_end_to_end(tiny_model_dir, photo_folder, tmp_path):
    common = ["--model", tiny_model_dir, "--size", 32, "--steps", 2, "--seed", 5, "--device", "cpu", "-q"]
    first = _run_cli(photo_folder, "-o", tmp_path / "a", "--batch-size", 3, "--json", tmp_path / "a.json", *common)
    assert first.returncode == 0, first.stderr
    report = json.loads((tmp_path / "a.json").read_text())
    assert [Path(e["input"]).relative_to(photo_folder).as_posix() for e in report] == [
        "group.png",
        "more/empty.png",
        "more/single.png",
    ]
    assert [e["status"] for e in report] == ["ok", "no_faces", "ok"]
    assert [len(e["faces"]) for e in report] == [len(SCENE), 0, 1]
    for entry in report:
        assert set(entry) == REPORT_KEYS and entry["error"] is None and entry["skipped"] is False
        assert all(set(face) == FACE_KEYS and face["action"] == "anonymized" for face in entry["faces"])
        relative = Path(entry["input"]).relative_to(photo_folder)
        assert Path(entry["output"]) == tmp_path / "a" / relative
        before = np.asarray(PIL.Image.open(entry["input"]))
        after = np.asarray(PIL.Image.open(entry["output"]))
        unchanged_outside, changed = _outside_masks_unchanged(before, after, entry["faces"], 32)
        assert unchanged_outside
        for face in entry["faces"]:  # every face changed around its nose
            x, y = (int(round(v)) for v in face["landmarks"][2])
            assert changed[y - 2 : y + 3, x - 2 : x + 3].mean() > 0.8

    # Another batch size gives the same result (up to float rounding in batched convolutions).
    second = _run_cli(photo_folder, "-o", tmp_path / "b", "--batch-size", 1, *common)
    assert second.returncode == 0, second.stderr
    for name in ("group.png", "more/single.png"):
        a = np.asarray(PIL.Image.open(tmp_path / "a" / name)).astype(int)
        b = np.asarray(PIL.Image.open(tmp_path / "b" / name)).astype(int)
        assert np.abs(a - b).max() <= 2

    # Run again: everything is there already, nothing is rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*")}
    third = _run_cli(photo_folder, "-o", tmp_path / "a", "--json", tmp_path / "c.json", *common)
    assert third.returncode == 0, third.stderr
    assert [e["status"] for e in json.loads((tmp_path / "c.json").read_text())] == ["skipped"] * 3
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*")}  # not even the journal


def test_blur_mode_in_process(photo_folder, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code = main([str(photo_folder), "-o", str(tmp_path / "out"), "--mode", "blur", "--json", str(report_path)])
    assert code == 0
    err = capsys.readouterr().err
    assert "face-anon: 3 photos: 2 with faces, 1 without, 0 failed; 8 faces" in err
    assert "photo" in err  # the progress bar
    report = json.loads(report_path.read_text())
    assert [e["status"] for e in report] == ["ok", "no_faces", "ok"]
    for entry in report:
        before = np.asarray(PIL.Image.open(entry["input"]))
        after = np.asarray(PIL.Image.open(entry["output"]))
        assert _outside_masks_unchanged(before, after, entry["faces"], 256)[0]
        assert all(face["action"] == "blurred" for face in entry["faces"])
    empty = report[1]
    assert np.array_equal(np.asarray(PIL.Image.open(empty["input"])), np.asarray(PIL.Image.open(empty["output"])))


def test_a_model_that_cannot_load_fails_closed(photo_folder, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code = main(
        [
            str(photo_folder / "more"),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(tmp_path / "no-such-model"),
            "--device",
            "cpu",
            "--json",
            str(report_path),
            "-q",
        ]
    )
    assert code == 1
    assert "cannot load the model (--model " in capsys.readouterr().err
    report = {Path(e["input"]).name: e for e in json.loads(report_path.read_text())}
    assert report["empty.png"]["status"] == "no_faces"  # needs no model: written
    assert (
        report["single.png"]["status"] == "error"
        and "not processed: cannot load the model" in report["single.png"]["error"]
    )
    assert not (tmp_path / "out" / "single.png").exists()  # never the face left as it was


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "argument --batch-size: got 0, expected a positive integer"),
        (["--mode", "swap"], "argument --mode: invalid choice: 'swap'"),
        (["--threshold", "2"], "threshold: got 2.0, expected a number between 0 and 1"),
        (["--device", "quantum"], "device: got 'quantum'"),
        (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
    ],
)
def test_bad_arguments_are_named(photo_folder, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(photo_folder / "group.png"), "-o", str(tmp_path / "out.png"), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_inputs_are_never_overwritten(photo_folder, capsys):
    source = photo_folder / "group.png"
    before = source.read_bytes()
    with pytest.raises(SystemExit):
        main([str(source), "-o", str(source), "--mode", "black"])
    assert "never overwrites an input" in capsys.readouterr().err
    assert source.read_bytes() == before
    with pytest.raises(SystemExit):
        main([str(photo_folder / "nothing-here.jpg"), "-o", "out"])
    assert "does not exist" in capsys.readouterr().err


def test_module_entry_point_prints_usage():
    result = _run_cli("--help", timeout=120)
    assert result.returncode == 0
    for option in (
        "--model",
        "--mode",
        "--degree",
        "--steps",
        "--guidance",
        "--seed",
        "--batch-size",
        "--min-face-size",
        "--device",
        "--dtype",
        "--keep-metadata",
        "--json",
        "--on-error",
    ):
        assert option in result.stdout
