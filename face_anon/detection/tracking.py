"""Faces over time: ByteTrack association, One Euro smoothing, gap filling and track extension.

A video loop detects faces on every frame; this module turns those detections into tracks and
decides, for every frame, which face areas must be treated so that none slips through:

- :class:`ByteTracker` links detections into tracks as ByteTrack does (Zhang et al., "ByteTrack:
  Multi-Object Tracking by Associating Every Detection Box", ECCV 2022): a constant-velocity Kalman
  filter predicts each track's box, high-score detections are matched first (IoU, optimal
  assignment) against every track, low-score ones then against the tracks still unmatched, and a
  track survives ``max_lost`` frames without a detection. Tuned for faces: every detection that stays
  unmatched starts a track at once (a face never waits to be confirmed), whatever its score.
- :class:`OneEuroFilter` (Casiez et al., CHI 2012) smooths each track's box and landmarks, so the
  aligned crops do not jitter from frame to frame while fast motion is followed without lag.
- :class:`TrackWindow` holds the last few frames (a bounded look-ahead window): when a track is
  found again after missing frames, the frames in between get box and landmarks interpolated in
  time; every track is extended ``extend`` frames before its first and after its last detection.

Boxes are ``(x0, y0, x1, y1)`` in pixels; times are in seconds (variable frame rates are fine).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .base import Face, iou_matrix


DETECTED, INTERPOLATED, EXTENDED = "detected", "interpolated", "extended"


# --------------------------------------------------------------------------------------------------
# Geometry and assignment


def linear_assignment(cost: np.ndarray, max_cost: float) -> list[tuple[int, int]]:
    """Row-column pairs of minimum total cost (Hungarian method), keeping pairs with cost <= ``max_cost``.

    Every row is assigned when there are at least as many columns (and vice versa); pairs above
    ``max_cost`` are then dropped, as ByteTrack's ``lapjv(..., cost_limit)`` leaves them unmatched.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.size == 0:
        return []
    transposed = cost.shape[0] > cost.shape[1]
    matrix = cost.T if transposed else cost
    rows, cols = matrix.shape
    # Potentials u (rows), v (columns); way[j] = previous column on the augmenting path (1-based, 0 = root).
    u = np.zeros(rows + 1)
    v = np.zeros(cols + 1)
    owner = np.zeros(cols + 1, dtype=np.int64)  # owner[j] = row (1-based) assigned to column j
    way = np.zeros(cols + 1, dtype=np.int64)
    for row in range(1, rows + 1):
        owner[0] = row
        column = 0
        slack = np.full(cols + 1, np.inf)
        used = np.zeros(cols + 1, dtype=bool)
        while True:
            used[column] = True
            current = owner[column]
            reduced = matrix[current - 1] - u[current] - v[1:]
            free = ~used[1:]
            better = free & (reduced < slack[1:])
            slack[1:][better] = reduced[better]
            way[1:][better] = column
            candidates = np.where(free, slack[1:], np.inf)
            nxt = int(np.argmin(candidates)) + 1
            delta = candidates[nxt - 1]
            u[owner[used]] += delta
            v[used] -= delta
            slack[1:][free] -= delta
            column = nxt
            if owner[column] == 0:
                break
        while column:
            previous = way[column]
            owner[column] = owner[previous]
            column = previous
    pairs = []
    for col in range(1, cols + 1):
        if owner[col]:
            row = owner[col] - 1
            pair = (col - 1, row) if transposed else (row, col - 1)
            if cost[pair] <= max_cost:
                pairs.append(pair)
    return sorted(pairs)


# --------------------------------------------------------------------------------------------------
# Filters


class KalmanBoxFilter:
    """Constant-velocity Kalman filter of a box's centre and size, with ByteTrack's noise model.

    State ``(cx, cy, w, h, vcx, vcy, vw, vh)``, one step per frame. Noise standard deviations are
    fractions of the box size (position 1/20, velocity 1/160), so the filter behaves the same for a
    small face far away and a large one close by.
    """

    position_weight = 1.0 / 20
    velocity_weight = 1.0 / 160

    def __init__(self, box: Sequence[float]) -> None:
        measurement = _box_to_xywh(box)
        self.mean = np.concatenate([measurement, np.zeros(4)])
        w, h = measurement[2], measurement[3]
        p, v = self.position_weight, self.velocity_weight
        std = np.array([2 * p * w, 2 * p * h, 2 * p * w, 2 * p * h, 10 * v * w, 10 * v * h, 10 * v * w, 10 * v * h])
        self.covariance = np.diag(std**2)
        self._transition = np.eye(8)
        self._transition[:4, 4:] = np.eye(4)

    def predict(self, *, hold_size: bool = False) -> None:
        """Advance one frame; ``hold_size`` stops the size from drifting while the track is lost."""
        if hold_size:
            self.mean[6:] = 0.0
        w, h = self.mean[2], self.mean[3]
        p, v = self.position_weight, self.velocity_weight
        noise = np.diag(np.array([p * w, p * h, p * w, p * h, v * w, v * h, v * w, v * h]) ** 2)
        self.mean = self._transition @ self.mean
        self.covariance = self._transition @ self.covariance @ self._transition.T + noise

    def update(self, box: Sequence[float]) -> None:
        measurement = _box_to_xywh(box)
        w, h = self.mean[2], self.mean[3]
        p = self.position_weight
        noise = np.diag(np.array([p * w, p * h, p * w, p * h]) ** 2)
        projected = self.covariance[:4, :4] + noise
        gain = np.linalg.solve(projected, self.covariance[:4, :]).T  # (8, 4)
        self.mean = self.mean + gain @ (measurement - self.mean[:4])
        self.covariance = self.covariance - gain @ projected @ gain.T

    @property
    def box(self) -> np.ndarray:
        cx, cy, w, h = self.mean[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _box_to_xywh(box: Sequence[float]) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)])


class OneEuroFilter:
    """The One Euro filter: a low-pass filter whose cutoff rises with speed (jitter off, little lag).

    ``cutoff = min_cutoff + beta * |speed| / scale`` in Hz, where speed is the smoothed derivative of
    the value (units per second) and ``scale`` (given per call, e.g. the face's size in pixels) makes
    ``beta`` independent of how large the face is. Works on vectors, component by component, and on
    uneven time steps (variable frame rate).

    Args:
        min_cutoff: cutoff at rest, in Hz (lower = steadier still faces).
        beta: how fast the cutoff rises with speed, per (scale units per second).
        derivative_cutoff: cutoff of the derivative's own low-pass, in Hz.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 4.0, derivative_cutoff: float = 1.0) -> None:
        if not (min_cutoff > 0 and beta >= 0 and derivative_cutoff > 0):
            raise ValueError(
                f"OneEuroFilter: got min_cutoff={min_cutoff!r}, beta={beta!r}, derivative_cutoff="
                f"{derivative_cutoff!r}; expected min_cutoff > 0, beta >= 0, derivative_cutoff > 0"
            )
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.derivative_cutoff = float(derivative_cutoff)
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._time: float | None = None

    @staticmethod
    def _alpha(step: float, cutoff: np.ndarray | float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / step)

    def __call__(self, value: np.ndarray, time: float, scale: float = 1.0) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        if self._value is None:
            self._value, self._speed, self._time = value.copy(), np.zeros_like(value), float(time)
            return value.copy()
        step = float(time) - self._time
        if not step > 0:  # same or earlier timestamp: nothing to learn about speed; take the value as is
            self._value, self._time = value.copy(), float(time)
            return value.copy()
        raw_speed = (value - self._value) / step
        self._speed = self._speed + self._alpha(step, self.derivative_cutoff) * (raw_speed - self._speed)
        cutoff = self.min_cutoff + self.beta * np.abs(self._speed) / max(float(scale), 1e-9)
        alpha = self._alpha(step, cutoff)
        self._value = self._value + alpha * (value - self._value)
        self._time = float(time)
        return self._value.copy()


def _face_vector(face: Face) -> np.ndarray:
    return np.concatenate([np.asarray(face.box, dtype=np.float64), face.landmark_array.reshape(-1)])


def _vector_face(vector: np.ndarray, score: float) -> Face:
    box = tuple(float(v) for v in vector[:4])
    points = vector[4:].reshape(-1, 2)
    return Face(box, float(score), tuple((float(x), float(y)) for x, y in points))


# --------------------------------------------------------------------------------------------------
# ByteTrack


@dataclass
class _Track:
    track_id: int
    kalman: KalmanBoxFilter
    smoother: OneEuroFilter
    last_frame: int
    lost: bool = False


@dataclass(frozen=True)
class TrackedDetection:
    """A detection of frame ``frame`` and the track it joined; ``face`` is smoothed, ``detection`` raw."""

    track_id: int
    face: Face
    detection: Face


class ByteTracker:
    """ByteTrack for faces: every detection of a frame gets a track id.

    Args:
        high_threshold: detections scoring at least this are matched first, against every track;
            the others are matched afterwards against tracks that are still unmatched and not lost.
        match_iou: least IoU between a track's predicted box and a high-score detection (first stage).
        low_match_iou: least IoU for the second, low-score stage (stricter, as in ByteTrack).
        max_lost: frames a track may go undetected and still be found again.
        min_cutoff, beta: the One Euro filter of box and landmarks (see :class:`OneEuroFilter`).

    Unmatched detections of any score start tracks immediately (a face never waits to be confirmed):
    everything the detector reports is anonymized.
    """

    def __init__(
        self,
        *,
        high_threshold: float = 0.5,
        match_iou: float = 0.2,
        low_match_iou: float = 0.5,
        max_lost: int = 15,
        min_cutoff: float = 1.0,
        beta: float = 4.0,
    ) -> None:
        if not 0.0 < match_iou <= 1.0 or not 0.0 < low_match_iou <= 1.0:
            raise ValueError(f"match_iou, low_match_iou: got {match_iou!r}, {low_match_iou!r}; expected (0, 1]")
        if int(max_lost) != max_lost or max_lost < 0:
            raise ValueError(f"max_lost: got {max_lost!r}, expected an integer >= 0")
        self.high_threshold = float(high_threshold)
        self.match_iou = float(match_iou)
        self.low_match_iou = float(low_match_iou)
        self.max_lost = int(max_lost)
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self._tracks: list[_Track] = []
        self._next_id = 0
        self.frame = -1

    def update(self, faces: Sequence[Face], time: float) -> list[TrackedDetection]:
        """Associate one frame's detections (at ``time`` seconds); returns one entry per face, in order."""
        self.frame += 1
        for track in self._tracks:
            track.kalman.predict(hold_size=track.lost)
        assigned: dict[int, _Track] = {}

        # 1. High-score detections against every track (tracked and lost).
        high = [i for i, face in enumerate(faces) if face.score >= self.high_threshold]
        low = [i for i, face in enumerate(faces) if face.score < self.high_threshold]
        free_tracks = list(self._tracks)
        for det, track in self._match(faces, high, free_tracks, self.match_iou):
            assigned[det] = track
        # 2. Low-score detections against tracks still unmatched that were seen last frame.
        free_tracks = [t for t in self._tracks if t not in assigned.values() and not t.lost]
        for det, track in self._match(faces, low, free_tracks, self.low_match_iou):
            assigned[det] = track

        # 3. Tracks without a detection become lost, and are removed after max_lost frames.
        matched = set(map(id, assigned.values()))
        for track in self._tracks:
            if id(track) in matched:
                track.last_frame, track.lost = self.frame, False
            else:
                track.lost = True
        self._tracks = [t for t in self._tracks if self.frame - t.last_frame <= self.max_lost]

        # 4. Update matched tracks; start a track for every other detection.
        out = []
        for index, face in enumerate(faces):
            track = assigned.get(index)
            if track is None:
                track = _Track(
                    track_id=self._next_id,
                    kalman=KalmanBoxFilter(face.box),
                    smoother=OneEuroFilter(self.min_cutoff, self.beta),
                    last_frame=self.frame,
                )
                self._next_id += 1
                self._tracks.append(track)
            else:
                track.kalman.update(face.box)
            smoothed = track.smoother(_face_vector(face), time, scale=max(face.size, 1.0))
            out.append(TrackedDetection(track.track_id, _vector_face(smoothed, face.score), face))
        return out

    def _match(self, faces, indices, tracks, min_iou) -> list[tuple[int, _Track]]:
        if not indices or not tracks:
            return []
        predicted = np.stack([t.kalman.box for t in tracks])
        boxes = np.array([faces[i].box for i in indices], dtype=np.float64)
        cost = 1.0 - iou_matrix(boxes, predicted)
        return [(indices[d], tracks[t]) for d, t in linear_assignment(cost, 1.0 - min_iou)]


# --------------------------------------------------------------------------------------------------
# The look-ahead window: gap filling and extension


@dataclass(frozen=True)
class TrackedFace:
    """A face area to treat in a frame: its track, where it is, and why (``kind``).

    ``kind`` is ``detected`` (found in this frame; ``face`` smoothed), ``interpolated`` (a gap
    inside the track, filled from the frames around it) or ``extended`` (just before the track's
    first or after its last detection, held at that detection's place).
    """

    track_id: int
    face: Face
    kind: str


@dataclass
class FrameFaces:
    """Every face area of frame ``index`` (at ``time`` seconds), once the window has let it go."""

    index: int
    time: float
    faces: list[TrackedFace] = field(default_factory=list)

    def track(self, track_id: int) -> TrackedFace | None:
        return next((f for f in self.faces if f.track_id == track_id), None)


def _interpolate(a: Face, b: Face, weight: float) -> Face:
    vector = (1 - weight) * _face_vector(a) + weight * _face_vector(b)
    return _vector_face(vector, min(a.score, b.score))


class TrackWindow:
    """Hold frames until their face areas are final, filling gaps and extending tracks.

    A frame leaves the window ``size`` frames after it came in, so a track found again after at
    most ``size - 1`` missing frames has every missing frame interpolated, and a track's first
    ``extend`` frames before its first detection are still there to be extended.

    Args:
        size: frames held (the look-ahead); at least ``max(max_gap, extend) + 1``.
        extend: frames added before a track's first and after its last detection.
        max_gap: longest gap (frames) filled by interpolation; should equal the tracker's ``max_lost``.
        overlap_iou: an extended or interpolated area is left out of a frame where it overlaps a
            detected face of another track this much (the same person, already covered).
    """

    def __init__(self, size: int = 16, *, extend: int = 4, max_gap: int = 15, overlap_iou: float = 0.5) -> None:
        if int(extend) != extend or extend < 0 or int(max_gap) != max_gap or max_gap < 0:
            raise ValueError(f"extend, max_gap: got {extend!r}, {max_gap!r}; expected integers >= 0")
        if int(size) != size or size < max(max_gap, extend) + 1:
            raise ValueError(f"size: got {size!r}, expected an integer >= max(max_gap, extend) + 1")
        self.size = int(size)
        self.extend = int(extend)
        self.max_gap = int(max_gap)
        self.overlap_iou = float(overlap_iou)
        self._frames: deque[FrameFaces] = deque()
        self._last: dict[int, tuple[int, float, Face]] = {}  # track -> (frame, time, face) of its last detection

    @property
    def frames(self) -> list[FrameFaces]:
        """The frames held now, oldest first (their faces may still change)."""
        return list(self._frames)

    def push(self, index: int, time: float, detections: Sequence[TrackedDetection]) -> list[FrameFaces]:
        """Add frame ``index`` with its tracked detections; return the frames that leave the window."""
        if self._frames and index <= self._frames[-1].index:
            raise ValueError(f"index: got {index}, expected frames in increasing order after {self._frames[-1].index}")
        current = FrameFaces(index, float(time))
        for detection in detections:
            current.faces.append(TrackedFace(detection.track_id, detection.face, DETECTED))
        self._frames.append(current)
        for detection in detections:
            previous = self._last.get(detection.track_id)
            if previous is None:
                self._fill(detection.track_id, index - self.extend, index, lambda _t, f=detection.face: f, EXTENDED)
            elif previous[0] < index - 1 and index - previous[0] - 1 <= self.max_gap:
                start_time, start_face = previous[1], previous[2]
                span = max(float(time) - start_time, 1e-9)

                def between(t, a=start_face, b=detection.face, t0=start_time, span=span):
                    return _interpolate(a, b, min(max((t - t0) / span, 0.0), 1.0))

                self._fill(detection.track_id, previous[0] + 1, index, between, INTERPOLATED)
            self._last[detection.track_id] = (index, float(time), detection.face)
        out = []
        while len(self._frames) > self.size:
            out.append(self._release())
        return out

    def finish(self) -> list[FrameFaces]:
        """Release every frame still held (end of the video)."""
        out = []
        while self._frames:
            out.append(self._release())
        return out

    def _fill(self, track_id: int, first: int, stop: int, face_at, kind: str) -> None:
        """Put ``face_at(time)`` of ``track_id`` into held frames ``first <= index < stop``."""
        for frame in self._frames:
            if first <= frame.index < stop:
                existing = frame.track(track_id)
                if existing is not None and existing.kind == DETECTED:
                    continue
                if existing is not None:
                    frame.faces.remove(existing)
                self._add(frame, TrackedFace(track_id, face_at(frame.time), kind))

    def _add(self, frame: FrameFaces, face: TrackedFace) -> None:
        """Add an interpolated or extended area unless another track's detection already covers it."""
        others = [f.face.box for f in frame.faces if f.kind == DETECTED and f.track_id != face.track_id]
        if others and iou_matrix(np.array([face.face.box]), np.array(others)).max() >= self.overlap_iou:
            return
        frame.faces.append(face)

    def _release(self) -> FrameFaces:
        frame = self._frames.popleft()
        for track_id, (last, _time, face) in list(self._last.items()):
            if last < frame.index <= last + self.extend and frame.track(track_id) is None:
                self._add(frame, TrackedFace(track_id, face, EXTENDED))
            if frame.index > last + max(self.extend, self.max_gap) + self.size:
                del self._last[track_id]  # long gone: nothing of it can reach a held frame any more
        frame.faces.sort(key=lambda f: f.track_id)
        return frame


__all__ = [
    "DETECTED",
    "EXTENDED",
    "INTERPOLATED",
    "ByteTracker",
    "FrameFaces",
    "KalmanBoxFilter",
    "OneEuroFilter",
    "TrackWindow",
    "TrackedDetection",
    "TrackedFace",
    "iou_matrix",
    "linear_assignment",
]
