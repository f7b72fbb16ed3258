"""FFHQ-style face alignment: five landmarks -> an oriented square crop, and warps between the two.

The face model was trained on FFHQ-aligned crops, so a photo's faces are cut out the way FFHQ was
made (Karras et al., "A Style-Based Generator Architecture for GANs", dataset alignment recipe):

- ``e`` = midpoint of the eyes, ``m`` = midpoint of the mouth corners,
  ``eye_to_eye`` = right eye - left eye, ``eye_to_mouth`` = ``m - e``;
- the crop's x axis is ``eye_to_eye`` minus ``eye_to_mouth`` turned by 90 degrees (so both the eye
  line and the eye-mouth line set the roll), its half side is
  ``max(2.0 * |eye_to_eye|, 1.8 * |eye_to_mouth|)``;
- the crop's centre is ``e + 0.1 * eye_to_mouth``.

Coordinates follow OpenCV: pixel ``i`` has its centre at ``i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np


if TYPE_CHECKING:
    from ..detection import FaceDetector

# Mirror image of the five landmarks: left and right eyes and mouth corners trade places.
_MIRRORED = [1, 0, 2, 4, 3]


@dataclass(frozen=True)
class Alignment:
    """A similarity transform from image pixels to an ``size`` x ``size`` face crop.

    ``matrix`` is the 2 x 3 affine matrix taking image coordinates to crop coordinates.
    """

    matrix: np.ndarray
    size: int

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return math.sqrt(abs(np.linalg.det(self.matrix[:, :2])))

    @property
    def angle(self) -> float:
        """Rotation from image to crop in degrees (counter-clockwise in the image's y-down frame)."""
        return math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))

    @property
    def inverse(self) -> np.ndarray:
        """The 2 x 3 matrix taking crop coordinates back to image coordinates."""
        return cv2.invertAffineTransform(self.matrix)

    def image_corners(self) -> np.ndarray:
        """The crop's four corners in image coordinates, shape (4, 2): where the crop comes from."""
        last = self.size - 1
        corners = np.array([[0, 0], [last, 0], [last, last], [0, last]], dtype=np.float64)
        return transform_points(self.inverse, corners)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2 x 3 affine matrix to an (N, 2) array of points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def pixel_window(points: np.ndarray, image_size: tuple[int, int], *, margin: int) -> tuple[int, int, int, int]:
    """The pixels ``[x0, x1) x [y0, y1)`` covering ``points`` (N, 2) and ``margin`` more on every side,
    clipped to an image of ``image_size`` = (width, height); empty (x1 <= x0 or y1 <= y0) when the
    points lie wholly outside it. The margin is what an interpolation reads around a sample."""
    width, height = image_size
    x0 = max(0, int(math.floor(points[:, 0].min())) - margin)
    y0 = max(0, int(math.floor(points[:, 1].min())) - margin)
    x1 = min(width, int(math.ceil(points[:, 0].max())) + margin + 1)
    y1 = min(height, int(math.ceil(points[:, 1].max())) + margin + 1)
    return x0, y0, x1, y1


def ffhq_alignment(landmarks: np.ndarray, size: int, *, eye_scale: float = 1.0) -> Alignment:
    """The FFHQ crop of a face as an :class:`Alignment` to a ``size`` x ``size`` square.

    Args:
        landmarks: (5, 2) array: left eye, right eye, nose, left and right mouth corner (image left/right).
        size: side of the square crop in pixels (the face model's image size, 512 for the published model).
        eye_scale: how a detector's eye distance relates to FFHQ's. FFHQ's eye centres are means of six
            dlib eyelid points, which sit closer together than the pupils most 5-point detectors mark;
            see ``FaceDetector.eye_scale``.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.all(np.isfinite(points)):
        raise ValueError(f"landmarks: got an array of shape {points.shape}, expected five finite (x, y) points")
    if int(size) < 2:
        raise ValueError(f"size: got {size!r}, expected an integer of at least 2")
    if not 0.5 <= eye_scale <= 1.5:
        raise ValueError(f"eye_scale: got {eye_scale!r}, expected a factor between 0.5 and 1.5")
    eye_left, eye_right, _, mouth_left, mouth_right = points
    eye_mid = (eye_left + eye_right) / 2
    eye_to_eye = (eye_right - eye_left) * eye_scale
    eye_to_mouth = (mouth_left + mouth_right) / 2 - eye_mid

    x_axis = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    norm = math.hypot(*x_axis)
    half_side = max(math.hypot(*eye_to_eye) * 2.0, math.hypot(*eye_to_mouth) * 1.8)
    if norm < 1e-6 or half_side < 1e-6:
        raise ValueError("landmarks: degenerate (the eyes and mouth coincide); cannot align this face")
    centre = eye_mid + 0.1 * eye_to_mouth

    scale = size / (2.0 * half_side)
    cos, sin = x_axis / norm
    rotation = scale * np.array([[cos, sin], [-sin, cos]])  # turns x_axis onto the crop's +x
    crop_centre = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    matrix = np.hstack([rotation, (crop_centre - rotation @ centre)[:, None]])
    return Alignment(matrix=matrix, size=int(size))


def warp(
    source: np.ndarray,
    matrix: np.ndarray,
    size: tuple[int, int],
    *,
    border: int = cv2.BORDER_REFLECT_101,
    interpolation: int = cv2.INTER_CUBIC,
) -> np.ndarray:
    """Warp ``source`` by ``matrix`` (source -> destination) into an image of ``size`` = (width, height).

    When the warp shrinks by more than 2x, the source is first reduced by an integer factor with
    area averaging, so a large face is not aliased into a small crop (or a crop into a small face).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    shrink = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    factor = int(1.0 / shrink) if shrink > 0 else 1
    if factor >= 2:
        height, width = source.shape[:2]
        reduced = cv2.resize(
            source,
            (max(1, width // factor), max(1, height // factor)),
            interpolation=cv2.INTER_AREA,
        )
        # reduced pixel j has its centre at factor * j + (factor - 1) / 2 in the source.
        to_source = np.array([[factor, 0, (factor - 1) / 2], [0, factor, (factor - 1) / 2], [0, 0, 1]])
        matrix = matrix @ to_source
        source = reduced
    return cv2.warpAffine(source, matrix, size, flags=interpolation, borderMode=border)


def crop_face(image: np.ndarray, alignment: Alignment) -> np.ndarray:
    """Cut the aligned square out of an RGB array; parts outside the image are filled by reflection.

    FFHQ filled its out-of-image margins by reflection too, so the model sees the kind of border it
    was trained on. Only the image region under the crop is read, so this is cheap on large photos.
    """
    height, width = image.shape[:2]
    x0, y0, x1, y1 = pixel_window(alignment.image_corners(), (width, height), margin=2)  # 2: bicubic support
    if x1 <= x0 or y1 <= y0:  # crop lies wholly outside the image: reflect the whole image
        x0, y0, x1, y1 = 0, 0, width, height
    region = image[y0:y1, x0:x1]
    # A reflection must happen at the image's border, not the region's: the region only stops short of
    # the image where the crop does not reach, so its borders are the image's wherever they matter.
    shift = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], dtype=np.float64)
    matrix = alignment.matrix @ shift
    return warp(region, matrix, (alignment.size, alignment.size))


def refine_landmarks(
    image: np.ndarray,
    landmarks: np.ndarray,
    detector: FaceDetector,
    *,
    sizes: Sequence[int] = (160, 224, 288),
    mirror: bool = True,
) -> np.ndarray | None:
    """Re-detect a face on its own upright crop at a few scales (and mirrored) and average the landmarks.

    Why: one detection's landmarks wobble by several percent of the face size, and the FFHQ crop
    moves with them; on its own crop the face is upright and of a known size, the average of the runs
    is steadier and a mirrored run cancels left/right bias (measurements: ``benchmarks/README.md``,
    "Whole photos"). Returns the refined (5, 2) landmarks in image coordinates, or None when no run
    found the face again (a neighbour's face, more than a quarter of the crop away, does not count).
    """
    # A crop holds one whole, upright face: the wrapped detector's single pass is enough (a
    # RobustDetector's border and dither passes would multiply the cost about seven times here).
    detector = getattr(detector, "base", detector)
    working = max(sizes)
    rough = ffhq_alignment(landmarks, working)
    crop = crop_face(image, rough)
    centre = np.array([working / 2.0, working / 2.0])
    found = []
    for size in sizes:
        scaled = crop if size == working else cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        for flipped in (False, True) if mirror else (False,):
            view = np.ascontiguousarray(scaled[:, ::-1]) if flipped else scaled
            faces = detector.detect(view)
            if not faces:
                continue
            candidates = []
            for face in faces:
                points = face.landmark_array
                if flipped:
                    points = points[_MIRRORED]
                    points[:, 0] = size - 1 - points[:, 0]
                candidates.append((points + 0.5) * (working / size) - 0.5)
            points = min(candidates, key=lambda p: float(np.hypot(*(p.mean(axis=0) - centre))))
            if np.hypot(*(points.mean(axis=0) - centre)) > 0.25 * working:
                continue  # a neighbour's face, not this one
            found.append(points)
    if not found:
        return None
    return transform_points(rough.inverse, np.mean(found, axis=0))
