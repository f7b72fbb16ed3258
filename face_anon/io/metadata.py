"""Metadata that may leave with an output, cleaned of what shows or names the original.

An anonymized photo must not carry its original elsewhere: a camera's preview in the MakerNote, the
EXIF thumbnail (IFD1), a base64 thumbnail or depth map in XMP. Without ``--keep-metadata`` only the
ICC colour profile leaves, and only its colour: its free text (description, copyright, device maker
and model) is removed. With ``--keep-metadata`` EXIF, XMP and comments are kept, less every embedded
image and every opaque block that may hold one:

- EXIF (:func:`clean_exif`): IFD0, the Exif, GPS and interoperability IFDs, without the IFD1 thumbnail,
  the MakerNote (vendors store previews of several hundred kB there, in undocumented layouts), the
  XMP / IPTC / Photoshop / ICC blocks a TIFF-style IFD can hold, the tags that locate image data
  (strips, tiles, sub-IFDs, JPEG thumbnail offsets), and any value over 4 kB or holding an image
  signature or a long base64 run.
- XMP (:func:`clean_xmp`): the packet as it is, less ``xmp:Thumbnails``, ``xmpGImg:image``, Google's
  ``GImage:Data``, ``GDepth:Data`` / ``Confidence`` and ``GAudio:Data``, the pointers to extended XMP
  and to motion-photo data (which are not copied), and any property or attribute that is a long
  base64 run. A packet that does not parse is dropped whole.
- ICC (:func:`clean_icc`): see there; with ``--keep-metadata`` the original profile is kept.
- Comments (JPEG COM, GIF): kept unless over 4 kB or holding an image. Photoshop / IPTC blocks (JPEG
  APP13), vendor segments and PNG text chunks other than XMP are never kept.
"""

from __future__ import annotations

import re
import struct
from xml.parsers import expat

import PIL.Image
from PIL import ExifTags


EXIF_ORIENTATION = 0x0112

# ----------------------------------------------------------------------------------------------- EXIF

# Tags that hold or locate image data, or opaque blocks that may hold images, in any IFD.
_EXIF_DROPPED = frozenset(
    {
        *range(254, 260),  # NewSubfileType, SubfileType, ImageWidth, ImageLength, BitsPerSample, Compression
        262, 263, 266, 273, 277, 278, 279, 284, 288, 289, 290, 291,  # image layout, StripOffsets/ByteCounts
        317, 320, 322, 323, 324, 325, 330, 338, 339, 347,  # Predictor, ColorMap, tiles, SubIFDs, JPEGTables
        *range(512, 522),  # JPEGProc ... JPEGInterchangeFormat (thumbnail offset) and its length
        529, 530, 531, 532,  # YCbCr layout of the stored image
        700,  # XMP packet (TIFF)
        33723,  # IPTC-NAA
        34377,  # Photoshop image resources (thumbnails, IRB 1033/1036)
        34675,  # ICC profile (TIFF)
        37500,  # MakerNote: camera previews
        37724,  # ImageSourceData (Photoshop layers)
        50341,  # PrintImageMatching
        50740,  # DNGPrivateData
        59932,  # Padding
    }
)  # fmt: skip
_MAX_VALUE_BYTES = 4096
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"WEBPVP8")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/=\s]{256,}")
_BASE64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _is_base64_blob(text: bytes) -> bool:
    """At least 256 base64 characters once white space is removed, and nothing else."""
    compact = bytes(c for c in text if c not in b" \t\r\n")
    return len(compact) >= 256 and all(c in _BASE64_CHARS for c in compact)


def may_hold_image(value) -> bool:
    """A value big or opaque enough to hide a picture: over 4 kB, an image signature, long base64."""
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if isinstance(value, tuple):
        return len(value) * 4 > _MAX_VALUE_BYTES
    if not isinstance(value, bytes):
        return False
    if len(value) > _MAX_VALUE_BYTES or any(signature in value for signature in _IMAGE_SIGNATURES):
        return True
    return any(_is_base64_blob(run.group()) for run in _BASE64_RUN.finditer(value))


def _kept(ifd: dict) -> dict:
    return {tag: value for tag, value in ifd.items() if tag not in _EXIF_DROPPED and not may_hold_image(value)}


def clean_exif(exif: PIL.Image.Exif) -> bytes | None:
    """EXIF to keep with ``--keep-metadata``: ``b"Exif\\0\\0"`` + TIFF data, or None when nothing is left.

    A new EXIF block with IFD0 and the Exif, GPS and interoperability IFDs, less the orientation
    (outputs are written upright) and everything :data:`_EXIF_DROPPED` or :func:`may_hold_image`
    names; never the IFD1 thumbnail (built anew, so nothing Pillow cached of ``exif`` comes along).
    """
    pointers = (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo)
    out = PIL.Image.Exif()
    for tag, value in _kept({t: v for t, v in exif.items() if t not in pointers and t != EXIF_ORIENTATION}).items():
        out[tag] = value
    for pointer in pointers:
        if pointer not in exif:
            continue
        sub = _kept({t: v for t, v in exif.get_ifd(pointer).items() if t != ExifTags.IFD.Interop})
        if pointer == ExifTags.IFD.Exif:
            try:
                interop = _kept(exif.get_ifd(ExifTags.IFD.Interop))
            except KeyError:  # Pillow's way of saying there is none
                interop = {}
            if interop:
                sub[ExifTags.IFD.Interop] = interop
        if sub:
            out.get_ifd(pointer).update(sub)  # a new Exif caches sub-IFDs here, and tobytes writes them
    if not len(out) and not any(out.get_ifd(pointer) for pointer in pointers):
        return None
    return out.tobytes()


def load_exif(data: bytes) -> PIL.Image.Exif:
    """Parse EXIF as stored in a JPEG APP1 segment or a PNG/WebP chunk (with or without ``Exif\\0\\0``)."""
    exif = PIL.Image.Exif()
    exif.load(data)
    return exif


# ------------------------------------------------------------------------------------------------ XMP

_XMP_DROPPED = {
    "http://ns.adobe.com/xap/1.0/": {"Thumbnails"},
    "http://ns.adobe.com/xap/1.0/g/img/": {"image"},
    "http://ns.google.com/photos/1.0/image/": {"Data"},
    "http://ns.google.com/photos/1.0/depthmap/": {"Data", "Confidence"},
    "http://ns.google.com/photos/1.0/audio/": {"Data"},
    "http://ns.adobe.com/xmp/note/": {"HasExtendedXMP"},
    # Motion photos: the video after the JPEG's end is never copied, so neither are pointers to it.
    "http://ns.google.com/photos/1.0/camera/": {
        "MicroVideo",
        "MicroVideoOffset",
        "MicroVideoVersion",
        "MicroVideoPresentationTimestampUs",
        "MotionPhoto",
        "MotionPhotoVersion",
        "MotionPhotoPresentationTimestampUs",
    },
    "http://ns.google.com/photos/1.0/container/": {"Directory"},
}


def _tag_end(data: bytes, start: int) -> int:
    """Index just past the ``>`` closing the tag that starts at ``start`` (quotes may hold ``>``)."""
    quote = None
    for index in range(start, len(data)):
        char = data[index]
        if quote is not None:
            if char == quote:
                quote = None
        elif char in (0x22, 0x27):
            quote = char
        elif char == 0x3E:
            return index + 1
    raise ValueError("unterminated tag")


def clean_xmp(packet: bytes) -> bytes | None:
    """The XMP packet without embedded images (see the module docstring); None if it does not parse.

    Works on the bytes: dropped elements and attributes are cut out, everything else stays as written.
    """
    if isinstance(packet, str):
        packet = packet.encode("utf-8")
    parser = expat.ParserCreate()  # no namespace processing: prefixes are resolved below, in scope
    scopes: list[dict[str, str]] = [{}]
    stack: list[dict] = []
    cuts: list[tuple[int, int]] = []

    def resolve(qname: str) -> tuple[str, str]:
        prefix, _, local = qname.rpartition(":")
        return scopes[-1].get(prefix, ""), local

    def dropped(qname: str) -> bool:
        uri, local = resolve(qname)
        return local in _XMP_DROPPED.get(uri, ())

    def start(name, attributes):
        scope = dict(scopes[-1])
        scope.update({key[6:]: value for key, value in attributes.items() if key.startswith("xmlns:")})
        scopes.append(scope)
        begin = parser.CurrentByteIndex
        tag_end = _tag_end(packet, begin)
        empty = packet[tag_end - 2 : tag_end] == b"/>"
        stack.append({"begin": begin, "end": tag_end if empty else None, "drop": dropped(name), "text": []})
        bad = [key for key, value in attributes.items() if dropped(key) or _is_base64_blob(value.encode())]
        for key in bad:
            pattern = rb"\s+" + re.escape(key.encode()) + rb"\s*=\s*(?:\"[^\"]*\"|'[^']*')"
            for match in re.finditer(pattern, packet[begin:tag_end]):
                cuts.append((begin + match.start(), begin + match.end()))

    def end(name):
        element = stack.pop()
        scopes.pop()
        text = "".join(element["text"]).encode()
        if element["drop"] or _is_base64_blob(text):
            # An empty element (<a/>) ends with its start tag; otherwise the parser is at the end tag's "</".
            cuts.append((element["begin"], element["end"] or _tag_end(packet, parser.CurrentByteIndex)))

    def characters(data):
        if stack:
            stack[-1]["text"].append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    try:
        parser.Parse(packet, True)
    except (expat.ExpatError, ValueError):
        return None
    out = bytearray(packet)
    covered_until = -1
    merged = []
    for begin, stop in sorted(cuts):
        if begin < covered_until:  # inside a part already cut
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
            covered_until = max(covered_until, stop)
            continue
        merged.append((begin, stop))
        covered_until = stop
    for begin, stop in reversed(merged):
        del out[begin:stop]
    return bytes(out)


# ------------------------------------------------------------------------------------------------ ICC

# Tag types that carry colour (numbers): kept. Every other type (text, descriptions, multi-language
# strings, dates, named colours, vendor blocks) is dropped; the required description and copyright
# come back as neutral text.
_ICC_COLOUR_TYPES = frozenset(
    {b"XYZ ", b"curv", b"para", b"mft1", b"mft2", b"mAB ", b"mBA ", b"sf32", b"uf32", b"chrm", b"mpet",
     b"meas", b"view", b"sig ", b"ui08", b"ui16", b"ui32", b"ui64", b"cicp", b"clro"}
)  # fmt: skip
_ICC_SPACE_NAMES = {b"RGB ": "RGB", b"GRAY": "Grey", b"CMYK": "CMYK", b"Lab ": "Lab", b"YCbr": "YCbCr"}


def _icc_text(version: int, kind: str, text: str) -> bytes:
    """A text tag in the profile's own version: ``mluc`` (v4) or ``desc`` / ``text`` (v2)."""
    if version >= 4:
        utf16 = text.encode("utf-16-be")
        return b"mluc" + bytes(4) + struct.pack(">II", 1, 12) + b"enUS" + struct.pack(">II", len(utf16), 28) + utf16
    ascii_text = text.encode("ascii") + b"\x00"
    if kind == "desc":
        return b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text + bytes(4 + 4 + 2 + 1 + 67)
    return b"text" + bytes(4) + ascii_text


def clean_icc(profile: bytes) -> bytes | None:
    """The profile with its colour and nothing else; None if it is not a readable ICC profile.

    Kept: the header's colour fields (class, colour space, PCS, version, rendering intent, illuminant,
    flags) and every tag of a numeric colour type (primaries, tone curves, lookup tables, chromatic
    adaptation, white point), so pixels convert exactly as before. Removed: the header's device
    manufacturer, model and attributes, creator, creation date and profile ID, and every text tag
    (description, copyright, device maker and model, calibration date, vendor blocks); the required
    description and copyright come back as neutral text ("RGB profile", "no copyright text").
    """
    if len(profile) < 132 or profile[36:40] != b"acsp":
        return None
    count = struct.unpack(">I", profile[128:132])[0]
    if count > 1000 or 132 + 12 * count > len(profile):
        return None
    version = profile[8]
    tags: list[tuple[bytes, bytes]] = []
    for index in range(count):
        signature, offset, size = struct.unpack(">4sII", profile[132 + 12 * index : 144 + 12 * index])
        if offset + size > len(profile) or size < 8:
            return None
        data = profile[offset : offset + size]
        if data[:4] in _ICC_COLOUR_TYPES:
            tags.append((signature, data))
    space = _ICC_SPACE_NAMES.get(profile[16:20], "Colour")
    tags.append((b"desc", _icc_text(version, "desc", f"{space} profile")))
    tags.append((b"cprt", _icc_text(version, "cprt", "no copyright text")))

    header = bytearray(profile[:128])
    header[24:36] = bytes(12)  # creation date
    header[48:64] = bytes(16)  # device manufacturer, model, attributes
    header[80:100] = bytes(20)  # creator, profile ID (an MD5 of the old profile; 0 = not computed)
    table = bytearray(struct.pack(">I", len(tags)))
    body = bytearray()
    offsets: dict[bytes, int] = {}  # tags sharing one block (e.g. the three TRCs) keep sharing it
    start = 128 + 4 + 12 * len(tags)
    for signature, data in tags:
        if data not in offsets:
            offsets[data] = start + len(body)
            body += data + bytes(-len(data) % 4)
        table += struct.pack(">4sII", signature, offsets[data], len(data))
    out = header + table + body
    out[0:4] = struct.pack(">I", len(out))
    return bytes(out)
