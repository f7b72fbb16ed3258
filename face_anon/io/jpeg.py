"""JPEG surgery: a lossless copy of a JPEG's compressed image without what is not the image."""

from __future__ import annotations


_JFIF_APP0 = (b"JFIF\x00", b"JFXX\x00")
_ICC_APP2 = b"ICC_PROFILE\x00"
_ADOBE_APP14 = b"Adobe"
_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # TEM, SOI, RST0-7: markers without a length


def strip_jpeg(data: bytes, *, keep_metadata: bool = False) -> bytes:
    """Copy a JPEG's compressed image without re-encoding it, dropping what is not the image.

    Always dropped: MPF (the multi-picture index of phone photos) and everything after the first EOI
    (further pictures, depth maps, motion-photo videos). Dropped unless ``keep_metadata``: APP1
    (EXIF, XMP), APP3..APP13, APP15 (e.g. Photoshop IPTC) and COM segments. Kept: JFIF APP0, the ICC
    profile (APP2) and Adobe APP14, which change how the pixels decode.
    Raises ValueError for a stream that is not a well-formed JPEG.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream (no SOI marker)")
    out = bytearray(b"\xff\xd8")
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
            return bytes(out)
        if marker in _STANDALONE:
            out += bytes((0xFF, marker))
            continue
        if pos + 2 > size:
            raise ValueError("corrupt JPEG: truncated segment header")
        length = int.from_bytes(data[pos : pos + 2], "big")
        segment = data[pos - 2 : pos + length]
        payload = data[pos + 2 : pos + length]
        if pos + length > size or length < 2:
            raise ValueError("corrupt JPEG: truncated segment")
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
        keep = True
        if marker == 0xE0:
            keep = payload.startswith(_JFIF_APP0) or keep_metadata
        elif marker == 0xE2:
            keep = payload.startswith(_ICC_APP2)  # MPF lives in APP2 too: never kept
        elif marker == 0xEE:
            keep = payload.startswith(_ADOBE_APP14) or keep_metadata
        elif 0xE1 <= marker <= 0xEF or marker == 0xFE:
            keep = keep_metadata
        if keep:
            out += segment
    raise ValueError("corrupt JPEG: no EOI marker")
