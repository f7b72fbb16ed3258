"""A model card that shows the model's work: before/after pairs of example photos, for the card's ``widget``.

``convert_weights.py --examples DIR`` calls :func:`render_gallery` with the converted pipeline: each photo of
``DIR`` is anonymized whole (every face found, aligned, replaced and blended back, as ``face-anon`` does), and
both images are written into the repository; the returned entries go into the card's YAML, so the Hub page
shows the pairs::

    widget:
      - src: examples/street.jpg
        output:
          url: examples/street_anonymized.jpg
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..detection import FaceDetector, load_detector
from ..errors import InputError
from ..io.files import write_atomic
from ..io.images import IMAGE_EXTENSIONS, encode_image, load_image
from ..orchestration.options import AnonymizeOptions
from ..orchestration.photo import anonymize_photo
from ..orchestration.report import Status


GALLERY_FOLDER = "examples"
MAX_SIDE = 1024  # pixels: the card shows thumbnails; the example files stay small in the repository


def gallery_photos(folder: str | os.PathLike) -> list[Path]:
    """The photos of ``folder`` (not its subfolders, not hidden files), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("--examples", str(folder), detail="is not a folder")
    photos = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not photos:
        allowed = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise InputError("--examples", str(folder), detail=f"holds no photo (files ending in {allowed})")
    return photos


def _name(path: Path) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem).strip("_")
    return name or "photo"


def _jpeg(rgb: np.ndarray) -> bytes:
    image = PIL.Image.fromarray(rgb)
    image.thumbnail((MAX_SIDE, MAX_SIDE), PIL.Image.LANCZOS)
    return encode_image(image, "JPEG")  # no metadata: an example photo's EXIF is not published


def render_gallery(
    pipeline: Any,
    photos: Sequence[str | os.PathLike],
    repo_dir: str | os.PathLike,
    *,
    options: AnonymizeOptions = AnonymizeOptions(),
    detector: FaceDetector | None = None,
) -> list[dict]:
    """Anonymize every face of each photo with ``pipeline`` and write the pair into ``repo_dir/examples/``:
    ``NAME.jpg`` (the photo, upright, metadata removed) and ``NAME_anonymized.jpg``, at most 1024 px.

    Returns the card's ``widget`` entries, one per photo, in order:
    ``{"src": "examples/NAME.jpg", "output": {"url": "examples/NAME_anonymized.jpg"}}``. A gallery shows the
    model's work, so a photo without a face, or with a face the model could not replace, is an
    :class:`~face_anon.errors.InputError` naming it (nothing is written for it).
    """
    detector = detector or load_detector()
    folder = Path(repo_dir) / GALLERY_FOLDER
    names = [_name(Path(photo)) for photo in photos]
    if len(set(names)) != len(names):
        raise InputError("--examples", [str(p) for p in photos], "photos whose names differ in letters and digits")
    entries = []
    for photo, name in zip(photos, names):
        loaded = load_image(photo)
        result = anonymize_photo(loaded.rgb, detector=detector, pipeline=pipeline, options=options)
        if result.status is not Status.OK:
            why = result.error or "no face was found"
            raise InputError("--examples", str(photo), detail=f"cannot be shown in the gallery: {why}")
        before, after = f"{GALLERY_FOLDER}/{name}.jpg", f"{GALLERY_FOLDER}/{name}_anonymized.jpg"
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{name}.jpg", _jpeg(loaded.rgb))
        write_atomic(folder / f"{name}_anonymized.jpg", _jpeg(np.asarray(result.image)))
        entries.append({"src": before, "output": {"url": after}})
    return entries


__all__ = ["GALLERY_FOLDER", "gallery_photos", "render_gallery"]
