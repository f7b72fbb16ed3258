"""Evaluate a whole anonymization: pair the files, compare each pair, summarize the set."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ..detection import FaceDetector
from ..identity.embedders import FaceEmbedder
from .compare import EvaluationOptions, FileRecord, compare_pair
from .pairs import MediaPair, pair_media
from .summary import summarize


def evaluate(
    original: str | os.PathLike,
    anonymized: str | os.PathLike,
    *,
    detector: FaceDetector,
    embedder: FaceEmbedder,
    options: EvaluationOptions = EvaluationOptions(),
    skip_unpaired: bool = False,
    on_file: Callable[[FileRecord], None] | None = None,
) -> dict:
    """Compare every photo and video of ``original`` (a file or folder) with its anonymized version.

    Files pair by relative path (see ``pair_media``, which raises for unpaired files unless
    ``skip_unpaired``). ``on_file`` is called with each file's record as it is done (progress).
    Returns the report's JSON object (see :mod:`.summary`); a file that cannot be compared is an
    ``error`` row there, the others are evaluated.

    >>> report = evaluate("photos/", "anonymized/", detector=load_detector(), embedder=load_embedder())  # doctest: +SKIP
    >>> report["reidentification_rate"], report["detection_retention"]  # doctest: +SKIP
    """
    pairs, unpaired = pair_media(original, anonymized, skip_unpaired=skip_unpaired)
    return evaluate_pairs(
        pairs,
        detector=detector,
        embedder=embedder,
        options=options,
        on_file=on_file,
        original=str(original),
        anonymized=str(anonymized),
        unpaired=unpaired,
    )


def evaluate_pairs(
    pairs: Sequence[MediaPair],
    *,
    detector: FaceDetector,
    embedder: FaceEmbedder,
    options: EvaluationOptions = EvaluationOptions(),
    on_file: Callable[[FileRecord], None] | None = None,
    original: str = "",
    anonymized: str = "",
    unpaired: Sequence[str] = (),
) -> dict:
    """:func:`evaluate` for pairs already made by ``pair_media`` (``original``, ``anonymized`` and
    ``unpaired`` are only reported)."""
    records = []
    for pair in pairs:
        record = compare_pair(pair, detector=detector, embedder=embedder, options=options)
        records.append(record)
        if on_file is not None:
            on_file(record)
    return summarize(
        records,
        embedder_name=embedder.name,
        threshold=options.threshold if options.threshold is not None else embedder.threshold,
        options=options,
        original=original,
        anonymized=anonymized,
        unpaired=unpaired,
    )


__all__ = ["evaluate", "evaluate_pairs"]
