"""Matching faces against reference people, with an uncertainty band that fails towards privacy.

Pure functions of embeddings: a face's nearest reference and its distance give a verdict (``same``,
``different`` or ``uncertain``), and the verdict with a selection mode gives the decision:

- ``keep``: faces of the reference people stay as they are; everyone else is anonymized;
- ``only``: only the reference people are anonymized; everyone else stays.

A face is kept only on a *certain* verdict. A distance within ``band`` of the threshold, or a face
too small to identify, is ``uncertain`` and anonymized in both modes: in doubt, anonymize.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from ..errors import InputError


SELECTION_MODES = ("keep", "only")
# Half-width of the band around the threshold where a distance decides nothing (in distance units).
DEFAULT_UNCERTAINTY_BAND = 0.05
# Below this eye distance (pixels) dlib's embedding of a face drifts as far from its own full-size
# embedding as from another person's (benchmarks/README.md): its identity is unknown.
MIN_EYE_DISTANCE = 16.0


class Verdict(str, Enum):
    """Whether a face is one of the reference people (the value is the report's string)."""

    SAME = "same"
    DIFFERENT = "different"
    UNCERTAIN = "uncertain"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, kw_only=True)
class Reference:
    """One reference person: a name for reports (the photo's path), the embedding of their face, and
    the sha256 of the photo file (what a run records, so a resumed run notices a changed reference)."""

    name: str
    embedding: np.ndarray
    sha256: str | None = None


@dataclass(frozen=True)
class ReferenceGallery:
    """The reference people to match faces against (see ``load_references``)."""

    references: tuple[Reference, ...]

    def __post_init__(self) -> None:
        if not self.references:
            raise InputError("references", detail="no reference person given")
        sizes = {reference.embedding.shape for reference in self.references}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise InputError("references", f"embeddings of shapes {sorted(sizes)}", "1-d embeddings of one size")

    @property
    def names(self) -> list[str]:
        return [reference.name for reference in self.references]

    @property
    def matrix(self) -> np.ndarray:
        """The embeddings stacked, shape (references, D)."""
        return np.stack([reference.embedding for reference in self.references]).astype(np.float64)

    def nearest(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each row of ``embeddings`` (N, D): the index of the nearest reference and its distance."""
        embeddings = np.asarray(embeddings, dtype=np.float64).reshape(-1, self.matrix.shape[1])
        distances = np.linalg.norm(embeddings[:, None, :] - self.matrix[None, :, :], axis=2)
        if distances.shape[0] == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        best = np.argmin(distances, axis=1)
        return best, distances[np.arange(len(best)), best]


@dataclass(frozen=True, kw_only=True)
class IdentityMatch:
    """A face compared with the gallery: its nearest reference, the distance, and the verdict.

    ``nearest`` is the closest reference whatever the verdict; ``matched_reference`` is it only for a
    ``same`` verdict. ``note`` says in words why the verdict is what it is.
    """

    nearest: str
    distance: float
    verdict: Verdict
    note: str

    @property
    def uncertain(self) -> bool:
        return self.verdict is Verdict.UNCERTAIN

    @property
    def matched_reference(self) -> str | None:
        return self.nearest if self.verdict is Verdict.SAME else None


def check_matching(threshold: float, band: float) -> None:
    """Raise :class:`InputError` unless ``0 < threshold`` and ``0 <= band < threshold``."""
    if not (np.isfinite(threshold) and threshold > 0):
        raise InputError("threshold", threshold, "a distance > 0 (dlib: 0.6)")
    if not (np.isfinite(band) and 0 <= band < threshold):
        raise InputError("band", band, f"a distance >= 0 and below the threshold ({threshold:g})")


def verdict_for(distance: float, *, threshold: float, band: float = DEFAULT_UNCERTAINTY_BAND) -> Verdict:
    """``same`` below ``threshold - band``, ``different`` above ``threshold + band``, else ``uncertain``
    (the band's edges included: a tie never keeps a face)."""
    if distance < threshold - band:
        return Verdict.SAME
    if distance > threshold + band:
        return Verdict.DIFFERENT
    return Verdict.UNCERTAIN


def match_embeddings(
    embeddings: np.ndarray,
    gallery: ReferenceGallery,
    *,
    threshold: float,
    band: float = DEFAULT_UNCERTAINTY_BAND,
    eye_distances: Sequence[float] | None = None,
    min_eye_distance: float = MIN_EYE_DISTANCE,
) -> list[IdentityMatch]:
    """Compare each embedding (rows of an (N, D) array) with the gallery.

    ``eye_distances`` (pixels, one per face) mark faces smaller than ``min_eye_distance`` as
    ``uncertain`` whatever their distance: at that size every face looks alike to the embedder.
    """
    check_matching(threshold, band)
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if eye_distances is not None and len(eye_distances) != len(embeddings):
        raise InputError("eye_distances", len(eye_distances), f"one per embedding ({len(embeddings)})")
    best, distances = gallery.nearest(embeddings)
    names = gallery.names
    matches = []
    for i, (index, distance) in enumerate(zip(best, distances)):
        name, distance = names[int(index)], float(distance)
        if not np.isfinite(distance):
            verdict, note = Verdict.UNCERTAIN, "uncertain: the embedding is not finite"
        elif eye_distances is not None and eye_distances[i] < min_eye_distance:
            verdict = Verdict.UNCERTAIN
            note = f"uncertain: too small to identify (eye distance {eye_distances[i]:.0f} px < {min_eye_distance:g})"
        else:
            verdict = verdict_for(distance, threshold=threshold, band=band)
            if verdict is Verdict.SAME:
                note = f"matches {_short(name)} (distance {distance:.3f} < {threshold - band:.3f})"
            elif verdict is Verdict.DIFFERENT:
                note = f"matches no reference (nearest {_short(name)} at {distance:.3f} > {threshold + band:.3f})"
            else:
                note = (
                    f"uncertain: distance {distance:.3f} to {_short(name)} is within {band:g} "
                    f"of the threshold {threshold:g}"
                )
        matches.append(IdentityMatch(nearest=name, distance=distance, verdict=verdict, note=note))
    return matches


def keeps(match: IdentityMatch, mode: str) -> bool:
    """Whether a face stays as it is: ``keep`` mode keeps certain matches, ``only`` mode keeps certain
    non-matches; an uncertain face is never kept."""
    if mode not in SELECTION_MODES:
        raise InputError("mode", mode, f"one of {', '.join(SELECTION_MODES)}")
    return match.verdict is (Verdict.SAME if mode == "keep" else Verdict.DIFFERENT)


def track_embedding(embeddings: np.ndarray) -> np.ndarray:
    """The element-wise median of a track's embeddings (T, D): one identity per track, robust to the
    odd blurred or turned frame."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise InputError("embeddings", f"an array of shape {embeddings.shape}", "(frames, D) with frames >= 1")
    return np.median(embeddings, axis=0)


def _short(name: str) -> str:
    return os.path.basename(name) or name


__all__ = [
    "DEFAULT_UNCERTAINTY_BAND",
    "MIN_EYE_DISTANCE",
    "SELECTION_MODES",
    "IdentityMatch",
    "Reference",
    "ReferenceGallery",
    "Verdict",
    "check_matching",
    "keeps",
    "match_embeddings",
    "track_embedding",
    "verdict_for",
]
