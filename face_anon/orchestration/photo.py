"""Whole photos: the stages of :mod:`.stages` run over one or several photos, faces batched across them.

``anonymize_photo`` (one image) and ``anonymize_photos`` (several) are what the command line, a web
app and the tests call: images and options in, the new images and what happened to each face out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image

from ..detection import Face, FaceDetector
from ..errors import InputError
from ..io.images import rgb_array
from ..replacers import DiffusionAnonymizer, FaceReplacer, Redactor
from .options import AnonymizeOptions
from .report import FaceOutcome, Status
from .stages import (
    FaceDecision,
    FacePlan,
    FaceSelector,
    Replacement,
    apply_on_error,
    crop_layers,
    cut_crops,
    face_outcomes,
    failure_message,
    find_faces,
    paste_faces,
    plan_crops,
    replace_crops,
    select_faces,
)


@dataclass(frozen=True, kw_only=True)
class PhotoResult:
    """The outcome for one photo.

    ``status`` is ``ok`` (faces found; ``image`` has them replaced), ``no_faces`` (nothing to replace:
    ``image`` is the input, unchanged) or ``error``: then ``image`` is None, because a face could not
    be replaced and the photo must not leave with it intact (``error`` says which and why).
    """

    image: PIL.Image.Image | None
    outcomes: tuple[FaceOutcome, ...]
    status: Status
    error: str | None = None

    @property
    def faces(self) -> list[Face]:
        return [outcome.face for outcome in self.outcomes]


def make_replacer(options: AnonymizeOptions, pipeline: Any = None) -> FaceReplacer:
    """The replacer for ``options.mode``: the diffusion model for ``anonymize``, else a redactor."""
    if options.mode == "anonymize":
        return DiffusionAnonymizer(
            pipeline,
            anonymization_degree=options.anonymization_degree,
            num_inference_steps=options.num_inference_steps,
            guidance_scale=options.guidance_scale,
            crop_size=options.crop_size,
        )
    return Redactor(options.mode, crop_size=options.crop_size or 256)


@dataclass
class _Work:
    """One photo while its layers are replaced."""

    image: np.ndarray
    plans: list[FacePlan]
    replaced: dict[int, Replacement] = field(default_factory=dict)
    failed: str | None = None

    def result(self) -> PhotoResult:
        outcomes = tuple(face_outcomes(self.plans, self.replaced))
        if self.failed is not None:
            return PhotoResult(image=None, outcomes=outcomes, status=Status.ERROR, error=self.failed)
        status = Status.OK if self.plans else Status.NO_FACES
        return PhotoResult(image=PIL.Image.fromarray(self.image), outcomes=outcomes, status=status)


def _as_rgb(number: int, image: PIL.Image.Image | np.ndarray) -> np.ndarray:
    array = np.array(rgb_array(image) if isinstance(image, PIL.Image.Image) else image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise InputError(f"images[{number}]", f"an array of shape {array.shape}", "a PIL image or an RGB uint8 array")
    return array


def anonymize_photos(
    images: Sequence[PIL.Image.Image | np.ndarray],
    *,
    detector: FaceDetector,
    pipeline: Any = None,
    options: AnonymizeOptions = AnonymizeOptions(),
    faces: Sequence[Sequence[Face]] | None = None,
    decisions: Sequence[Sequence[FaceDecision]] | None = None,
    selector: FaceSelector | None = None,
    replacer: FaceReplacer | None = None,
) -> list[PhotoResult]:
    """Anonymize every face of several photos, batching faces across photos.

    Args:
        images: upright photos (PIL images in any mode, or RGB uint8 arrays).
        detector: a loaded face detector (see ``face_anon.detection.load_detector``).
        pipeline: a loaded ``FaceAnonPipeline``; needed only for ``mode="anonymize"``.
        options: see :class:`AnonymizeOptions`.
        faces: faces already found per photo (skips detection), e.g. from ``find_faces``.
        decisions: per photo, one :class:`FaceDecision` per face (skips ``selector``).
        selector: the selection hook (see ``select_faces``): which faces to keep.
        replacer: use this instead of the one ``options.mode`` selects.

    Returns one :class:`PhotoResult` per photo, in order; result images are RGB. Face ``i`` of a photo
    is drawn with seed ``options.seed + i``, so results do not depend on the batching.
    """
    replacer = replacer or make_replacer(options, pipeline)
    works = []
    for number, image in enumerate(images):
        rgb = _as_rgb(number, image)
        found = list(faces[number]) if faces is not None else find_faces(rgb, detector, options)
        chosen = list(decisions[number]) if decisions is not None else select_faces(rgb, found, selector)
        plans = plan_crops(
            rgb, found, options, crop_size=replacer.crop_size, eye_scale=detector.eye_scale, decisions=chosen
        )
        works.append(_Work(image=rgb, plans=plans))

    layered = [crop_layers(work.plans) for work in works]
    for layer in range(max((len(layers) for layers in layered), default=0)):
        batch = [
            (work, crop)
            for work, layers in zip(works, layered)
            if work.failed is None and layer < len(layers)
            for crop in cut_crops(work.image, layers[layer])
        ]
        replaced = replace_crops(replacer, [crop for _, crop in batch], batch_size=options.batch_size)
        replaced = apply_on_error(replaced, options.on_error, replacer.crop_size)
        for work in {id(work): work for work, _ in batch}.values():
            mine = [(crop, result) for (owner, crop), result in zip(batch, replaced) if owner is work]
            work.replaced.update((crop.plan.index, result) for crop, result in mine)
            work.failed = failure_message(work.plans, work.replaced)
            if work.failed is None:
                work.image = paste_faces(work.image, [c for c, _ in mine], [r for _, r in mine])
    return [work.result() for work in works]


def anonymize_photo(
    image: PIL.Image.Image | np.ndarray,
    *,
    detector: FaceDetector,
    pipeline: Any = None,
    options: AnonymizeOptions = AnonymizeOptions(),
    selector: FaceSelector | None = None,
) -> PhotoResult:
    """Anonymize every face of one upright photo; see :func:`anonymize_photos`.

    >>> result = anonymize_photo(image, detector=load_detector(), pipeline=pipe)  # doctest: +SKIP
    >>> result.image.save("out.png"); [face.box for face in result.faces]  # doctest: +SKIP
    """
    return anonymize_photos([image], detector=detector, pipeline=pipeline, options=options, selector=selector)[0]


__all__ = ["PhotoResult", "anonymize_photo", "anonymize_photos", "make_replacer"]
