"""Attack inputs of the hardening tests (issue 8), built from the astronaut scenes of ``photo_helpers``.

Each builder makes one class of input that broke a promise of the photo tool: dithered and bitonal
images, faces cut by the border and close-up crops, and files that smuggle the original picture in
their metadata (JPEG thumbnails, MakerNote previews, XMP thumbnails, ICC free text).
"""

from __future__ import annotations

import base64
import io
import struct

import cv2
import numpy as np
import PIL.Image
import PIL.ImageCms
from PIL import ExifTags

from .photo_helpers import ASTRONAUT_LANDMARKS, Placement, astronaut, compose


# ------------------------------------------------------------------------------------------------ dither


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(PIL.Image.fromarray(rgb).convert("L"))


def floyd_steinberg(grey_image: np.ndarray) -> np.ndarray:
    """Error diffusion, as Pillow does it when converting to 1 bit; values 0 and 255."""
    return np.asarray(PIL.Image.fromarray(grey_image).convert("1").convert("L"))


def bayer(grey_image: np.ndarray, size: int = 8) -> np.ndarray:
    """Ordered dither with the ``size`` x ``size`` Bayer matrix; values 0 and 255."""
    matrix = np.array([[0, 2], [3, 1]])
    while matrix.shape[0] < size:
        matrix = np.block([[4 * matrix, 4 * matrix + 2], [4 * matrix + 3, 4 * matrix + 1]])
    height, width = grey_image.shape
    thresholds = np.tile((matrix + 0.5) / matrix.size, (height // size + 1, width // size + 1))[:height, :width]
    return np.where(grey_image / 255.0 > thresholds, 255, 0).astype(np.uint8)


def halftone(grey_image: np.ndarray, period: float, angle: float = 45.0) -> np.ndarray:
    """Newspaper halftone: round black dots on a grid of ``period`` px turned by ``angle``, their area
    the darkness of the picture there; values 0 and 255."""
    height, width = grey_image.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    turn = np.deg2rad(angle)
    u = (x * np.cos(turn) + y * np.sin(turn)) / period
    v = (-x * np.sin(turn) + y * np.cos(turn)) / period
    distance = np.hypot(u - np.floor(u) - 0.5, v - np.floor(v) - 0.5)
    radius = np.sqrt((1.0 - grey_image / 255.0) / np.pi)
    return np.where(distance < radius, 0, 255).astype(np.uint8)


def dither_scene(width: int) -> tuple[np.ndarray, list[Placement]]:
    """Three faces (large, tilted, small) on a ``width`` x 0.625 ``width`` photo; RGB and placements."""
    k = width / 1280
    height = round(width * 0.625)
    placements = [
        Placement((0.2 * width, 0.42 * height), 1.6 * k),
        Placement((0.52 * width, 0.32 * height), 1.0 * k, 20.0),
        Placement((0.78 * width, 0.62 * height), 0.8 * k),
    ]
    return compose(width, height, placements), placements


# ------------------------------------------------------------------------------------------------ border

ASTRONAUT_BOX = (88.4, 119.6)  # width and height of CenterFace's box around the astronaut's face


def cut_face(border: str, visible: float, scale: float = 1.0, size=(640, 480)) -> tuple[np.ndarray, Placement]:
    """One face cut by ``border`` so that ``visible`` of its box (width for left and right, height for
    top and bottom) is inside a ``size`` image."""
    width, height = size
    box_w, box_h = ASTRONAUT_BOX[0] * scale, ASTRONAUT_BOX[1] * scale
    centre = {
        "left": (box_w * visible - box_w / 2, height / 2),
        "right": (width - box_w * visible + box_w / 2, height / 2),
        "top": (width / 2, box_h * visible - box_h / 2),
        "bottom": (width / 2, height - box_h * visible + box_h / 2),
    }[border]
    placement = Placement(centre, scale)
    return compose(width, height, [placement]), placement


def corner_face(corner: str, visible: tuple[float, float], scale: float = 1.0, size=(640, 480)):
    """One face in the ``corner`` (``"top left"``, ``"bottom right"``, ...) so that ``visible`` = (fraction
    of the box's width, of its height) is inside a ``size`` image."""
    width, height = size
    box_w, box_h = ASTRONAUT_BOX[0] * scale, ASTRONAUT_BOX[1] * scale
    vertical, horizontal = corner.split()
    x = box_w * visible[0] - box_w / 2 if horizontal == "left" else width - box_w * visible[0] + box_w / 2
    y = box_h * visible[1] - box_h / 2 if vertical == "top" else height - box_h * visible[1] + box_h / 2
    placement = Placement((x, y), scale)
    return compose(width, height, [placement]), placement


def visible_box(placement: Placement, size) -> tuple[float, float, float, float]:
    """The part of the face's box inside an image of ``size`` = (width, height)."""
    width, height = size
    box_w, box_h = ASTRONAUT_BOX[0] * placement.scale, ASTRONAUT_BOX[1] * placement.scale
    x0, y0 = placement.centre[0] - box_w / 2, placement.centre[1] - box_h / 2
    return max(0.0, x0), max(0.0, y0), min(width, x0 + box_w), min(height, y0 + box_h)


def close_up(kind: str, zoom: float) -> np.ndarray:
    """A crop of part of the astronaut's face, ``zoom`` times enlarged: ``eyes`` (a strip across both
    eyes, 3:1) or ``eyes_nose`` (eyes to the tip of the nose, smaller than the face)."""
    eyes = ASTRONAUT_LANDMARKS[:2].mean(axis=0)
    nose = ASTRONAUT_LANDMARKS[2]
    centre, (width, height) = {
        "eyes": ((eyes[0], eyes[1]), (90, 30)),
        "eyes_nose": ((nose[0], eyes[1] + 8), (80, 50)),
    }[kind]
    width, height = round(width * zoom), round(height * zoom)
    matrix = np.array([[zoom, 0, width / 2 - zoom * centre[0]], [0, zoom, height / 2 - zoom * centre[1]]])
    return cv2.warpAffine(np.asarray(astronaut()), matrix, (width, height), flags=cv2.INTER_CUBIC)


def iou(a, b) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ------------------------------------------------------------------------------------------------ metadata

SECRET = b"JANE-DOE-ORIGINAL"  # in every thumbnail built here: text that must never reach an output
ICC_OWNER = "ICC-OWNER-JANE"  # in the ICC profile's text tags: gone unless --keep-metadata


def embedded_pictures(data: bytes) -> list[str]:
    """The pictures ``data`` (a whole output file) still holds besides its own image, by kind."""
    found = []
    if data.find(b"\xff\xd8\xff", 1) >= 0:
        found.append("JPEG")
    if b"/9j/" in data:  # base64 of a JPEG's first bytes
        found.append("base64 JPEG")
    if b"ffd8ff" in data.lower():
        found.append("hex JPEG")
    if SECRET in data:
        found.append("thumbnail comment")
    return found


def thumbnail_jpeg(rgb: np.ndarray, side: int = 64) -> bytes:
    """A small JPEG of the original picture: what a stale preview looks like."""
    buffer = io.BytesIO()
    image = PIL.Image.fromarray(rgb)
    image.thumbnail((side, side))
    image.save(buffer, "JPEG", quality=90, comment=SECRET)
    return buffer.getvalue()


def segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def insert_segments(jpeg: bytes, *segments: bytes) -> bytes:
    """``jpeg`` with ``segments`` right after its SOI (before Pillow's own JFIF APP0, if any)."""
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def jpeg_segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every segment before the first scan."""
    out, pos = [], 2
    while jpeg[pos] == 0xFF and jpeg[pos + 1] != 0xDA:
        marker, length = jpeg[pos + 1], int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        out.append((marker, jpeg[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    return out


def jpeg_with_previews(rgb: np.ndarray, *, cmyk: bool = False, icc: bytes | None = None) -> bytes:
    """A JPEG of ``rgb`` carrying the original picture every way a camera or editor stores it: a JFIF
    RGB thumbnail and a JFXX JPEG thumbnail (APP0), EXIF with a MakerNote preview and an IFD1 thumbnail
    (APP1), XMP thumbnails (APP1), a FlashPix and an MPF preview (APP2), a Kodak-style APP3 preview and
    a Photoshop thumbnail (APP13); plus GPS, a title and a comment that ``--keep-metadata`` keeps."""
    buffer = io.BytesIO()
    image = PIL.Image.fromarray(rgb)
    image = image.convert("CMYK") if cmyk else image
    options = {"icc_profile": icc} if icc else {}
    image.save(buffer, "JPEG", quality=92, exif=exif_with_previews(rgb), comment=b"a kept comment", **options)
    xmp = b"http://ns.adobe.com/xap/1.0/\x00" + xmp_with_thumbnails(rgb)
    preview = thumbnail_jpeg(rgb, 120)
    return insert_segments(
        buffer.getvalue(),
        jfif_with_thumbnail(rgb),
        jfxx_with_thumbnail(rgb),
        segment(0xE1, xmp),
        segment(0xE2, b"FPXR\x00\x00\x02" + preview[:60000]),
        segment(0xE2, b"MPF\x00MM\x00*" + preview[:60000]),
        segment(0xE3, b"META\x00\x00" + preview[:60000]),
        photoshop_with_thumbnail(rgb),
    )


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG file, in order."""
    kinds, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kinds.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return kinds


def add_png_chunk(data: bytes, kind: bytes, payload: bytes) -> bytes:
    """``data`` (a PNG) with one more chunk right after IHDR."""
    import zlib

    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return data[:33] + chunk + data[33:]


def jfif_with_thumbnail(rgb: np.ndarray, side: int = 16) -> bytes:
    """A JFIF APP0 segment carrying an uncompressed RGB thumbnail of ``rgb`` (JFIF 1.02, section 4)."""
    small = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    return segment(0xE0, b"JFIF\x00\x01\x02\x00\x00\x48\x00\x48" + bytes((side, side)) + small.tobytes())


def jfxx_with_thumbnail(rgb: np.ndarray) -> bytes:
    """A JFXX APP0 extension segment carrying a JPEG thumbnail (extension code 0x10)."""
    return segment(0xE0, b"JFXX\x00\x10" + thumbnail_jpeg(rgb, 48))


def exif_with_previews(rgb: np.ndarray) -> bytes:
    """EXIF (``Exif\\0\\0`` + TIFF) with a MakerNote holding a JPEG preview, an IFD1 thumbnail, a camera
    and GPS fields; Pillow writes IFD0 and its sub-IFDs, the IFD1 is appended by hand here."""
    exif = PIL.Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.Base.ImageDescription] = "holiday"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.MakerNote] = b"TestCam\x00PREVIEW" + thumbnail_jpeg(rgb, 96)
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 29.0)
    data = bytearray(exif.tobytes())
    tiff = data[6:]  # big-endian "MM" from Pillow
    assert tiff[:2] == b"MM"
    # Find IFD0's "next IFD" pointer and point it at an IFD1 with a JPEG thumbnail, appended at the end.
    ifd0 = struct.unpack(">I", tiff[4:8])[0]
    count = struct.unpack(">H", tiff[ifd0 : ifd0 + 2])[0]
    next_at = ifd0 + 2 + 12 * count
    thumbnail = thumbnail_jpeg(rgb, 80)
    ifd1_at = len(tiff) + (len(tiff) & 1)
    tiff += bytes(ifd1_at - len(tiff))
    data_at = ifd1_at + 2 + 2 * 12 + 4
    tiff += struct.pack(">H", 2)
    tiff += struct.pack(">HHII", 0x0201, 4, 1, data_at)  # JPEGInterchangeFormat
    tiff += struct.pack(">HHII", 0x0202, 4, 1, len(thumbnail))  # JPEGInterchangeFormatLength
    tiff += struct.pack(">I", 0) + thumbnail
    tiff[next_at : next_at + 4] = struct.pack(">I", ifd1_at)
    return b"Exif\x00\x00" + bytes(tiff)


def xmp_with_thumbnails(rgb: np.ndarray) -> bytes:
    """An XMP packet with a creator, an ``xmp:Thumbnails`` JPEG and a Google ``GImage:Data`` attribute."""
    data = base64.b64encode(thumbnail_jpeg(rgb, 64)).decode()
    wrapped = "&#xA;".join(data[i : i + 76] for i in range(0, len(data), 76))
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:xmpGImg="http://ns.adobe.com/xap/1.0/g/img/" xmlns:GImage="http://ns.google.com/photos/1.0/image/"
 xmp:Rating="4" GImage:Mime="image/jpeg" GImage:Data="{data}">
<dc:title><rdf:Alt><rdf:li xml:lang="x-default">Harbour walk</rdf:li></rdf:Alt></dc:title>
<xmp:Thumbnails><rdf:Alt><rdf:li rdf:parseType="Resource"><xmpGImg:format>JPEG</xmpGImg:format>
<xmpGImg:width>64</xmpGImg:width><xmpGImg:image>{wrapped}</xmpGImg:image></rdf:li></rdf:Alt></xmp:Thumbnails>
</rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>""".encode()


def photoshop_with_thumbnail(rgb: np.ndarray) -> bytes:
    """An APP13 Photoshop segment with a JPEG thumbnail resource (IRB 1036)."""
    thumbnail = thumbnail_jpeg(rgb, 64)
    header = struct.pack(">IIIIIHH", 1, 64, 64, 192, 192 * 64, len(thumbnail), 24) + struct.pack(">H", 1)
    resource = header + thumbnail
    resource += bytes(len(resource) & 1)
    irb = b"8BIM" + struct.pack(">H", 1036) + b"\x00\x00" + struct.pack(">I", len(resource)) + resource
    return segment(0xED, b"Photoshop 3.0\x00" + irb)


def icc_with_text() -> bytes:
    """Pillow's sRGB profile (version 4) with identifying text added: device maker and model tags
    and a description and copyright naming a person."""
    profile = PIL.ImageCms.ImageCmsProfile(PIL.ImageCms.createProfile("sRGB")).tobytes()
    count = struct.unpack(">I", profile[128:132])[0]
    entries = [struct.unpack(">4sII", profile[132 + 12 * i : 144 + 12 * i]) for i in range(count)]
    blocks = {signature: profile[offset : offset + size] for signature, offset, size in entries}

    def mluc(text: str) -> bytes:
        utf16 = text.encode("utf-16-be")
        return b"mluc" + bytes(4) + struct.pack(">II", 1, 12) + b"enUS" + struct.pack(">II", len(utf16), 28) + utf16

    blocks[b"desc"] = mluc("Display of " + ICC_OWNER)
    blocks[b"cprt"] = mluc("Copyright " + ICC_OWNER)
    blocks[b"dmnd"] = mluc("Maker " + ICC_OWNER)
    blocks[b"dmdd"] = mluc("Model " + ICC_OWNER)
    header = bytearray(profile[:128])
    header[24:36] = struct.pack(">6H", 2024, 6, 1, 12, 0, 0)  # a fixed creation date (lcms writes "now")
    header[48:52] = b"JANE"  # device manufacturer
    table, body = b"", b""
    start = 128 + 4 + 12 * len(blocks)
    for signature, data in blocks.items():
        table += struct.pack(">4sII", signature, start + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    out = bytearray(header + struct.pack(">I", len(blocks)) + table + body)
    out[0:4] = struct.pack(">I", len(out))
    out[84:100] = bytes(16)
    return bytes(out)
