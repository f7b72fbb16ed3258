"""Replacers that need no model: blur, pixelate, black."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..errors import InputError
from .base import ACTIONS, REDACTION_MODES


MIN_CROP_SIZE = 16


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
    raise InputError("mode", mode, f"one of {', '.join(REDACTION_MODES)}")


class Redactor:
    """A replacer that needs no model: ``blur``, ``pixelate`` or ``black``; identity sources are ignored."""

    def __init__(self, mode: str, crop_size: int = 256) -> None:
        if mode not in REDACTION_MODES:
            raise InputError("mode", mode, f"one of {', '.join(REDACTION_MODES)}")
        if int(crop_size) < MIN_CROP_SIZE:
            raise InputError("crop_size", crop_size, f"an integer of at least {MIN_CROP_SIZE}")
        self.mode = mode
        self.action = ACTIONS[mode]
        self.crop_size = int(crop_size)

    def __call__(
        self,
        crops: Sequence[np.ndarray],
        seeds: Sequence[int],
        sources: Sequence[np.ndarray | None] | None = None,
    ) -> list[np.ndarray | None]:
        return [redact_crop(crop, self.mode) for crop in crops]
