"""Whole photos: find every face, anonymize them in batches, blend them back, fail closed.

``anonymize_photo`` (one image) and ``anonymize_photos`` (several, batched together) are what the
command line, a web app and the tests all call: a PIL image and options in, the new image and the
faces found out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image

from ..detection import Face, FaceDetector
from ..geometry.alignment import Alignment, crop_face, ffhq_alignment, refine_landmarks
from ..geometry.blending import FaceRegion, face_mask, face_region, paste_face
from ..io.images import rgb_array
from ..replacers import ACTIONS, MODES, DiffusionAnonymizer, FaceReplacer, Redactor


ON_ERROR_CHOICES = ("fail", "redact")
REDACTED_ON_ERROR = "blacked_out_on_error"
IGNORED_SMALL = "ignored_too_small"


@dataclass(frozen=True)
class AnonymizeOptions:
    """How to treat the faces of a photo.

    Args:
        mode: ``anonymize`` (the diffusion model), or ``blur``, ``pixelate``, ``black`` (no model).
        degree: anonymization degree for the model (the authors use 1.25).
        steps: denoising steps (the authors use 25 for whole photos).
        guidance: classifier-free guidance scale (the authors use 4.0).
        seed: face ``i`` of a photo is drawn with seed ``seed + i``, whatever the batch.
        batch_size: faces per model call (across photos when several are given).
        crop_size: side of the aligned crops; None = the model's own size (512), or 256 for redaction.
        min_face_size: detections whose box is smaller than this many pixels (longer side) are
            reported but left alone.
        on_error: ``fail`` (no image when a face could not be anonymized) or ``redact`` (black it out).
        refine_landmarks: re-detect each face on its own crop for a steadier alignment.
    """

    mode: str = "anonymize"
    degree: float = 1.25
    steps: int = 25
    guidance: float = 4.0
    seed: int = 0
    batch_size: int = 4
    crop_size: int | None = None
    min_face_size: float = 0.0
    on_error: str = "fail"
    refine_landmarks: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: got {self.mode!r}, expected one of {', '.join(MODES)}")
        if not 0.0 <= self.degree <= 10.0:
            raise ValueError(f"degree: got {self.degree!r}, expected a number from 0 to 10 (the authors use 1.25)")
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps: got {self.steps!r}, expected a positive integer")
        if self.guidance < 0:
            raise ValueError(f"guidance: got {self.guidance!r}, expected a number >= 0")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed: got {self.seed!r}, expected a non-negative integer")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"batch_size: got {self.batch_size!r}, expected a positive integer")
        if self.crop_size is not None and (int(self.crop_size) != self.crop_size or self.crop_size < 16):
            raise ValueError(f"crop_size: got {self.crop_size!r}, expected None or an integer of at least 16")
        if self.min_face_size < 0:
            raise ValueError(f"min_face_size: got {self.min_face_size!r}, expected a number of pixels >= 0")
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error: got {self.on_error!r}, expected one of {', '.join(ON_ERROR_CHOICES)}")


@dataclass(frozen=True)
class FaceOutcome:
    """A face found in the photo and what was done to it.

    ``action``: ``anonymized``, ``blurred``, ``pixelated``, ``blacked_out``, ``blacked_out_on_error``,
    ``ignored_too_small``, or None when it could not be anonymized (``error`` says why).
    """

    face: Face
    action: str | None
    error: str | None = None

    def to_json(self) -> dict:
        return {**self.face.to_json(), "action": self.action, "error": self.error}


@dataclass
class PhotoResult:
    """The outcome for one photo.

    ``status`` is ``ok``, ``no_faces`` (the image comes back unchanged) or ``error``; then ``image``
    is None, because a face could not be anonymized and the photo must not leave with it intact.
    """

    image: PIL.Image.Image | None
    outcomes: list[FaceOutcome]
    status: str
    error: str | None = None

    @property
    def faces(self) -> list[Face]:
        return [outcome.face for outcome in self.outcomes]


def make_replacer(options: AnonymizeOptions, pipeline: Any = None) -> FaceReplacer:
    """The replacer for ``options.mode``: the diffusion model for ``anonymize``, else a redactor."""
    if options.mode == "anonymize":
        return DiffusionAnonymizer(
            pipeline,
            degree=options.degree,
            steps=options.steps,
            guidance=options.guidance,
            crop_size=options.crop_size,
        )
    return Redactor(options.mode, crop_size=options.crop_size or 256)


def detect_faces(image: np.ndarray, detector: FaceDetector, options: AnonymizeOptions) -> list[Face]:
    """Detect faces and, if asked, refine their landmarks on their own crops (see ``refine_landmarks``)."""
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


@dataclass
class _Job:
    """One face's state while a group of photos is processed."""

    photo: int
    index: int
    face: Face
    alignment: Alignment
    region: FaceRegion | None
    layer: int = 0
    action: str | None = None
    error: str | None = None


@dataclass
class _Photo:
    rgb: np.ndarray
    jobs: list[_Job] = field(default_factory=list)
    failed: str | None = None


def _assign_layers(jobs: list[_Job]) -> None:
    """Faces whose masks overlap go to different layers, larger faces first.

    A layer is cropped only after the layers before it were pasted, so a face's crop never carries a
    neighbour's original face back into the photo; faces within a layer do not touch and are batched.
    """
    placed: list[_Job] = []
    for job in sorted(jobs, key=lambda j: -j.face.size):
        taken = {other.layer for other in placed if job.region.overlaps(other.region)}
        job.layer = next(layer for layer in range(len(placed) + 1) if layer not in taken)
        placed.append(job)


def _replace_batch(replacer: FaceReplacer, crops: list[np.ndarray], seeds: list[int]) -> list[np.ndarray | str]:
    """Run one batch; if it raises, retry face by face so one bad face does not sink the others."""
    try:
        results = replacer(crops, seeds)
        return [r if r is not None else "the model returned a blank image" for r in results]
    except Exception as error:  # noqa: BLE001 - any failure must become a reported, fail-closed face
        if len(crops) == 1:
            return [f"{type(error).__name__}: {error}"]
    out: list[np.ndarray | str] = []
    for crop, seed in zip(crops, seeds):
        out.extend(_replace_batch(replacer, [crop], [seed]))
    return out


def anonymize_photos(
    images: Sequence[PIL.Image.Image | np.ndarray],
    *,
    detector: FaceDetector,
    pipeline: Any = None,
    options: AnonymizeOptions = AnonymizeOptions(),
    faces: Sequence[Sequence[Face]] | None = None,
    replacer: FaceReplacer | None = None,
) -> list[PhotoResult]:
    """Anonymize every face of several photos, batching faces across photos.

    Args:
        images: upright photos (PIL images in any mode, or RGB uint8 arrays).
        detector: a loaded face detector (see ``face_anon.detection.load_detector``).
        pipeline: a loaded ``FaceAnonPipeline``; needed only for ``mode="anonymize"``.
        options: see :class:`AnonymizeOptions`.
        faces: faces already found per photo (skips detection), e.g. from ``detect_faces``.
        replacer: use this instead of the one ``options.mode`` selects.

    Returns one :class:`PhotoResult` per photo, in order; result images are RGB.
    """
    replacer = replacer or make_replacer(options, pipeline)
    size = replacer.crop_size
    mask = face_mask(size)
    photos = [_Photo(rgb=np.array(rgb_array(im) if isinstance(im, PIL.Image.Image) else im)) for im in images]

    # 1. Detect, align and place every face.
    for number, photo in enumerate(photos):
        if photo.rgb.ndim != 3 or photo.rgb.shape[2] != 3 or photo.rgb.dtype != np.uint8:
            raise ValueError(f"images[{number}]: expected a PIL image or an RGB uint8 array, got {photo.rgb.shape}")
        found = list(faces[number]) if faces is not None else detect_faces(photo.rgb, detector, options)
        height, width = photo.rgb.shape[:2]
        for index, face in enumerate(found):
            alignment = ffhq_alignment(face.landmark_array, size, eye_scale=detector.eye_scale)
            job = _Job(number, index, face, alignment, face_region(alignment, mask, (width, height)))
            if face.size < options.min_face_size:
                job.action = IGNORED_SMALL
            elif job.region is None:
                job.action = replacer.action  # its mask misses the photo: nothing of it is visible
            photo.jobs.append(job)
        _assign_layers([job for job in photo.jobs if job.action is None])

    # 2. Layer by layer, crop, replace in batches, and paste back.
    pending = [job for photo in photos for job in photo.jobs if job.action is None]
    for layer in sorted({job.layer for job in pending}):
        work = [job for job in pending if job.layer == layer and photos[job.photo].failed is None]
        crops = [crop_face(photos[job.photo].rgb, job.alignment) for job in work]
        results: list[np.ndarray | str] = []
        for start in range(0, len(work), options.batch_size):
            batch = work[start : start + options.batch_size]
            seeds = [options.seed + job.index for job in batch]
            results.extend(_replace_batch(replacer, crops[start : start + options.batch_size], seeds))
        for job, result in zip(work, results):
            photo = photos[job.photo]
            if isinstance(result, str):
                job.error = result
                if options.on_error == "redact":
                    result, job.action = np.zeros((size, size, 3), dtype=np.uint8), REDACTED_ON_ERROR
                else:
                    photo.failed = photo.failed or f"face {job.index} could not be anonymized ({result})"
                    continue
            else:
                job.action = replacer.action
            if photo.failed is None:
                paste_face(photo.rgb, result, job.alignment, job.region)

    # 3. Report.
    results_out = []
    for photo in photos:
        outcomes = [FaceOutcome(job.face, job.action, job.error) for job in photo.jobs]
        if photo.failed is not None:
            results_out.append(PhotoResult(None, outcomes, "error", photo.failed))
        else:
            status = "ok" if photo.jobs else "no_faces"
            results_out.append(PhotoResult(PIL.Image.fromarray(photo.rgb), outcomes, status))
    return results_out


def anonymize_photo(
    image: PIL.Image.Image | np.ndarray,
    *,
    detector: FaceDetector,
    pipeline: Any = None,
    options: AnonymizeOptions = AnonymizeOptions(),
) -> PhotoResult:
    """Anonymize every face of one upright photo; see :func:`anonymize_photos`.

    >>> result = anonymize_photo(image, detector=load_detector(), pipeline=pipe)  # doctest: +SKIP
    >>> result.image.save("out.png"); [face.box for face in result.faces]  # doctest: +SKIP
    """
    return anonymize_photos([image], detector=detector, pipeline=pipeline, options=options)[0]


__all__ = [
    "ACTIONS",
    "AnonymizeOptions",
    "FaceOutcome",
    "PhotoResult",
    "anonymize_photo",
    "anonymize_photos",
    "detect_faces",
    "make_replacer",
]
