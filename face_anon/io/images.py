"""Reading and writing photos: orientation, pixel modes, metadata and atomic writes.

Everything the model and detector see is an upright 8-bit RGB array. The file written back keeps the
source's pixel mode where that is possible (grey stays grey, alpha stays, 16-bit grey stays 16-bit)
and every pixel the anonymization did not change keeps its exact source value.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from ..errors import ImageLoadError


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
EXIF_ORIENTATION = 0x0112


@dataclass
class Metadata:
    """What ``--keep-metadata`` carries over. ICC colour profiles are kept always (they hold no identity)."""

    exif: bytes | None = None
    xmp: bytes | None = None
    comment: bytes | None = None
    icc_profile: bytes | None = None


@dataclass
class LoadedImage:
    """An upright photo: the 8-bit RGB array to work on, and the source pixels to write back.

    ``source`` is the orientation-corrected image in one of the modes we write back
    (``RGB``, ``RGBA``, ``L``, ``LA``, ``I;16``); ``rgb`` is its 8-bit RGB view.
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


def _native(image: PIL.Image.Image, notes: list[str]) -> PIL.Image.Image:
    """Convert any Pillow mode to the closest mode we can write back exactly."""
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA", "I;16"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
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


def _metadata(image: PIL.Image.Image) -> Metadata:
    info = image.info
    exif = image.getexif()
    exif_bytes = None
    if len(exif):
        exif.pop(EXIF_ORIENTATION, None)  # the pixels are written upright
        exif_bytes = exif.tobytes()  # IFD0 with its Exif/GPS sub-IFDs; never the IFD1 thumbnail
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    comment = info.get("comment")
    if isinstance(comment, str):
        comment = comment.encode("utf-8")
    return Metadata(exif=exif_bytes, xmp=xmp, comment=comment, icc_profile=info.get("icc_profile"))


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read a photo, apply its EXIF orientation and prepare the arrays to work on.

    Raises :class:`ImageLoadError` for anything that is not a single, complete, supported image, or
    has more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(path)
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
            metadata = _metadata(image)  # after the transpose: this edits the EXIF Pillow caches
        except Exception as error:  # unreadable metadata is dropped, which is what stripping does anyway
            metadata = Metadata(icc_profile=image.info.get("icc_profile"))
            notes_extra.append(f"metadata unreadable, dropped ({error})")
    notes: list[str] = list(notes_extra)
    source = _native(upright, notes)
    source.info = {}
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
    if fmt == "GIF":
        return image.convert("RGB") if mode not in ("L", "P") else image
    if fmt == "WEBP":
        return image if mode in ("RGB", "RGBA") else image.convert("RGBA" if mode == "LA" else "RGB")
    return image


def encode_image(image: PIL.Image.Image, fmt: str, metadata: Metadata | None = None) -> bytes:
    """Encode a freshly built image; only the metadata passed in is written (none when ``None``)."""
    image = _fit_mode(image, fmt)
    options: dict = {}
    if fmt == "JPEG":
        options.update(quality=95)
    elif fmt == "WEBP":
        options.update(quality=95)
    if metadata is not None:
        if metadata.icc_profile and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
            options["icc_profile"] = metadata.icc_profile
        if metadata.exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
            options["exif"] = metadata.exif
        if metadata.xmp and fmt in ("JPEG", "WEBP", "PNG", "TIFF"):
            options["xmp"] = metadata.xmp
        if metadata.comment and fmt in ("JPEG", "GIF"):
            options["comment"] = metadata.comment
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def __getattr__(name: str):
    """``write_atomic`` moved to :mod:`face_anon.io.files` (which imports this module); still importable here."""
    if name == "write_atomic":
        from .files import write_atomic

        return write_atomic
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
