"""Resuming trusts only what this tool wrote: the journal of input, settings and output hashes."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from face_anon.apps.cli import main

from .photo_helpers import Placement, background, compose, window


JOURNAL = ".face-anon-journal.jsonl"


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    PIL.Image.fromarray(compose(320, 240, [Placement((160, 120), 0.9)], seed=1)).save(folder / "a.png")
    PIL.Image.fromarray(compose(320, 240, [Placement((150, 125), 0.8)], seed=2)).save(folder / "b.png")
    return folder


def _run(photos, out, *args):
    """Run the command in process; returns the exit status and the report's rows by file name."""
    report = out.parent / f"{out.name}-report.json"
    code = main([str(photos), "-o", str(out), "--json", str(report), "-q", *args])
    return code, {Path(entry["input"]).name: entry for entry in json.loads(report.read_text())}


def _nose(path, entry, radius=3):
    image = np.asarray(PIL.Image.open(path).convert("RGB"))
    return window(image, entry["faces"][0]["landmarks"][2], radius)


def test_an_output_of_an_older_detection_is_redone(photos, tmp_path, monkeypatch):
    """Outputs written before detection learned to find more faces may miss some: a new
    ``DETECTION_REVISION`` makes them again instead of skipping them (same revision: skipped, the control)."""
    out = tmp_path / "out"
    assert _run(photos, out, "--mode", "blur")[0] == 0
    code, same = _run(photos, out, "--mode", "blur")
    assert code == 0 and [entry["status"] for entry in same.values()] == ["skipped", "skipped"]
    import face_anon.orchestration.batch as batch

    monkeypatch.setattr(batch, "DETECTION_REVISION", batch.DETECTION_REVISION + 1)
    code, newer = _run(photos, out, "--mode", "blur")
    assert code == 0 and [entry["status"] for entry in newer.values()] == ["ok", "ok"]
    assert all(
        any("replaced the earlier face-anon output" in note for note in entry["notes"]) for entry in newer.values()
    )


@pytest.mark.parametrize(
    "first_run",
    [
        ["--mode", "black", "--min-face-size", "1000"],  # every face ignored: the originals written out
        ["--mode", "blur"],
        ["--mode", "black", "--threshold", "0.99"],  # no face found at all
    ],
)
def test_an_output_written_with_other_settings_is_redone(photos, tmp_path, first_run):
    out = tmp_path / "out"
    code, first = _run(photos, out, *first_run)
    assert code == 0 and {entry["status"] for entry in first.values()} <= {"ok", "no_faces"}
    code, second = _run(photos, out, "--mode", "black")
    assert code == 0
    for name, entry in second.items():
        assert entry["status"] == "ok" and [face["action"] for face in entry["faces"]] == ["blacked_out"]
        assert _nose(out / name, entry).max() == 0  # really black now, not the earlier output
        assert any("replaced the earlier face-anon output with other settings" in note for note in entry["notes"])
    code, third = _run(photos, out, "--mode", "black")
    assert code == 0 and [entry["status"] for entry in third.values()] == ["skipped", "skipped"]


def test_a_changed_input_is_redone(photos, tmp_path):
    out = tmp_path / "out"
    assert _run(photos, out, "--mode", "black")[0] == 0
    before = (out / "a.png").read_bytes()
    PIL.Image.fromarray(compose(320, 240, [Placement((120, 110), 1.0)], seed=5)).save(photos / "a.png")
    code, entries = _run(photos, out, "--mode", "black")
    assert code == 0 and entries["a.png"]["status"] == "ok" and entries["b.png"]["status"] == "skipped"
    assert (out / "a.png").read_bytes() != before
    assert _nose(out / "a.png", entries["a.png"]).max() == 0
    assert any("other input" in note for note in entries["a.png"]["notes"])


def _foreign_cases(photos, out):
    """Ways a file face-anon did not write can sit at an output path."""
    yield "the input itself, copied", lambda: shutil.copyfile(photos / "a.png", out / "a.png")
    yield "an unrelated picture", lambda: PIL.Image.fromarray(background(64, 48)).save(out / "a.png")
    yield "a hard link to another input", lambda: os.link(photos / "b.png", out / "a.png")


@pytest.mark.parametrize(
    "case",
    ["the input itself, copied", "an unrelated picture", "a hard link to another input"],
)
def test_a_file_face_anon_did_not_write_is_refused_and_left_alone(photos, tmp_path, case):
    out = tmp_path / "out"
    out.mkdir()
    dict(_foreign_cases(photos, out))[case]()
    before = {path: path.read_bytes() for path in (out / "a.png", photos / "a.png", photos / "b.png")}
    code, entries = _run(photos, out, "--mode", "black")
    assert code == 1
    refused = entries["a.png"]
    assert refused["status"] == "error" and refused["output"] is None and refused["faces"] == []
    assert "exists and" in refused["error"] and "left alone" in refused["error"]
    assert {path: path.read_bytes() for path in before} == before  # nothing changed, inputs included
    assert entries["b.png"]["status"] == "ok"  # the rest of the batch goes on


@pytest.mark.parametrize("target", ["a.png", "b.png"])
def test_an_output_path_that_links_to_an_input_is_a_bad_argument(photos, tmp_path, capsys, target):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(photos / target, out / "a.png")
    before = (photos / "a.png").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main([str(photos), "-o", str(out), "--mode", "black", "-q"])
    assert exit_info.value.code == 2
    assert f"output: '{out / 'a.png'}' is also an input" in capsys.readouterr().err
    assert (photos / "a.png").read_bytes() == before and not (out / "b.png").exists()
    assert not (out / JOURNAL).exists()  # refused before any work


def test_our_output_changed_by_someone_else_is_refused(photos, tmp_path):
    out = tmp_path / "out"
    assert _run(photos, out, "--mode", "black")[0] == 0
    edited = np.array(PIL.Image.open(out / "a.png"))
    edited[:10] = 255
    PIL.Image.fromarray(edited).save(out / "a.png")
    code, entries = _run(photos, out, "--mode", "black")
    assert code == 1 and "was not written by face-anon" in entries["a.png"]["error"]
    assert np.array_equal(np.asarray(PIL.Image.open(out / "a.png")), edited)
    assert entries["b.png"]["status"] == "skipped"


def test_without_the_journal_nothing_is_trusted(photos, tmp_path):
    out = tmp_path / "out"
    assert _run(photos, out, "--mode", "black")[0] == 0
    (out / JOURNAL).unlink()
    code, entries = _run(photos, out, "--mode", "black")
    assert code == 1 and all(entry["status"] == "error" for entry in entries.values())
    assert all(JOURNAL in entry["error"] for entry in entries.values())


def test_a_torn_journal_line_is_ignored(photos, tmp_path):
    out = tmp_path / "out"
    assert _run(photos, out, "--mode", "black")[0] == 0
    with open(out / JOURNAL, "ab") as journal:
        journal.write(b'{"version": 1, "output": "a.p')  # what a crash in the middle of an append leaves
    code, entries = _run(photos, out, "--mode", "black")
    assert code == 0 and [entry["status"] for entry in entries.values()] == ["skipped", "skipped"]


def test_a_run_killed_right_after_a_rename_resumes(photos, tmp_path, monkeypatch):
    """The journal row is made durable before the output is renamed into place, so an output that made
    it to disk is always recognised, whenever the run died."""
    out = tmp_path / "out"
    real_fsync, calls = os.fsync, []

    def fsync_then_die(descriptor):
        real_fsync(descriptor)
        calls.append(descriptor)
        if len(calls) == 3:  # journal row, temporary file, folder after the rename of the first output
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", fsync_then_die)
    code, entries = _run(photos, out, "--mode", "black")
    monkeypatch.undo()
    assert code == 130 and (out / "a.png").exists() and not (out / "b.png").exists()
    assert entries["b.png"]["error"] == "not processed: interrupted"
    code, entries = _run(photos, out, "--mode", "black")
    assert code == 0 and entries["b.png"]["status"] == "ok"
    assert entries["a.png"]["status"] in ("ok", "skipped")  # never refused as foreign
    assert (
        _nose(
            out / "a.png", entries["a.png"]["journal"] if entries["a.png"]["status"] == "skipped" else entries["a.png"]
        ).max()
        == 0
    )


def test_a_single_output_file_resumes_too(photos, tmp_path):
    target = tmp_path / "single" / "anon.png"
    assert main([str(photos / "a.png"), "-o", str(target), "--mode", "black", "-q"]) == 0
    assert (target.parent / JOURNAL).exists()
    mtime = target.stat().st_mtime_ns
    report = tmp_path / "r.json"
    assert main([str(photos / "a.png"), "-o", str(target), "--mode", "black", "-q", "--json", str(report)]) == 0
    (entry,) = json.loads(report.read_text())
    assert entry["status"] == "skipped" and entry["journal"]["faces"][0]["action"] == "blacked_out"
    assert target.stat().st_mtime_ns == mtime
