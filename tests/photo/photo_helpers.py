"""Synthetic test photos for the whole-photo tests, built from ``skimage.data.astronaut()``.

The astronaut portrait (NASA, public domain) ships inside scikit-image, so the tests need no
network and no files outside the repository. Faces are pasted at known scales, rotations and
positions, so every test knows where each face is and where its landmarks should be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np


# The astronaut's face in skimage.data.astronaut(): centre of its CenterFace box and its five
# landmarks (left eye, right eye, nose, mouth corners), measured once and stored as data.
ASTRONAUT_FACE_CENTRE = (225.7, 118.0)
ASTRONAUT_FACE_SIZE = 119.6  # longer side of the detector's box
ASTRONAUT_LANDMARKS = np.array(
    [[202.2, 102.0], [247.4, 104.6], [223.1, 125.6], [203.1, 143.2], [241.5, 145.5]], dtype=np.float64
)


@lru_cache(maxsize=1)
def astronaut() -> np.ndarray:
    import skimage.data

    image = skimage.data.astronaut()
    image.setflags(write=False)
    return image


def _head_alpha() -> np.ndarray:
    """Soft ellipse around the astronaut's head (hair and helmet rim included), in her image."""
    height, width = astronaut().shape[:2]
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = ASTRONAUT_FACE_CENTRE
    r = np.sqrt(((x - cx) / 95.0) ** 2 + ((y - cy + 5) / 115.0) ** 2)
    return np.clip((1.25 - r) / 0.25, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Placement:
    """A pasted face: ``scale`` times the astronaut's, turned ``angle`` degrees, its centre at ``centre``."""

    centre: tuple[float, float]
    scale: float
    angle: float = 0.0

    def matrix(self) -> np.ndarray:
        """2 x 3 affine from astronaut pixels to canvas pixels."""
        matrix = cv2.getRotationMatrix2D(ASTRONAUT_FACE_CENTRE, self.angle, self.scale)
        matrix[:, 2] += np.array(self.centre) - np.array(ASTRONAUT_FACE_CENTRE)
        return matrix

    @property
    def face_size(self) -> float:
        return ASTRONAUT_FACE_SIZE * self.scale

    def landmarks(self) -> np.ndarray:
        matrix = self.matrix()
        return ASTRONAUT_LANDMARKS @ matrix[:, :2].T + matrix[:, 2]


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with mild noise: textured enough to see blending, with no faces."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([60 + 120 * x / max(width, 1), 90 + 80 * y / max(height, 1), 150 - 60 * x / max(width, 1)], axis=2)
    noise = cv2.GaussianBlur(rng.normal(0, 12, (height, width, 3)).astype(np.float32), (0, 0), 2.0)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def compose(width: int, height: int, placements: list[Placement], seed: int = 0) -> np.ndarray:
    """Paste the astronaut's head at every placement onto a background; returns RGB uint8."""
    canvas = background(width, height, seed).astype(np.float32)
    head_alpha = _head_alpha()
    source = astronaut().astype(np.float32)
    for placement in placements:
        matrix = placement.matrix()
        flags = cv2.INTER_AREA if placement.scale < 1 else cv2.INTER_CUBIC
        head = cv2.warpAffine(source, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_REFLECT)
        alpha = cv2.warpAffine(head_alpha, matrix, (width, height), flags=cv2.INTER_LINEAR)[:, :, None]
        canvas = canvas * (1 - alpha) + head * alpha
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


# Faces large and small, upright, tilted and sideways, and cut by the right and top borders.
SCENE_SIZE = (1280, 800)
SCENE = [
    Placement((260, 330), 1.6),
    Placement((640, 240), 0.9, 25.0),
    Placement((930, 520), 0.5, -35.0),
    Placement((1120, 170), 0.3),
    Placement((470, 640), 1.0, 90.0),
    Placement((1250, 610), 1.1),  # a quarter of it beyond the right border
    Placement((820, 30), 0.8),  # forehead beyond the top border
]


def mask_union(landmarks, size: int, shape, eye_scale: float) -> np.ndarray:
    """Pixels of an image of ``shape`` that some face's soft mask reaches (alpha > 0), the faces given
    by their five landmarks: where anonymizing may change anything at all."""
    from face_anon import face_mask, ffhq_alignment
    from face_anon.geometry.blending import face_region

    union = np.zeros(shape[:2], bool)
    for points in landmarks:
        alignment = ffhq_alignment(np.asarray(points, dtype=np.float64), size, eye_scale=eye_scale)
        region = face_region(alignment, face_mask(size), (shape[1], shape[0]))
        if region is not None:
            union[region.y0 : region.y1, region.x0 : region.x1] |= region.alpha > 0
    return union


def changed(a, b) -> np.ndarray:
    """Where two RGB images differ, as a boolean (H, W) array."""
    return np.any(np.asarray(a) != np.asarray(b), axis=2)


def window(image, point, radius: int) -> np.ndarray:
    """The square of ``image`` within ``radius`` pixels of ``point`` (clipped at the borders)."""
    x, y = int(round(point[0])), int(round(point[1]))
    h, w = np.asarray(image).shape[:2]
    return np.asarray(image)[max(0, y - radius) : min(h, y + radius + 1), max(0, x - radius) : min(w, x + radius + 1)]


def match_faces(faces, placements, tolerance: float = 0.35):
    """Pair each placement with the detected face whose box centre is nearest, within
    ``tolerance`` times the face size; returns a list of (placement, face or None)."""
    pairs = []
    for placement in placements:
        best, best_distance = None, math.inf
        for face in faces:
            x0, y0, x1, y1 = face.box
            distance = math.hypot((x0 + x1) / 2 - placement.centre[0], (y0 + y1) / 2 - placement.centre[1])
            if distance < best_distance:
                best, best_distance = face, distance
        pairs.append((placement, best if best_distance <= tolerance * placement.face_size else None))
    return pairs


class FakePipeline:
    """Stands in for ``FaceAnonPipeline`` where only the mechanics matter (fast, no model).

    Each output depends only on its input crop and its own generator, like the real pipeline.
    Records every call's batch size; ``fail_on`` makes calls raise when a crop's mean is in it.
    """

    default_image_size = 64

    def __init__(self, blank: bool = False, fail_when=None) -> None:
        self.calls: list[int] = []
        self.blank = blank
        self.fail_when = fail_when

    def __call__(self, *, image, generator, height, width, output_type, **kwargs):
        import PIL.Image
        import torch

        self.calls.append(len(image))
        if self.fail_when is not None and any(self.fail_when(np.asarray(im)) for im in image):
            raise RuntimeError("simulated model failure")
        generators = generator if isinstance(generator, list) else [generator] * len(image)
        out = []
        for im, gen in zip(image, generators):
            if self.blank:
                out.append(PIL.Image.new("RGB", (width, height)))
                continue
            noise = torch.rand((height, width, 3), generator=gen).numpy()
            base = np.asarray(im.resize((width, height)), dtype=np.float32)
            array = np.clip(255 - base * 0.5 + 100 * noise, 0, 255).astype(np.uint8)
            out.append(PIL.Image.fromarray(array))

        class Output:
            images = out

        return Output()
