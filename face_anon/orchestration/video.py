"""Whole videos: every face of every frame, one consistent new identity per person, streamed.

``anonymize_video(input, output, ...)`` reads the input with PyAV, finds the faces of each frame, links
them into tracks (ByteTrack, :mod:`face_anon.detection.tracking`), smooths each track's box and
landmarks, fills detection gaps and extends every track a few frames at both ends, then replaces the
faces with the photo stages (:mod:`.stages`: plan crops, replace in batches, paste) and writes the
frames back with the input's timeline, audio and rotation (:mod:`face_anon.io.video`). Only a bounded
window of frames is held: ``VideoOptions.window`` for look-ahead plus up to ``batch_size`` faces
waiting for the replacer, so faces of many frames go to the model together.

In the diffusion mode each track gets one new identity: the track's best frame (largest and most
frontal face among the first ``window`` frames it appears in) is anonymized once with the track's
seed, and that identity is swapped onto the track's face in every frame (``anonymization_degree=0``,
``source_image=`` the identity) with a deterministic sampler (DDIM, eta 0) and the track's seed, so
identical frames give identical faces. ``identity=`` uses one given face for every track instead.

Nothing leaks silently: a face that cannot be replaced in a frame is blacked out (the report counts
it as ``redacted``), and a video that cannot be read completely is not written at all.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import PIL.Image

from ..detection import Face, FaceDetector
from ..detection.tracking import DETECTED, EXTENDED, INTERPOLATED, ByteTracker, FrameFaces, TrackWindow
from ..errors import FaceAnonError, InputError, ModelLoadError
from ..geometry.alignment import crop_face, ffhq_alignment
from ..io.files import FileJob, Resume, resume_state, sha256_file
from ..io.images import rgb_array
from ..io.video import DEFAULT_CRF, DecodedFrame, PassthroughPacket, VideoLoadError, VideoReader, VideoWriter
from ..replacers import DiffusionAnonymizer, FaceReplacer
from ..replacers.base import FaceAction
from .options import AnonymizeOptions, settings_fingerprint
from .photo import make_replacer
from .report import FileReport, Status
from .stages import (
    REPLACE,
    FaceCrop,
    FaceDecision,
    FacePlan,
    Replacement,
    apply_on_error,
    crop_layers,
    cut_crops,
    find_faces,
    paste_faces,
    plan_crops,
    replace_crops,
)


if TYPE_CHECKING:
    from .batch import FileRun

IDENTITY_CHOICES = ("track", "frame")


@dataclass(frozen=True, kw_only=True)
class VideoOptions:
    """How a video is tracked and written (how each face is treated is :class:`AnonymizeOptions`).

    Args:
        crf: quality of the re-encoded video (x264's constant rate factor; 18 is visually lossless,
            0 lossless, higher is smaller).
        keep_metadata: keep container and stream tags (location, creation time, device) and data
            streams; cover art is dropped always (it can show a face).
        window: frames held for look-ahead: gaps up to ``max_gap`` frames are interpolated and
            tracks extended ``extend`` frames back; memory grows with it.
        max_gap: frames a track may go undetected and still continue (ByteTrack's track buffer).
        extend: frames treated before a track's first and after its last detection.
        track_threshold: ByteTrack's split: detections scoring below it only continue tracks first
            found with a higher score (unmatched ones still start tracks: every detection is treated).
        identity: ``track`` (one new identity per track, stable over time) or ``frame`` (each frame's
            face anonymized on its own, as photos are: the faces flicker; for comparison).
        refine_landmarks: re-detect landmarks on each face's own crop (slow: about 0.1 s per face
            on a CPU); by default the smoothing over time steadies the crops instead.
    """

    crf: int = DEFAULT_CRF
    keep_metadata: bool = False
    window: int = 16
    max_gap: int = 15
    extend: int = 4
    track_threshold: float = 0.5
    identity: str = "track"
    refine_landmarks: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.crf, bool) or not isinstance(self.crf, int) or not 0 <= self.crf <= 51:
            raise InputError("crf", self.crf, "an integer from 0 to 51 (18 is visually lossless)")
        for name in ("max_gap", "extend"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(name, value, "an integer >= 0")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise InputError("window", self.window, "a positive integer")
        if self.window < max(self.max_gap, self.extend) + 1:
            raise InputError(
                "window", self.window, f"at least max(max_gap, extend) + 1 = {max(self.max_gap, self.extend) + 1}"
            )
        if not (isinstance(self.track_threshold, (int, float)) and 0.0 <= self.track_threshold <= 1.0):
            raise InputError("track_threshold", self.track_threshold, "a number from 0 to 1")
        if self.identity not in IDENTITY_CHOICES:
            raise InputError("identity", self.identity, f"one of {', '.join(IDENTITY_CHOICES)}")


@dataclass(frozen=True, kw_only=True)
class VideoProgress:
    """Where a video stands, after each written frame: ``frame`` frames of ``frames`` (the count the
    container announces, None if it does not say) written, ``faces`` face areas treated so far."""

    input: Path
    frame: int
    frames: int | None
    faces: int


class TrackSelector(Protocol):
    """The selection hook for videos: decide once per track whether to keep it or replace it.

    Called when the track's first frame is about to be written, with the track's detected faces in
    the frames held then (up to ``VideoOptions.window`` of them): ``(upright RGB frame, face)`` pairs.
    The decision holds for the whole track, so a person never flickers between kept and replaced.
    A selector that raises fails the video (nothing is written).
    """

    def __call__(self, track_id: int, samples: Sequence[tuple[np.ndarray, Face]]) -> FaceDecision: ...


@dataclass(frozen=True, kw_only=True)
class TrackReport:
    """One track of a video: frames ``first``..``last`` (indices), how many frames of each kind, and what
    was done. ``redacted`` counts frames where its face could not be replaced and was blacked out."""

    id: int
    first: int
    last: int
    detected: int
    interpolated: int
    extended: int
    redacted: int
    action: FaceAction
    error: str | None = None
    reason: str | None = None
    matched_reference: str | None = None
    distance: float | None = None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "first": self.first,
            "last": self.last,
            "detected": self.detected,
            "interpolated": self.interpolated,
            "extended": self.extended,
            "redacted": self.redacted,
            "action": str(self.action),
            "error": self.error,
            "reason": self.reason,
            "matched_reference": self.matched_reference,
            "distance": None if self.distance is None else round(float(self.distance), 4),
        }


@dataclass(frozen=True, kw_only=True)
class VideoReport(FileReport):
    """A video's row of the report: a :class:`FileReport` with the frame count and the tracks."""

    frames: int = 0
    tracks: tuple[TrackReport, ...] = ()

    def to_json(self) -> dict:
        entry = super().to_json()
        entry.update(kind="video", frames=self.frames, tracks=[track.to_json() for track in self.tracks])
        return entry


# ------------------------------------------------------------------------------------------------ identities


def frontal_score(face: Face) -> float:
    """How good a face is as a track's identity source: its size, discounted as it turns sideways.

    The turn is read from the nose's offset from the eyes' midpoint along the eye line, relative to the
    eye distance (0 for a frontal face, about 0.5 in profile).
    """
    left, right, nose = face.landmark_array[:3]
    axis = right - left
    distance = float(np.hypot(*axis))
    if distance < 1e-6:
        return 0.0
    offset = abs(float(np.dot(nose - (left + right) / 2, axis / distance))) / distance
    return face.size * max(0.05, 1.0 - 2.0 * offset)


def identity_crop(image: PIL.Image.Image | np.ndarray, *, detector: FaceDetector, crop_size: int) -> np.ndarray:
    """The aligned crop of the one face in ``image`` (the ``identity=`` face). Raises :class:`InputError`
    when the image holds no face or several."""
    rgb = np.asarray(rgb_array(image) if isinstance(image, PIL.Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError("identity", f"an array of shape {rgb.shape}", "a PIL image or an RGB uint8 array")
    faces = detector.detect(rgb)
    if len(faces) != 1:
        raise InputError("identity", f"an image with {len(faces)} faces", "an image with exactly one face")
    alignment = ffhq_alignment(faces[0].landmark_array, crop_size, eye_scale=detector.eye_scale)
    return crop_face(rgb, alignment)


def deterministic_swapper(replacer: FaceReplacer) -> FaceReplacer:
    """The replacer that swaps a track's identity onto each frame: for the diffusion model, the same
    pipeline components with a DDIM scheduler (eta 0: no noise after the initial draw), so the same
    crop, identity and seed give the same face. The shared pipeline is not changed (a new pipeline
    object shares its modules; only the scheduler, which holds per-call state, is its own)."""
    if not isinstance(replacer, DiffusionAnonymizer):
        return replacer
    pipeline = replacer.pipeline
    components = getattr(pipeline, "components", None)
    if not components or "scheduler" not in components:
        return replacer  # not a diffusers pipeline (a stand-in): use it as it is
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    copy = type(pipeline)(**{**components, "scheduler": scheduler})
    copy.set_progress_bar_config(disable=True)
    return DiffusionAnonymizer(
        copy,
        anonymization_degree=replacer.anonymization_degree,
        num_inference_steps=replacer.num_inference_steps,
        guidance_scale=replacer.guidance_scale,
        crop_size=replacer.crop_size,
    )


# ------------------------------------------------------------------------------------------------ the loop


@dataclass
class _TrackState:
    decision: FaceDecision = REPLACE
    identity: np.ndarray | None = None
    identity_error: str | None = None
    first: int = -1
    last: int = -1
    counts: dict = dataclasses.field(default_factory=lambda: {DETECTED: 0, INTERPOLATED: 0, EXTENDED: 0})
    redacted: int = 0
    action: FaceAction | None = None
    error: str | None = None


class _VideoRun:
    """The state of one video while it streams through: tracks, held frames, the replacers."""

    def __init__(
        self,
        *,
        detector: FaceDetector,
        options: AnonymizeOptions,
        video: VideoOptions,
        get_replacer: Callable[[], FaceReplacer],
        selector: TrackSelector | None,
        given_identity: np.ndarray | None,
        writer: VideoWriter,
        progress: Callable[[VideoProgress], None] | None,
    ) -> None:
        self.detector, self.options, self.video = detector, options, video
        self.get_replacer, self.selector, self.given_identity = get_replacer, selector, given_identity
        self.writer, self.progress = writer, progress
        self.replacer: FaceReplacer | None = None
        self.swapper: FaceReplacer | None = None
        self.detect_options = dataclasses.replace(options, refine_landmarks=video.refine_landmarks)
        self.tracker = ByteTracker(high_threshold=video.track_threshold, max_lost=video.max_gap)
        self.window = TrackWindow(video.window, extend=video.extend, max_gap=video.max_gap)
        self.frames: dict[int, DecodedFrame] = {}
        self.ready: list[FrameFaces] = []
        self.tracks: dict[int, _TrackState] = {}
        self.written = 0
        self.faces = 0

    # -- streaming

    def add(self, frame: DecodedFrame) -> None:
        self.frames[frame.index] = frame
        faces = find_faces(frame.rgb, self.detector, self.detect_options)
        self.ready += self.window.push(frame.index, frame.time, self.tracker.update(faces, frame.time))
        waiting = sum(len(f.faces) for f in self.ready)
        if waiting >= self.options.batch_size or len(self.ready) >= self.video.window:
            self.flush()

    def finish(self) -> None:
        self.ready += self.window.finish()
        self.flush()

    # -- one group of frames

    def flush(self) -> None:
        group = self.ready  # stays in self.ready while it is worked on: its frames are still held
        for frame_faces in group:
            for tracked in frame_faces.faces:
                self._first_sight(tracked.track_id)
        plans = {f.index: self._plan(f) for f in group}
        images = {f.index: self.frames[f.index].rgb for f in group}
        if any(plan.replace for frame_plans in plans.values() for plan in frame_plans):
            self._replace(group, plans, images)
        for frame_faces in group:
            self._write(frame_faces, plans[frame_faces.index], images[frame_faces.index])
        self.ready = []

    def _first_sight(self, track_id: int) -> None:
        """Decide a new track's fate (selection hook) once, from the frames held now."""
        if track_id in self.tracks:
            return
        state = self.tracks[track_id] = _TrackState()
        if self.selector is None:
            return
        samples = [(self.frames[index].rgb, face) for index, face in self._detections(track_id)]
        decision = self.selector(track_id, samples)
        if not isinstance(decision, FaceDecision):
            raise InputError("selector", type(decision).__name__, "a FaceDecision per track")
        state.decision = decision

    def _detections(self, track_id: int) -> list[tuple[int, Face]]:
        """The track's detected faces in every frame still held (released or in the window)."""
        found = []
        for frame_faces in [*self.ready, *self.window.frames]:
            tracked = frame_faces.track(track_id)
            if tracked is not None and tracked.kind == DETECTED:
                found.append((frame_faces.index, tracked.face))
        return found

    def _plan(self, frame_faces: FrameFaces) -> list[FacePlan]:
        if not frame_faces.faces:
            return []
        rgb = self.frames[frame_faces.index].rgb
        faces = [tracked.face for tracked in frame_faces.faces]
        decisions = [self.tracks[tracked.track_id].decision for tracked in frame_faces.faces]
        crop_size = self._get_replacer().crop_size
        plans = plan_crops(
            rgb, faces, self.options, crop_size=crop_size, eye_scale=self.detector.eye_scale, decisions=decisions
        )
        return [
            dataclasses.replace(plan, seed=self._seed(tracked.track_id, frame_faces.index))
            for plan, tracked in zip(plans, frame_faces.faces)
        ]

    def _seed(self, track_id: int, frame: int) -> int:
        if self.video.identity == "frame":
            return self.options.seed + track_id + 1_000_003 * frame  # a new draw per frame (the flickering baseline)
        return self.options.seed + track_id

    def _get_replacer(self) -> FaceReplacer:
        if self.replacer is None:
            self.replacer = self.get_replacer()
            if self._per_track_identity:
                self.swapper = deterministic_swapper(self.replacer)
        return self.replacer

    @property
    def _per_track_identity(self) -> bool:
        return self.options.mode == "anonymize" and self.video.identity == "track"

    def _replace(self, group: list[FrameFaces], plans: dict[int, list[FacePlan]], images: dict[int, np.ndarray]):
        self._get_replacer()
        tracks_of = {f.index: [t.track_id for t in f.faces] for f in group}
        if self._per_track_identity:
            self._make_identities(
                {tid for f in group for tid, p in zip(tracks_of[f.index], plans[f.index]) if p.replace}
            )
        layered = {index: crop_layers(frame_plans) for index, frame_plans in plans.items()}
        for layer in range(max((len(layers) for layers in layered.values()), default=0)):
            batch: list[tuple[int, FaceCrop, int]] = []
            for frame_faces in group:
                layers = layered[frame_faces.index]
                if layer < len(layers):
                    for crop in cut_crops(images[frame_faces.index], layers[layer]):
                        batch.append((frame_faces.index, crop, tracks_of[frame_faces.index][crop.plan.index]))
            results = self._replace_crops([crop for _, crop, _ in batch], [tid for _, _, tid in batch])
            for index in {index for index, _, _ in batch}:
                mine = [(crop, result, tid) for (i, crop, tid), result in zip(batch, results) if i == index]
                images[index] = paste_faces(images[index], [c for c, _, _ in mine], [r for _, r, _ in mine])
                for _crop, result, tid in mine:
                    self._count(tid, result)

    def _replace_crops(self, crops: list[FaceCrop], track_ids: list[int]) -> list[Replacement]:
        """Replace (or swap) the crops; any face that fails is blacked out (never left as it was)."""
        crop_size = self.replacer.crop_size
        if not self._per_track_identity:
            results = replace_crops(self.replacer, crops, batch_size=self.options.batch_size)
            return apply_on_error(results, "redact", crop_size)
        results: list[Replacement | None] = [None] * len(crops)
        todo = []
        for i, tid in enumerate(track_ids):
            state = self.tracks[tid]
            if state.identity is None:  # its identity could not be made: black, with the reason
                failed = Replacement(pixels=None, action=FaceAction.FAILED, error=state.identity_error)
                results[i] = apply_on_error([failed], "redact", crop_size)[0]
            else:
                todo.append(i)
        swapped = replace_crops(
            self.swapper,
            [crops[i] for i in todo],
            batch_size=self.options.batch_size,
            sources=[self.tracks[track_ids[i]].identity for i in todo],
        )
        for i, result in zip(todo, apply_on_error(swapped, "redact", crop_size)):
            results[i] = result
        return results

    def _make_identities(self, track_ids: set[int]) -> None:
        """Give each new track its identity: the given face, or its best frame anonymized once."""
        new = sorted(
            tid for tid in track_ids if self.tracks[tid].identity is None and self.tracks[tid].identity_error is None
        )
        if not new:
            return
        if self.given_identity is not None:
            for tid in new:
                self.tracks[tid].identity = self.given_identity
            return
        crops, owners = [], []
        for tid in new:
            candidates = self._detections(tid)
            if not candidates:  # only interpolated or extended so far (cannot happen for a new track)
                self.tracks[tid].identity_error = "no detected frame to make an identity from"
                continue
            index, face = max(candidates, key=lambda item: frontal_score(item[1]))
            plan = plan_crops(
                self.frames[index].rgb,
                [face],
                self.options,
                crop_size=self.replacer.crop_size,
                eye_scale=self.detector.eye_scale,
            )[0]
            plan = dataclasses.replace(plan, seed=self._seed(tid, index))
            crops += cut_crops(self.frames[index].rgb, [plan])
            owners.append(tid)
        for tid, result in zip(owners, replace_crops(self.replacer, crops, batch_size=self.options.batch_size)):
            if result.pixels is None:
                self.tracks[tid].identity_error = f"its identity could not be made ({result.error})"
            else:
                self.tracks[tid].identity = result.pixels

    def _count(self, track_id: int, result: Replacement) -> None:
        state = self.tracks[track_id]
        if result.action is FaceAction.BLACKED_OUT_ON_ERROR:
            state.redacted += 1
            state.error = state.error or result.error
        else:
            state.action = result.action

    def _write(self, frame_faces: FrameFaces, plans: list[FacePlan], image: np.ndarray) -> None:
        frame = self.frames.pop(frame_faces.index)
        for tracked, plan in zip(frame_faces.faces, plans):
            state = self.tracks[tracked.track_id]
            state.counts[tracked.kind] += 1
            state.first = frame_faces.index if state.first < 0 else state.first
            state.last = frame_faces.index
            if plan.action is FaceAction.KEPT:
                state.action = FaceAction.KEPT
        self.writer.write(frame, image if image is not frame.rgb else None)
        self.written += 1
        self.faces += len(frame_faces.faces)
        if self.progress is not None:
            reader = self.writer.reader
            self.progress(
                VideoProgress(input=reader.path, frame=self.written, frames=reader.info.frames, faces=self.faces)
            )

    def track_reports(self) -> tuple[TrackReport, ...]:
        reports = []
        for tid, state in sorted(self.tracks.items()):
            action = state.action
            if action is None and state.redacted:  # never replaced, blacked out wherever it was visible
                action = FaceAction.BLACKED_OUT_ON_ERROR
            elif action is None:  # never treated: too small or outside the picture in every frame
                action = FaceAction.IGNORED_TOO_SMALL if self.options.min_face_size > 0 else FaceAction.OUTSIDE_IMAGE
            reports.append(
                TrackReport(
                    id=tid,
                    first=state.first,
                    last=state.last,
                    detected=state.counts[DETECTED],
                    interpolated=state.counts[INTERPOLATED],
                    extended=state.counts[EXTENDED],
                    redacted=state.redacted,
                    action=action,
                    error=state.error,
                    reason=state.decision.reason,
                    matched_reference=state.decision.matched_reference,
                    distance=state.decision.distance,
                )
            )
        return tuple(reports)


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def anonymize_video(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    detector: FaceDetector,
    pipeline: Any = None,
    options: AnonymizeOptions = AnonymizeOptions(),
    video: VideoOptions = VideoOptions(),
    replacer: FaceReplacer | None = None,
    load_replacer: Callable[[], FaceReplacer] | None = None,
    selector: TrackSelector | None = None,
    identity: PIL.Image.Image | np.ndarray | None = None,
    progress: Callable[[VideoProgress], None] | None = None,
    overwrite: bool = False,
    before_rename: Callable[[Path], None] | None = None,
) -> VideoReport:
    """Anonymize every face of a video file and write the result to ``output``, streaming.

    Args:
        input: the video (mp4, mov, mkv, webm, avi, ...: anything FFmpeg reads).
        output: the file to write; its extension picks the container (``.webm`` gets VP9, others H.264).
        detector: a loaded face detector.
        pipeline: a loaded ``FaceAnonPipeline``, for ``options.mode="anonymize"``.
        options: how faces are treated (mode, degree, steps, guidance, seed, batch size, crop size,
            min face size). A face that cannot be replaced is blacked out whatever ``on_error`` says.
        video: tracking and encoding (see :class:`VideoOptions`).
        replacer: use this instead of the one ``options.mode`` selects; ``load_replacer`` makes it on
            first need instead (a video without faces then never loads a model).
        selector: per-track keep/replace hook (see :class:`TrackSelector`).
        identity: a face image whose identity every track gets (diffusion mode), instead of a new one each.
        progress: called with a :class:`VideoProgress` after each written frame.
        overwrite: replace an existing ``output`` (else an existing file is an error and left alone).
        before_rename: called with the finished temporary file just before it becomes ``output``.

    Returns a :class:`VideoReport`: ``ok`` (faces found), ``no_faces`` (written unchanged but
    re-encoded without metadata) or ``error`` (nothing written; ``error`` says why). Bad arguments
    (options, an ``identity`` image without exactly one face) raise :class:`InputError`.
    """
    source, target = Path(input), Path(output)

    def failed(message: str, frames: int = 0, notes: Sequence[str] = ()) -> VideoReport:
        return VideoReport(input=source, status=Status.ERROR, error=message, frames=frames, notes=tuple(notes))

    if _same_path(source, target):
        return failed(f"output {str(target)!r} is the input; face-anon never overwrites an input")
    if target.exists() and not overwrite:
        return failed(f"output {str(target)!r} exists; it is left alone (choose another output)")
    if identity is not None and options.mode != "anonymize":
        raise InputError("identity", "a face image", f"no identity with mode {options.mode!r} (only with anonymize)")

    def get_replacer() -> FaceReplacer:
        if replacer is not None:
            return replacer
        if load_replacer is not None:
            return load_replacer()
        return make_replacer(options, pipeline)

    given_identity = None
    if identity is not None:  # checked before any work: an image without exactly one face is a bad argument
        replacer = get_replacer()
        given_identity = identity_crop(identity, detector=detector, crop_size=replacer.crop_size)

    notes: list[str] = []
    run = None
    try:
        with VideoReader(source, keep_data_streams=video.keep_metadata) as reader:
            notes = reader.notes
            with VideoWriter(target, reader, crf=video.crf, keep_metadata=video.keep_metadata) as writer:
                run = _VideoRun(
                    detector=detector,
                    options=options,
                    video=video,
                    get_replacer=get_replacer,
                    selector=selector,
                    given_identity=given_identity,
                    writer=writer,
                    progress=progress,
                )
                if progress is not None:  # the clock starts now, not when the look-ahead releases a frame
                    progress(VideoProgress(input=source, frame=0, frames=reader.info.frames, faces=0))
                for item in reader:
                    if isinstance(item, PassthroughPacket):
                        writer.copy(item)
                    else:
                        run.add(item)
                run.finish()
                writer.commit(overwrite=overwrite, before_rename=before_rename)
    except VideoLoadError as error:
        return failed(str(error), run.written if run else 0, notes)
    except FileExistsError:
        return failed(f"output {str(target)!r} appeared while this run worked; it is left alone", 0, notes)
    except ModelLoadError:
        raise  # no face of any file can be replaced: the caller stops the run
    except Exception as error:  # noqa: BLE001 - any other failure of this video is its error row
        message = str(error) if isinstance(error, FaceAnonError) else f"{type(error).__name__}: {error}"
        return failed(message, run.written if run else 0, notes)
    tracks = run.track_reports()
    return VideoReport(
        input=source,
        status=Status.OK if tracks else Status.NO_FACES,
        output=target,
        notes=tuple(notes),
        frames=run.written,
        tracks=tracks,
    )


def video_settings(video: VideoOptions, identity: PIL.Image.Image | np.ndarray | None = None) -> dict:
    """What of the video options (and the identity face) decides an output's content, for the journal."""
    settings: dict[str, Any] = dataclasses.asdict(video)
    if identity is not None:
        import hashlib

        pixels = np.ascontiguousarray(rgb_array(identity) if isinstance(identity, PIL.Image.Image) else identity)
        settings["identity_sha256"] = hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()
    return settings


def anonymize_video_file(
    job: FileJob, *, detector: FaceDetector, run: FileRun, load_replacer: Callable[[], FaceReplacer]
) -> VideoReport:
    """One video job of a batch run, with the run's options (``run.video``, ``run.identity``,
    ``run.track_selector``, ``run.video_progress``, ``run.keep_metadata``): resumed and journaled as
    photos are.

    An output this tool wrote from the same input with the same settings is skipped; one it wrote
    otherwise is replaced; anything else at the output path is left alone (an error row). The journal
    row (with the output's sha256) is written before the output is renamed into place.
    """
    video = dataclasses.replace(run.video, keep_metadata=run.keep_metadata)
    identity = run.identity
    settings = {**run.settings, "keep_metadata": video.keep_metadata, "video": video_settings(video, identity)}
    settings_sha256 = settings_fingerprint(run.options, settings)
    try:
        input_sha256 = sha256_file(job.input)
        resume = resume_state(job, run.journal, input_sha256=input_sha256, settings_sha256=settings_sha256)
    except OSError as error:
        return VideoReport(input=job.input, status=Status.ERROR, error=f"cannot read the input: {error}")
    if resume.action is Resume.DONE:
        return VideoReport(
            input=job.input, status=Status.SKIPPED, output=job.output, reason=resume.reason, journal=resume.record
        )
    if resume.action is Resume.FOREIGN:
        return VideoReport(input=job.input, status=Status.ERROR, error=resume.reason)

    def journal(temporary: Path) -> None:
        run.journal.append(
            {
                "output": job.output,
                "output_sha256": sha256_file(temporary),
                "input": str(job.input),
                "input_sha256": input_sha256,
                "settings_sha256": settings_sha256,
                "kind": "video",
            }
        )

    report = anonymize_video(
        job.input,
        job.output,
        detector=detector,
        options=run.options,
        video=video,
        load_replacer=load_replacer,
        selector=run.track_selector,
        identity=identity,
        progress=run.video_progress,
        overwrite=resume.action is Resume.REPLACE,
        before_rename=journal,
    )
    if resume.action is Resume.REPLACE and report.status is not Status.ERROR:
        report = dataclasses.replace(report, notes=(*report.notes, f"replaced the {resume.reason}"))
    return report


__all__ = [
    "IDENTITY_CHOICES",
    "TrackReport",
    "TrackSelector",
    "VideoProgress",
    "VideoOptions",
    "VideoReport",
    "anonymize_video",
    "anonymize_video_file",
    "deterministic_swapper",
    "frontal_score",
    "identity_crop",
    "video_settings",
]
