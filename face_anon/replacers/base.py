"""What every face replacer shares: the protocol, the modes and the past-tense actions for reports.

A replacer takes a batch of aligned crops (and one seed per crop) and returns the new crops; the
photo code warps them back under the soft face mask. The diffusion model is one replacer; blurring,
pixelating and blacking out are others that need no model, so every mode shares the detector, the
alignment, the masks and the fail-closed bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


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
