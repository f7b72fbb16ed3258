"""Face replacers: what turns an aligned face crop into its anonymized version.

A replacer takes a batch of aligned crops (and one seed per crop) and returns the new crops; the
photo code warps them back under the soft face mask. The diffusion model is one replacer; blurring,
pixelating and blacking out are others that need no model (the authors ship these too), so every
mode shares the detector, the alignment, the masks and the fail-closed bookkeeping.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import cv2
import numpy as np
import PIL.Image

REDACTION_MODES = ("blur", "pixelate", "black")
MODES = ("anonymize", *REDACTION_MODES)
# Past tense for the report: what happened to a face.
ACTIONS = {"anonymize": "anonymized", "blur": "blurred", "pixelate": "pixelated", "black": "blacked_out"}


class FaceReplacer(Protocol):
    """Turns aligned face crops into replacements of the same size.

    ``action`` names what it does in reports; ``crop_size`` is the side of the crops it wants.
    ``__call__`` returns one array per crop, or None for a crop it could not replace (the caller
    then fails closed); it raises if the whole batch failed.
    """

    action: str
    crop_size: int

    def __call__(self, crops: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray | None]: ...


def redact_crop(crop: np.ndarray, mode: str) -> np.ndarray:
    """Blur, pixelate or black out a whole aligned crop (the mask later limits it to the face).

    Strengths are fractions of the crop, so a face is treated alike at any crop size: the blur's
    sigma is 1/12 of the side (about a seventh of the face width, which wipes out eyes and mouth),
    pixelation leaves 16 blocks across the crop (about 9 across the face).
    """
    size = crop.shape[0]
    if mode == "blur":
        sigma = size / 12.0
        return cv2.GaussianBlur(crop, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    if mode == "pixelate":
        small = cv2.resize(crop, (16, 16), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_NEAREST)
    if mode == "black":
        return np.zeros_like(crop)
    raise ValueError(f"mode: got {mode!r}, expected one of {', '.join(REDACTION_MODES)}")


class Redactor:
    """A replacer that needs no model: ``blur``, ``pixelate`` or ``black``."""

    def __init__(self, mode: str, crop_size: int = 256) -> None:
        if mode not in REDACTION_MODES:
            raise ValueError(f"mode: got {mode!r}, expected one of {', '.join(REDACTION_MODES)}")
        if int(crop_size) < 16:
            raise ValueError(f"crop_size: got {crop_size!r}, expected an integer of at least 16")
        self.mode = mode
        self.action = ACTIONS[mode]
        self.crop_size = int(crop_size)

    def __call__(self, crops: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray | None]:
        return [redact_crop(crop, self.mode) for crop in crops]


class DiffusionAnonymizer:
    """The face model as a replacer: one pipeline call per batch, one seeded generator per face.

    Each face gets ``torch.Generator().manual_seed(seed)`` with its own seed, and the pipeline
    treats a batch like the same images run one by one, so results do not depend on the batch size.
    A result that is one flat colour (what NaNs in half precision decode to) counts as a failure.

    Args:
        pipeline: a loaded ``FaceAnonPipeline`` (or anything called the same way).
        degree: ``anonymization_degree``; 0 would keep the identity, the authors use 1.25.
        steps: denoising steps (the authors use 25 for whole photos).
        guidance: classifier-free guidance scale.
        crop_size: side of the crops; default the pipeline's own image size (512 for the published model).
    """

    action = ACTIONS["anonymize"]

    def __init__(
        self,
        pipeline: Any,
        *,
        degree: float = 1.25,
        steps: int = 25,
        guidance: float = 4.0,
        crop_size: int | None = None,
    ) -> None:
        if pipeline is None:
            raise ValueError("pipeline: got None, expected a loaded FaceAnonPipeline for mode 'anonymize'")
        if crop_size is None:
            crop_size = int(pipeline.default_image_size)
        self.pipeline = pipeline
        self.degree = float(degree)
        self.steps = int(steps)
        self.guidance = float(guidance)
        self.crop_size = int(crop_size)

    def __call__(self, crops: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray | None]:
        import torch

        images = [PIL.Image.fromarray(crop) for crop in crops]
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        output = self.pipeline(
            image=images,
            anonymization_degree=self.degree,
            guidance_scale=self.guidance,
            num_inference_steps=self.steps,
            height=self.crop_size,
            width=self.crop_size,
            generator=generators,
            output_type="pil",
        )
        results: list[np.ndarray | None] = []
        for image in output.images:
            if image.size != (self.crop_size, self.crop_size):
                image = image.resize((self.crop_size, self.crop_size), PIL.Image.LANCZOS)
            array = np.asarray(image.convert("RGB"))
            results.append(None if float(array.std()) < 1.0 else array)
        if len(results) != len(crops):
            raise RuntimeError(f"the pipeline returned {len(results)} images for {len(crops)} faces")
        return results
