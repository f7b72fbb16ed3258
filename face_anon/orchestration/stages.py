"""The stages of anonymizing one image, each a plain function of data in and data out.

A photo batch, a video loop, a web app and a distributed runner call the same stages::

    faces = find_faces(image, detector, options)                         # 1. find
    decisions = select_faces(image, faces, selector)                     # 2. select: the hook to keep faces
    plans = plan_crops(image, faces, options, crop_size=replacer.crop_size,
                       eye_scale=detector.eye_scale, decisions=decisions)  # 3. plan (one FacePlan per face)
    results = {}
    for layer in crop_layers(plans):                                     # overlapping faces: one layer at a time
        crops = cut_crops(image, layer)                                  # 4. cut the aligned crops
        replaced = replace_crops(replacer, crops, batch_size=options.batch_size, sources=None)  # 5. replace
        replaced = apply_on_error(replaced, options.on_error, replacer.crop_size)  # fail closed, or black out
        image = paste_faces(image, crops, replaced)                      # 6. paste back
        results.update(zip((crop.plan.index for crop in crops), replaced))
    outcomes = face_outcomes(plans, results)                             # 7. report

``anonymize_photos`` in :mod:`face_anon.orchestration.photo` is exactly this, batching the crops of
several photos into the same replacer calls. Images are upright RGB uint8 arrays of shape (H, W, 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..detection import Face, FaceDetector
from ..errors import InputError
from ..geometry.alignment import Alignment, crop_face, ffhq_alignment, refine_landmarks
from ..geometry.blending import FaceRegion, face_mask, face_region, paste_face
from ..replacers.base import FaceAction, FaceReplacer
from .options import AnonymizeOptions
from .report import FaceOutcome


# ------------------------------------------------------------------------------------------------ records


@dataclass(frozen=True, kw_only=True)
class FaceDecision:
    """What a selection hook decided for one face: replace it (``keep=False``, the default) or keep it.

    ``reason`` says why in the report (``"matches reference alice.jpg"``, ``"unticked in the app"``);
    ``matched_reference`` and ``distance`` say which reference identity matched and how closely.
    """

    keep: bool = False
    reason: str | None = None
    matched_reference: str | None = None
    distance: float | None = None


REPLACE = FaceDecision()


class FaceSelector(Protocol):
    """The selection hook: given the image and its faces (in ``find_faces`` order), one decision per face.

    Faces it does not keep are replaced; a selector that raises fails the photo (nothing is written).
    """

    def __call__(self, image: np.ndarray, faces: Sequence[Face]) -> Sequence[FaceDecision]: ...


@dataclass(frozen=True, kw_only=True)
class FacePlan:
    """Where one face is cut out and pasted back, and whether it is replaced at all.

    ``index`` is the face's position in the image's face list; ``seed`` = ``options.seed + index``.
    ``action`` is None for a face to replace; otherwise it says why the face is left as it is
    (``kept``, ``ignored_too_small``, ``outside_image``). Faces to replace whose masks overlap get
    different ``layer`` numbers: a layer is cut only after the layers before it were pasted, so no
    crop carries a neighbour's original face back into the image.
    """

    index: int
    face: Face
    decision: FaceDecision
    alignment: Alignment
    region: FaceRegion | None
    seed: int
    layer: int = 0
    action: FaceAction | None = None

    @property
    def replace(self) -> bool:
        return self.action is None


@dataclass(frozen=True, kw_only=True)
class FaceCrop:
    """A planned face with its aligned crop (RGB uint8, ``crop_size`` x ``crop_size``)."""

    plan: FacePlan
    pixels: np.ndarray

    @property
    def seed(self) -> int:
        return self.plan.seed


@dataclass(frozen=True, kw_only=True)
class Replacement:
    """A replacer's result for one crop: the new crop and what it did, or the error that stopped it."""

    pixels: np.ndarray | None
    action: FaceAction
    error: str | None = None


# ------------------------------------------------------------------------------------------------ stages


def find_faces(image: np.ndarray, detector: FaceDetector, options: AnonymizeOptions) -> list[Face]:
    """1. Every face the detector finds, best score first; landmarks refined on each face's own crop
    when ``options.refine_landmarks`` (steadier alignment, see ``refine_landmarks``)."""
    faces = detector.detect(image)
    if not options.refine_landmarks:
        return faces
    refined = []
    for face in faces:
        points = refine_landmarks(image, face.landmark_array, detector)
        if points is not None:
            face = Face(face.box, face.score, tuple((float(x), float(y)) for x, y in points))
        refined.append(face)
    return refined


def select_faces(image: np.ndarray, faces: Sequence[Face], selector: FaceSelector | None = None) -> list[FaceDecision]:
    """2. The selection hook: one :class:`FaceDecision` per face; without a selector every face is replaced."""
    if selector is None:
        return [REPLACE] * len(faces)
    decisions = list(selector(image, faces))
    if len(decisions) != len(faces) or not all(isinstance(d, FaceDecision) for d in decisions):
        raise InputError("selector", f"{len(decisions)} decisions", f"one FaceDecision per face ({len(faces)})")
    return decisions


def plan_crops(
    image: np.ndarray,
    faces: Sequence[Face],
    options: AnonymizeOptions,
    *,
    crop_size: int,
    eye_scale: float = 1.0,
    decisions: Sequence[FaceDecision] | None = None,
) -> list[FacePlan]:
    """3. One :class:`FacePlan` per face, in order: its FFHQ alignment to ``crop_size``, the region its
    mask covers in ``image``, its seed, its layer, or why it is left alone.

    ``eye_scale`` is the detector's (``FaceDetector.eye_scale``). A kept face (``decisions``) is left
    alone even when small; a face under ``options.min_face_size`` is left alone.
    """
    if decisions is None:
        decisions = [REPLACE] * len(faces)
    if len(decisions) != len(faces):
        raise InputError("decisions", len(decisions), f"one decision per face ({len(faces)})")
    height, width = image.shape[:2]
    mask = face_mask(crop_size)
    plans = []
    for index, (face, decision) in enumerate(zip(faces, decisions)):
        alignment = ffhq_alignment(face.landmark_array, crop_size, eye_scale=eye_scale)
        region = face_region(alignment, mask, (width, height))
        if decision.keep:
            action = FaceAction.KEPT
        elif face.size < options.min_face_size:
            action = FaceAction.IGNORED_TOO_SMALL
        elif region is None:
            action = FaceAction.OUTSIDE_IMAGE
        else:
            action = None
        plans.append(
            FacePlan(
                index=index,
                face=face,
                decision=decision,
                alignment=alignment,
                region=region,
                seed=options.seed + index,
                action=action,
            )
        )
    return _assign_layers(plans)


def _assign_layers(plans: list[FacePlan]) -> list[FacePlan]:
    """Faces to replace whose masks overlap go to different layers, larger faces first."""
    layers: dict[int, int] = {}
    placed: list[FacePlan] = []
    for plan in sorted((p for p in plans if p.replace), key=lambda p: -p.face.size):
        taken = {layers[other.index] for other in placed if plan.region.overlaps(other.region)}
        layers[plan.index] = next(layer for layer in range(len(placed) + 1) if layer not in taken)
        placed.append(plan)
    return [dataclasses.replace(plan, layer=layers[plan.index]) if plan.index in layers else plan for plan in plans]


def crop_layers(plans: Sequence[FacePlan]) -> list[list[FacePlan]]:
    """The faces to replace, grouped by layer in the order they must be cut and pasted."""
    to_replace = [plan for plan in plans if plan.replace]
    return [[plan for plan in to_replace if plan.layer == layer] for layer in sorted({p.layer for p in to_replace})]


def cut_crops(image: np.ndarray, plans: Sequence[FacePlan]) -> list[FaceCrop]:
    """4. The aligned crop of each planned face (parts outside the image filled by reflection, as FFHQ)."""
    return [FaceCrop(plan=plan, pixels=crop_face(image, plan.alignment)) for plan in plans]


def replace_crops(
    replacer: FaceReplacer,
    crops: Sequence[FaceCrop],
    *,
    batch_size: int,
    sources: Sequence[np.ndarray | None] | None = None,
) -> list[Replacement]:
    """5. Replace crops in batches of ``batch_size``; one :class:`Replacement` per crop, in order.

    ``sources`` (one per crop, or None) are identity sources handed to the replacer (see
    ``FaceReplacer``). A batch that raises is retried face by face, so one bad face does not sink the
    others; a face that still fails (or comes back None) gets ``action=FAILED`` and its error.
    """
    if sources is not None and len(sources) != len(crops):
        raise InputError("sources", f"{len(sources)} sources", f"one per crop ({len(crops)}) or None")
    results: list[Replacement] = []
    for start in range(0, len(crops), batch_size):
        batch = list(crops[start : start + batch_size])
        batch_sources = None if sources is None else list(sources[start : start + batch_size])
        results.extend(_replace_batch(replacer, batch, batch_sources))
    return results


def _replace_batch(
    replacer: FaceReplacer, crops: list[FaceCrop], sources: list[np.ndarray | None] | None
) -> list[Replacement]:
    try:
        pixels, seeds = [crop.pixels for crop in crops], [crop.seed for crop in crops]
        outputs = replacer(pixels, seeds) if sources is None else replacer(pixels, seeds, sources)
        if len(outputs) != len(crops):
            raise RuntimeError(f"the replacer returned {len(outputs)} crops for {len(crops)} faces")
    except Exception as error:  # noqa: BLE001 - any failure must become a reported, fail-closed face
        if len(crops) > 1:
            return [
                result
                for i, crop in enumerate(crops)
                for result in _replace_batch(replacer, [crop], None if sources is None else [sources[i]])
            ]
        return [Replacement(pixels=None, action=FaceAction.FAILED, error=f"{type(error).__name__}: {error}")]
    return [
        Replacement(pixels=output, action=FaceAction(replacer.action))
        if output is not None
        else Replacement(pixels=None, action=FaceAction.FAILED, error="the model returned a blank image")
        for output in outputs
    ]


def apply_on_error(replacements: Sequence[Replacement], on_error: str, crop_size: int) -> list[Replacement]:
    """``on_error="redact"``: a failed face becomes a black crop (``blacked_out_on_error``, error kept);
    ``"fail"``: failures stay failures, and the image must not be written."""
    if on_error == "fail":
        return list(replacements)
    if on_error != "redact":
        raise InputError("on_error", on_error, "one of fail, redact")
    black = np.zeros((crop_size, crop_size, 3), dtype=np.uint8)
    return [
        Replacement(pixels=black, action=FaceAction.BLACKED_OUT_ON_ERROR, error=r.error) if r.pixels is None else r
        for r in replacements
    ]


def paste_faces(image: np.ndarray, crops: Sequence[FaceCrop], replacements: Sequence[Replacement]) -> np.ndarray:
    """6. A copy of ``image`` with every replaced crop blended back under its soft mask.

    Failed replacements (no pixels) are not pasted; pixels outside the pasted faces' masks keep their
    exact values.
    """
    if len(replacements) != len(crops):
        raise InputError("replacements", len(replacements), f"one per crop ({len(crops)})")
    out = np.array(image, copy=True)
    for crop, replacement in zip(crops, replacements):
        if replacement.pixels is not None:
            paste_face(out, replacement.pixels, crop.plan.alignment, crop.plan.region)
    return out


def face_outcomes(plans: Sequence[FacePlan], replacements: Mapping[int, Replacement]) -> list[FaceOutcome]:
    """7. One :class:`FaceOutcome` per planned face: its plan's reason to leave it alone, its replacement
    (by ``FacePlan.index``), or ``not_processed`` when the image failed before its turn."""
    outcomes = []
    for plan in plans:
        replacement = replacements.get(plan.index)
        if plan.action is not None:
            action, error = plan.action, None
        elif replacement is not None:
            action, error = replacement.action, replacement.error
        else:
            action, error = FaceAction.NOT_PROCESSED, None
        outcomes.append(
            FaceOutcome(
                face=plan.face,
                action=action,
                error=error,
                reason=plan.decision.reason,
                matched_reference=plan.decision.matched_reference,
                distance=plan.decision.distance,
            )
        )
    return outcomes


def failure_message(plans: Sequence[FacePlan], replacements: Mapping[int, Replacement]) -> str | None:
    """Why an image must not be written: the first face that could not be replaced, or None."""
    for plan in plans:
        replacement = replacements.get(plan.index)
        if replacement is not None and replacement.pixels is None:
            return f"face {plan.index} could not be anonymized ({replacement.error})"
    return None


__all__ = [
    "REPLACE",
    "FaceCrop",
    "FaceDecision",
    "FacePlan",
    "FaceSelector",
    "Replacement",
    "apply_on_error",
    "crop_layers",
    "cut_crops",
    "face_outcomes",
    "failure_message",
    "find_faces",
    "paste_faces",
    "plan_crops",
    "replace_crops",
    "select_faces",
]
