"""Reading and writing photos: orientation, pixel modes, metadata and atomic writes.

Everything the model and detector see is an upright 8-bit RGB array. The file written back keeps the
source's pixel mode where that is possible (grey stays grey, alpha stays, 16 bits stay 16 bits in PNG,
a lossless WebP stays lossless, a GIF keeps its palette) and every pixel the anonymization did not
change keeps its exact source value; where a format cannot (JPEG, lossy WebP, more than 256 colours in
a GIF) :func:`encode_image` says so in ``notes``. Metadata is cleaned by :mod:`face_anon.io.metadata`.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import PIL.ImageOps
import PIL.PngImagePlugin

from ..errors import ImageLoadError
from .metadata import EXIF_ORIENTATION, clean_exif, clean_icc, clean_xmp, load_exif, may_hold_image


# Pillow's format names for the extensions we write, and the extensions a folder scan picks up.
FORMATS_BY_EXTENSION = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".gif": "GIF",
}
IMAGE_EXTENSIONS = frozenset(FORMATS_BY_EXTENSION)
DEFAULT_MAX_PIXELS = 100_000_000
JPEG_QUALITY = WEBP_QUALITY = 95
# Key of the :class:`SourceEncoding` in a source image's ``info``: it travels with the image (copies
# and ``merge_into_source`` keep it) to :func:`encode_image`, whoever calls it. Pillow's writers ignore it.
SOURCE_ENCODING_KEY = "face_anon.source_encoding"


@dataclass
class Metadata:
    """Metadata an output may carry (see :mod:`face_anon.io.metadata` for what each field has lost).

    ``icc_profile`` is the colour profile without its free text: what every output gets.
    ``icc_profile_original`` is the file's own profile, written instead when it is set (what
    ``--keep-metadata`` passes on: the loaded image's whole ``Metadata``); ``exif``, ``xmp`` and
    ``comment`` are written only with ``--keep-metadata``, and never hold an embedded image.
    """

    exif: bytes | None = None
    xmp: bytes | None = None
    comment: bytes | None = None
    icc_profile: bytes | None = None
    icc_profile_original: bytes | None = None


@dataclass(frozen=True, eq=False)
class SourceEncoding:
    """How the input file stored its pixels, where the 8-bit Pillow image cannot say it.

    ``deep``: the upright uint16 RGB(A) pixels of a 16-bit colour file (Pillow keeps 8 of them);
    ``palette``: the (N, 3) uint8 colours of a palette image, in palette order; ``lossless``: a
    lossless WebP (VP8L). :func:`encode_image` uses them to keep pixels outside the faces exact.
    """

    deep: np.ndarray | None = None
    palette: np.ndarray | None = None
    lossless: bool = False


@dataclass
class LoadedImage:
    """An upright photo: the 8-bit RGB array to work on, and the source pixels to write back.

    ``source`` is the orientation-corrected image in one of the modes we write back
    (``RGB``, ``RGBA``, ``L``, ``LA``, ``I;16``); ``rgb`` is its 8-bit RGB view. ``source.info``
    holds only the :class:`SourceEncoding` (``encoding``), never metadata.
    """

    rgb: np.ndarray
    source: PIL.Image.Image
    format: str | None
    metadata: Metadata
    orientation: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.source.size

    @property
    def encoding(self) -> SourceEncoding:
        return self.source.info.get(SOURCE_ENCODING_KEY) or SourceEncoding()

    def composites(self) -> dict[str, np.ndarray]:
        """What a viewer shows of a partly transparent image: its RGB over a white and over a black
        background, by background name; empty for an opaque image. ``rgb`` ignores the alpha channel,
        so a picture drawn in the alpha channel alone shows only here."""
        if self.source.mode not in ("RGBA", "LA"):
            return {}
        alpha = np.asarray(self.source.getchannel("A"))
        if alpha.min() == 255:
            return {}
        weight = alpha.astype(np.float32)[:, :, None] / 255.0
        colour = self.rgb.astype(np.float32) * weight
        return {
            "white": np.clip(colour + 255.0 * (1.0 - weight) + 0.5, 0, 255).astype(np.uint8),
            "black": np.clip(colour + 0.5, 0, 255).astype(np.uint8),
        }


def _native(image: PIL.Image.Image, notes: list[str]) -> PIL.Image.Image:
    """Convert any Pillow mode to the closest mode we can write back exactly."""
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA", "I;16"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        if image.format != "GIF":  # a GIF is written back with its palette (see _encode_gif)
            notes.append("palette image written as " + ("RGBA" if has_alpha else "RGB"))
        return image.convert("RGBA" if has_alpha else "RGB")
    if mode in ("I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise ImageLoadError(f"32-bit integer pixels outside 0..65535 (mode {mode}) are not supported")
        return PIL.Image.fromarray(values.astype(np.uint16))  # uint16 -> "I;16"
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
        return image.convert("RGB")
    if mode in ("YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        return image.convert("RGBA" if mode in ("RGBa", "La") else "RGB")
    raise ImageLoadError(f"pixel mode {mode!r} is not supported (expected RGB, grey, palette, CMYK or 16-bit grey)")


def rgb_array(image: PIL.Image.Image) -> np.ndarray:
    """The 8-bit RGB array of an image in any mode (16-bit grey is scaled, not clipped)."""
    native = _native(image, [])
    if native.mode == "I;16":
        grey = (np.asarray(native).astype(np.uint32) * 255 + 32767) // 65535
        return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    return np.asarray(native.convert("RGB"))


def _metadata(image: PIL.Image.Image, notes: list[str]) -> Metadata:
    """The file's metadata, cleaned (:mod:`face_anon.io.metadata`): what an output may carry."""
    info = image.info
    exif = image.getexif()
    exif_bytes = clean_exif(exif) if len(exif) else None  # the pixels are written upright: no orientation
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if xmp:
        cleaned_xmp = clean_xmp(xmp)
        if cleaned_xmp is None:
            notes.append("XMP metadata unreadable: never written")
        xmp = cleaned_xmp
    comment = info.get("comment")
    if isinstance(comment, str):
        comment = comment.encode("utf-8")
    if comment and may_hold_image(comment):
        comment = None
    icc = info.get("icc_profile") or None
    cleaned_icc = clean_icc(icc) if icc else None
    if icc and cleaned_icc is None:
        notes.append("ICC profile unreadable: never written")
        icc = None
    return Metadata(exif=exif_bytes, xmp=xmp, comment=comment, icc_profile=cleaned_icc, icc_profile_original=icc)


def _webp_is_lossless(data: bytes) -> bool:
    """Whether a WebP file's picture is VP8L (lossless), reading only its chunk headers."""
    with io.BytesIO(data) as file:
        header = file.read(12)
        if header[:4] != b"RIFF" or header[8:12] != b"WEBP":
            return False
        while True:
            chunk = file.read(8)
            if len(chunk) < 8:
                return False
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind in (b"VP8L", b"VP8 "):
                return kind == b"VP8L"
            file.seek(size + (size & 1), os.SEEK_CUR)  # VP8X, ICCP, ANIM, ...: the picture comes later


# Orientation value -> the numpy operation that makes stored pixels upright (as PIL's exif_transpose).
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def _is_deep_colour(image: PIL.Image.Image) -> bool:
    """Whether Pillow is about to read a 16-bit-per-channel colour PNG or TIFF as 8 bits (before ``load``)."""
    if image.format not in ("PNG", "TIFF") or image.mode not in ("RGB", "RGBA"):
        return False
    rawmodes = [tile.args if isinstance(tile.args, str) else tile.args[0] for tile in image.tile if tile.args]
    return any(";16" in str(rawmode) for rawmode in rawmodes)


def _deep_pixels(data: bytes, upright: PIL.Image.Image, orientation: int) -> np.ndarray | None:
    """The upright uint16 RGB(A) pixels of a 16-bit colour file, or None if OpenCV cannot give them.

    Pillow reads such files as 8-bit RGB(A) (the high byte); OpenCV reads all 16 bits. The two must
    agree on every pixel's high byte, or the 16-bit copy is not used.
    """
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    channels = len(upright.mode)
    if decoded is None or decoded.dtype != np.uint16 or decoded.ndim != 3 or decoded.shape[2] != channels:
        return None
    rgb = decoded[..., [2, 1, 0, 3][:channels]]
    deep = np.ascontiguousarray(_UPRIGHT.get(orientation, _UPRIGHT[1])(rgb))
    if deep.shape[:2] != (upright.height, upright.width) or not np.array_equal(deep >> 8, np.asarray(upright)):
        return None
    return deep


def _palette_colours(image: PIL.Image.Image) -> np.ndarray | None:
    """The (N, 3) colours a palette image uses, in palette order (its transparent entry left out)."""
    if image.mode not in ("P", "PA"):
        return None
    palette = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
    used = np.unique(np.asarray(image if image.mode == "P" else image.getchannel(0)))
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        used = used[used != transparent]
    used = used[used < len(palette)]
    return palette[used]


def load_image(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None
) -> LoadedImage:
    """Read a photo, apply its EXIF orientation and prepare the arrays to work on.

    ``data``: the file's bytes when the caller has read them (to hash them, or from a URI): they are
    what is decoded, and ``path`` is not read. Otherwise the file is read once.

    Raises :class:`ImageLoadError` for anything that is not a single, complete, supported image, or
    has more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise ImageLoadError(f"cannot open: {error}") from error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data))
    except PIL.Image.DecompressionBombError as error:
        raise ImageLoadError(f"image is too large to decode safely ({error})") from error
    except PIL.UnidentifiedImageError as error:
        raise ImageLoadError("not an image file Pillow can read") from error
    except OSError as error:
        raise ImageLoadError(f"cannot open: {error}") from error
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageLoadError(
                f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                "(max_pixels / --max-pixels)"
            )
        frames = getattr(image, "n_frames", 1)
        if frames > 1 and image.format != "MPO":
            # Other frames would hold faces we never look at: refuse rather than write them unchanged.
            raise ImageLoadError(f"multi-frame images are not supported ({frames} frames, {image.format})")
        deep_colour = _is_deep_colour(image)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageLoadError(f"file is truncated or corrupt ({error})") from error
        fmt = "JPEG" if image.format == "MPO" else image.format
        notes_extra = []
        try:
            orientation = int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)
            upright = PIL.ImageOps.exif_transpose(image)
        except Exception as error:  # a damaged EXIF block must not stop the photo from being processed
            upright, orientation = image.copy(), 1
            notes_extra.append(f"EXIF orientation unreadable, used as stored ({error})")
        try:
            metadata = _metadata(image, notes_extra)  # after the transpose: this edits the EXIF Pillow caches
        except Exception as error:  # unreadable metadata is dropped, which is what stripping does anyway
            icc = image.info.get("icc_profile")
            metadata = Metadata(icc_profile=clean_icc(icc) if icc else None)
            notes_extra.append(f"metadata unreadable, dropped ({error})")
        deep = _deep_pixels(data, upright, orientation) if deep_colour else None
        if deep_colour and deep is None:
            notes_extra.append("16-bit colour read and written at 8 bits per channel")
        encoding = SourceEncoding(
            deep=deep,
            palette=_palette_colours(upright),
            lossless=fmt == "WEBP" and _webp_is_lossless(data),
        )
    notes: list[str] = list(notes_extra)
    source = _native(upright, notes)
    source.info = {SOURCE_ENCODING_KEY: encoding}  # and nothing else: Pillow's writers read metadata from info
    return LoadedImage(
        rgb=rgb_array(source),
        source=source,
        format=fmt,
        metadata=metadata,
        orientation=orientation,
        notes=notes,
    )


def merge_into_source(loaded: LoadedImage, result_rgb: np.ndarray) -> PIL.Image.Image:
    """The result in the source's pixel mode: unchanged pixels keep their exact source values."""
    changed = np.any(result_rgb != loaded.rgb, axis=2)
    source = loaded.source
    mode = source.mode
    if not changed.any():
        return source.copy()
    out = np.array(source)
    if mode in ("RGB", "RGBA"):
        out[..., :3][changed] = result_rgb[changed]
    elif mode in ("L", "LA", "I;16"):
        grey = np.asarray(PIL.Image.fromarray(result_rgb).convert("L"))
        if mode == "I;16":
            out[changed] = grey[changed].astype(np.uint16) * 257
        elif mode == "LA":
            out[..., 0][changed] = grey[changed]
        else:
            out[changed] = grey[changed]
    else:  # pragma: no cover - _native never produces another mode
        raise ValueError(f"unexpected source mode {mode!r}")
    merged = PIL.Image.fromarray(out)
    assert merged.mode == mode, (merged.mode, mode)
    encoding = loaded.encoding
    deep = None
    if encoding.deep is not None:  # changed pixels at 8-bit precision, scaled to 16 bits; the rest exact
        deep = encoding.deep.copy()
        deep[..., :3][changed] = result_rgb[changed].astype(np.uint16) * 257
    merged.info = {SOURCE_ENCODING_KEY: SourceEncoding(deep=deep, palette=encoding.palette, lossless=encoding.lossless)}
    return merged


def format_for(path: str | os.PathLike) -> str:
    """The Pillow format to write ``path`` with, from its extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS_BY_EXTENSION:
        allowed = ", ".join(sorted(FORMATS_BY_EXTENSION))
        raise ValueError(f"output: extension {suffix or '(none)'!r} of {str(path)!r} is not one of {allowed}")
    return FORMATS_BY_EXTENSION[suffix]


def _fit_mode(image: PIL.Image.Image, fmt: str) -> PIL.Image.Image:
    """Modes the target format can hold (JPEG has no alpha and no 16 bits, for example)."""
    mode = image.mode
    if fmt == "JPEG":
        return image if mode in ("RGB", "L") else image.convert("L" if mode in ("LA", "I;16") else "RGB")
    if fmt in ("BMP",):
        return image if mode in ("RGB", "L") else image.convert("RGB")
    if fmt == "WEBP":
        return image if mode in ("RGB", "RGBA") else image.convert("RGBA" if mode == "LA" else "RGB")
    return image


def _metadata_options(fmt: str, metadata: Metadata | None) -> dict:
    """Pillow ``save`` options for the metadata given (none when ``None``) that ``fmt`` can hold."""
    options: dict = {}
    if metadata is None:
        return options
    icc = metadata.icc_profile_original or metadata.icc_profile
    if icc and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["icc_profile"] = icc
    if metadata.exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["exif"] = metadata.exif
    if metadata.xmp and fmt in ("JPEG", "WEBP", "PNG", "TIFF"):
        options["xmp"] = metadata.xmp
    if metadata.comment and fmt in ("JPEG", "GIF"):
        options["comment"] = metadata.comment
    return options


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encode_png16(deep: np.ndarray, options: dict) -> bytes:
    """A 16-bit RGB(A) PNG of ``deep`` (OpenCV writes the pixels), with the metadata chunks added."""
    bgr = deep[..., [2, 1, 0, 3][: deep.shape[2]]]
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(bgr), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    data = encoded.tobytes()
    if not ok or data[12:16] != b"IHDR":
        raise ValueError("OpenCV could not write a 16-bit PNG")
    chunks = b""
    if "icc_profile" in options:
        chunks += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(options["icc_profile"]))
    if "exif" in options:
        exif = options["exif"]
        chunks += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    if "xmp" in options:
        chunks += _png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + options["xmp"])
    return data[:33] + chunks + data[33:]  # after the signature (8 bytes) and IHDR (25)


def _nearest(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest ``palette`` colour (squared RGB distance) for each of ``colours`` (N, 3)."""
    out = np.empty(len(colours), dtype=np.int64)
    palette = palette.astype(np.int32)
    for start in range(0, len(colours), 4096):
        block = colours[start : start + 4096].astype(np.int32)
        out[start : start + 4096] = ((block[:, None, :] - palette[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    return out


def _encode_gif(image: PIL.Image.Image, encoding: SourceEncoding, options: dict, notes: list[str]) -> bytes:
    """A GIF whose palette holds every colour of the image when it can (at most 256).

    With more colours, the source's own palette colours keep their entries (so pixels outside the
    faces stay exact), the free entries get the faces' most frequent new colours, and every other
    pixel takes the nearest entry. Without a source palette the image is reduced to 256 colours
    (``notes`` says so). Alpha becomes on/off transparency (at 128).
    """
    rgba = np.asarray(image.convert("RGBA"))
    opaque = rgba[..., 3] >= 128
    if np.any((rgba[..., 3] > 0) & (rgba[..., 3] < 255)):
        notes.append("GIF: partial transparency written as on/off")
    keys = (rgba[..., 0].astype(np.int64) << 16) | (rgba[..., 1].astype(np.int64) << 8) | rgba[..., 2]
    used = np.unique(keys[opaque])
    used_set = set(used.tolist())
    slots = 256 - (0 if opaque.all() else 1)
    known = []
    if encoding.palette is not None:
        palette_keys = (encoding.palette[:, 0].astype(np.int64) << 16) | (encoding.palette[:, 1].astype(np.int64) << 8)
        palette_keys |= encoding.palette[:, 2]
        known = [int(k) for k in dict.fromkeys(palette_keys.tolist()) if k in used_set][:slots]
    known_set = set(known)
    if len(used) <= slots:
        entries = known + sorted(used_set - known_set)
    else:
        if not known:
            notes.append(f"GIF holds 256 colours: this image has {len(used)}, pixels outside the faces changed")
        extra = keys[opaque & ~np.isin(keys, known)]
        free = slots - len(known)
        picked: list[int] = []
        if free > 0 and extra.size:
            pixels = np.stack([(extra >> 16) & 255, (extra >> 8) & 255, extra & 255], axis=1).astype(np.uint8)
            reduced = PIL.Image.fromarray(pixels[None, :, :]).quantize(free, method=PIL.Image.Quantize.MEDIANCUT)
            colours = np.asarray(reduced.getpalette("RGB"), dtype=np.int64).reshape(-1, 3)[: len(reduced.getcolors())]
            picked = [k for k in dict.fromkeys(((colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]).tolist())]
            picked = [k for k in picked if k not in known_set][:free]
        entries = known + picked
    entry_keys = np.asarray(entries, dtype=np.int64)
    order = np.argsort(entry_keys)
    position = np.clip(np.searchsorted(entry_keys[order], keys), 0, len(entries) - 1)
    indices = order[position]
    exact = entry_keys[indices] == keys
    palette_rgb = np.stack([(entry_keys >> 16) & 255, (entry_keys >> 8) & 255, entry_keys & 255], axis=1)
    inexact = opaque & ~exact
    if inexact.any():
        distinct, inverse = np.unique(keys[inexact], return_inverse=True)
        colours = np.stack([(distinct >> 16) & 255, (distinct >> 8) & 255, distinct & 255], axis=1)
        indices[inexact] = _nearest(colours, palette_rgb)[inverse]
    if not opaque.all():
        options = {**options, "transparency": len(entries)}
        indices[~opaque] = len(entries)
    out = PIL.Image.fromarray(indices.astype(np.uint8), "P")
    out.putpalette(palette_rgb.astype(np.uint8).tobytes() + bytes(3 * (256 - len(entries))))
    buffer = io.BytesIO()
    out.save(buffer, format="GIF", optimize=False, **options)
    return buffer.getvalue()


def encode_image(
    image: PIL.Image.Image, fmt: str, metadata: Metadata | None = None, *, notes: list[str] | None = None
) -> bytes:
    """Encode a freshly built image; only the metadata passed in is written (none when ``None``).

    Pixel values are kept exactly in PNG, TIFF, BMP, lossless WebP (when the source was lossless
    WebP), GIF (up to 256 colours; with more, the source palette's colours stay exact) and 16-bit PNG
    (when the source had 16-bit colour and ``image`` comes from ``load_image`` / ``merge_into_source``,
    whose :class:`SourceEncoding` it carries). Where they are not, a sentence saying so is appended to
    ``notes`` (JPEG and lossy WebP at quality 95, 16-bit colour in an 8-bit format, a GIF over 256
    colours without a source palette), for the report.
    """
    notes = [] if notes is None else notes
    encoding = image.info.get(SOURCE_ENCODING_KEY) or SourceEncoding()
    options = _metadata_options(fmt, metadata)
    deep = encoding.deep
    if deep is not None and (
        image.mode not in ("RGB", "RGBA")
        or deep.shape[:2] != (image.height, image.width)
        or deep.shape[2] != len(image.mode)
        or not np.array_equal(deep >> 8, np.asarray(image))
    ):
        deep = None  # the image was changed after merge_into_source: its 16-bit pixels no longer apply
    if deep is not None:
        if fmt == "PNG":
            return _encode_png16(deep, options)
        notes.append(f"16-bit colour written at 8 bits per channel ({fmt} holds 8)")
    if fmt == "GIF":
        return _encode_gif(image, encoding, options, notes)
    image = _fit_mode(image, fmt)
    if fmt == "JPEG":
        options.update(quality=JPEG_QUALITY)
        notes.append(
            f"JPEG written at quality {JPEG_QUALITY}: pixels outside the faces are close to, not exactly, their old values"
        )
    elif fmt == "WEBP" and encoding.lossless:
        options.update(lossless=True, exact=True)
    elif fmt == "WEBP":
        options.update(quality=WEBP_QUALITY)
        notes.append(
            f"WebP written lossy at quality {WEBP_QUALITY}: pixels outside the faces are close to, not exactly, their old values"
        )
    if "xmp" in options and fmt == "PNG":  # Pillow writes XMP to PNG and TIFF only when told how
        info = PIL.PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", options.pop("xmp").decode("utf-8", "replace"), zip=False)
        options["pnginfo"] = info
    elif "xmp" in options and fmt == "TIFF":  # as tag 700 (XMLPacket) of the EXIF Pillow merges into the IFD
        exif = load_exif(options["exif"]) if "exif" in options else PIL.Image.Exif()
        exif[700] = options.pop("xmp")
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def __getattr__(name: str):
    """``write_atomic`` moved to :mod:`face_anon.io.files` (which imports this module); still importable here."""
    if name == "write_atomic":
        from .files import write_atomic

        return write_atomic
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
