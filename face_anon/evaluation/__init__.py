"""Evidence that anonymization worked: identity gone, face kept, pose and expression kept.

``evaluate(ORIGINAL, ANONYMIZED, detector=..., embedder=...)`` pairs photos and videos by relative
path, finds each original face's counterpart in the anonymized version, and measures
re-identification (and rank-1), detection retention, landmark and pose preservation and, for
videos, identity stability and flicker (see :mod:`.summary` for the definitions). ``write_reports``
writes the JSON report and a Markdown report with a histogram. The ``face-anon-evaluate`` command
runs both.
"""

from .compare import EvaluationOptions, FaceRecord, FileRecord, compare_faces, compare_pair
from .evaluate import evaluate, evaluate_pairs
from .pairs import MediaPair, pair_media
from .report import histogram_png, report_json, report_markdown, write_reports
from .summary import summarize


__all__ = [
    "EvaluationOptions",
    "FaceRecord",
    "FileRecord",
    "MediaPair",
    "compare_faces",
    "compare_pair",
    "evaluate",
    "evaluate_pairs",
    "histogram_png",
    "pair_media",
    "report_json",
    "report_markdown",
    "summarize",
    "write_reports",
]
