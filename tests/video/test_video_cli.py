"""The command line with videos: single files, folders mixing photos and videos, resume, bad input."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from face_anon.apps.cli import main

from .video_helpers import decode_frames, moving_scene, write_clip


@pytest.fixture
def folder(tmp_path):
    """Two photos and two videos (one in a subfolder), and a text file that is neither."""
    from photo.photo_helpers import SCENE, compose

    root = tmp_path / "in"
    (root / "trip").mkdir(parents=True)
    PIL.Image.fromarray(compose(640, 400, SCENE[:2])).save(root / "group.png")
    PIL.Image.fromarray(compose(320, 240, [])).save(root / "empty.png")
    frames, _ = moving_scene(6)
    write_clip(root / "clip.mp4", frames, audio=True, location=True)
    write_clip(root / "trip" / "walk.mkv", frames[::-1])
    (root / "notes.txt").write_text("not a photo")
    return root


def _rows(path, root):
    """The report's rows by input path relative to ``root``."""
    return {Path(row["input"]).relative_to(root).as_posix(): row for row in json.loads(path.read_text())}


def test_a_folder_of_photos_and_videos_is_done_and_resumed(folder, tmp_path, capsys):
    out, report = tmp_path / "out", tmp_path / "report.json"
    assert main([str(folder), "-o", str(out), "--mode", "blur", "--json", str(report)]) == 0
    rows = _rows(report, folder)
    assert {name: row["status"] for name, row in rows.items()} == {
        "group.png": "ok",
        "empty.png": "no_faces",
        "clip.mp4": "ok",
        "trip/walk.mkv": "ok",
        "notes.txt": "skipped",
    }
    clip = rows["clip.mp4"]
    assert clip["kind"] == "video" and clip["frames"] == 6 and len(clip["tracks"]) == 2
    assert {"id", "first", "last", "detected", "interpolated", "extended", "redacted"} <= set(clip["tracks"][0])
    assert len(decode_frames(out / "trip" / "walk.mkv")[0]) == 6
    written = {path: path.read_bytes() for path in out.rglob("*") if path.is_file() and not path.name.startswith(".")}
    assert len(written) == 4

    # The summary line counts the videos' face tracks, not only the photos' faces.
    faces = len(rows["group.png"]["faces"])
    tracks = len(clip["tracks"]) + len(rows["trip/walk.mkv"]["tracks"])
    summary = f"4 files: 3 with faces, 1 without, 0 failed; {faces} faces in photos, {tracks} face tracks in videos"
    assert summary in capsys.readouterr().err

    # Started again: everything is skipped, nothing rewritten.
    assert main([str(folder), "-o", str(out), "--mode", "blur", "--json", str(report), "-q"]) == 0
    rows = _rows(report, folder)
    assert {rows[name]["status"] for name in ("group.png", "empty.png", "clip.mp4", "trip/walk.mkv")} == {"skipped"}
    assert all(path.read_bytes() == data for path, data in written.items())

    # A video whose output is gone is done again; other settings redo the videos they change.
    (out / "clip.mp4").unlink()
    assert main([str(folder), "-o", str(out), "--mode", "blur", "--json", str(report), "-q"]) == 0
    rows = _rows(report, folder)
    assert rows["clip.mp4"]["status"] == "ok" and rows["group.png"]["status"] == "skipped"
    assert main([str(folder), "-o", str(out), "--mode", "blur", "--crf", "30", "--json", str(report), "-q"]) == 0
    rows = _rows(report, folder)
    assert rows["clip.mp4"]["status"] == "ok" and rows["trip/walk.mkv"]["status"] == "ok"


def test_a_single_video_and_a_broken_one(folder, tmp_path, capsys):
    output = tmp_path / "clip_anon.mp4"
    assert main([str(folder / "clip.mp4"), "-o", str(output), "--mode", "pixelate", "-q"]) == 0
    assert len(decode_frames(output)[0]) == 6

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cut.mp4").write_bytes((folder / "clip.mp4").read_bytes()[:3000])
    PIL.Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(broken / "dark.png")
    report = tmp_path / "broken.json"
    assert main([str(broken), "-o", str(tmp_path / "broken_out"), "--mode", "blur", "--json", str(report), "-q"]) == 1
    rows = _rows(report, broken)
    assert rows["cut.mp4"]["status"] == "error" and "video" in rows["cut.mp4"]["error"]
    assert rows["dark.png"]["status"] == "no_faces"
    assert sorted(p.name for p in (tmp_path / "broken_out").iterdir() if not p.name.startswith(".")) == ["dark.png"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["-o", "{tmp}/x.jpg"], "video file name"),
        (["-o", "{tmp}/x.mp4", "--crf", "70"], "crf"),
        (["-o", "{tmp}/x.mp4", "--mode", "blur", "--identity", "{folder}/group.png"], "--identity"),
        (["-o", "{tmp}/x.mp4", "--identity", "{folder}/empty.png"], "exactly one face"),
    ],
)
def test_bad_video_arguments_exit_2(folder, tmp_path, capsys, arguments, message):
    arguments = [a.format(tmp=tmp_path, folder=folder) for a in arguments]
    with pytest.raises(SystemExit) as stop:
        main([str(folder / "clip.mp4"), *arguments, "-q"])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["in"]
