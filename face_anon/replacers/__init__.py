"""Face replacers: what turns an aligned face crop into its anonymized version."""

from .base import ACTIONS, MODES, REDACTION_MODES, FaceAction, FaceReplacer
from .diffusion import DiffusionAnonymizer, load_pipeline
from .redaction import Redactor, redact_crop


__all__ = [
    "ACTIONS",
    "MODES",
    "REDACTION_MODES",
    "DiffusionAnonymizer",
    "FaceAction",
    "FaceReplacer",
    "Redactor",
    "load_pipeline",
    "redact_crop",
]
