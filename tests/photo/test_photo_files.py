"""Files: every kind of bad or unusual input gets a defined outcome; metadata; resuming; atomic writes."""

import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import PIL.ImageCms
import pytest
from PIL import ExifTags

from face_anon import load_image, plan_files, write_atomic
from face_anon.apps.cli import main
from face_anon.io.jpeg import strip_jpeg
from face_anon.io.metadata import clean_icc

from .photo_helpers import Placement, background, compose


MAX_PIXELS = 300_000
FACE = Placement((200, 150), 1.0)


def _face_rgb():
    return compose(400, 300, [FACE])


def _save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def _gps_exif(orientation=None):
    exif = PIL.Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 29.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (2.0, 17.0, 40.0)
    return exif


def _make_cases(folder: Path) -> dict:
    """Write one file per case; returns {case: path}."""
    rgb = _face_rgb()
    rng = np.random.default_rng(1)
    cases = {}
    cases["corrupt"] = folder / "corrupt.jpg"
    cases["corrupt"].write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    good = io.BytesIO()
    PIL.Image.fromarray(rgb).save(good, "JPEG", quality=90)
    cases["truncated"] = folder / "truncated.jpg"
    cases["truncated"].write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    cases["not_an_image"] = folder / "notes.png"
    cases["not_an_image"].write_text("this is not a picture\n")
    cases["cmyk"] = _save(PIL.Image.fromarray(rgb).convert("CMYK"), folder / "cmyk.jpg", quality=95)
    grey16 = np.asarray(PIL.Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257
    grey16 = grey16 + rng.integers(0, 200, grey16.shape).astype(np.uint16)
    cases["grey16"] = _save(PIL.Image.fromarray(grey16), folder / "grey16.png")
    rgb48 = rgb.astype(np.uint16) * 257
    cases["rgb48"] = folder / "rgb48.png"
    cv2.imwrite(str(cases["rgb48"]), rgb48[:, :, ::-1])
    cases["palette"] = _save(PIL.Image.fromarray(rgb).quantize(256), folder / "palette.png")
    la = PIL.Image.merge(
        "LA", [PIL.Image.fromarray(rgb).convert("L"), PIL.Image.linear_gradient("L").resize((400, 300))]
    )
    cases["grey_alpha"] = _save(la, folder / "grey_alpha.png")
    rgba = PIL.Image.fromarray(rgb).convert("RGBA")
    rgba.putalpha(PIL.Image.linear_gradient("L").resize((400, 300)).rotate(90))
    cases["rgba"] = _save(rgba, folder / "rgba.png")
    cases["one_pixel"] = _save(PIL.Image.new("RGB", (1, 1), (10, 200, 30)), folder / "one_pixel.png")
    cases["too_large"] = _save(PIL.Image.fromarray(background(800, 400)), folder / "too_large.png")
    cases["no_faces"] = _save(
        PIL.Image.fromarray(background(320, 240)), folder / "no_faces.jpg", quality=90, exif=_gps_exif()
    )
    cases["border"] = _save(PIL.Image.fromarray(compose(400, 300, [Placement((380, 150), 1.0)])), folder / "border.png")
    frames = [PIL.Image.fromarray(rgb), PIL.Image.fromarray(background(400, 300))]
    cases["animated"] = _save(frames[0], folder / "animated.gif", save_all=True, append_images=frames[1:])
    upright = compose(300, 400, [Placement((150, 200), 1.0)])
    stored = np.ascontiguousarray(np.rot90(upright))  # what a camera held sideways stores ...
    cases["exif_rotated"] = _save(
        PIL.Image.fromarray(stored), folder / "exif_rotated.jpg", quality=95, exif=_gps_exif(orientation=6)
    )  # ... with orientation 6: turn 90 degrees clockwise to show
    (folder / "readme.txt").write_text("not an image extension: skipped by the folder scan")
    (folder / ".hidden.png").write_bytes(b"hidden files are skipped")
    return cases


@pytest.fixture(scope="module")
def bad_input_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    out = tmp_path_factory.mktemp("outputs") / "anon"
    cases = _make_cases(folder)
    report = tmp_path_factory.mktemp("report") / "report.json"
    code = main(
        [str(folder), "-o", str(out), "--mode", "black", "--max-pixels", str(MAX_PIXELS), "--json", str(report), "-q"]
    )
    entries = {Path(e["input"]).name: e for e in json.loads(report.read_text())}
    return code, cases, entries, folder, out


def _entry(run, case):
    code, cases, entries, folder, out = run
    return entries[cases[case].name], cases[case], out / cases[case].name


def _nose_is_black(output_path, entry):
    image = np.asarray(PIL.Image.open(output_path).convert("RGB"))
    x, y = (int(round(v)) for v in entry["faces"][0]["landmarks"][2])
    return image[y - 2 : y + 3, x - 2 : x + 3].max() <= 8


def test_the_folder_run_reports_every_file_and_fails_overall(bad_input_run):
    code, cases, entries, folder, out = bad_input_run
    assert code == 1  # some inputs failed
    photos = {name: entry for name, entry in entries.items() if entry["status"] != "skipped"}
    assert set(photos) == {path.name for path in cases.values()}
    # What the scan passed over is listed too, with the reason.
    assert entries["readme.txt"]["reason"] == "extension '.txt' is not one face-anon reads and writes"
    assert entries[".hidden.png"]["reason"] == "hidden file"
    assert set(entries) == set(photos) | {"readme.txt", ".hidden.png"}
    for entry in photos.values():
        assert set(entry) >= {"input", "output", "status", "error", "faces"}
        assert entry["status"] in ("ok", "no_faces", "error")
        assert (entry["output"] is None) == (entry["status"] == "error")
        for face in entry["faces"]:
            assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and 0 < face["score"] <= 1
    left = sorted(p.name for p in out.rglob("*") if p.name.startswith("."))
    assert left == [".face-anon-journal.jsonl"]  # no temporary files left


@pytest.mark.parametrize(
    "case, message",
    [
        ("corrupt", "not an image file"),
        ("truncated", "truncated or corrupt"),
        ("not_an_image", "not an image file"),
        ("too_large", f"800x400 = 320000 pixels, over the limit of {MAX_PIXELS} (max_pixels / --max-pixels)"),
        ("animated", "multi-frame images are not supported (2 frames, GIF)"),
    ],
)
def test_unreadable_inputs_fail_with_a_clear_message(bad_input_run, case, message):
    entry, _, output = _entry(bad_input_run, case)
    assert entry["status"] == "error" and message in entry["error"]
    assert entry["output"] is None and not output.exists()


def test_cmyk_is_converted_to_rgb(bad_input_run):
    entry, _, output = _entry(bad_input_run, "cmyk")
    assert entry["status"] == "ok" and len(entry["faces"]) == 1
    assert PIL.Image.open(output).mode == "RGB" and _nose_is_black(output, entry)
    assert "CMYK image converted to RGB" in entry["notes"]


def test_16_bit_grey_stays_16_bit_and_untouched_outside_the_face(bad_input_run):
    entry, source, output = _entry(bad_input_run, "grey16")
    assert entry["status"] == "ok" and len(entry["faces"]) == 1
    before, after = np.asarray(PIL.Image.open(source)), np.asarray(PIL.Image.open(output))
    assert PIL.Image.open(output).mode == "I;16" and after.dtype == np.uint16
    changed = before != after
    assert 0.02 < changed.mean() < 0.5
    assert (before[:, :40] == after[:, :40]).all()  # far from the face: the exact 16-bit values
    x, y = (int(round(v)) for v in entry["faces"][0]["landmarks"][2])
    assert after[y, x] == 0


def test_16_bit_colour_is_read_and_written_at_8_bits(bad_input_run):
    entry, source, output = _entry(bad_input_run, "rgb48")
    assert entry["status"] == "ok" and _nose_is_black(output, entry)
    written = PIL.Image.open(output)
    assert written.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(written)[:, :40], np.asarray(PIL.Image.open(source))[:, :40])


def test_palette_images_are_written_as_rgb(bad_input_run):
    entry, source, output = _entry(bad_input_run, "palette")
    assert entry["status"] == "ok" and _nose_is_black(output, entry)
    assert PIL.Image.open(output).mode == "RGB" and "palette image written as RGB" in entry["notes"]
    np.testing.assert_array_equal(
        np.asarray(PIL.Image.open(output))[:, :40], np.asarray(PIL.Image.open(source).convert("RGB"))[:, :40]
    )


@pytest.mark.parametrize("case, mode", [("grey_alpha", "LA"), ("rgba", "RGBA")])
def test_alpha_is_kept_exactly(bad_input_run, case, mode):
    entry, source, output = _entry(bad_input_run, case)
    assert entry["status"] == "ok" and len(entry["faces"]) == 1
    before, after = PIL.Image.open(source), PIL.Image.open(output)
    assert after.mode == mode
    np.testing.assert_array_equal(np.asarray(after.getchannel("A")), np.asarray(before.getchannel("A")))
    assert np.asarray(after.getchannel(0))[150, 200] < np.asarray(before.getchannel(0))[150, 200]


def test_a_one_pixel_image_has_no_faces_and_is_copied(bad_input_run):
    entry, source, output = _entry(bad_input_run, "one_pixel")
    assert entry["status"] == "no_faces" and entry["faces"] == []
    assert PIL.Image.open(output).getpixel((0, 0)) == (10, 200, 30)


def test_a_photo_without_faces_is_copied_losslessly_without_metadata(bad_input_run):
    entry, source, output = _entry(bad_input_run, "no_faces")
    assert entry["status"] == "no_faces" and entry["output"] == str(output)
    assert len(PIL.Image.open(source).getexif()) > 0
    assert len(PIL.Image.open(output).getexif()) == 0  # GPS and camera gone
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(output)), np.asarray(PIL.Image.open(source)))


def test_a_face_cut_by_the_border_is_anonymized(bad_input_run):
    entry, source, output = _entry(bad_input_run, "border")
    assert entry["status"] == "ok" and len(entry["faces"]) == 1
    box = entry["faces"][0]["box"]
    assert box[2] == 400  # clipped at the right border
    assert _nose_is_black(output, entry)
    before, after = np.asarray(PIL.Image.open(source)), np.asarray(PIL.Image.open(output))
    assert (before[:, :250] == after[:, :250]).all()


def test_exif_orientation_is_applied_before_detection(bad_input_run):
    entry, source, output = _entry(bad_input_run, "exif_rotated")
    assert entry["status"] == "ok" and len(entry["faces"]) == 1
    written = PIL.Image.open(output)
    assert written.size == (300, 400)  # upright, as the camera meant it
    assert ExifTags.Base.Orientation not in written.getexif()
    x0, y0, x1, y1 = entry["faces"][0]["box"]
    assert abs((x0 + x1) / 2 - 150) < 15 and abs((y0 + y1) / 2 - 200) < 20  # upright coordinates
    eyes = entry["faces"][0]["landmarks"][:2]
    assert abs(eyes[0][1] - eyes[1][1]) < 10 and eyes[0][0] < eyes[1][0]  # an upright face


# ------------------------------------------------------------------------------------------------
# Metadata


def _photo_with_metadata(path):
    image = PIL.Image.fromarray(_face_rgb())
    icc = PIL.ImageCms.ImageCmsProfile(PIL.ImageCms.createProfile("sRGB")).tobytes()
    image.save(
        path,
        "JPEG",
        quality=95,
        exif=_gps_exif(orientation=1),
        xmp=b"<x:xmpmeta>who: Jane</x:xmpmeta>",
        comment=b"taken at home",
        icc_profile=icc,
    )
    return icc


def test_metadata_is_stripped_unless_kept(tmp_path):
    source = tmp_path / "in.jpg"
    icc = _photo_with_metadata(source)
    assert main([str(source), "-o", str(tmp_path / "plain.jpg"), "--mode", "blur", "-q"]) == 0
    plain = PIL.Image.open(tmp_path / "plain.jpg")
    assert len(plain.getexif()) == 0 and "xmp" not in plain.info and "comment" not in plain.info
    assert b"GPS" not in (tmp_path / "plain.jpg").read_bytes() and b"Jane" not in (tmp_path / "plain.jpg").read_bytes()
    assert plain.info.get("icc_profile") == clean_icc(icc)  # its colour kept, its free text removed

    assert main([str(source), "-o", str(tmp_path / "kept.jpg"), "--mode", "blur", "--keep-metadata", "-q"]) == 0
    kept = PIL.Image.open(tmp_path / "kept.jpg")
    gps = kept.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert gps[ExifTags.GPS.GPSLatitudeRef] == "N" and kept.getexif()[ExifTags.Base.Make] == "TestCam"
    assert ExifTags.Base.Orientation not in kept.getexif()
    assert b"Jane" in kept.info["xmp"] and kept.info["comment"] == b"taken at home"


def test_lossless_jpeg_copy_drops_extra_pictures_and_metadata(tmp_path):
    image = PIL.Image.fromarray(background(160, 120))
    icc = PIL.ImageCms.ImageCmsProfile(PIL.ImageCms.createProfile("sRGB")).tobytes()
    for progressive in (False, True):
        buffer = io.BytesIO()
        image.save(
            buffer, "JPEG", quality=80, progressive=progressive, exif=_gps_exif(), comment=b"note", icc_profile=icc
        )
        data = buffer.getvalue() + b"\x00\x00ftypmp42 ...a motion-photo video with faces..."
        stripped = strip_jpeg(data)
        assert b"motion-photo" not in stripped and b"note" not in stripped and b"Exif" not in stripped
        decoded = PIL.Image.open(io.BytesIO(stripped))
        assert decoded.info.get("icc_profile") == clean_icc(icc)
        np.testing.assert_array_equal(np.asarray(decoded), np.asarray(PIL.Image.open(io.BytesIO(data))))
        assert b"note" in strip_jpeg(data, keep_metadata=True)
    with pytest.raises(ValueError, match="not a JPEG"):
        strip_jpeg(b"GIF89a")
    with pytest.raises(ValueError, match="corrupt JPEG"):
        strip_jpeg(data[:300])


# ------------------------------------------------------------------------------------------------
# Planning outputs, never overwriting, resuming, atomic writes


def test_plan_files_mirrors_folders_and_refuses_to_overwrite(tmp_path):
    photos = tmp_path / "photos"
    (photos / "2024" / "june").mkdir(parents=True)
    for name in ("a.jpg", "2024/b.PNG", "2024/june/c.webp", "2024/.d.jpg", "notes.txt"):
        (photos / name).write_bytes(b"x")
    plan = plan_files([photos], tmp_path / "anon")
    assert [(j.input.relative_to(photos).as_posix(), j.output.relative_to(tmp_path).as_posix()) for j in plan.jobs] == [
        ("2024/b.PNG", "anon/2024/b.PNG"),
        ("2024/june/c.webp", "anon/2024/june/c.webp"),
        ("a.jpg", "anon/a.jpg"),
    ]
    assert [(s.path.relative_to(photos).as_posix(), s.reason) for s in plan.skipped] == [
        ("2024/.d.jpg", "hidden file"),
        ("notes.txt", "extension '.txt' is not one face-anon reads and writes"),
    ]
    assert plan.journal == tmp_path / "anon" / ".face-anon-journal.jsonl"
    single = plan_files([photos / "a.jpg"], tmp_path / "single.png")
    assert [job.output for job in single.jobs] == [tmp_path / "single.png"]
    assert single.journal == tmp_path / ".face-anon-journal.jsonl"

    with pytest.raises(ValueError, match="is also an input; face-anon never overwrites an input"):
        plan_files([photos / "a.jpg"], photos / "a.jpg")
    with pytest.raises(ValueError, match="is also an input"):
        plan_files([photos / "a.jpg", photos / "2024" / "june" / "c.webp"], photos / "2024" / "june")
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="would both be written there"):
        plan_files([photos / "a.jpg", other / "a.jpg"], tmp_path / "out")
    with pytest.raises(ValueError, match=r"INPUT: '.*missing.jpg' does not exist"):
        plan_files([tmp_path / "missing.jpg"], tmp_path / "out")


def test_an_input_format_we_cannot_write_is_reported(tmp_path):
    source = tmp_path / "scan.pcx"
    PIL.Image.fromarray(_face_rgb()).save(source)
    report = tmp_path / "report.json"
    assert main([str(source), "-o", str(tmp_path / "out"), "--mode", "blur", "--json", str(report), "-q"]) == 1
    (entry,) = json.loads(report.read_text())
    assert entry["status"] == "error" and "output: extension '.pcx'" in entry["error"]
    assert not (tmp_path / "out").exists()


def test_an_interrupted_run_resumes(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        PIL.Image.fromarray(compose(320, 240, [Placement((160, 120), 0.8 + 0.1 * i)], seed=i)).save(photos / f"{i}.png")
    out = tmp_path / "out"
    assert main([str(photos), "-o", str(out), "--mode", "pixelate", "-q"]) == 0
    first = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*.png")}
    assert sorted(first) == ["0.png", "1.png", "2.png"]
    (out / "1.png").unlink()  # as if the run had stopped before writing it
    (out / ".fa-0123456789ab.part").write_bytes(b"half a file")  # a killed run's leftover
    report = tmp_path / "report.json"
    assert main([str(photos), "-o", str(out), "--mode", "pixelate", "--json", str(report), "-q"]) == 0
    entries = {Path(e["input"]).name: e for e in json.loads(report.read_text())}
    assert [entries[n]["status"] for n in ("0.png", "1.png", "2.png")] == ["skipped", "ok", "skipped"]
    # A skipped row claims nothing of its own: the earlier run's record says what that run did.
    for name in ("0.png", "2.png"):
        assert entries[name]["faces"] == [] and entries[name]["skipped"] is True
        assert [face["action"] for face in entries[name]["journal"]["faces"]] == ["pixelated"]
        assert (out / name).stat().st_mtime_ns == first[name][1]  # not rewritten
    assert [face["action"] for face in entries["1.png"]["faces"]] == ["pixelated"]
    assert (out / "1.png").read_bytes() == first["1.png"][0]  # the same result again


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out" / "photo.png"
    write_atomic(target, b"first")
    assert target.read_bytes() == b"first" and [p.name for p in target.parent.iterdir()] == ["photo.png"]

    def broken_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "out" / "other.png", b"second")
    assert [p.name for p in target.parent.iterdir()] == ["photo.png"]


def test_load_image_applies_orientation_and_collects_metadata(tmp_path):
    path = tmp_path / "rotated.jpg"
    PIL.Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(path, exif=_gps_exif(orientation=6))
    loaded = load_image(path)
    assert loaded.size == (10, 20) and loaded.rgb.shape == (20, 10, 3) and loaded.orientation == 6
    assert loaded.metadata.exif is not None and b"TestCam" in loaded.metadata.exif


@pytest.mark.parametrize("with_face", [True, False])
def test_multi_picture_jpegs_keep_only_the_first_picture(tmp_path, with_face):
    """Phones store extra pictures (MPO): only the first is processed, and none of the others is written."""
    first = PIL.Image.fromarray(_face_rgb() if with_face else background(400, 300))
    second = PIL.Image.fromarray(compose(400, 300, [Placement((100, 100), 0.8)], seed=9))
    source = tmp_path / "phone.jpg"
    first.save(source, "MPO", save_all=True, append_images=[second], quality=90)
    assert PIL.Image.open(source).n_frames == 2
    report = tmp_path / "report.json"
    assert main([str(source), "-o", str(tmp_path / "out"), "--mode", "black", "--json", str(report), "-q"]) == 0
    (entry,) = json.loads(report.read_text())
    assert entry["status"] == ("ok" if with_face else "no_faces")
    written = PIL.Image.open(entry["output"])
    assert written.format == "JPEG" and getattr(written, "n_frames", 1) == 1
    assert (tmp_path / "out" / "phone.jpg").read_bytes().count(b"\xff\xd8") == 1  # one picture (one SOI)
