"""What the package needs from a face detector: the :class:`Face` it reports and the :class:`FaceDetector` protocol.

Any object with a matching ``detect`` method and ``eye_scale`` can stand in for the bundled CenterFace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


# Landmark order used everywhere in this package (image left/right, as seen in the picture).
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the image it was found in.

    ``box`` is ``(x0, y0, x1, y1)`` clipped to the image; ``landmarks`` holds five ``(x, y)`` points
    in :data:`LANDMARK_NAMES` order and may lie outside the image when the face is cut by its border.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    @property
    def landmark_array(self) -> np.ndarray:
        """The landmarks as a float64 array of shape (5, 2)."""
        return np.asarray(self.landmarks, dtype=np.float64)

    @property
    def size(self) -> float:
        """The longer side of the box, in pixels: what ``min_face_size`` compares against."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def to_json(self) -> dict:
        """Plain JSON types, rounded to 1/100 pixel (the report format of the command line)."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when either is empty)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """:func:`box_iou` of every box of ``boxes_a`` (N, 4) with every box of ``boxes_b`` (M, 4): (N, M)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


class FaceDetector(Protocol):
    """What the rest of the package needs from a face detector.

    ``eye_scale`` relates the detector's eye landmarks to FFHQ's: the factor that turns the distance
    between its two eye points into the distance between FFHQ's eye centres (1.0 if they agree).
    """

    eye_scale: float

    def detect(self, image: np.ndarray) -> list[Face]:
        """Find faces in an RGB ``uint8`` array of shape (H, W, 3); best score first."""
        ...
