"""Files: each input read, its faces found and replaced in batches across files, its output written safely.

Per file, three steps a distributed runner can also call one by one:

- :func:`open_file`: hash the input, ask the journal whether an existing output may be skipped, load
  the photo, find and select its faces; a file with nothing to replace is written right away.
- :func:`finish_files`: replace the faces of several opened files in shared batches and write each.
- :func:`write_output`: journal, then atomically write one output.

:func:`process_files` chains them over a :class:`~face_anon.io.files.FilePlan`. Every per-file failure
(unreadable file, detector or replacer error, disk full) becomes that file's ``error`` row and the
batch goes on; only a model that cannot be loaded stops it (:class:`~face_anon.errors.ModelLoadError`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..detection import DETECTION_REVISION, Face, FaceDetector, box_iou
from ..errors import FaceAnonError, ImageLoadError, ModelLoadError
from ..io.files import FileJob, FilePlan, Journal, Resume, ResumeState, resume_state, sha256_bytes, write_atomic
from ..io.images import (
    DEFAULT_MAX_PIXELS,
    LoadedImage,
    Metadata,
    encode_image,
    format_for,
    load_image,
    merge_into_source,
)
from ..io.jpeg import strip_jpeg
from ..io.video import is_video_path
from ..replacers import FaceReplacer
from ..replacers.base import FaceAction
from .options import AnonymizeOptions, settings_fingerprint
from .photo import PhotoResult, anonymize_photos, make_replacer
from .report import FaceOutcome, FileReport, Status
from .stages import FaceDecision, FaceSelector, find_faces, select_faces
from .video import TrackSelector, VideoOptions, VideoProgress, anonymize_video_file


def engine_settings(
    options: AnonymizeOptions, *, detector: str, threshold: float, model: str | None = None, dtype: str = "auto"
) -> dict:
    """What besides ``options`` decides an output's pixels, in the form every engine (CLI, Ray) records
    in the journal; the model and dtype count only for ``mode="anonymize"``. ``DETECTION_REVISION`` is
    recorded too: an output made by a detection that found less is made again on resume."""
    settings: dict[str, Any] = {
        "detector": detector,
        "detection_revision": DETECTION_REVISION,
        "threshold": float(threshold),
    }
    if options.mode == "anonymize":
        settings.update(model=model, dtype=dtype)
    return settings


@dataclass(frozen=True, kw_only=True)
class FileRun:
    """Everything a run applies to every file.

    Args:
        options: how faces are treated.
        journal: the output folder's journal (``Journal(plan.journal)``).
        keep_metadata: carry EXIF, XMP and comments over (ICC profiles are kept always).
        max_pixels: refuse larger images (checked from the header, before decoding).
        settings: the rest of what decides an output (``engine_settings``; a selection hook adds what
            it compares against): outputs written with other settings are not skipped on resume.
        selector: the selection hook (see ``face_anon.orchestration.stages.select_faces``).
        video: how videos are tracked and encoded (``face_anon.orchestration.video.VideoOptions``;
            its ``keep_metadata`` is taken from this run's).
        identity: a face image whose identity every video track gets (diffusion mode), or None.
        track_selector: the per-track selection hook for videos (``TrackSelector``).
        video_progress: called after each written video frame with a ``VideoProgress``.
    """

    options: AnonymizeOptions
    journal: Journal
    keep_metadata: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    settings: Mapping[str, Any] = field(default_factory=dict)
    selector: FaceSelector | None = None
    # Videos (helper E).
    video: VideoOptions = VideoOptions()
    identity: np.ndarray | None = None
    track_selector: TrackSelector | None = None
    video_progress: Callable[[VideoProgress], None] | None = None

    @functools.cached_property
    def settings_sha256(self) -> str:
        return settings_fingerprint(self.options, {**self.settings, "keep_metadata": self.keep_metadata})

    def metadata(self, loaded: LoadedImage) -> Metadata:
        """What goes into an output: everything with ``keep_metadata``, else only the ICC profile."""
        return loaded.metadata if self.keep_metadata else Metadata(icc_profile=loaded.metadata.icc_profile)


@dataclass(frozen=True, kw_only=True)
class OpenedFile:
    """A file whose faces are found and must be replaced before it can be written."""

    job: FileJob
    loaded: LoadedImage
    input_sha256: str
    resume: ResumeState
    faces: tuple[Face, ...]
    decisions: tuple[FaceDecision, ...]

    @property
    def faces_to_replace(self) -> int:
        return sum(not decision.keep for decision in self.decisions)


def describe_error(step: str, error: BaseException) -> str:
    """A report row's ``error`` text: our own and argument errors as they are (they name the argument or
    the file's problem), anything else prefixed by the ``step`` that failed and the exception's type."""
    if isinstance(error, (FaceAnonError, ValueError)):
        return str(error)
    return f"{step}: {type(error).__name__}: {error}"


def open_file(
    job: FileJob, *, detector: FaceDetector, run: FileRun, data: bytes | None = None
) -> OpenedFile | FileReport:
    """Read one input and find its faces; returns its final report when nothing is left to replace
    (skipped, refused, unreadable, or written without faces to replace), else an :class:`OpenedFile`.

    The input is read once: what is hashed for the journal is what is decoded. ``data``: its bytes when
    the caller read them (a ``job.uri``); ``job.input`` is then not read.
    """
    step, notes = "cannot check the output name", ()
    try:
        format_for(job.output)
        step = "cannot read the input"
        if data is None:
            data = job.input.read_bytes()
        input_sha256 = sha256_bytes(data)
        step = "cannot check the existing output"
        resume = resume_state(job, run.journal, input_sha256=input_sha256, settings_sha256=run.settings_sha256)
        if resume.action is Resume.DONE:
            return FileReport(
                input=job.source, status=Status.SKIPPED, output=job.output, reason=resume.reason, journal=resume.record
            )
        if resume.action is Resume.FOREIGN:
            return FileReport(input=job.source, status=Status.ERROR, error=resume.reason)
        step = "cannot read the input"
        loaded = load_image(job.input, max_pixels=run.max_pixels, data=data)
        notes = tuple(loaded.notes)
        step = "face detection failed"
        faces = find_faces(loaded.rgb, detector, run.options)
        hidden = faces_behind_transparency(loaded, faces, detector)
        if hidden:
            background, count = hidden
            raise ImageLoadError(
                f"{count} face(s) show over a {background} background only through the image's transparency "
                "(alpha channel), where they cannot be anonymized: not written; remove the alpha channel "
                "(flatten the image) and run again"
            )
        step = "face selection failed"
        decisions = select_faces(loaded.rgb, faces, run.selector)
        opened = OpenedFile(
            job=job,
            loaded=loaded,
            input_sha256=input_sha256,
            resume=resume,
            faces=tuple(faces),
            decisions=tuple(decisions),
        )
        if any(not d.keep and f.size >= run.options.min_face_size for f, d in zip(faces, decisions)):
            return opened
        step = "cannot write the output"
        return _write_unchanged(opened, data, run)
    except Exception as error:  # noqa: BLE001 - any failure of one file is that file's error row
        return FileReport(input=job.source, status=Status.ERROR, error=describe_error(step, error), notes=notes)


def faces_behind_transparency(
    loaded: LoadedImage, faces: Sequence[Face], detector: FaceDetector
) -> tuple[str, int] | None:
    """A background over which the image, seen through its alpha channel, shows faces that its colour
    channels (what is anonymized) do not, and how many; None for an opaque image or none such.

    The colour channels hold every face that is anonymized; a picture drawn in the alpha channel (black
    colour, a face-shaped transparency) shows a face over a light background that no colour pixel holds.
    Only boxes are compared, so the views are searched without ``find_faces``' landmark refinement.
    """
    for background, view in loaded.composites().items():
        seen = detector.detect(view)
        extra = [face for face in seen if all(box_iou(face.box, other.box) < 0.3 for other in faces)]
        if extra:
            return background, len(extra)
    return None


def _write_unchanged(opened: OpenedFile, data: bytes, run: FileRun) -> FileReport:
    """A photo with no face to replace: its JPEG data copied losslessly when possible, else re-encoded."""
    job, loaded = opened.job, opened.loaded
    outcomes = tuple(
        FaceOutcome(
            face=face,
            action=FaceAction.KEPT if decision.keep else FaceAction.IGNORED_TOO_SMALL,
            reason=decision.reason,
            matched_reference=decision.matched_reference,
            distance=decision.distance,
        )
        for face, decision in zip(opened.faces, opened.decisions)
    )
    fmt = format_for(job.output)
    encoded, encoding_notes = None, []
    if fmt == "JPEG" and loaded.format == "JPEG" and loaded.orientation == 1:
        try:
            encoded = strip_jpeg(data, keep_metadata=run.keep_metadata)
        except ValueError:
            pass  # unusual stream layout: re-encode below instead
    if encoded is None:
        encoded = encode_image(loaded.source, fmt, run.metadata(loaded), notes=encoding_notes)
    status = Status.OK if outcomes else Status.NO_FACES
    return write_output(opened, encoded, run, status=status, outcomes=outcomes, notes=encoding_notes)


def write_output(
    opened: OpenedFile,
    data: bytes,
    run: FileRun,
    *,
    status: Status,
    outcomes: Sequence[FaceOutcome],
    notes: Sequence[str] = (),
) -> FileReport:
    """Record the output in the journal, then write it atomically; its report row, whose notes are the
    input's, then ``notes`` (what encoding the output changed, from ``encode_image``).

    A new output never replaces a file that appeared at its path meanwhile; an earlier output of this
    tool (``Resume.REPLACE``) is replaced in one rename.
    """
    job = opened.job
    notes = (*opened.loaded.notes, *notes)
    if opened.resume.action is Resume.REPLACE:
        notes += (f"replaced the {opened.resume.reason}",)
    try:
        run.journal.append(
            {
                "output": job.output,
                "output_sha256": sha256_bytes(data),
                "input": str(job.source),
                "input_sha256": opened.input_sha256,
                "settings_sha256": run.settings_sha256,
                "status": str(status),
                "faces": [outcome.to_json() for outcome in outcomes],
            }
        )
        write_atomic(job.output, data, overwrite=opened.resume.action is Resume.REPLACE)
    except FileExistsError:
        error = f"output {str(job.output)!r} appeared while this run worked and was not written by it; left alone"
        return FileReport(input=job.source, status=Status.ERROR, error=error, outcomes=tuple(outcomes), notes=notes)
    except Exception as error:  # noqa: BLE001 - disk full, permissions: this file's error row
        message = describe_error("cannot write the output", error)
        return FileReport(input=job.source, status=Status.ERROR, error=message, outcomes=tuple(outcomes), notes=notes)
    return FileReport(input=job.source, status=status, output=job.output, outcomes=tuple(outcomes), notes=notes)


def _write_result(opened: OpenedFile, result: PhotoResult, run: FileRun) -> FileReport:
    if result.status is Status.ERROR:
        notes = tuple(opened.loaded.notes)
        if opened.resume.action is Resume.REPLACE:
            notes += (f"the {opened.resume.reason} at the output path was left as it was",)
        return FileReport(
            input=opened.job.source, status=Status.ERROR, error=result.error, outcomes=result.outcomes, notes=notes
        )
    encoding_notes: list[str] = []
    try:
        image = merge_into_source(opened.loaded, np.asarray(result.image))
        data = encode_image(image, format_for(opened.job.output), run.metadata(opened.loaded), notes=encoding_notes)
    except Exception as error:  # noqa: BLE001
        message = describe_error("cannot encode the output", error)
        return FileReport(input=opened.job.source, status=Status.ERROR, error=message, outcomes=result.outcomes)
    return write_output(opened, data, run, status=result.status, outcomes=result.outcomes, notes=encoding_notes)


def finish_files(
    opened: Sequence[OpenedFile], *, replacer: FaceReplacer, detector: FaceDetector, run: FileRun
) -> list[FileReport]:
    """Replace the faces of several opened files in shared batches, write each; one report per file.

    If the shared work raises, each file is retried alone, so one file's failure stays its own.
    """
    try:
        results = anonymize_photos(
            [item.loaded.rgb for item in opened],
            detector=detector,
            options=run.options,
            faces=[item.faces for item in opened],
            decisions=[item.decisions for item in opened],
            replacer=replacer,
        )
    except Exception as error:  # noqa: BLE001
        if len(opened) > 1:
            return [
                report
                for item in opened
                for report in finish_files([item], replacer=replacer, detector=detector, run=run)
            ]
        (item,) = opened
        message = describe_error("cannot anonymize", error)
        return [FileReport(input=item.job.source, status=Status.ERROR, error=message, notes=tuple(item.loaded.notes))]
    return [_write_result(item, result, run) for item, result in zip(opened, results)]


class _LazyReplacer:
    """The run's replacer, made on first use so a run with nothing to replace never loads the model."""

    def __init__(self, options: AnonymizeOptions, pipeline: Any, load_pipeline: Callable[[], Any] | None) -> None:
        self.options, self.pipeline, self.load_pipeline = options, pipeline, load_pipeline
        self.replacer: FaceReplacer | None = None

    def get(self) -> FaceReplacer:
        if self.replacer is None:
            if self.options.mode == "anonymize" and self.pipeline is None:
                if self.load_pipeline is None:
                    raise ModelLoadError("mode 'anonymize' needs a pipeline or a load_pipeline function")
                try:
                    self.pipeline = self.load_pipeline()
                except ModelLoadError:
                    raise
                except Exception as error:  # noqa: BLE001 - reported as one clear line
                    raise ModelLoadError(f"cannot load the model: {type(error).__name__}: {error}") from error
            self.replacer = make_replacer(self.options, self.pipeline)
        return self.replacer


def process_files(
    plan: FilePlan,
    *,
    detector: FaceDetector,
    run: FileRun,
    pipeline: Any = None,
    load_pipeline: Callable[[], Any] | None = None,
) -> Iterator[FileReport]:
    """Anonymize every job's photo and write its output; yield one report per job as it completes.

    Faces of consecutive photos are gathered until a batch is full, so reports may come out of
    order. For ``mode="anonymize"`` give ``pipeline``, or ``load_pipeline`` to load the model only
    once a face needs it (a resumed or face-free run then never loads it). Raises
    :class:`~face_anon.errors.ModelLoadError` when the model cannot be loaded (the files not yet
    reported were not written).
    """
    replacers = _LazyReplacer(run.options, pipeline, load_pipeline)
    pending: list[OpenedFile] = []
    for job in plan.jobs:
        if is_video_path(job.input):  # a video streams through on its own (helper E)
            yield anonymize_video_file(job, detector=detector, run=run, load_replacer=replacers.get)
            continue
        opened = open_file(job, detector=detector, run=run)
        if isinstance(opened, FileReport):
            yield opened
            continue
        pending.append(opened)
        if sum(item.faces_to_replace for item in pending) >= run.options.batch_size:
            yield from finish_files(pending, replacer=replacers.get(), detector=detector, run=run)
            pending = []
    if pending:
        yield from finish_files(pending, replacer=replacers.get(), detector=detector, run=run)


__all__ = [
    "FileRun",
    "OpenedFile",
    "engine_settings",
    "finish_files",
    "open_file",
    "process_files",
    "write_output",
]
