"""The measures of an anonymization, as pure functions of boxes, landmarks and embeddings.

Landmarks are (5, 2) arrays in :data:`~face_anon.detection.LANDMARK_NAMES` order (image left eye,
right eye, nose, mouth corners); boxes are ``(x0, y0, x1, y1)``; distances are the embedder's
(Euclidean between embeddings). Angles are in degrees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..detection.base import box_iou


# Depth of the nose tip in front of the eye-mouth plane, as a fraction of the eye distance: the one
# anatomical constant of the yaw estimate (adult faces: about half the distance between the pupils).
NOSE_DEPTH = 0.5


def match_boxes(
    originals: Sequence[Sequence[float]], candidates: Sequence[Sequence[float]], *, min_iou: float = 0.3
) -> list[int | None]:
    """For each original box, the index of its counterpart among ``candidates`` (or None).

    One-to-one, greedy by overlap: the pair with the largest IoU is matched first; pairs below
    ``min_iou`` never match.
    """
    pairs = sorted(
        (
            (box_iou(o, c), i, j)
            for i, o in enumerate(originals)
            for j, c in enumerate(candidates)
            if box_iou(o, c) >= min_iou
        ),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    found: list[int | None] = [None] * len(originals)
    taken: set[int] = set()
    for _, i, j in pairs:
        if found[i] is None and j not in taken:
            found[i] = j
            taken.add(j)
    return found


def inter_ocular(landmarks: np.ndarray) -> float:
    """Distance between the two eye landmarks, in pixels."""
    points = np.asarray(landmarks, dtype=np.float64)
    return float(np.hypot(*(points[1] - points[0])))


def landmark_error(original: np.ndarray, anonymized: np.ndarray) -> float:
    """Mean distance between corresponding landmarks, divided by the original's inter-ocular distance."""
    original = np.asarray(original, dtype=np.float64)
    anonymized = np.asarray(anonymized, dtype=np.float64)
    scale = inter_ocular(original)
    if scale <= 0:
        return math.nan
    return float(np.mean(np.hypot(*(anonymized - original).T)) / scale)


def roll_angle(landmarks: np.ndarray) -> float:
    """In-plane rotation of the face: the angle of the line from the left to the right eye, in degrees
    (positive when the right eye is lower in the image)."""
    points = np.asarray(landmarks, dtype=np.float64)
    dx, dy = points[1] - points[0]
    return math.degrees(math.atan2(dy, dx))


def yaw_angle(landmarks: np.ndarray, *, nose_depth: float = NOSE_DEPTH) -> float:
    """Left-right head turn estimated from five landmarks, in degrees (positive: nose towards image right).

    With the roll undone, the nose tip sits off the line through the eye and mouth midpoints by
    ``nose_depth * eye_distance * sin(yaw)`` while the visible eye distance shrinks by ``cos(yaw)``,
    so ``yaw = atan(offset / (nose_depth * visible eye distance))``. An estimate, good for comparing
    a face with its anonymized version, not an absolute head pose.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    eyes = (points[0] + points[1]) / 2
    mouth = (points[3] + points[4]) / 2
    axis = mouth - eyes
    length = float(np.hypot(*axis))
    eye_distance = inter_ocular(points)
    if length <= 0 or eye_distance <= 0:
        return math.nan
    down = axis / length
    right = np.array([down[1], -down[0]])  # image right for an upright face, perpendicular to the midline
    offset = float(np.dot(points[2] - eyes, right))
    return math.degrees(math.atan2(offset, nose_depth * eye_distance))


def angle_difference(a: float, b: float) -> float:
    """The absolute difference of two angles in degrees, wrapped to [0, 180]."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def rank1_hits(probes: np.ndarray, gallery: np.ndarray, truth: Sequence[int]) -> list[bool]:
    """For each probe embedding, whether its nearest gallery embedding is ``truth[i]`` (the papers'
    rank-1 identification: is the closest original the face's own source?)."""
    probes = np.asarray(probes, dtype=np.float64)
    gallery = np.asarray(gallery, dtype=np.float64)
    if len(probes) == 0:
        return []
    distances = np.linalg.norm(probes[:, None, :] - gallery[None, :, :], axis=2)
    return [bool(np.argmin(row) == t) for row, t in zip(distances, truth)]


def pairwise_cosine(embeddings: np.ndarray) -> float:
    """Mean cosine similarity over all pairs of rows (NaN with fewer than two)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if len(embeddings) < 2:
        return math.nan
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    upper = np.triu_indices(len(unit), k=1)
    return float(similarity[upper].mean())


def mean_abs_change(previous: np.ndarray, current: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference between two frames (RGB uint8) over the pixels of ``mask`` (H, W bool)."""
    if not mask.any():
        return math.nan
    diff = np.abs(current.astype(np.int16) - previous.astype(np.int16))
    return float(diff[mask].mean())


def rate(flags: Sequence[bool]) -> float | None:
    """The share of true values, or None for an empty list (a rate of nothing is undefined)."""
    return float(np.mean(flags)) if len(flags) else None


def mean_or_none(values: Sequence[float]) -> float | None:
    """The mean of the finite values, or None when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


__all__ = [
    "NOSE_DEPTH",
    "angle_difference",
    "box_iou",
    "inter_ocular",
    "landmark_error",
    "match_boxes",
    "mean_abs_change",
    "mean_or_none",
    "pairwise_cosine",
    "rank1_hits",
    "rate",
    "roll_angle",
    "yaw_angle",
]
