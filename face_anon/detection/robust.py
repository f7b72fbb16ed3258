"""Detection that looks more than once: faces cut by the image border, and faces in dithered images.

A single pass of a face detector misses two kinds of faces that a person sees at once:

- **Faces cut by the border.** CenterFace marks a face by its centre on the output grid; when less than
  about half of a face is inside the image its centre is outside, and nothing can mark it. Padding the
  image moves the centre inside: mirrored on every side (a face cut at its middle becomes a whole,
  symmetric face), and mirrored again after a downscale with a wide margin, for faces as large as the
  image (close-up crops).
- **Small faces in large images.** The detector sees an image of at most ``max_side`` px (1920 for
  CenterFace), where it finds faces from about 20 px tall: in a 6000 x 4000 photo, faces under about 70 px
  were lost. A large image is also searched at full resolution, in overlapping tiles.
- **Bitonal and dithered images** (1-bit scans, faxes, Group 4 TIFF, newspaper halftone, ordered or
  error-diffusion dither, also after conversion back to 8-bit RGB or JPEG). The network was trained on
  photos and sees only noise in them. Such images are recognised by their fine-scale energy, and the
  detector also runs on low-pass filtered copies, at the blur that removes the dither pattern.

:class:`RobustDetector` wraps any :class:`~face_anon.detection.base.FaceDetector` and returns the union
of all passes, merged. The first pass is the wrapped detector on the unchanged image, so every face it
finds alone is reported exactly as before. Measurements (what is found, what it costs) are in
``benchmarks/README.md``, "Detection limits".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .base import Face, FaceDetector, box_iou


# Blur ladder for dithered images, in working-image pixels. A halftone of period p needs a Gaussian of
# about p / 3 to become grey; error diffusion and 8x8 ordered dither need about 1.
LOWPASS_SIGMAS = (1.0, 1.5, 2.0, 3.0, 4.5, 6.0)
# Pass 2's mirrored margin in working-image pixels, for small faces (up to about 100 px) cut by the
# border; larger ones are pass 3's, which sees the image at half size (faces from about 50 px).
NARROW_MARGIN = 48
WIDE_MIN_SIDE = 640  # pass 3 never shrinks the image below this long side
# Overlap of pass 4's full-resolution tiles: every face up to this size lies whole inside one tile. Larger
# faces are large enough for the downscaled passes (a 256 px face is 61 px at 1920 px of an 8000 px image).
TILE_OVERLAP = 256
# Least longer side, in working-image pixels, of a face whose box crosses two adjacent borders. Where two
# mirrored margins meet, the corner is seen four times, and small textures there can look like a face
# (a 19 x 23 px "face" in the black corner of ``skimage.data.astronaut()``); a real face that size, cut
# on two sides, shows too little to identify. Faces of 46 px and more cut at corners are still found.
CORNER_MIN_SIDE = 32


def mirror_pad(image: np.ndarray, margin: int) -> np.ndarray:
    """``image`` with ``margin`` mirrored pixels on every side (edge pixel not repeated, as a mirror
    at the pixel's centre); margins wider than the image mirror again, a tiny image is replicated."""
    while margin > 0:
        step = min(margin, min(image.shape[:2]) - 1)
        if step < 1:
            return cv2.copyMakeBorder(image, margin, margin, margin, margin, cv2.BORDER_REPLICATE)
        image = cv2.copyMakeBorder(image, step, step, step, step, cv2.BORDER_REFLECT_101)
        margin -= step
    return image


@dataclass(frozen=True)
class _Candidate:
    """A face from one pass, in the original image's pixels, its box not yet clipped to the image."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]
    first_pass: bool  # found by the wrapped detector on the unchanged image
    mirrored: bool  # found in a pass whose margins are mirror images of the picture


def dither_energy(grey: np.ndarray) -> float:
    """Root mean square, in 8-bit grey levels, of what a Gaussian of sigma 2 px removes from ``grey``.

    A dithered or halftoned image puts most of its contrast into this fine scale: 40 to 125 on our
    dithered test images at the detector's working size, against 4 to 26 for photos (grass and a
    noisy photo included; ``benchmarks/README.md``).
    """
    values = grey.astype(np.float32)
    return float(np.sqrt(np.mean((values - cv2.GaussianBlur(values, (0, 0), 2.0)) ** 2)))


def lowpass_sigmas(grey: np.ndarray, *, residual: float = 5.0) -> tuple[float, float]:
    """The two blurs to detect a dithered image at: the least of :data:`LOWPASS_SIGMAS` after which the
    dither pattern is gone (the fine-scale energy left below ``residual`` grey levels), and the next.

    One blur does not fit all: too little leaves the pattern, too much erases small faces.
    """
    values = grey.astype(np.float32)
    for index, sigma in enumerate(LOWPASS_SIGMAS):
        blurred = cv2.GaussianBlur(values, (0, 0), sigma)
        left = float(np.sqrt(np.mean((blurred - cv2.GaussianBlur(blurred, (0, 0), 1.0)) ** 2)))
        if left < residual:
            return sigma, LOWPASS_SIGMAS[min(index + 1, len(LOWPASS_SIGMAS) - 1)]
    return LOWPASS_SIGMAS[-2], LOWPASS_SIGMAS[-1]


class RobustDetector:
    """A :class:`FaceDetector` that runs ``base`` on several views of the image and merges the faces.

    Passes, each on every view (the image, plus two low-pass copies when it looks dithered):

    1. ``base`` on the view as it is (for the image itself: exactly the wrapped detector's result);
    2. ``border``: the view with a mirrored margin of :data:`NARROW_MARGIN` px on every side, for small
       faces cut by the border;
    3. ``border``: the view with a mirrored margin of half its longer side (at most its shorter side,
       at least 320 px), at half size (no less than :data:`WIDE_MIN_SIDE` px on the long side), for large
       faces cut by the border and close-ups of part of a face;
    4. ``tiles``, for an image larger than ``base.max_side``: ``base`` on full-resolution tiles of
       ``max_side`` px overlapping by :data:`TILE_OVERLAP` px (on the image only, not the low-pass copies),
       for faces too small to find in the downscaled view. A face a tile finds touching a tile edge inside
       the image is left to the tile that holds it whole.

    Faces are merged by non-maximum suppression, faces of the first pass first. A face found in a
    margin must still have ``min_visible`` of its box inside the image; a face that is the mirror image
    of another one across the border is dropped, and so is one cut by two adjacent borders that is
    smaller than :data:`CORNER_MIN_SIDE`. Boxes are clipped to the image; landmarks may lie
    outside it. A face less than half inside is seen together with its mirror image, so its landmarks
    and crop are those of that symmetric face (``crop_face`` mirrors the same way): what is pasted back
    covers the visible part.

    Args:
        base: the detector to run (e.g. :class:`~face_anon.detection.centerface.CenterFaceDetector`).
            Its ``max_side``, if it has one, is the size the views are made at.
        border: run passes 2 and 3.
        tiles: run pass 4.
        dither: look for dithered images and detect on low-pass copies of them.
        min_visible: least fraction of a face's box inside the image for a face found in a margin.
        dither_threshold: :func:`dither_energy` above which an image counts as dithered.
        nms_threshold: faces of different passes overlapping by more than this IoU are one face.
    """

    def __init__(
        self,
        base: FaceDetector,
        *,
        border: bool = True,
        dither: bool = True,
        tiles: bool = True,
        min_visible: float = 0.15,
        dither_threshold: float = 24.0,
        nms_threshold: float = 0.3,
    ) -> None:
        if not 0.0 < min_visible <= 1.0:
            raise ValueError(f"min_visible: got {min_visible!r}, expected a fraction in (0, 1]")
        if not dither_threshold > 0:
            raise ValueError(f"dither_threshold: got {dither_threshold!r}, expected a number of grey levels > 0")
        if not 0.0 < nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold: got {nms_threshold!r}, expected a number in (0, 1]")
        self.base = base
        self.border = bool(border)
        self.dither = bool(dither)
        self.tiles = bool(tiles)
        self.min_visible = float(min_visible)
        self.dither_threshold = float(dither_threshold)
        self.nms_threshold = float(nms_threshold)

    @property
    def eye_scale(self) -> float:
        return self.base.eye_scale

    def detect(self, image: np.ndarray) -> list[Face]:
        """Find faces in an RGB ``uint8`` array of shape (H, W, 3); best score first."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image: got an array of shape {image.shape} and dtype {image.dtype}, "
                "expected an RGB uint8 array of shape (H, W, 3)"
            )
        height, width = image.shape[:2]
        candidates = [
            _Candidate(face.box, face.score, face.landmarks, first_pass=True, mirrored=False)
            for face in self.base.detect(image)
        ]
        if not (self.border or self.dither or self.tiles) or min(height, width) < 2:
            return self._merge(candidates, width, height, scale=1.0)

        work, scale = self._working_view(image)
        if self.tiles and scale < 1.0:
            candidates += self._tiled(image)
        views = [work]
        if self.dither:
            grey = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY)
            if dither_energy(grey) >= self.dither_threshold:
                views += [cv2.GaussianBlur(work, (0, 0), sigma) for sigma in lowpass_sigmas(grey)]
        for number, view in enumerate(views):
            if number > 0:
                candidates += self._run(view, scale, offset=(0, 0))
            if self.border:
                candidates += self._narrow_margin(view, scale)
                candidates += self._wide_margin(view, scale)
        return self._merge(candidates, width, height, scale=scale)

    def _working_view(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """The image at the size the wrapped detector works at (``max_side``), and that scale."""
        max_side = getattr(self.base, "max_side", None)
        height, width = image.shape[:2]
        scale = 1.0 if not max_side else min(1.0, max_side / max(height, width))
        if scale >= 1.0:
            return image, 1.0
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale

    def _tiled(self, image: np.ndarray) -> list[_Candidate]:
        """Pass 4: ``base`` on full-resolution tiles of ``max_side`` px overlapping by ``TILE_OVERLAP``."""
        side = int(self.base.max_side)
        height, width = image.shape[:2]
        out = []
        for y0 in _tile_starts(height, side):
            for x0 in _tile_starts(width, side):
                tile = image[y0 : y0 + side, x0 : x0 + side]
                y1, x1 = y0 + tile.shape[0], x0 + tile.shape[1]
                for candidate in self._run(tile, 1.0, offset=(-x0, -y0)):
                    bx0, by0, bx1, by1 = candidate.box
                    cut = (
                        (x0 > 0 and bx0 <= x0 + 1)
                        or (y0 > 0 and by0 <= y0 + 1)
                        or (x1 < width and bx1 >= x1 - 1)
                        or (y1 < height and by1 >= y1 - 1)
                    )
                    if not cut:
                        out.append(candidate)
        return out

    def _narrow_margin(self, view: np.ndarray, scale: float) -> list[_Candidate]:
        """Pass 2: small faces cut by the border, at full size, with a mirrored margin of ``NARROW_MARGIN``.

        (Strips along the border would be cheaper, but CenterFace needs about 200 px of the picture
        beside a border face to find it: strips that deep cost as much as the whole image.)
        """
        return self._run(mirror_pad(view, NARROW_MARGIN), scale, offset=(NARROW_MARGIN, NARROW_MARGIN), mirrored=True)

    def _wide_margin(self, view: np.ndarray, scale: float) -> list[_Candidate]:
        """Pass 3: large faces cut by the border and close-ups, at half size (no less than ``WIDE_MIN_SIDE``
        on the long side) with a mirrored margin of half the longer side, capped at the shorter side for
        elongated views of more than ``WIDE_MIN_SIDE`` px (a panorama would cost too much)."""
        long, short = max(view.shape[:2]), min(view.shape[:2])
        margin = max(min(long // 2, short), min(long // 2, WIDE_MIN_SIDE // 2))
        shrink = min(1.0, max(long, WIDE_MIN_SIDE) / (2 * long))
        if shrink >= 1.0:
            return self._run(mirror_pad(view, margin), scale, offset=(margin, margin), mirrored=True)
        # Shrink, then mirror (the same picture as mirroring first, for a quarter of the work).
        size = (max(1, round(view.shape[1] * shrink)), max(1, round(view.shape[0] * shrink)))
        factors = (size[0] / view.shape[1], size[1] / view.shape[0])
        small_margin = max(1, round(margin * shrink))
        padded = mirror_pad(cv2.resize(view, size, interpolation=cv2.INTER_AREA), small_margin)
        offset = (small_margin / factors[0], small_margin / factors[1])
        return self._run(padded, scale, offset=offset, factors=factors, mirrored=True)

    def _run(
        self,
        image: np.ndarray,
        scale: float,
        *,
        offset: tuple[float, float],
        factors: tuple[float, float] = (1.0, 1.0),
        mirrored: bool = False,
    ) -> list[_Candidate]:
        """``base`` on ``image``, which shows a view (the original image at ``scale``) resized by
        ``factors`` and starting ``offset`` view pixels before it (a margin); faces in original pixels."""

        def back(x: float, y: float) -> tuple[float, float]:
            # Coordinates run from 0 to the width (CenterFace's convention), so a resize is a division.
            return (x / factors[0] - offset[0]) / scale, (y / factors[1] - offset[1]) / scale

        out = []
        for face in self.base.detect(np.ascontiguousarray(image)):
            x0, y0 = back(face.box[0], face.box[1])
            x1, y1 = back(face.box[2], face.box[3])
            points = tuple(back(x, y) for x, y in face.landmarks)
            out.append(_Candidate((x0, y0, x1, y1), face.score, points, first_pass=False, mirrored=mirrored))
        return out

    def _merge(self, candidates: list[_Candidate], width: int, height: int, *, scale: float) -> list[Face]:
        """One face per object: drop mirror images, faces mostly outside and small faces in a corner's
        mirror images, then NMS, first pass first. ``scale``: the working image's size over the image's."""

        def clipped(box):
            return (min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                    min(max(box[2], 0.0), width), min(max(box[3], 0.0), height))  # fmt: skip

        def area(box):
            return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])

        def inside(box):
            return 0 <= (box[0] + box[2]) / 2 <= width and 0 <= (box[1] + box[3]) / 2 <= height

        def small_in_corner(box):
            left, right, top, bottom = box[0] < 0, box[2] > width, box[1] < 0, box[3] > height
            corner = (left != right) and (top != bottom)
            return corner and max(box[2] - box[0], box[3] - box[1]) * scale < CORNER_MIN_SIDE

        kept = []
        for candidate in candidates:
            visible = clipped(candidate.box)
            if area(visible) <= 0:
                continue
            if not candidate.first_pass:
                if area(visible) < self.min_visible * area(candidate.box):
                    continue
                if candidate.mirrored and small_in_corner(candidate.box):
                    continue
                if (
                    candidate.mirrored
                    and not inside(candidate.box)
                    and _is_reflection(candidate, candidates, inside, width, height)
                ):
                    continue
            kept.append((candidate, visible))

        kept.sort(key=lambda item: (not item[0].first_pass, -item[0].score))
        accepted: list[tuple[_Candidate, tuple]] = []
        for candidate, visible in kept:
            if all(box_iou(visible, other) <= self.nms_threshold for _, other in accepted):
                accepted.append((candidate, visible))
        faces = [Face(tuple(float(v) for v in visible), float(c.score), c.landmarks) for c, visible in accepted]
        return sorted(faces, key=lambda face: -face.score)


def _tile_starts(length: int, side: int) -> list[int]:
    """Starts of tiles of ``side`` px covering ``length`` px, neighbours overlapping by at least
    ``TILE_OVERLAP`` px, spread evenly; the last ends at ``length``."""
    if length <= side:
        return [0]
    count = math.ceil((length - TILE_OVERLAP) / (side - TILE_OVERLAP))
    return [round(i * (length - side) / (count - 1)) for i in range(count)]


def _is_reflection(candidate: _Candidate, candidates: list[_Candidate], inside, width: int, height: int) -> bool:
    """Whether ``candidate`` (centre outside the image) is the mirror image, across the border it lies
    beyond, of another face whose centre is inside the image: a reflection in a margin, not a face."""
    x0, y0, x1, y1 = candidate.box
    if (x0 + x1) / 2 < 0:
        x0, x1 = -x1, -x0
    elif (x0 + x1) / 2 > width:
        x0, x1 = 2 * width - x1, 2 * width - x0
    if (y0 + y1) / 2 < 0:
        y0, y1 = -y1, -y0
    elif (y0 + y1) / 2 > height:
        y0, y1 = 2 * height - y1, 2 * height - y0
    mirror = (x0, y0, x1, y1)
    return any(
        other is not candidate and inside(other.box) and box_iou(mirror, other.box) >= 0.5 for other in candidates
    )
