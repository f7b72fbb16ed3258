"""The web app's work, without Gradio: limits on uploads, the one shared model, the speed estimate, and
one photo or video job run through the command line's own code path.

A job writes the visitor's upload into a private temporary folder and runs
:func:`~face_anon.orchestration.batch.process_files` on it, exactly as ``face-anon INPUT -o OUTPUT``
does (same detector, options, journal, encoder, metadata stripping), so the file a visitor downloads is
byte for byte what the command line writes with the same options. The folder is deleted when the job
ends, whatever happens.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from ...detection import Face, FaceDetector
from ...errors import FaceAnonError, ImageLoadError, ModelLoadError
from ...io.files import Journal, plan_files
from ...io.images import FORMATS_BY_EXTENSION, LoadedImage, load_image
from ...io.video import VIDEO_EXTENSIONS, VideoLoadError, VideoReader
from ...orchestration.batch import FileRun, engine_settings, process_files
from ...orchestration.options import AnonymizeOptions
from ...orchestration.report import FileReport, Status
from ...orchestration.stages import REPLACE, FaceDecision
from ...orchestration.video import VideoProgress
from ...replacers.base import FaceAction
from ...replacers.diffusion import DiffusionAnonymizer


logger = logging.getLogger(__name__)

DETECTOR = "centerface"
DETECTOR_THRESHOLD = 0.3  # the command line's default (--threshold)
MEGABYTE = 1024 * 1024


class JobError(FaceAnonError):
    """Something a visitor must be told, in words (never a stack trace): a bad upload, a photo the tool
    refused to write, a model that could not be loaded. Nothing was written for them."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What the app accepts.

    Args:
        max_upload_bytes: largest upload (also handed to Gradio, which refuses larger uploads itself).
        max_pixels: largest photo, in pixels (checked from the file header, before decoding).
        min_side: smallest photo side, in pixels (no face can be found in less).
        max_video_seconds: longest video.
        max_steps: most denoising steps a visitor may ask for (each costs a model pass per face).
    """

    max_upload_bytes: int = 25 * MEGABYTE
    max_pixels: int = 40_000_000
    min_side: int = 32
    max_video_seconds: float = 60.0
    max_steps: int = 100


def _megabytes(size: int) -> str:
    return f"{size / MEGABYTE:.1f} MB" if size >= MEGABYTE else f"{max(1, round(size / 1024))} KB"


def _check_upload_size(path: Path, name: str, limits: Limits) -> None:
    size = path.stat().st_size
    if size == 0:
        raise JobError(f"{name} is empty (0 bytes).")
    if size > limits.max_upload_bytes:
        raise JobError(
            f"{name} is {_megabytes(size)}; this app accepts files up to {_megabytes(limits.max_upload_bytes)}."
        )


def photo_suffix(name: str) -> str:
    """The extension a photo named ``name`` is written back with: its own when face-anon writes that
    format, else ``.png``."""
    suffix = Path(name).suffix.lower()
    return suffix if suffix in FORMATS_BY_EXTENSION else ".png"


def check_photo(path: Path, name: str, limits: Limits) -> LoadedImage:
    """Read an uploaded photo within ``limits``; raises :class:`JobError` saying what is wrong with it."""
    _check_upload_size(path, name, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as header:
                width, height = header.size
    except Exception:  # noqa: BLE001 - load_image below says what is wrong in its own words
        width = height = None
    if width is not None and width * height > limits.max_pixels:
        raise JobError(
            f"{name} is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels); this app accepts photos "
            f"up to {limits.max_pixels / 1e6:g} megapixels. Make it smaller and upload it again."
        )
    try:
        loaded = load_image(path, max_pixels=limits.max_pixels)
    except ImageLoadError as error:
        raise JobError(f"{name} cannot be read as a photo: {error}.") from None
    width, height = loaded.size
    if min(width, height) < limits.min_side:
        raise JobError(
            f"{name} is {width} x {height} pixels; a photo must be at least {limits.min_side} pixels wide and high."
        )
    return loaded


def check_video(path: Path, name: str, limits: Limits) -> float | None:
    """Check an uploaded video within ``limits``; its duration in seconds (None if unknown)."""
    if Path(name).suffix.lower() not in VIDEO_EXTENSIONS:
        allowed = ", ".join(sorted(VIDEO_EXTENSIONS))
        raise JobError(f"{name} is not a video this app reads (file names ending in {allowed}).")
    _check_upload_size(path, name, limits)
    try:
        with VideoReader(path) as reader:
            info = reader.info
    except VideoLoadError as error:
        raise JobError(f"{name} cannot be read as a video: {error}.") from None
    duration = info.duration
    if duration is None and info.frames and info.average_rate:
        duration = info.frames / float(info.average_rate)
    if duration is not None and duration > limits.max_video_seconds:
        raise JobError(
            f"{name} lasts {duration:.0f} s; this app accepts videos up to {limits.max_video_seconds:g} s. "
            "Use the face-anon command for longer ones."
        )
    return duration


# ------------------------------------------------------------------------------------------------ faces


def draw_faces(rgb: np.ndarray, faces: Sequence[Face], *, max_side: int = 1280) -> PIL.Image.Image:
    """The photo, at most ``max_side`` pixels on its longer side, each face boxed and numbered from 1
    (the numbers of the page's face list)."""
    image = PIL.Image.fromarray(rgb)
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), PIL.Image.LANCZOS)
    draw = PIL.ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 400))
    font = PIL.ImageFont.load_default(size=max(14, round(max(image.size) / 40)))
    for number, face in enumerate(faces, start=1):
        x0, y0, x1, y1 = (value * scale for value in face.box)
        draw.rectangle((x0, y0, x1, y1), outline=(255, 214, 0), width=line)
        label = str(number)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        pad = line + 1
        width, height = right - left + 2 * pad, bottom - top + 2 * pad
        lx, ly = x0, y0 - height if y0 - height >= 0 else y0
        draw.rectangle((lx, ly, lx + width, ly + height), fill=(255, 214, 0))
        draw.text((lx + pad - left, ly + pad - top), label, fill=(0, 0, 0), font=font)
    return image


@dataclass(frozen=True)
class KeepUnticked:
    """The selection hook of the app: faces the visitor unticked are kept (``kept``, with a reason that
    names them as the page did); every other face is replaced.

    ``shown`` are the boxes of the faces the page listed: if the job finds other faces (it detects again,
    with the same code, on the same bytes), it refuses rather than keep the wrong face.
    """

    keep: frozenset[int]
    shown: tuple[tuple[float, float, float, float], ...]

    def __call__(self, image: np.ndarray, faces: Sequence[Face]) -> list[FaceDecision]:
        found = [face.box for face in faces]
        if len(found) != len(self.shown) or any(
            abs(a - b) > 1.0 for box, seen in zip(found, self.shown) for a, b in zip(box, seen)
        ):
            raise JobError("the faces found now differ from the faces shown on the page; upload the photo again")
        return [
            FaceDecision(keep=True, reason=f"unticked in the app (face {index + 1})") if index in self.keep else REPLACE
            for index in range(len(faces))
        ]


# ------------------------------------------------------------------------------------------------ the model


class SharedModel:
    """The one diffusion pipeline every visitor's job calls (the pipeline is re-entrant: each call's state
    travels with the call), loaded once, in the background from :meth:`start` or on first use.

    A model that cannot be loaded stays unloaded (the error is kept and shown); blur, pixelate and black
    never need it.
    """

    def __init__(self, load: Callable[[], Any], *, speed: SpeedMeter | None = None) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._pipeline: Any = None
        self._error: str | None = None
        self._loaded = threading.Event()
        self.speed = speed

    def start(self) -> None:
        """Load (and measure the speed, if a :class:`SpeedMeter` is attached) in a background thread."""
        threading.Thread(target=self._load_and_measure, name="face-anon-model", daemon=True).start()

    def _load_and_measure(self) -> None:
        try:
            pipeline = self.get()
        except ModelLoadError:
            return
        if self.speed is not None:
            self.speed.calibrate(pipeline)

    def get(self) -> Any:
        """The pipeline (waits while it loads); raises :class:`ModelLoadError` if it cannot be loaded."""
        with self._lock:
            if not self._loaded.is_set():
                try:
                    self._pipeline = self._load()
                except Exception as error:  # noqa: BLE001 - kept and shown to every visitor who needs the model
                    logger.exception("the diffusion model could not be loaded")
                    self._error = f"{type(error).__name__}: {error}"
                finally:
                    self._loaded.set()
        if self._error is not None:
            raise ModelLoadError(f"the diffusion model could not be loaded ({self._error})")
        return self._pipeline

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self._error is None


class SpeedMeter:
    """Seconds per face of the diffusion mode on this machine, to tell visitors how long a job takes.

    A face costs ``fixed + per_step * steps`` seconds (encoders and decoder once, the UNet per step):
    both are measured at start on one face (after a warm-up call), at 1 and 3 steps. Each finished job
    then corrects the estimate by the ratio of its real time to the predicted one (a running mean),
    so the estimate follows the machine's real load.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.fixed: float | None = None
        self.per_step: float | None = None
        self.correction = 1.0

    def calibrate(self, pipeline: Any) -> None:
        size = int(pipeline.default_image_size)
        crop = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        timings = {}
        try:
            for steps in (1, 1, 3):  # the first call warms up (allocations, lazy initialisation)
                start = self._clock()
                DiffusionAnonymizer(pipeline, num_inference_steps=steps)([crop], [0])
                timings[steps] = self._clock() - start
        except Exception:  # noqa: BLE001 - no estimate is better than a wrong one; jobs still run
            logger.exception("measuring the diffusion speed failed")
            return
        per_step = max((timings[3] - timings[1]) / 2, 1e-4)
        with self._lock:
            self.per_step, self.fixed = per_step, max(timings[1] - per_step, 0.0)
        logger.info("diffusion speed: %.3f s per face + %.3f s per face and step", self.fixed, self.per_step)

    def _predict(self, faces: int, steps: int) -> float | None:
        if self.per_step is None:
            return None
        return faces * (self.fixed + self.per_step * steps)

    def estimate(self, faces: int, steps: int) -> float | None:
        """Seconds a diffusion job on ``faces`` faces with ``steps`` steps takes; None until measured."""
        with self._lock:
            predicted = self._predict(faces, steps)
            return None if predicted is None else predicted * self.correction

    def observe(self, faces: int, steps: int, seconds: float) -> None:
        """Correct the estimate with a finished job's real time."""
        with self._lock:
            predicted = self._predict(faces, steps)
            if not faces or not predicted:
                return
            ratio = min(max(seconds / predicted, 0.2), 5.0)
            self.correction = 0.7 * self.correction + 0.3 * ratio


def duration_text(seconds: float) -> str:
    """``about 40 s``, ``about 3 min``, ``about 1 h 10 min``."""
    if seconds < 60:
        return f"about {max(1, math.ceil(seconds))} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60} min"


class StepReporter:
    """The shared pipeline as one job sees it: every call carries this job's step callback, which turns
    the denoising steps into the fraction of the job's faces done (``on_progress(done, total)``).

    Nothing is stored on the shared pipeline, so concurrent jobs each get their own progress.
    """

    def __init__(self, pipeline: Any, total_faces: int, on_progress: Callable[[float, int], None]) -> None:
        self._pipeline = pipeline
        self._total = max(total_faces, 1)
        self._on_progress = on_progress
        self._done = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        faces = len(kwargs["image"]) if isinstance(kwargs.get("image"), list) else 1
        steps = max(int(kwargs.get("num_inference_steps", 1)), 1)
        done = self._done

        def step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            self._on_progress(min(done + faces * (step + 1) / steps, self._total), self._total)
            return {}

        output = self._pipeline(*args, callback_on_step_end=step_end, **kwargs)
        self._done += faces
        return output


# ------------------------------------------------------------------------------------------------ jobs


@dataclass(frozen=True, kw_only=True)
class JobResult:
    """A finished job: the output file's bytes (what ``face-anon`` writes), its report row and, for a
    photo asked with ``previews``, the upright RGB pixels before and after."""

    data: bytes
    suffix: str
    report: FileReport
    before: np.ndarray | None = None
    after: np.ndarray | None = None


def run_file(
    upload: Path,
    *,
    output_suffix: str,
    options: AnonymizeOptions,
    detector: FaceDetector,
    model: SharedModel | None,
    work_dir: Path,
    limits: Limits,
    selector: KeepUnticked | None = None,
    faces: int = 0,
    on_progress: Callable[[float, int], None] | None = None,
    on_video_progress: Callable[[VideoProgress], None] | None = None,
    previews: bool = False,
) -> JobResult:
    """Anonymize one uploaded file (a photo, or a video by its extension) as
    ``face-anon upload -o out{output_suffix}`` would with ``options``, on a copy in a private folder under
    ``work_dir`` that is removed before returning (``upload`` itself is only read).

    ``faces`` is how many faces the job will replace (for ``on_progress`` over the diffusion steps).
    Raises :class:`JobError` when nothing may be given to the visitor (the file's error, in words).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="job-") as folder:
        source = Path(folder) / f"upload{upload.suffix.lower()}"
        shutil.copyfile(upload, source)
        output = Path(folder) / "output" / f"anonymized{output_suffix}"
        output.parent.mkdir()
        plan = plan_files([source], output)

        def load_pipeline() -> Any:
            if model is None:
                raise ModelLoadError("this app runs without the diffusion model")
            pipeline = model.get()
            return pipeline if on_progress is None else StepReporter(pipeline, faces, on_progress)

        run = FileRun(
            options=options,
            journal=Journal(plan.journal),
            max_pixels=limits.max_pixels,
            settings=engine_settings(options, detector=DETECTOR, threshold=DETECTOR_THRESHOLD),
            selector=selector,
            video_progress=on_video_progress,
        )
        try:
            (report,) = process_files(plan, detector=detector, run=run, load_pipeline=load_pipeline)
        except ModelLoadError as error:
            raise JobError(f"{error}. Blur, pixelate and black still work.") from None
        if report.status is Status.ERROR:
            raise JobError(report_error(report))
        before = after = None
        if previews:
            before, after = load_image(source).rgb, load_image(output).rgb
        return JobResult(data=output.read_bytes(), suffix=output_suffix, report=report, before=before, after=after)


def report_error(report: FileReport) -> str:
    """Why a file was not written, in words; a face that failed says which (numbered from 1)."""
    for number, outcome in enumerate(report.outcomes, start=1):
        if outcome.action is FaceAction.FAILED:
            return (
                f"face {number} could not be anonymized ({outcome.error}), so no image was made: "
                "the original face is never handed out."
            )
    return f"nothing was made: {report.error}"


def report_summary(report: FileReport) -> str:
    """One sentence for the page: what happened to each face (numbered from 1, as on the page)."""
    if report.status is Status.NO_FACES or not report.outcomes:
        return "No face was found, so the result is the photo unchanged (with its metadata removed)."
    words = {
        FaceAction.ANONYMIZED: "anonymized",
        FaceAction.BLURRED: "blurred",
        FaceAction.PIXELATED: "pixelated",
        FaceAction.BLACKED_OUT: "blacked out",
        FaceAction.KEPT: "kept as it is",
        FaceAction.IGNORED_TOO_SMALL: "left alone (too small)",
        FaceAction.OUTSIDE_IMAGE: "left alone (outside the image)",
    }
    parts, warnings_ = [], []
    for number, outcome in enumerate(report.outcomes, start=1):
        if outcome.action is FaceAction.BLACKED_OUT_ON_ERROR:
            warnings_.append(f"face {number} could not be anonymized ({outcome.error}) and was blacked out instead")
        else:
            parts.append(f"face {number} {words.get(outcome.action, str(outcome.action))}")
    text = "; ".join(parts)
    if warnings_:
        text = "; ".join(filter(None, [text, *warnings_]))
    return text[0].upper() + text[1:] + "."


def report_for_visitor(report: FileReport, *, input_name: str, output_name: str) -> dict:
    """The command line's JSON report row, with the visitor's file names instead of the server's paths."""
    entry = report.to_json()
    entry["input"] = input_name
    entry["output"] = output_name
    entry.pop("journal", None)
    return entry


def kept_indices(face_count: int, ticked: Collection[int] | None) -> frozenset[int]:
    """The faces to keep: those of ``range(face_count)`` not ticked (every face when ``ticked`` is None:
    nothing is unticked)."""
    if ticked is None:
        return frozenset()
    return frozenset(range(face_count)) - {int(index) for index in ticked}


__all__ = [
    "JobError",
    "JobResult",
    "KeepUnticked",
    "Limits",
    "SharedModel",
    "SpeedMeter",
    "StepReporter",
    "check_photo",
    "check_video",
    "draw_faces",
    "duration_text",
    "kept_indices",
    "photo_suffix",
    "report_error",
    "report_for_visitor",
    "report_summary",
    "run_file",
]
