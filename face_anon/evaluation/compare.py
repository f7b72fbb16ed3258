"""Comparing an original with its anonymized version, face by face (photos) and frame by frame (videos).

Every face the detector finds in the original is a row. Its counterpart is the anonymized image's
detection that overlaps its box most (IoU >= ``min_iou``, one to one). The anonymized face is
embedded at the counterpart's landmarks when there is one (a real face gives an attacker the best
alignment), else at the original's (where the face was; a black box is still embedded there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import zip_longest

import numpy as np

from ..detection import Face, FaceDetector
from ..errors import ImageLoadError, InputError
from ..identity.embedders import FaceEmbedder, embed_each, eye_distance
from ..identity.matching import MIN_EYE_DISTANCE
from ..io.images import DEFAULT_MAX_PIXELS, load_image
from ..orchestration.options import AnonymizeOptions
from ..orchestration.stages import find_faces
from . import metrics
from .pairs import MediaPair


@dataclass(frozen=True, kw_only=True)
class EvaluationOptions:
    """How to compare.

    Args:
        threshold: same-person distance; None = the embedder's (dlib: 0.6).
        min_iou: box overlap for a detection in the anonymized image to count as a face's counterpart.
        min_eye_distance: faces with eyes closer than this (pixels) are too small to identify: they
            count for detection and landmarks but not for re-identification or rank-1.
        frame_step: videos: evaluate every ``frame_step``-th frame (1 = all).
        refine_landmarks: refine landmarks as ``face-anon`` does (steadier landmark and pose numbers).
        max_pixels: photos with more pixels are refused.
    """

    threshold: float | None = None
    min_iou: float = 0.3
    min_eye_distance: float = MIN_EYE_DISTANCE
    frame_step: int = 1
    refine_landmarks: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold > 0):
            raise InputError("threshold", self.threshold, "a distance > 0, or None for the embedder's")
        if not 0 < self.min_iou <= 1:
            raise InputError("min_iou", self.min_iou, "a number in (0, 1]")
        if not (math.isfinite(self.min_eye_distance) and self.min_eye_distance >= 0):
            raise InputError("min_eye_distance", self.min_eye_distance, "a number of pixels >= 0")
        if isinstance(self.frame_step, bool) or int(self.frame_step) != self.frame_step or self.frame_step < 1:
            raise InputError("frame_step", self.frame_step, "a positive integer")
        if int(self.max_pixels) != self.max_pixels or self.max_pixels < 1:
            raise InputError("max_pixels", self.max_pixels, "a positive integer")


@dataclass(kw_only=True)
class FaceRecord:
    """One face of the original (one frame of it, for videos) and how its anonymized version compares.

    ``distance`` is between the original's and the anonymized face's embeddings (None when the face
    is too small to identify, ``identifiable=False``). The landmark and pose fields need a detected
    counterpart. ``rank1`` is filled when the whole set is summarized.
    """

    file: str
    index: int
    face: Face
    frame: int | None = None
    track: int | None = None
    counterpart: Face | None = None
    iou: float | None = None
    identifiable: bool = True
    distance: float | None = None
    reidentified: bool | None = None
    landmark_error: float | None = None
    yaw_difference: float | None = None
    roll_difference: float | None = None
    rank1: bool | None = None
    original_embedding: np.ndarray | None = field(default=None, repr=False)
    anonymized_embedding: np.ndarray | None = field(default=None, repr=False)

    @property
    def detected(self) -> bool:
        return self.counterpart is not None

    def to_json(self) -> dict:
        def number(value: float | None, digits: int = 4) -> float | None:
            return None if value is None or not math.isfinite(value) else round(float(value), digits)

        return {
            "file": self.file,
            "frame": self.frame,
            "track": self.track,
            "index": self.index,
            **{f"original_{key}": value for key, value in self.face.to_json().items()},
            "detected": self.detected,
            "iou": number(self.iou),
            "anonymized_landmarks": None if self.counterpart is None else self.counterpart.to_json()["landmarks"],
            "identifiable": self.identifiable,
            "distance": number(self.distance),
            "reidentified": self.reidentified,
            "rank1": self.rank1,
            "landmark_error": number(self.landmark_error),
            "yaw_difference": number(self.yaw_difference, 2),
            "roll_difference": number(self.roll_difference, 2),
        }


@dataclass(kw_only=True)
class FileRecord:
    """One pair of files: its faces, or the error that stopped it (``status`` ``ok`` or ``error``).

    Videos also carry ``frames`` (decoded), ``evaluated_frames`` and the mean frame-to-frame change
    inside the original's face boxes, in the original and in the anonymized video (0..255 units).
    """

    name: str
    kind: str
    status: str = "ok"
    error: str | None = None
    faces: list[FaceRecord] = field(default_factory=list)
    frames: int | None = None
    evaluated_frames: int | None = None
    flicker_original: float | None = None
    flicker_anonymized: float | None = None

    @property
    def flicker_ratio(self) -> float | None:
        if self.flicker_original is None or self.flicker_anonymized is None or self.flicker_original <= 1e-9:
            return None
        return self.flicker_anonymized / self.flicker_original


def compare_faces(
    original: np.ndarray,
    anonymized: np.ndarray,
    *,
    detector: FaceDetector,
    embedder: FaceEmbedder,
    options: EvaluationOptions,
    file: str,
    frame: int | None = None,
) -> list[FaceRecord]:
    """One :class:`FaceRecord` per face of ``original`` (RGB uint8), compared with ``anonymized`` (same size)."""
    if original.shape != anonymized.shape:
        raise InputError(
            "ANONYMIZED",
            detail=f"the anonymized image is {anonymized.shape[1]}x{anonymized.shape[0]}, "
            f"the original {original.shape[1]}x{original.shape[0]}; they must have the same size",
        )
    find = AnonymizeOptions(refine_landmarks=options.refine_landmarks)
    threshold = options.threshold if options.threshold is not None else embedder.threshold
    faces = find_faces(original, detector, find)
    found = find_faces(anonymized, detector, find) if faces else []
    counterparts = metrics.match_boxes([f.box for f in faces], [f.box for f in found], min_iou=options.min_iou)
    records = []
    for index, (face, match) in enumerate(zip(faces, counterparts)):
        record = FaceRecord(file=file, frame=frame, index=index, face=face)
        record.identifiable = eye_distance(face) >= options.min_eye_distance
        if match is not None:
            other = found[match]
            record.counterpart = other
            record.iou = metrics.box_iou(face.box, other.box)
            record.landmark_error = metrics.landmark_error(face.landmark_array, other.landmark_array)
            record.yaw_difference = metrics.angle_difference(
                metrics.yaw_angle(face.landmark_array), metrics.yaw_angle(other.landmark_array)
            )
            record.roll_difference = metrics.angle_difference(
                metrics.roll_angle(face.landmark_array), metrics.roll_angle(other.landmark_array)
            )
        records.append(record)
    identifiable = [r for r in records if r.identifiable]
    originals = embed_each(embedder, original, [r.face for r in identifiable])
    anonymized_embeddings = embed_each(embedder, anonymized, [r.counterpart or r.face for r in identifiable])
    for record, before, after in zip(identifiable, originals, anonymized_embeddings):
        if before is None or after is None:
            record.identifiable = False
            continue
        record.original_embedding, record.anonymized_embedding = before, after
        record.distance = float(np.linalg.norm(after - before))
        record.reidentified = record.distance < threshold
    return records


def compare_photos(
    pair: MediaPair, *, detector: FaceDetector, embedder: FaceEmbedder, options: EvaluationOptions
) -> FileRecord:
    """Compare a photo with its anonymized version (both read upright, as ``face-anon`` reads them)."""
    original = _load(pair.original, "ORIGINAL", options.max_pixels)
    anonymized = _load(pair.anonymized, "ANONYMIZED", options.max_pixels)
    faces = compare_faces(original, anonymized, detector=detector, embedder=embedder, options=options, file=pair.name)
    return FileRecord(name=pair.name, kind="photo", faces=faces)


def _load(path, side: str, max_pixels: int) -> np.ndarray:
    try:
        return load_image(path, max_pixels=max_pixels).rgb
    except ImageLoadError as error:
        raise ImageLoadError(f"{side} {str(path)!r}: {error}") from error


def _open_video(path, side: str):
    from ..io.video import VideoLoadError, VideoReader

    try:
        return VideoReader(path)
    except VideoLoadError as error:
        raise VideoLoadError(f"{side} {str(path)!r}: {error}") from error


def _frames(reader):
    from ..io.video import DecodedFrame

    return (item for item in reader if isinstance(item, DecodedFrame))


def compare_videos(
    pair: MediaPair, *, detector: FaceDetector, embedder: FaceEmbedder, options: EvaluationOptions
) -> FileRecord:
    """Compare a video with its anonymized version frame by frame (streaming; both must have the same frames).

    Faces of consecutive evaluated frames are linked into tracks by box overlap (``min_iou``). The
    flicker numbers compare each evaluated frame with the frame before it, inside the original's
    face boxes of that frame.
    """
    record = FileRecord(name=pair.name, kind="video", frames=0, evaluated_frames=0)
    changes_original: list[float] = []
    changes_anonymized: list[float] = []
    previous_faces: list[FaceRecord] = []
    next_track = 0
    with _open_video(pair.original, "ORIGINAL") as left, _open_video(pair.anonymized, "ANONYMIZED") as right:
        previous = None
        for number, (a, b) in enumerate(zip_longest(_frames(left), _frames(right))):
            if a is None or b is None:
                longer = "ORIGINAL" if b is None else "ANONYMIZED"
                raise InputError(
                    "ANONYMIZED",
                    detail=f"the videos have different frame counts ({longer} goes on past frame {number})",
                )
            record.frames = number + 1
            if number % options.frame_step == 0:
                faces = compare_faces(
                    a.rgb, b.rgb, detector=detector, embedder=embedder, options=options, file=pair.name, frame=number
                )
                links = metrics.match_boxes(
                    [f.face.box for f in faces], [f.face.box for f in previous_faces], min_iou=options.min_iou
                )
                for face, link in zip(faces, links):
                    if link is None:
                        face.track, next_track = next_track, next_track + 1
                    else:
                        face.track = previous_faces[link].track
                if previous is not None and faces:
                    mask = np.zeros(a.rgb.shape[:2], dtype=bool)
                    for face in faces:
                        x0, y0, x1, y1 = (int(round(v)) for v in face.face.box)
                        mask[y0:y1, x0:x1] = True
                    changes_original.append(metrics.mean_abs_change(previous[0], a.rgb, mask))
                    changes_anonymized.append(metrics.mean_abs_change(previous[1], b.rgb, mask))
                record.faces.extend(faces)
                record.evaluated_frames += 1
                previous_faces = faces
            previous = (a.rgb, b.rgb)
    record.flicker_original = metrics.mean_or_none(changes_original)
    record.flicker_anonymized = metrics.mean_or_none(changes_anonymized)
    return record


def compare_pair(
    pair: MediaPair, *, detector: FaceDetector, embedder: FaceEmbedder, options: EvaluationOptions
) -> FileRecord:
    """Compare one pair; any failure (unreadable file, different sizes or frame counts) becomes an
    ``error`` record naming it, so one bad file does not stop the others."""
    compare = compare_videos if pair.kind == "video" else compare_photos
    try:
        return compare(pair, detector=detector, embedder=embedder, options=options)
    except Exception as error:  # noqa: BLE001 - reported per file; the run goes on
        message = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        return FileRecord(name=pair.name, kind=pair.kind, status="error", error=message)


__all__ = ["EvaluationOptions", "FaceRecord", "FileRecord", "compare_faces", "compare_pair"]
