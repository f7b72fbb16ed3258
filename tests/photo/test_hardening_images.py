"""Issue 8, image files: no embedded picture of the original leaves with an output, and pixels outside
the faces keep their values in every format that can hold them (16-bit PNG, lossless WebP, GIF).

Every attack input carries the original picture as thumbnails and previews whose bytes are easy to
find (``attack_inputs.embedded_pictures``); before this fix each of them reached some output.
"""

import io
import json
import struct

import cv2
import numpy as np
import PIL.Image
import PIL.ImageCms
import PIL.PngImagePlugin
import pytest
from PIL import ExifTags

from face_anon.apps.cli import main
from face_anon.io.images import encode_image, load_image, merge_into_source
from face_anon.io.jpeg import strip_jpeg
from face_anon.io.metadata import clean_exif, clean_icc, clean_xmp, load_exif

from .attack_inputs import (
    ICC_OWNER,
    add_png_chunk,
    embedded_pictures,
    exif_with_previews,
    icc_with_text,
    jpeg_segments,
    jpeg_with_previews,
    png_chunks,
    xmp_with_thumbnails,
)
from .photo_helpers import Placement, background, compose


# The attack inputs are malformed on purpose (an MPF index over a thumbnail, an IFD1 Pillow cannot follow).
pytestmark = [
    pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file"),
    pytest.mark.filterwarnings("ignore:Corrupt EXIF data"),
]

FACE = Placement((200, 150), 1.0)
FAR = np.s_[:, :60]  # columns far from the face: never touched


def _face_rgb():
    return compose(400, 300, [FACE])


def _run(source, output, *extra):
    report = output.parent / (output.name + ".json")
    assert main([str(source), "-o", str(output), "--mode", "blur", "--json", str(report), "-q", *extra]) == 0
    (entry,) = json.loads(report.read_text())
    return entry


def _icc_text(profile: bytes) -> bool:
    return ICC_OWNER.encode("utf-16-be") in profile or ICC_OWNER.encode() in profile


# ------------------------------------------------------------------------------------------------ JPEG copy


@pytest.mark.parametrize("keep_metadata", [False, True])
@pytest.mark.parametrize("cmyk", [False, True])
def test_the_lossless_jpeg_copy_keeps_no_picture_but_its_own(keep_metadata, cmyk):
    rgb = background(320, 240)
    data = jpeg_with_previews(rgb, cmyk=cmyk, icc=icc_with_text())
    assert embedded_pictures(data) == ["JPEG", "base64 JPEG", "thumbnail comment"]  # the attack
    stripped = strip_jpeg(data, keep_metadata=keep_metadata)
    assert embedded_pictures(stripped) == []
    segments = jpeg_segments(stripped)
    app0 = [payload for marker, payload in segments if marker == 0xE0]
    assert app0 == [b"JFIF\x00\x01\x02\x00\x00\x48\x00\x48\x00\x00"]  # one bare JFIF header, thumbnail 0 x 0
    assert not [marker for marker, _ in segments if 0xE3 <= marker <= 0xED]
    before, after = PIL.Image.open(io.BytesIO(data)), PIL.Image.open(io.BytesIO(stripped))
    assert after.mode == before.mode == ("CMYK" if cmyk else "RGB")
    np.testing.assert_array_equal(np.asarray(after), np.asarray(before))  # the same compressed picture
    assert any(marker == 0xEE for marker, _ in segments) == cmyk  # Adobe APP14 kept for CMYK
    icc = after.info["icc_profile"]
    if keep_metadata:
        assert icc == icc_with_text()
        exif = after.getexif()
        assert exif[ExifTags.Base.Make] == "TestCam" and ExifTags.Base.MakerNote not in exif.get_ifd(ExifTags.IFD.Exif)
        assert exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] == "N"
        assert b"Harbour walk" in after.info["xmp"] and after.info["comment"] == b"a kept comment"
    else:
        assert icc == clean_icc(icc_with_text()) and not _icc_text(icc)
        assert len(after.getexif()) == 0 and "xmp" not in after.info and "comment" not in after.info


@pytest.mark.parametrize("keep_metadata", [False, True])
def test_a_photo_without_faces_leaves_without_thumbnails(tmp_path, keep_metadata):
    source = tmp_path / "no_face.jpg"
    source.write_bytes(jpeg_with_previews(background(320, 240)))
    output = tmp_path / "out.jpg"
    entry = _run(source, output, *(["--keep-metadata"] if keep_metadata else []))
    assert entry["status"] == "no_faces"
    assert embedded_pictures(output.read_bytes()) == []


# ------------------------------------------------------------------------------------------------ --keep-metadata


def _photo_with_previews(path, fmt):
    """A photo with a face, saved as ``fmt`` with EXIF (MakerNote preview, IFD1 thumbnail) and XMP
    (thumbnails); a PNG also gets ImageMagick's hex "Raw profile" copy of that EXIF in a zTXt chunk."""
    rgb = _face_rgb()
    if fmt == "JPEG":
        path.write_bytes(jpeg_with_previews(rgb, icc=icc_with_text()))
        return
    buffer = io.BytesIO()
    image = PIL.Image.fromarray(rgb)
    options = {"exif": exif_with_previews(rgb), "xmp": xmp_with_thumbnails(rgb), "icc_profile": icc_with_text()}
    if fmt == "PNG":  # Pillow writes XMP into WebP and JPEG from xmp=, into PNG and TIFF only this way
        options["pnginfo"] = PIL.PngImagePlugin.PngInfo()
        options["pnginfo"].add_itxt("XML:com.adobe.xmp", options.pop("xmp").decode(), zip=False)
    elif fmt == "TIFF":
        exif = load_exif(options["exif"])
        exif[700] = options.pop("xmp")
        options["exif"] = exif.tobytes()
    image.save(buffer, fmt, **options)
    data = buffer.getvalue()
    if fmt == "PNG":
        import zlib

        hexed = exif_with_previews(rgb).hex().encode()
        data = add_png_chunk(data, b"zTXt", b"Raw profile type exif\x00\x00" + zlib.compress(hexed))
    path.write_bytes(data)


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"), ("TIFF", ".tif")])
def test_keep_metadata_keeps_no_embedded_picture(tmp_path, fmt, suffix):
    source, output = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    _photo_with_previews(source, fmt)
    original = source.read_bytes()
    assert embedded_pictures(original)  # the attack input does carry them
    entry = _run(source, output, "--keep-metadata")
    assert entry["status"] == "ok" and len(entry["faces"]) == 1
    written = PIL.Image.open(output)
    exif = written.getexif()
    assert exif[ExifTags.Base.Make] == "TestCam"  # what --keep-metadata promises to keep ...
    assert exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] == "N"
    xmp = written.info.get("xmp") or written.info.get("XML:com.adobe.xmp")
    xmp = xmp.encode() if isinstance(xmp, str) else xmp
    assert b"Harbour walk" in xmp
    assert ExifTags.Base.MakerNote not in exif.get_ifd(ExifTags.IFD.Exif)  # ... and what it never keeps
    assert b"Thumbnails" not in xmp and b"GImage:Data" not in xmp
    for block in (exif.tobytes(), xmp, output.read_bytes() if fmt == "JPEG" else b""):
        assert embedded_pictures(block) == []
    if fmt == "PNG":
        assert png_chunks(output.read_bytes())[1:-1].count(b"zTXt") == 0
    assert written.info["icc_profile"] == icc_with_text()  # kept as it was, text and all


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_the_icc_profile_loses_its_text_unless_metadata_is_kept(tmp_path, suffix):
    source = tmp_path / f"in{suffix}"
    PIL.Image.fromarray(_face_rgb()).save(source, icc_profile=icc_with_text(), quality=95)
    assert _run(source, tmp_path / f"plain{suffix}")["status"] == "ok"
    plain = PIL.Image.open(tmp_path / f"plain{suffix}")
    icc = plain.info["icc_profile"]
    assert not _icc_text(icc) and icc == clean_icc(icc_with_text())
    # Same colours: both profiles turn the same pixels into the same Lab values.
    pixels = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    lab = PIL.ImageCms.createProfile("LAB")
    converted = [
        np.asarray(
            PIL.ImageCms.profileToProfile(pixels, PIL.ImageCms.ImageCmsProfile(io.BytesIO(p)), lab, outputMode="LAB")
        )
        for p in (icc, icc_with_text())
    ]
    np.testing.assert_array_equal(converted[0], converted[1])
    _run(source, tmp_path / f"kept{suffix}", "--keep-metadata")
    assert PIL.Image.open(tmp_path / f"kept{suffix}").info["icc_profile"] == icc_with_text()


def test_clean_exif_keeps_facts_and_drops_pictures():
    rgb = _face_rgb()
    exif = load_exif(exif_with_previews(rgb))
    assert exif.get_ifd(ExifTags.IFD.IFD1) and ExifTags.Base.MakerNote in exif.get_ifd(ExifTags.IFD.Exif)
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.Base.Artist] = "x" * 300 + "A" * 5000  # an oversized value
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = b"ASCII\x00\x00\x00" + b"QUJD" * 100  # base64 run
    cleaned = clean_exif(exif)
    assert embedded_pictures(cleaned) == []
    # Written into a file and read back, as a viewer would.
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (8, 8)).save(buffer, "JPEG", exif=cleaned)
    back = PIL.Image.open(buffer).getexif()
    assert back[ExifTags.Base.Make] == "TestCam" and back[ExifTags.Base.ImageDescription] == "holiday"
    assert back.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitude] == (48.0, 51.0, 29.0)
    assert ExifTags.Base.Orientation not in back and ExifTags.Base.Artist not in back
    assert back.get_ifd(ExifTags.IFD.Exif) == {} and back.get_ifd(ExifTags.IFD.IFD1) == {}


def test_clean_xmp_cuts_only_pictures():
    packet = xmp_with_thumbnails(_face_rgb())
    cleaned = clean_xmp(packet)
    assert embedded_pictures(cleaned) == [] and b"Thumbnails" not in cleaned and b"GImage:Data" not in cleaned
    assert b'xmp:Rating="4"' in cleaned and b"Harbour walk" in cleaned and b'GImage:Mime="image/jpeg"' in cleaned
    assert cleaned.startswith(b"<?xpacket begin=") and cleaned.rstrip().endswith(b'<?xpacket end="w"?>')
    empty = b'<x:xmpmeta xmlns:x="adobe:ns:meta/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"><xmp:Thumbnails/><a/></x:xmpmeta>'
    assert (
        clean_xmp(empty)
        == b'<x:xmpmeta xmlns:x="adobe:ns:meta/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"><a/></x:xmpmeta>'
    )
    assert clean_xmp(b"<x:xmpmeta><unclosed></x:xmpmeta>") is None  # cannot be checked: never kept


def test_clean_icc_removes_the_text_and_the_device():
    original = icc_with_text()
    assert _icc_text(original) and original[48:52] == b"JANE"
    cleaned = clean_icc(original)
    assert not _icc_text(cleaned) and cleaned[48:64] == bytes(16) and cleaned[84:100] == bytes(16)
    profile = PIL.ImageCms.ImageCmsProfile(io.BytesIO(cleaned))
    assert PIL.ImageCms.getProfileDescription(profile).strip() == "RGB profile"
    assert clean_icc(b"not a profile") is None and clean_icc(original[:200]) is None


# ------------------------------------------------------------------------------------------------ pixels


@pytest.mark.parametrize("channels, orientation", [(3, 1), (4, 1), (3, 6)])
def test_16_bit_colour_png_stays_16_bit(tmp_path, channels, orientation):
    rng = np.random.default_rng(2)
    upright = _face_rgb().astype(np.uint16) * 257 + rng.integers(0, 200, (300, 400, 3)).astype(np.uint16)
    if channels == 4:
        upright = np.dstack([upright, rng.integers(0, 65536, (300, 400)).astype(np.uint16)])
    stored = np.ascontiguousarray(np.rot90(upright)) if orientation == 6 else upright  # turned 90 degrees
    ok, encoded = cv2.imencode(".png", stored[..., [2, 1, 0, 3][:channels]])
    data = encoded.tobytes()
    if orientation != 1:
        exif = PIL.Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        data = add_png_chunk(data, b"eXIf", exif.tobytes()[6:])
    source = tmp_path / "deep.png"
    source.write_bytes(data)
    output = tmp_path / "out.png"
    entry = _run(source, output)
    assert entry["status"] == "ok" and len(entry["faces"]) == 1
    written = cv2.imread(str(output), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16 and written.shape == upright.shape  # 16 bits, upright
    written = written[..., [2, 1, 0, 3][:channels]]
    np.testing.assert_array_equal(written[FAR], upright[FAR])  # outside the face: every bit
    changed = np.any(written != upright, axis=2)
    assert changed[150, 200] and (written[changed][:, :3] % 257 == 0).all()  # face: 8-bit values scaled up
    if channels == 4:
        np.testing.assert_array_equal(written[..., 3], upright[..., 3])


def test_16_bit_colour_in_an_8_bit_format_says_so(tmp_path):
    deep = (np.random.default_rng(3).integers(0, 65536, (20, 30, 3))).astype(np.uint16)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), deep[..., ::-1])
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded.encoding.deep, deep)
    notes = []
    PIL.Image.open(io.BytesIO(encode_image(loaded.source, "TIFF", notes=notes)))
    assert notes == ["16-bit colour written at 8 bits per channel (TIFF holds 8)"]
    # An image changed after merging no longer matches its 16-bit pixels: written at 8 bits, not stale.
    merged = merge_into_source(loaded, np.zeros_like(loaded.rgb))
    merged.paste((1, 2, 3), (0, 0, 5, 5))
    assert cv2.imdecode(np.frombuffer(encode_image(merged, "PNG"), np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint8


def _webp_kind(data: bytes) -> bytes:
    pos = 12
    while pos < len(data):
        kind, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if kind in (b"VP8 ", b"VP8L"):
            return kind
        pos += 8 + size + (size & 1)
    raise AssertionError("no image chunk")


@pytest.mark.parametrize("alpha", [False, True])
def test_lossless_webp_stays_lossless(tmp_path, alpha):
    image = PIL.Image.fromarray(_face_rgb())
    if alpha:
        image.putalpha(PIL.Image.linear_gradient("L").resize((400, 300)))
    source, output = tmp_path / "in.webp", tmp_path / "out.webp"
    image.save(source, lossless=True, exact=True)
    assert _webp_kind(source.read_bytes()) == b"VP8L"
    assert _run(source, output)["status"] == "ok"
    assert _webp_kind(output.read_bytes()) == b"VP8L"
    before, after = np.asarray(PIL.Image.open(source)), np.asarray(PIL.Image.open(output))
    np.testing.assert_array_equal(after[FAR], before[FAR])
    assert not np.array_equal(after, before)


def test_lossy_outputs_say_pixels_are_not_exact():
    loaded_like = PIL.Image.fromarray(_face_rgb())
    for fmt in ("JPEG", "WEBP"):
        notes = []
        encode_image(loaded_like, fmt, notes=notes)
        assert len(notes) == 1 and "not exactly" in notes[0], (fmt, notes)
    for fmt in ("PNG", "TIFF", "BMP"):
        notes = []
        encode_image(loaded_like, fmt, notes=notes)
        assert notes == []


@pytest.mark.parametrize("suffix, lossy", [(".jpg", True), (".webp", True), (".png", False)])
def test_the_report_says_when_pixels_are_not_kept_exactly(tmp_path, suffix, lossy):
    """Through the command line: a re-encoded JPEG or lossy WebP output says so in its report row."""
    source = tmp_path / f"in{suffix}"
    PIL.Image.fromarray(_face_rgb()).save(source, **({"quality": 90} if lossy else {}))
    entry = _run(source, tmp_path / f"out{suffix}")
    said = [note for note in entry["notes"] if "not exactly" in note]
    assert len(said) == (1 if lossy else 0), entry["notes"]


def _gif(path, colours, transparent=False):
    """The face photo as a GIF with ``colours`` palette entries (dithered, as GIF makers do)."""
    image = PIL.Image.fromarray(_face_rgb()).quantize(colours, dither=PIL.Image.Dither.FLOYDSTEINBERG)
    options = {}
    if transparent:
        indices = np.asarray(image).copy()
        indices[:40, :40] = colours - 1  # a transparent corner
        image = PIL.Image.fromarray(indices, "P")
        image.putpalette(PIL.Image.fromarray(_face_rgb()).quantize(colours).getpalette())
        options["transparency"] = colours - 1
    image.save(path, **options)


@pytest.mark.parametrize("colours, transparent", [(64, False), (256, False), (128, True)])
def test_gif_keeps_its_palette_outside_the_faces(tmp_path, colours, transparent):
    source, output = tmp_path / "in.gif", tmp_path / "out.gif"
    _gif(source, colours, transparent)
    assert _run(source, output)["status"] == "ok"
    before = np.asarray(PIL.Image.open(source).convert("RGBA"))
    after = np.asarray(PIL.Image.open(output).convert("RGBA"))
    visible = before[..., 3] > 0
    np.testing.assert_array_equal(after[..., 3] > 0, visible)  # transparency where it was
    far = np.zeros(visible.shape, bool)
    far[FAR] = True
    np.testing.assert_array_equal(after[far & visible], before[far & visible])  # exact colours
    assert np.abs(after[130:170, 180:220].astype(int) - before[130:170, 180:220]).mean() > 3  # the face: blurred


# ------------------------------------------------------------------------------------------------ transparency


def _scene_grey(width=480, height=360):
    return np.asarray(PIL.Image.fromarray(compose(width, height, [Placement((240, 180), 1.0)])).convert("L"))


def test_a_face_drawn_in_the_alpha_channel_is_refused(tmp_path):
    """Black colour and a face-shaped transparency: over a white page the face shows, yet no colour pixel
    holds it, so anonymizing the colour cannot remove it. Fail closed: an error row, nothing written."""
    grey = _scene_grey()
    rgba = np.zeros((*grey.shape, 4), np.uint8)
    rgba[..., 3] = 255 - grey  # over white: 255 * (1 - alpha) = the grey picture
    folder, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "report.json"
    folder.mkdir()
    PIL.Image.fromarray(rgba).save(folder / "alpha.png")
    PIL.Image.fromarray(grey).save(folder / "control.png")  # the same picture, opaque
    assert main([str(folder), "-o", str(out), "--mode", "blur", "--json", str(report), "-q"]) == 1
    rows = {row["input"].rsplit("/", 1)[-1]: row for row in json.loads(report.read_text())}
    assert rows["alpha.png"]["status"] == "error" and "transparency" in rows["alpha.png"]["error"]
    assert "white background" in rows["alpha.png"]["error"]
    assert not (out / "alpha.png").exists()
    assert rows["control.png"]["status"] == "ok" and len(rows["control.png"]["faces"]) == 1


def test_ordinary_transparency_is_anonymized_and_kept(tmp_path):
    """A photo whose left part is fully transparent: both faces are in the colour channels, the hidden one
    too, and both are found there and blurred; the alpha channel is written back as it was."""
    rgb = compose(560, 360, [Placement((120, 180), 0.9), Placement((420, 180), 0.9)])
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :240] = 0  # the first face: no viewer sees it, but its pixels are in the file
    path, out = tmp_path / "frame.png", tmp_path / "out.png"
    PIL.Image.fromarray(np.dstack([rgb, alpha])).save(path)
    assert main([str(path), "-o", str(out), "--mode", "blur", "-q"]) == 0
    written = np.asarray(PIL.Image.open(out))
    assert written.shape == (360, 560, 4) and np.array_equal(written[..., 3], alpha)
    for x in (120, 420):
        assert np.abs(written[150:210, x - 30 : x + 30, :3].astype(int) - rgb[150:210, x - 30 : x + 30]).mean() > 5
