"""What every face replacer shares: the protocol, the modes and the vocabulary of what happened to a face.

A replacer takes a batch of aligned crops (one seed per crop, and optionally one identity source per
crop) and returns the new crops; the orchestration warps them back under the soft face mask. The
diffusion model is one replacer; blurring, pixelating and blacking out are others that need no model,
so every mode shares the detector, the alignment, the masks and the fail-closed bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Protocol

import numpy as np


class FaceAction(str, Enum):
    """What happened to one face, as reports say it (the value is the report's string)."""

    ANONYMIZED = "anonymized"
    BLURRED = "blurred"
    PIXELATED = "pixelated"
    BLACKED_OUT = "blacked_out"
    BLACKED_OUT_ON_ERROR = "blacked_out_on_error"  # the replacer failed and ``on_error="redact"`` asked for black
    KEPT = "kept"  # a selection hook chose to leave it as it is (``reason`` says why)
    IGNORED_TOO_SMALL = "ignored_too_small"  # smaller than ``min_face_size``: left as it is on purpose
    OUTSIDE_IMAGE = "outside_image"  # its mask misses the image: no pixel of it is visible
    FAILED = "failed"  # could not be replaced (``error`` says why); the photo is not written
    NOT_PROCESSED = "not_processed"  # the photo failed before this face's turn; nothing was done to it

    def __str__(self) -> str:
        return self.value


REDACTION_MODES = ("blur", "pixelate", "black")
MODES = ("anonymize", *REDACTION_MODES)
# What each mode does to a face.
ACTIONS = {
    "anonymize": FaceAction.ANONYMIZED,
    "blur": FaceAction.BLURRED,
    "pixelate": FaceAction.PIXELATED,
    "black": FaceAction.BLACKED_OUT,
}


class FaceReplacer(Protocol):
    """Turns aligned face crops into replacements of the same size.

    ``action`` names what it does in reports; ``crop_size`` is the side of the crops it wants.
    ``__call__`` gets RGB uint8 crops of ``crop_size`` x ``crop_size``, one seed per crop (every random
    draw for crop ``i`` comes from ``seeds[i]``, so a result does not depend on the batch), and
    optionally one identity source per crop (an RGB uint8 face of any size, or None): a replacer that
    swaps identities puts ``sources[i]`` into crop ``i``, one that does not ignores them. It returns one
    array per crop, or None for a crop it could not replace (the caller then fails closed); it raises if
    the whole batch failed.
    """

    action: FaceAction
    crop_size: int

    def __call__(
        self,
        crops: Sequence[np.ndarray],
        seeds: Sequence[int],
        sources: Sequence[np.ndarray | None] | None = None,
    ) -> list[np.ndarray | None]: ...
