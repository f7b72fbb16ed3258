"""How to treat the faces of a photo: one set of options, with one set of limits for Python and the CLI.

The command line checks each flag with :func:`check_option`, the same function ``AnonymizeOptions``
checks its fields with, so both accept exactly the same values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..replacers import MODES
from ..replacers.redaction import MIN_CROP_SIZE


ON_ERROR_CHOICES = ("fail", "redact")
# Far past any useful degree (the identity is gone by about 1.5): a larger value is a typo, e.g. 125 for 1.25.
MAX_ANONYMIZATION_DEGREE = 10.0


def _number(low: float, high: float = math.inf, *, low_open: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        return (value > low if low_open else value >= low) and value <= high

    return check


def _integer(low: int) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low

    return check


# option -> (test, what is allowed). A value passes when the test is true.
LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "mode": (lambda value: value in MODES, f"one of {', '.join(MODES)}"),
    "anonymization_degree": (
        _number(0.0, MAX_ANONYMIZATION_DEGREE),
        f"a number from 0 to {MAX_ANONYMIZATION_DEGREE:g} (the authors use 1.25)",
    ),
    "num_inference_steps": (_integer(1), "a positive integer"),
    "guidance_scale": (_number(0.0), "a finite number >= 0"),
    "seed": (_integer(0), "an integer >= 0"),
    "batch_size": (_integer(1), "a positive integer"),
    "crop_size": (lambda value: value is None or _integer(MIN_CROP_SIZE)(value), f"an integer >= {MIN_CROP_SIZE}"),
    "min_face_size": (_number(0.0), "a finite number of pixels >= 0"),
    "on_error": (lambda value: value in ON_ERROR_CHOICES, f"one of {', '.join(ON_ERROR_CHOICES)}"),
    "refine_landmarks": (lambda value: isinstance(value, bool), "True or False"),
}


def check_option(name: str, value: Any) -> Any:
    """Return ``value`` if option ``name`` allows it, else raise :class:`InputError` naming both."""
    test, expected = LIMITS[name]
    if not test(value):
        raise InputError(name, value, expected)
    return value


@dataclass(frozen=True, kw_only=True)
class AnonymizeOptions:
    """How to treat the faces of a photo.

    Args:
        mode: ``anonymize`` (the diffusion model), or ``blur``, ``pixelate``, ``black`` (no model).
        anonymization_degree: the model's ``anonymization_degree``, 0..10 (the authors use 1.25; 0 would
            keep each face's identity and is refused for faces without an identity source).
        num_inference_steps: denoising steps (the authors use 25 for whole photos).
        guidance_scale: classifier-free guidance scale (the authors use 4.0).
        seed: face ``i`` of a photo is drawn with seed ``seed + i``, whatever the batch.
        batch_size: faces handed to the replacer together (across photos when several are given); the
            diffusion model runs them as one call on a GPU, one face per call on the CPU.
        crop_size: side of the aligned crops; None = the model's own size (512), or 256 for redaction.
        min_face_size: faces whose box is smaller than this many pixels (longer side) are reported
            ``ignored_too_small`` and left alone.
        on_error: ``fail`` (no image when a face could not be replaced) or ``redact`` (black it out).
        refine_landmarks: re-detect each face on its own crop for a steadier alignment.

    Raises :class:`~face_anon.errors.InputError` (a ValueError) naming the first bad field.
    """

    mode: str = "anonymize"
    anonymization_degree: float = 1.25
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    seed: int = 0
    batch_size: int = 4
    crop_size: int | None = None
    min_face_size: float = 0.0
    on_error: str = "fail"
    refine_landmarks: bool = True

    def __post_init__(self) -> None:
        for option in dataclasses.fields(self):
            check_option(option.name, getattr(self, option.name))


# Options that change how work is grouped, not what is written.
_NOT_IN_FINGERPRINT = ("batch_size",)


def settings_fingerprint(options: AnonymizeOptions, settings: Mapping[str, Any] | None = None) -> str:
    """A sha256 over everything that decides what an output holds: ``options`` (bar ``batch_size``)
    and ``settings`` (the rest: metadata handling, detector, model, selection; JSON-serializable).

    Resuming skips an output only when the run that wrote it had the same fingerprint.
    """
    described = {key: value for key, value in dataclasses.asdict(options).items() if key not in _NOT_IN_FINGERPRINT}
    described["settings"] = dict(settings or {})
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


__all__ = [
    "LIMITS",
    "MAX_ANONYMIZATION_DEGREE",
    "ON_ERROR_CHOICES",
    "AnonymizeOptions",
    "check_option",
    "settings_fingerprint",
]
