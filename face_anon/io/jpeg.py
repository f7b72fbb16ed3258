"""JPEG surgery: a lossless copy of a JPEG's compressed image without what is not the image."""

from __future__ import annotations

import struct

from .metadata import clean_exif, clean_icc, clean_xmp, load_exif, may_hold_image


_JFIF = b"JFIF\x00"
_EXIF = b"Exif\x00\x00"
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_ICC = b"ICC_PROFILE\x00"
_ADOBE = b"Adobe"
_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # TEM, SOI, RST0-7: markers without a length
_MAX_PAYLOAD = 65533  # a segment's length field counts itself: 65535 - 2
_ICC_CHUNK = _MAX_PAYLOAD - len(_ICC) - 2


def _segment(marker: int, payload: bytes) -> bytes:
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError(f"segment of {len(payload)} bytes does not fit a JPEG marker segment")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _bare_jfif(payload: bytes) -> bytes | None:
    """The JFIF APP0 without its thumbnail: version, density units and density, thumbnail size 0 x 0."""
    if len(payload) < 14:
        return None
    return _segment(0xE0, payload[:12] + b"\x00\x00")


def _icc_segments(chunks: list[bytes], keep_metadata: bool) -> bytes:
    """One ICC profile from its APP2 chunks (in sequence order), cleaned unless ``keep_metadata``."""
    ordered = sorted(chunks, key=lambda payload: payload[len(_ICC)])
    profile = b"".join(payload[len(_ICC) + 2 :] for payload in ordered)
    if not keep_metadata:
        profile = clean_icc(profile)
        if profile is None:  # not a profile a decoder could use either
            return b""
    parts = [profile[i : i + _ICC_CHUNK] for i in range(0, len(profile), _ICC_CHUNK)]
    if len(parts) > 255:
        raise ValueError("ICC profile too large for APP2 segments")
    return b"".join(_segment(0xE2, _ICC + bytes((n + 1, len(parts))) + part) for n, part in enumerate(parts))


def _kept_app1(payload: bytes) -> bytes:
    """An APP1 segment as kept with ``--keep-metadata``: EXIF and XMP cleaned of embedded images."""
    if payload.startswith(_EXIF):
        try:
            cleaned = clean_exif(load_exif(payload))
        except Exception:  # noqa: BLE001 - unreadable EXIF cannot be checked, so it is not kept
            return b""
        return _segment(0xE1, cleaned) if cleaned and len(cleaned) <= _MAX_PAYLOAD else b""
    if payload.startswith(_XMP):
        cleaned = clean_xmp(payload[len(_XMP) :])
        return _segment(0xE1, _XMP + cleaned) if cleaned and len(_XMP) + len(cleaned) <= _MAX_PAYLOAD else b""
    return b""  # extended XMP (base64 images by design) and vendor blocks


def strip_jpeg(data: bytes, *, keep_metadata: bool = False) -> bytes:
    """Copy a JPEG's compressed image without re-encoding it, keeping only what a decoder needs.

    Kept always: the frame, tables and scans; the JFIF APP0 header without its thumbnail (the first
    one only); the ICC profile (APP2), cleaned of its text unless ``keep_metadata`` (see
    :func:`~face_anon.io.metadata.clean_icc`); Adobe APP14 (colour transform of CMYK and YCCK files).
    Kept with ``keep_metadata``: EXIF and standard XMP (APP1), cleaned of embedded images (IFD1
    thumbnail, MakerNote, XMP thumbnails; see :mod:`face_anon.io.metadata`), and COM comments (unless
    large or holding an image).
    Dropped always: JFXX and other APP0 (thumbnails), MPF and FlashPix APP2 (more pictures), extended
    XMP, APP3..APP13 and APP15 (vendor previews, Photoshop thumbnails, IPTC), APP14 other than Adobe,
    and everything after the first EOI (further pictures, depth maps, motion-photo videos).
    Raises ValueError for a stream that is not a well-formed JPEG.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream (no SOI marker)")
    out = bytearray(b"\xff\xd8")
    icc_chunks: list[bytes] = []
    icc_at: int | None = None  # where in ``out`` the profile goes: where its first chunk was
    jfif_done = False
    pos = 2
    size = len(data)
    while pos < size:
        if data[pos] != 0xFF:
            raise ValueError(f"corrupt JPEG: expected a marker at byte {pos}")
        while pos < size and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            out += b"\xff\xd9"
            if icc_chunks:
                out[icc_at:icc_at] = _icc_segments(icc_chunks, keep_metadata)
            return bytes(out)
        if marker in _STANDALONE:
            out += bytes((0xFF, marker))
            continue
        if pos + 2 > size:
            raise ValueError("corrupt JPEG: truncated segment header")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if pos + length > size or length < 2:
            raise ValueError("corrupt JPEG: truncated segment")
        segment = data[pos - 2 : pos + length]
        payload = data[pos + 2 : pos + length]
        pos += length
        if marker == 0xDA:  # SOS: header, then entropy-coded data up to the next real marker
            start = pos
            while True:
                found = data.find(b"\xff", pos)
                if found < 0 or found + 1 >= size:
                    raise ValueError("corrupt JPEG: scan data runs to the end of the file (no EOI)")
                following = data[found + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                    pos = found + 1 if following == 0xFF else found + 2
                    continue
                pos = found
                break
            out += segment + data[start:pos]
            continue
        if marker == 0xE0:
            if payload.startswith(_JFIF) and not jfif_done:
                out += _bare_jfif(payload) or b""
                jfif_done = True
        elif marker == 0xE1:
            if keep_metadata:
                out += _kept_app1(payload)
        elif marker == 0xE2:
            if payload.startswith(_ICC) and len(payload) >= len(_ICC) + 2:
                icc_at = len(out) if icc_at is None else icc_at
                icc_chunks.append(payload)
        elif marker == 0xEE:
            if payload.startswith(_ADOBE):
                out += segment
        elif 0xE3 <= marker <= 0xEF:
            pass
        elif marker == 0xFE:
            if keep_metadata and not may_hold_image(payload):
                out += segment
        else:  # frame, tables, restart interval, ...: what decodes the image
            out += segment
    raise ValueError("corrupt JPEG: no EOI marker")
