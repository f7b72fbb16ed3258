"""What the package needs from a face detector: the :class:`Face` it reports and the :class:`FaceDetector` protocol.

Any object with a matching ``detect`` method and ``eye_scale`` can stand in for the bundled CenterFace.
"""

from __future__ import annotations

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


class FaceDetector(Protocol):
    """What the rest of the package needs from a face detector.

    ``eye_scale`` relates the detector's eye landmarks to FFHQ's: the factor that turns the distance
    between its two eye points into the distance between FFHQ's eye centres (1.0 if they agree).
    """

    eye_scale: float

    def detect(self, image: np.ndarray) -> list[Face]:
        """Find faces in an RGB ``uint8`` array of shape (H, W, 3); best score first."""
        ...
