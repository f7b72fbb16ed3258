"""Arguments that would destroy or silently skip something are refused before any work; one bad file
never stops a batch; a stopped run (SIGTERM like Ctrl-C) still reports and leaves no partial file."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from face_anon import AnonymizeOptions, FileRun, Journal, engine_settings, load_detector, plan_files, process_files
from face_anon.apps.cli import main

from .photo_helpers import Placement, background, compose


REPO = Path(__file__).resolve().parents[2]
JOURNAL = ".face-anon-journal.jsonl"
SIGNAL_PHOTOS = 20  # enough that the signal comes while the run works


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    PIL.Image.fromarray(compose(320, 240, [Placement((160, 120), 0.9)], seed=1)).save(folder / "IMG_001.png")
    PIL.Image.fromarray(compose(320, 240, [Placement((150, 125), 0.8)], seed=2)).save(folder / "IMG_002.png")
    return folder


def _refused(capsys, *argv):
    """Run the command expecting exit status 2; returns its error output."""
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, argv), "-q"])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _snapshot(*folders):
    return {path: path.read_bytes() for folder in folders for path in sorted(folder.rglob("*")) if path.is_file()}


# ------------------------------------------------------------------------------------------------ --json


def _report_cases(photos, tmp_path):
    out = tmp_path / "out"
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    (tmp_path / "a-folder").mkdir()
    os.symlink(photos / "IMG_002.png", tmp_path / "link.json")
    (tmp_path / "file").write_text("x")
    return {
        "an input": (photos / "IMG_001.png", "is an input; face-anon never overwrites an input"),
        "a link to an input": (tmp_path / "link.json", "is an input"),
        "an output": (out / "IMG_002.png", "is where an output will be written"),
        "the journal": (out / JOURNAL, "is the resume journal"),
        "a file that is not a report": (notes, "exists and is not a face-anon report"),
        "a folder": (tmp_path / "a-folder", "is a folder"),
        "below a file": (tmp_path / "file" / "report.json", "is a file, not a folder"),
        "an unwritable place": (Path("/proc/face-anon-report.json"), "cannot be written"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "an input",
        "a link to an input",
        "an output",
        "the journal",
        "a file that is not a report",
        "a folder",
        "below a file",
        "an unwritable place",
    ],
)
def test_a_report_path_that_would_destroy_something_is_refused_first(photos, tmp_path, capsys, case):
    report, message = _report_cases(photos, tmp_path)[case]
    before = _snapshot(tmp_path)
    err = _refused(capsys, "--json", report, photos / "IMG_001.png", photos / "IMG_002.png", "-o", tmp_path / "out")
    assert "argument --json" in err or "--json: " in err
    assert message in err
    assert _snapshot(tmp_path) == before and not (tmp_path / "out").exists()  # no work done, nothing written


def test_an_earlier_report_may_be_replaced(photos, tmp_path):
    report = tmp_path / "report.json"
    args = [str(photos), "-o", str(tmp_path / "out"), "--mode", "blur", "-q", "--json", str(report)]
    assert main(args) == 0
    assert main(args) == 0  # the report of the first run is a report: replaced
    assert [entry["status"] for entry in json.loads(report.read_text())] == ["skipped", "skipped"]


def test_a_report_that_cannot_be_written_at_the_end_is_an_error_not_a_traceback(photos, tmp_path, capsys, monkeypatch):
    import errno

    import face_anon.apps.cli as cli

    def disk_full(path, data, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "write_atomic", disk_full)
    code = main([str(photos), "-o", str(tmp_path / "out"), "--mode", "blur", "-q", "--json", str(tmp_path / "r.json")])
    assert code == 1 and "cannot write the report" in capsys.readouterr().err
    assert (tmp_path / "out" / "IMG_001.png").exists()  # the outputs themselves were written


# ------------------------------------------------------------------------------------------------ output


def test_an_output_folder_overlapping_an_input_folder_is_refused(photos, tmp_path, capsys):
    before = _snapshot(tmp_path)
    for output, message in [
        (photos, "is the input folder"),
        (photos / "anon", "is inside the input folder"),
        (tmp_path, "contains the input folder"),
        (photos / ".." / "photos", "is the input folder"),
    ]:
        err = _refused(capsys, photos, "-o", output, "--mode", "black")
        assert f"output: '{output}' {message} '{photos}'" in err
    assert _snapshot(tmp_path) == before and not (photos / "anon").exists()


@pytest.mark.parametrize("name", ["anon.heic", "anon.avif", "anon.pcx"])
def test_an_image_name_we_cannot_write_is_refused_not_made_a_folder(photos, tmp_path, capsys, name):
    err = _refused(capsys, photos / "IMG_001.png", "-o", tmp_path / name, "--mode", "black")
    assert f"output: got '{tmp_path / name}', expected a folder or an image file name ending in one of" in err
    assert not (tmp_path / name).exists()


def test_an_image_file_name_for_several_inputs_is_refused(photos, tmp_path, capsys):
    err = _refused(capsys, photos, "-o", tmp_path / "anon.jpg", "--mode", "black")
    assert "looks like an image file name, but several inputs or a folder need an output folder" in err
    assert not (tmp_path / "anon.jpg").exists()


@pytest.mark.parametrize(
    "flag, value, name",
    [
        ("--min-face-size", "inf", "min_face_size"),
        ("--min-face-size", "nan", "min_face_size"),
        ("--guidance", "inf", "guidance_scale"),
        ("--degree", "11", "anonymization_degree"),
        ("--anonymization-degree", "-0.5", "anonymization_degree"),
        ("--steps", "0", "num_inference_steps"),
        ("--seed", "1.5", "seed"),
    ],
)
def test_numbers_outside_the_library_limits_are_refused(photos, tmp_path, capsys, flag, value, name):
    err = _refused(capsys, photos, "-o", tmp_path / "out", flag, value)
    assert f"argument {flag.split('/')[0]}" in err or "argument --" in err
    assert f"got {value!r}" in err or f"got {value}," in err
    assert f"(sets {name})" in err


def test_pipeline_named_flags_set_the_same_options(photos, tmp_path):
    """--anonymization-degree / --num-inference-steps / --guidance-scale are aliases of the short flags."""
    from face_anon.apps.cli import build_parser

    parser = build_parser()
    short = parser.parse_args(["x", "-o", "y", "--degree", "0.5", "--steps", "3", "--guidance", "2"])
    long = parser.parse_args(
        ["x", "-o", "y", "--anonymization-degree", "0.5", "--num-inference-steps", "3", "--guidance-scale", "2"]
    )
    assert vars(short) == vars(long)
    assert (short.anonymization_degree, short.num_inference_steps, short.guidance_scale) == (0.5, 3, 2.0)


# ------------------------------------------------------------------------------------------------ the scan


def test_everything_the_scan_passes_over_is_listed_with_the_reason(tmp_path):
    photos = tmp_path / "photos"
    (photos / ".thumbnails").mkdir(parents=True)
    PIL.Image.fromarray(compose(320, 240, [Placement((160, 120), 0.9)])).save(photos / "ok.png")
    PIL.Image.fromarray(compose(320, 240, [Placement((160, 120), 0.9)])).save(photos / ".thumbnails" / "t.png")
    PIL.Image.fromarray(background(32, 32)).save(photos / ".hidden.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    PIL.Image.fromarray(background(32, 32)).save(elsewhere / "x.png")
    os.symlink(elsewhere, photos / "linked")
    os.symlink(tmp_path / "gone.png", photos / "dangling.png")
    (photos / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    report = tmp_path / "report.json"
    code = main([str(photos), "-o", str(tmp_path / "out"), "--mode", "blur", "-q", "--json", str(report)])
    assert code == 0
    rows = {Path(entry["input"]).name: entry for entry in json.loads(report.read_text())}
    assert rows["ok.png"]["status"] == "ok"
    assert {name: (row["status"], row["reason"]) for name, row in rows.items() if name != "ok.png"} == {
        ".thumbnails": ("skipped", "hidden folder (not searched)"),
        ".hidden.png": ("skipped", "hidden file"),
        "linked": ("skipped", "symbolic link to a folder (not followed)"),
        "dangling.png": ("skipped", "dangling symbolic link"),
        "photo.heic": ("skipped", "extension '.heic' is not one face-anon reads and writes"),
    }
    assert all(row["output"] is None for name, row in rows.items() if name != "ok.png")


def test_file_names_at_the_file_system_limit_work(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    name = "p" * (255 - len(".png")) + ".png"  # the longest name the file system allows
    PIL.Image.fromarray(compose(320, 240, [Placement((160, 120), 0.9)])).save(photos / name)
    report = tmp_path / "report.json"
    assert main([str(photos), "-o", str(tmp_path / "out"), "--mode", "black", "-q", "--json", str(report)]) == 0
    (entry,) = json.loads(report.read_text())
    assert entry["status"] == "ok" and (tmp_path / "out" / name).exists()


# ------------------------------------------------------------------------------------------------ isolation


def _flipped_files(folder: Path, seed: int = 0) -> list[Path]:
    """Small photos in five formats (TIFF single and multi-page), each copy with one bit flipped: every
    byte of the header (where parsers trip: a flip in a multi-page TIFF's header made Pillow raise a
    TypeError while counting frames) and random places in the body."""
    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(background(96, 64))
    frames = [image, PIL.Image.fromarray(background(96, 64, seed=1))]
    encoders = {
        "tif": lambda path: image.save(path, compression="tiff_lzw"),
        "tiff": lambda path: frames[0].save(path, save_all=True, append_images=frames[1:]),
        "png": lambda path: image.save(path),
        "jpg": lambda path: image.save(path, quality=85),
        "gif": lambda path: image.save(path),
        "webp": lambda path: image.save(path, lossless=True),
    }
    made = []
    for suffix, encode in encoders.items():
        clean = folder / f"clean.{suffix}"
        encode(clean)
        data = clean.read_bytes()
        clean.unlink()
        flips = [(place, 0) for place in range(min(32, len(data)))]
        flips += [(int(rng.integers(32, len(data))), int(rng.integers(0, 8))) for _ in range(4)]
        for place, bit in flips:
            damaged = bytearray(data)
            damaged[place] ^= 1 << bit
            path = folder / f"{suffix}-{place}-{bit}.{suffix}"
            path.write_bytes(bytes(damaged))
            made.append(path)
    return made


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's warnings about the damage
def test_damaged_files_of_every_format_become_error_rows_and_the_batch_goes_on(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    damaged = _flipped_files(photos)
    PIL.Image.fromarray(compose(320, 240, [Placement((160, 120), 0.9)])).save(photos / "zz-last.png")
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    code = main([str(photos), "-o", str(out), "--mode", "black", "-q", "--json", str(report)])
    rows = {Path(entry["input"]).name: entry for entry in json.loads(report.read_text())}
    assert code in (0, 1) and len(rows) == len(damaged) + 1
    assert rows["zz-last.png"]["status"] == "ok"  # the batch reached the end
    for name, row in rows.items():
        assert row["status"] in ("ok", "no_faces", "error"), row
        if row["status"] == "error":
            assert row["error"] and row["output"] is None and not (out / name).exists()
        else:  # whatever was written decodes whole
            with PIL.Image.open(out / name) as written:
                written.load()
    assert rows["tiff-8-0.tiff"]["status"] == "error"  # the flip that once aborted whole batches
    assert 0 < sum(row["status"] == "error" for row in rows.values()) < len(rows) - 1
    assert not [p for p in out.rglob(".fa-*")]  # no temporary file left


def test_any_failure_of_one_file_is_its_own_error_row(tmp_path):
    """Detection, the replacer and encoding can raise anything; the file fails, the others do not."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, seed in enumerate((1, 2, 3)):
        image = compose(320, 240, [Placement((160, 120), 0.9)], seed=seed)
        if i == 1:
            image[:4, :4] = (1, 2, 3)  # marks the photo the detector chokes on
        PIL.Image.fromarray(image).save(photos / f"{i}.png")
    detector = load_detector()

    class ChokingDetector:
        eye_scale = detector.eye_scale

        def detect(self, image):
            if tuple(image[0, 0]) == (1, 2, 3):
                raise TypeError("a detector bug")
            return detector.detect(image)

    plan = plan_files([photos], tmp_path / "out")
    options = AnonymizeOptions(mode="black")
    run = FileRun(
        options=options, journal=Journal(plan.journal), settings=engine_settings(options, detector="x", threshold=0.3)
    )
    rows = {report.input.name: report for report in process_files(plan, detector=ChokingDetector(), run=run)}
    assert rows["1.png"].status == "error" and rows["1.png"].error == "face detection failed: TypeError: a detector bug"
    assert rows["0.png"].status == rows["2.png"].status == "ok"


# ------------------------------------------------------------------------------------------------ signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_with_a_report_and_no_partial_file(tmp_path, signum):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(SIGNAL_PHOTOS):
        PIL.Image.fromarray(compose(320, 240, [Placement((160, 120), 0.9)], seed=i)).save(photos / f"{i:02d}.png")
    out, report = tmp_path / "out", tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "face_anon", str(photos), "-o", str(out), "--mode", "blur", "-q", "--json", str(report)],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("*.png")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "Traceback" not in err
    rows = json.loads(report.read_text())
    assert len(rows) == SIGNAL_PHOTOS
    done = [row for row in rows if row["status"] == "ok"]
    stopped = [row for row in rows if row["status"] == "error"]
    assert done and stopped and len(done) + len(stopped) == SIGNAL_PHOTOS
    assert all(row["error"] == "not processed: interrupted" for row in stopped)
    for row in done:  # faces listed, or (written in the instant before the signal) the journal's record of them
        assert len(row["faces"] or row["journal"]["faces"]) == 1
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert written == sorted(Path(row["output"]).name for row in done)  # nothing more, nothing partial
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [JOURNAL]
    for name in written:
        with PIL.Image.open(out / name) as image:
            image.load()
    # Started again, it finishes the rest and trusts what the stopped run wrote.
    assert main([str(photos), "-o", str(out), "--mode", "blur", "-q", "--json", str(report)]) == 0
    statuses = [row["status"] for row in json.loads(report.read_text())]
    assert statuses.count("skipped") == len(done) and statuses.count("ok") == SIGNAL_PHOTOS - len(done)
