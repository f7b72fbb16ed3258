"""Datasets past one machine: the run ``face-anon`` makes, as a Ray Data pipeline over a cluster.

::

    driver   plan_inputs: folders, text files of paths, filesystem URIs (s3://, gs://, file://, ...)
    open     CPU actors (detector loaded once): read, hash, resume check, decode, find and select the
             faces, plan and cut the crops; photos with nothing to replace are written here
    replace  model actors (model loaded once, on the first crop): the crops of several photos in batches
    write    CPU actors: paste back, encode, journal, atomic write
    driver   report rows as they arrive, gathered into the JSON report the command line writes

Each stage calls the single-process functions (``face_anon.orchestration.batch`` and ``.stages``):
``open_file`` in the open stage, ``replace_crops`` (or ``anonymize_photos`` for photos whose faces
overlap) in the replace stage, and ``finish_files`` in the write stage, which replays the replace
stage's results. So a photo gets the same faces, seeds, outputs, journal rows and report row as with
``process_files``; on the CPU outputs are byte for byte the same at any batch size (the diffusion replacer
runs one face per call there) given the same number of torch threads, on which float rounding depends. On
GPUs batches are single calls, grouped differently by the two engines: a value can move by one level.

Resuming and faults:

- An output this tool already wrote from the same input with the same settings (its journal says so) is
  skipped in the open stage: a resumed run loads no model and changes no file, whichever engine wrote it.
- A bad file is that file's ``error`` row. A model actor whose batch raises outside the per-face
  handling (which already retries a failing batch face by face) ends its process; Ray starts a fresh
  actor and runs the batch again there (``RayConfig.max_worker_restarts`` times at most). Model actors
  write nothing; the open stage (photos without faces) and the write stage skip an output that a lost
  attempt of their batch already wrote (journal record attached), so every output is written once, whole
  (atomic rename). A model that cannot be loaded stops the run, as in a single process.
- Memory is bounded: each actor has at most two batches queued and the pipeline's share of the object
  store is capped (``RayConfig.object_store_memory``); Ray Data holds the listing back when it is full.

Ray is an optional extra: ``pip install "face-anon[ray]"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import pickle
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..detection import Face, FaceDetector, load_detector
from ..errors import FaceAnonError, InputError, ModelLoadError
from ..io.files import (
    JOURNAL_NAME,
    FileJob,
    FilePlan,
    Journal,
    Resume,
    ResumeState,
    SkippedFile,
    check_writable,
    plan_files,
    resume_state,
    sha256_bytes,
    sha256_file,
)
from ..io.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, load_image
from ..io.video import VIDEO_EXTENSIONS, is_video_path
from ..replacers.base import ACTIONS, FaceAction, FaceReplacer
from .batch import FileRun, OpenedFile, describe_error, engine_settings, finish_files, open_file
from .options import AnonymizeOptions
from .photo import anonymize_photos, make_replacer
from .report import FileReport, Status, assemble_report
from .stages import FaceDecision, FaceSelector, crop_layers, cut_crops, plan_crops, replace_crops
from .video import anonymize_video_file


RAY_INSTALL = 'pip install "face-anon[ray]"'
# Text files listing inputs, one path or URI a line.
LIST_SUFFIXES = frozenset({".txt"})
# The published model's crop size (its UNet's trained sample size, 64 latents, times the VAE's factor 8).
PUBLISHED_CROP_SIZE = 512
DEFAULT_OBJECT_STORE_MEMORY = 2 << 30
# Fault injection for tests: "raise:FLAG" or "exit:FLAG". The model actor that removes the file FLAG
# first (so exactly one, once) raises or ends its process at the start of that batch.
FAULT_ENV = "FACE_ANON_RAY_FAULT"
_FAULT_EXIT_STATUS = 70
# Rows per block of the listing: small blocks stream photo by photo and spread over the open actors;
# at most _MAX_BLOCKS blocks (millions of files: larger blocks, fewer tasks for the driver to track).
_ROWS_PER_BLOCK = 4
_MAX_BLOCKS = 4096


class RayWorkerError(ModelLoadError):
    """Ray could not keep the pipeline running (a stage's workers failed again and again, or the cluster
    went away): like a model that cannot be loaded, it stops the run; written outputs keep their rows."""


def require_ray() -> None:
    """Raise :class:`InputError` naming ``--engine`` and the install command when Ray Data is missing."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as error:
        raise InputError(
            "--engine", "ray", detail=f"needs Ray Data, which is not installed ({error}): {RAY_INSTALL}"
        ) from None


def check_sendable(value: Any, argument: str) -> None:
    """Raise :class:`InputError` naming ``argument`` when ``value`` cannot be sent to Ray workers (pickled)."""
    if value is None:
        return
    import ray.cloudpickle

    try:
        ray.cloudpickle.dumps(value)
    except Exception as error:  # noqa: BLE001 - whatever the pickler refuses
        raise InputError(
            argument,
            detail=f"cannot be sent to Ray workers ({type(error).__name__}: {error}); run it with --engine local",
        ) from None


# ------------------------------------------------------------------------------------------------ inputs


def is_uri(text: str) -> bool:
    """Whether an input names a file system location by URI (``s3://bucket/photos``, ``file:///data``)."""
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()


def _filesystem(uri: str):
    """The pyarrow file system of ``uri`` and the path inside it; fsspec for schemes pyarrow lacks."""
    import pyarrow
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, ValueError) as arrow_error:
        try:
            import fsspec.core
        except ImportError:
            raise InputError("INPUT", uri, detail=f"cannot be opened: {arrow_error}") from None
        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as error:
            raise InputError("INPUT", uri, detail=f"cannot be opened: {error}") from None
        return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


def _join_uri(uri: str, relative: str) -> str:
    return uri.rstrip("/") + "/" + relative


def _list_uri(uri: str) -> tuple[list[tuple[str, str]], list[SkippedFile]]:
    """Files under ``uri`` as (URI, path relative to ``uri``), sorted, and what the listing passed over.

    A file URI is itself (its name as the relative path); a folder is listed recursively, skipping hidden
    entries and extensions face-anon does not read, as a folder scan does.
    """
    import pyarrow.fs

    fs, root = _filesystem(uri)
    try:
        info = fs.get_file_info(root)
        if info.type == pyarrow.fs.FileType.NotFound:
            raise InputError("INPUT", uri, detail="does not exist")
        if info.type == pyarrow.fs.FileType.File:
            return [(uri, PurePosixPath(root).name)], []
        entries = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    except OSError as error:
        raise InputError("INPUT", uri, detail=f"cannot be listed: {error}") from None
    found, skipped = [], []
    base = PurePosixPath(root)
    for entry in entries:
        relative = PurePosixPath(entry.path).relative_to(base)
        if any(part.startswith(".") for part in relative.parent.parts):
            continue  # inside a hidden folder, which has its own row
        suffix, hidden = relative.suffix.lower(), relative.name.startswith(".")
        if entry.type == pyarrow.fs.FileType.Directory:
            if hidden:
                skipped.append(
                    SkippedFile(path=_join_uri(uri, relative.as_posix()), reason="hidden folder (not searched)")
                )
            continue
        if entry.type != pyarrow.fs.FileType.File:
            continue
        relative = relative.as_posix()
        if hidden:
            reason = "hidden file"
        elif suffix not in IMAGE_EXTENSIONS and suffix not in VIDEO_EXTENSIONS:
            reason = f"extension {suffix or '(none)'!r} is not one face-anon reads and writes"
        else:
            found.append((_join_uri(uri, relative), relative))
            continue
        # A str, not a Path: a Path would fold the URI's "//" (reports print it as given).
        skipped.append(SkippedFile(path=_join_uri(uri, relative), reason=reason))
    return sorted(found, key=lambda item: item[1]), sorted(skipped, key=lambda entry: entry.path)


def _read_uri(uri: str) -> bytes:
    fs, path = _filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _expand_lists(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Inputs with every ``*.txt`` file replaced by the paths and URIs it lists (one a line; blank lines
    and lines starting with ``#`` ignored; relative paths as on the command line, from the working folder)."""
    expanded: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        if is_uri(text) or Path(text).suffix.lower() not in LIST_SUFFIXES or not Path(text).is_file():
            expanded.append(text)
            continue
        try:
            lines = Path(text).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError("INPUT", text, detail=f"cannot be read as a list of inputs: {error}") from None
        listed = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not listed:
            raise InputError("INPUT", text, detail="lists no input (one path or URI a line)")
        expanded.extend(listed)
    return expanded


@dataclass(frozen=True, kw_only=True)
class RayPlan(FilePlan):
    """A :class:`FilePlan` whose jobs may read from URIs.

    ``sources`` holds, per job, the input as given: a local path, or a URI. A URI job's ``input`` is
    ``Path(uri)``, a key for the report (a Path folds ``//``); its report row names the URI.
    """

    sources: tuple[str, ...] = ()

    def is_remote(self, number: int) -> bool:
        return is_uri(self.sources[number])


def plan_inputs(inputs: Sequence[str | os.PathLike], output: str | os.PathLike) -> RayPlan:
    """Pair every input with its output, as :func:`~face_anon.io.files.plan_files` does, also for text
    files listing inputs and for URIs of any file system pyarrow or fsspec opens.

    Local inputs are planned by ``plan_files`` (same outputs, same checks); files under a URI are
    mirrored below ``output``, which must then be a folder. Raises :class:`InputError` for a missing or
    unreadable input, an empty list, and two inputs mapped to the same output.
    """
    expanded = _expand_lists(inputs)
    local = [item for item in expanded if not is_uri(item)]
    remote = [item for item in expanded if is_uri(item)]
    output = Path(output)
    jobs: list[FileJob] = []
    sources: list[str] = []
    skipped: list[SkippedFile] = []
    journal = output / JOURNAL_NAME
    if local:
        files = plan_files(local, output)
        jobs += files.jobs
        sources += [str(job.input) for job in files.jobs]
        skipped += files.skipped
        journal = files.journal
    if remote:
        if output.is_file() or (not output.exists() and output.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS):
            raise InputError("output", str(output), detail="must be a folder when an input is a URI")
        for uri in remote:
            found, passed_over = _list_uri(uri)
            for source, relative in found:
                jobs.append(FileJob(input=Path(source), output=output / relative))
                sources.append(source)
            skipped += passed_over
        check_writable(journal.parent, "output")
    seen: dict[Path, str] = {}
    for job, source in zip(jobs, sources):
        target = job.output.resolve()
        if target in seen:
            raise InputError(
                "output",
                str(job.output),
                detail=f"inputs {seen[target]!r} and {source!r} would both be written there; "
                "process them separately or rename one",
            )
        seen[target] = source
    return RayPlan(jobs=tuple(jobs), skipped=tuple(skipped), journal=journal, sources=tuple(sources))


# ------------------------------------------------------------------------------------------------ workers


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Where and on how many workers a Ray run goes.

    Args:
        address: the cluster (``ray.init(address=...)``): None starts a local one (or joins the one in
            ``RAY_ADDRESS``), ``"auto"`` joins the cluster this machine is part of, ``"ray://head:10001"``
            a remote one. Ignored when Ray is already initialized in this process.
        num_gpus_per_worker: GPUs each model actor reserves; None: 1 when the cluster has GPUs, else 0
            (CPU actors). Fractions pack several model actors on one GPU.
        detect_workers: open (read, detect) actors; None: about two thirds of the CPUs the model actors
            leave.
        anonymize_workers: model actors; None: one per GPU (per ``num_gpus_per_worker``), 1 without GPUs.
        write_workers: write (paste, encode) actors; None: the CPUs left after the others, at least 1.
        object_store_memory: bytes of object store the pipeline may fill before the listing waits.
        max_worker_restarts: how often a failed actor is replaced and its batch retried before the run
            stops (:class:`RayWorkerError`).
    """

    address: str | None = None
    num_gpus_per_worker: float | None = None
    detect_workers: int | None = None
    anonymize_workers: int | None = None
    write_workers: int | None = None
    object_store_memory: int = DEFAULT_OBJECT_STORE_MEMORY
    max_worker_restarts: int = 3

    def __post_init__(self) -> None:
        for name in ("detect_workers", "anonymize_workers", "write_workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(name, value, "a positive integer, or None for the default")
        gpus = self.num_gpus_per_worker
        if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not gpus >= 0):
            raise InputError("num_gpus_per_worker", gpus, "a number >= 0 (0: CPU actors), or None for the default")
        if not isinstance(self.object_store_memory, int) or self.object_store_memory < 1 << 20:
            raise InputError("object_store_memory", self.object_store_memory, "a number of bytes, at least 1 MiB")
        if not isinstance(self.max_worker_restarts, int) or self.max_worker_restarts < 0:
            raise InputError("max_worker_restarts", self.max_worker_restarts, "an integer >= 0")


@dataclass(frozen=True)
class _Workers:
    """How many actors each stage gets, and what each reserves."""

    detect: int
    anonymize: int
    write: int
    gpus_per_model: float
    cpus_each: float  # every actor reserves this many CPUs (all fit on the cluster's CPUs)

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_each))


def plan_workers(config: RayConfig, cluster: Mapping[str, float]) -> _Workers:
    """Actor counts and reservations for a cluster with ``cluster`` resources (``ray.cluster_resources()``).

    Every actor asks for one CPU, scaled down evenly when the cluster has fewer CPUs than actors, so
    that all stages run at once (a stage that cannot start would stall the stream).
    """
    cpus = float(cluster.get("CPU", 1.0))
    gpus = float(cluster.get("GPU", 0.0))
    per_model = config.num_gpus_per_worker if config.num_gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
    if per_model > 0 and per_model > gpus:
        raise InputError(
            "--num-gpus-per-worker", per_model, detail=f"is more than the cluster's GPUs ({gpus:g}); 0 runs on CPUs"
        )
    if config.anonymize_workers is not None:
        models = config.anonymize_workers
        if per_model > 0 and models * per_model > gpus:
            raise InputError(
                "--anonymize-workers",
                models,
                detail=f"x {per_model:g} GPUs is more than the cluster's {gpus:g} GPUs",
            )
    else:
        models = max(1, int(gpus // per_model)) if per_model > 0 else 1
    free = max(1.0, cpus - models)
    detect = config.detect_workers or max(1, round(free * 2 / 3))
    write = config.write_workers or max(1, int(free - detect))
    cpus_each = min(1.0, math.floor(100 * cpus / (detect + models + write)) / 100)
    return _Workers(detect, models, write, per_model, max(0.01, cpus_each))


def resolve_crop_size(options: AnonymizeOptions, model: str | None) -> int:
    """The side of the aligned crops, known before any model is loaded (the open stage cuts them).

    ``options.crop_size`` when given; 256 for blur, pixelate and black; else the model's own image size,
    read from its configs (a converted folder or Hub id), or the published model's 512. The model actors
    check it against the loaded model and stop the run if they differ.
    """
    if options.mode != "anonymize":
        return make_replacer(options).crop_size
    if options.crop_size is not None:
        return int(options.crop_size)
    if model is None:
        return PUBLISHED_CROP_SIZE
    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.load_config(model, subfolder="unet")
        vae = AutoencoderKL.load_config(model, subfolder="vae")
    except Exception as error:  # noqa: BLE001 - any reason the configs cannot be read
        raise ModelLoadError(f"cannot read the model's configs (--model {model}): {error}") from error
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


# ------------------------------------------------------------------------------------------------ rows


@dataclass(frozen=True, kw_only=True)
class _Spec:
    """What every actor needs to know of the run (sent once per actor)."""

    run: FileRun  # journal=None: each actor opens the journal itself
    journal: Path
    detector: str
    threshold: float
    crop_size: int
    load_pipeline: Callable[[], Any] | None
    gpus_per_model: float
    torch_threads: int

    def file_run(self) -> FileRun:
        return dataclasses.replace(self.run, journal=Journal(self.journal))

    def load_detector(self) -> FaceDetector:
        return load_detector(self.detector, threshold=self.threshold)


@dataclass(frozen=True, kw_only=True)
class _Photo:
    """A photo between the open and the write stage: what detection found, and its crops to replace.

    ``crops`` are the (seed, pixels) of its faces when they do not overlap; a photo whose faces overlap
    travels whole (``image``) so the model actor can cut each layer after pasting the one before.
    ``records`` are the model's results, by (seed, crop digest). ``data``: the input's bytes, for a URI.
    """

    job: FileJob
    input_sha256: str
    resume: ResumeState
    faces: tuple[Face, ...]
    decisions: tuple[FaceDecision, ...]
    data: bytes | None = None
    crops: tuple[tuple[int, np.ndarray], ...] = ()
    image: np.ndarray | None = None
    records: Mapping[tuple[int, str], Any] | None = None


# Row kinds: a final report; a photo or video still to do; a job the model actor could not do because the
# model cannot be loaded (its payload says why: the driver stops the run).
_FINAL, _PHOTO, _VIDEO, _STOPPED = "final", "photo", "video", "stopped"


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _table(rows: Sequence[tuple[int, str, Any]]):
    import pyarrow as pa

    return pa.table(
        {
            "number": pa.array([row[0] for row in rows], pa.int64()),
            "kind": pa.array([row[1] for row in rows], pa.string()),
            "payload": pa.array([_dumps(row[2]) for row in rows], pa.large_binary()),
        }
    )


def _rows(batch) -> list[tuple[int, str, Any]]:
    numbers, kinds, payloads = (batch.column(name).to_pylist() for name in ("number", "kind", "payload"))
    return [(n, k, pickle.loads(p)) for n, k, p in zip(numbers, kinds, payloads)]


def _failed(job: FileJob, opened: Any, error: BaseException) -> FileReport:
    """The error row ``finish_files`` writes for a photo whose faces could not be replaced (nothing written)."""
    notes = tuple(opened.loaded.notes) if isinstance(opened, OpenedFile) else ()
    return FileReport(
        input=job.source, status=Status.ERROR, error=describe_error("cannot anonymize", error), notes=notes
    )


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


@dataclass(frozen=True)
class _Raised:
    """A replacer call that raised, kept to be raised again (same type name, same message) on replay."""

    name: str
    message: str

    def error(self) -> Exception:
        return type(self.name, (RuntimeError,), {})(self.message)


class _Crop:
    """What ``replace_crops`` reads of a crop: its pixels and its seed."""

    __slots__ = ("seed", "pixels")

    def __init__(self, seed: int, pixels: np.ndarray) -> None:
        self.seed, self.pixels = seed, pixels


class _Recorder:
    """A replacer that records what the wrapped one returns (or raises) for each (seed, crop)."""

    def __init__(self, replacer: FaceReplacer) -> None:
        self.replacer, self.action, self.crop_size = replacer, replacer.action, replacer.crop_size
        self.records: dict[tuple[int, str], Any] = {}

    def __call__(self, crops, seeds, sources=None):
        keys = [(int(seed), _digest(crop)) for crop, seed in zip(crops, seeds)]
        try:
            outputs = self.replacer(crops, seeds) if sources is None else self.replacer(crops, seeds, sources)
        except Exception as error:
            self.records.update((key, _Raised(type(error).__name__, str(error))) for key in keys)
            raise
        if len(outputs) == len(keys):
            self.records.update(zip(keys, (None if out is None else np.asarray(out) for out in outputs)))
        return outputs


class _Replay:
    """The replacer of the write stage: the model actor's results for these exact crops, nothing else."""

    def __init__(self, records: Mapping[tuple[int, str], Any], action: FaceAction, crop_size: int) -> None:
        self.records, self.action, self.crop_size = records, action, crop_size

    def __call__(self, crops, seeds, sources=None):
        outputs = []
        for crop, seed in zip(crops, seeds):
            record = self.records.get((int(seed), _digest(crop)))
            if record is None and (int(seed), _digest(crop)) not in self.records:
                raise RuntimeError("no replacement was computed for this crop (the photo changed between stages)")
            if isinstance(record, _Raised):
                raise record.error()
            outputs.append(record)
        return outputs


# ------------------------------------------------------------------------------------------------ stages


class OpenStage:
    """Ray Data UDF: read each input, check the journal, decode, find and select faces, cut the crops.

    Photos with nothing to replace (and skipped, refused or unreadable files) leave as final report rows.
    """

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.run = spec.file_run()
        self.detector = spec.load_detector()

    def __call__(self, batch):
        rows = []
        for number, source, output in zip(
            batch.column("number").to_pylist(), batch.column("source").to_pylist(), batch.column("output").to_pylist()
        ):
            rows.append(self._open(number, source, Path(output)))
        return _table(rows)

    def _open(self, number: int, source: str, output: Path) -> tuple[int, str, Any]:
        remote = is_uri(source)
        job = FileJob(input=Path(source), output=output, uri=source if remote else None)
        if is_video_path(job.input):
            return number, _VIDEO, (source, job)
        if not remote:
            return self._opened(number, job, open_file(job, detector=self.detector, run=self.run), None)
        try:
            data = _read_uri(source)
        except Exception as error:  # noqa: BLE001 - an unreadable URI is this file's error row
            return (
                number,
                _FINAL,
                FileReport(input=source, status=Status.ERROR, error=f"cannot read the input: {error}"),
            )
        return self._opened(number, job, open_file(job, detector=self.detector, run=self.run, data=data), data)

    def _opened(self, number: int, job: FileJob, opened: OpenedFile | FileReport, data: bytes | None):
        if isinstance(opened, FileReport):
            return number, _FINAL, opened
        options, image = self.run.options, opened.loaded.rgb
        try:
            plans = plan_crops(
                image,
                opened.faces,
                options,
                crop_size=self.spec.crop_size,
                eye_scale=self.detector.eye_scale,
                decisions=opened.decisions,
            )
            layers = crop_layers(plans)
            crops = tuple((crop.seed, crop.pixels) for crop in cut_crops(image, layers[0])) if len(layers) == 1 else ()
        except Exception as error:  # noqa: BLE001 - as in finish_files: this file's error row
            return number, _FINAL, _failed(job, opened, error)
        photo = _Photo(
            job=job,
            input_sha256=opened.input_sha256,
            resume=opened.resume,
            faces=opened.faces,
            decisions=opened.decisions,
            data=data,
            crops=crops,
            image=image if len(layers) > 1 else None,
        )
        return number, _PHOTO, photo


class ReplaceStage:
    """Ray Data UDF on the model actors: replace the crops of the batch's photos, record the results.

    The model (or redactor) is made on the first crop, so a batch with nothing to replace, and a resumed
    run, loads nothing. Videos are anonymized here whole (``anonymize_video_file``: they need the model
    and the detector together). A model that cannot be loaded turns the batch's jobs into ``stopped``
    rows, and the driver stops the run. Any other exception outside the per-face handling ends the actor's
    process: Ray replaces the actor and retries the batch (a model or device in a bad state does not linger).
    """

    def __init__(self, spec: _Spec, fault: str | None = None) -> None:
        self.spec = spec
        self.fault = fault
        self.run: FileRun | None = None
        self._replacer: FaceReplacer | None = None
        self._detector: FaceDetector | None = None
        self._load_error: ModelLoadError | None = None
        if spec.gpus_per_model == 0 and spec.run.options.mode == "anonymize":
            import torch

            torch.set_num_threads(spec.torch_threads)

    def __call__(self, batch):
        rows = []
        try:
            self._inject_fault()
            rows = _rows(batch)
            return _table(self._replace(rows))
        except ModelLoadError as error:  # the run stops, as with a model that cannot be loaded in a single process
            self._load_error = error
            return _table([row if row[1] == _FINAL else (row[0], _STOPPED, str(error)) for row in rows])
        except Exception:  # noqa: BLE001 - see the class docstring
            traceback.print_exc()
            print("face-anon: this model actor stops; Ray starts a fresh one and retries its batch", file=sys.stderr)
            sys.stderr.flush()
            os._exit(_FAULT_EXIT_STATUS)

    def _inject_fault(self) -> None:
        if not self.fault:
            return
        how, _, flag = self.fault.partition(":")
        try:
            os.unlink(flag)  # exactly one actor gets to remove it
        except OSError:
            return
        print(f"face-anon: injected fault ({how}) in pid {os.getpid()}", file=sys.stderr)
        sys.stderr.flush()
        if how == "exit":
            os._exit(_FAULT_EXIT_STATUS)
        raise RuntimeError("injected fault")

    def replacer(self) -> FaceReplacer:
        if self._load_error is not None:
            raise self._load_error  # tried once per actor
        if self._replacer is None:
            options, pipeline = self.spec.run.options, None
            if options.mode == "anonymize":
                if self.spec.load_pipeline is None:
                    raise ModelLoadError("mode 'anonymize' needs a model (load_pipeline)")
                try:
                    pipeline = self.spec.load_pipeline()
                except ModelLoadError:
                    raise
                except Exception as error:  # noqa: BLE001 - one clear line, then the run stops
                    raise ModelLoadError(f"cannot load the model: {type(error).__name__}: {error}") from error
            replacer = make_replacer(options, pipeline)
            if replacer.crop_size != self.spec.crop_size:
                raise ModelLoadError(
                    f"the model makes {replacer.crop_size}-pixel faces, but the run cut {self.spec.crop_size}-pixel "
                    f"crops; give the size (--size {replacer.crop_size})"
                )
            self._replacer = replacer
        return self._replacer

    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = self.spec.load_detector()
        return self._detector

    def _replace(self, rows: list[tuple[int, str, Any]]) -> list[tuple[int, str, Any]]:
        options = self.spec.run.options
        flat = [
            (photo, _Crop(seed, pixels)) for _, kind, photo in rows if kind == _PHOTO for seed, pixels in photo.crops
        ]
        shared = None
        if flat:
            shared = _Recorder(self.replacer())
            replace_crops(shared, [crop for _, crop in flat], batch_size=options.batch_size)
        out = []
        for number, kind, item in rows:
            if kind == _VIDEO:
                out.append((number, _FINAL, self._video(item)))
            elif kind != _PHOTO:
                out.append((number, kind, item))
            elif item.image is not None:
                recorder = _Recorder(self.replacer())
                try:
                    anonymize_photos(
                        [item.image],
                        detector=self.detector(),
                        options=options,
                        faces=[item.faces],
                        decisions=[item.decisions],
                        replacer=recorder,
                    )
                except ModelLoadError:
                    raise
                except Exception as error:  # noqa: BLE001 - as in finish_files: this file's error row
                    out.append((number, _FINAL, _failed(item.job, item, error)))
                    continue
                out.append((number, kind, dataclasses.replace(item, image=None, records=recorder.records)))
            else:
                keys = [(int(seed), _digest(pixels)) for seed, pixels in item.crops]
                records = {key: shared.records[key] for key in keys if key in shared.records} if shared else {}
                out.append((number, kind, dataclasses.replace(item, crops=(), records=records)))
        return out

    def _video(self, item: tuple[str, FileJob]) -> FileReport:
        source, job = item
        if is_uri(source):
            return FileReport(
                input=source,
                status=Status.ERROR,
                error="videos from URIs are not supported; copy the video to a local file",
            )
        if self.run is None:
            self.run = self.spec.file_run()
        return anonymize_video_file(job, detector=self.detector(), run=self.run, load_replacer=self.replacer)


class WriteStage:
    """Ray Data UDF: paste each photo's replacements back, encode it, journal it and write it atomically.

    ``finish_files`` does the work, on the photo decoded again from its input (checked against the
    sha256 the open stage hashed) with a replacer that replays the model actor's results.
    """

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.run = spec.file_run()
        self.detector = spec.load_detector()
        options = spec.run.options
        self.action = ACTIONS[options.mode]

    def __call__(self, batch):
        out = []
        for number, kind, item in _rows(batch):
            out.append((number, _FINAL, self._write(item)) if kind == _PHOTO else (number, kind, item))
        return _table(out)

    def _write(self, photo: _Photo) -> FileReport:
        job = photo.job
        try:
            data = job.input.read_bytes() if photo.data is None else photo.data
            if sha256_bytes(data) != photo.input_sha256:
                raise ValueError("the input changed while the run worked on it; nothing was written")
            loaded = load_image(job.input, max_pixels=self.run.max_pixels, data=data)
        except Exception as error:  # noqa: BLE001 - this file's error row
            message = (
                str(error) if isinstance(error, (FaceAnonError, ValueError)) else f"cannot read the input: {error}"
            )
            return FileReport(input=job.source, status=Status.ERROR, error=message)
        written = self._written_meanwhile(photo)
        if written is not None:
            return written
        opened = OpenedFile(
            job=job,
            loaded=loaded,
            input_sha256=photo.input_sha256,
            resume=photo.resume,
            faces=photo.faces,
            decisions=photo.decisions,
        )
        replay = _Replay(photo.records or {}, self.action, self.spec.crop_size)
        (report,) = finish_files([opened], replacer=replay, detector=self.detector, run=self.run)
        return report

    def _written_meanwhile(self, photo: _Photo) -> FileReport | None:
        """The row of an output that a lost attempt of this batch (or a twin run) wrote after the open stage
        looked: the journal says this tool wrote exactly those bytes from this input with these settings."""
        output, resume = photo.job.output, photo.resume
        if not os.path.lexists(output):
            return None
        if resume.action is Resume.REPLACE and output.is_file() and not output.is_symlink():
            if sha256_file(output) == (resume.record or {}).get("output_sha256"):
                return None  # still the earlier output the open stage saw: replace it
        elif resume.action is not Resume.WRITE:
            return None
        fresh = resume_state(
            photo.job,
            Journal(self.run.journal.path),
            input_sha256=photo.input_sha256,
            settings_sha256=self.run.settings_sha256,
        )
        if fresh.action is not Resume.DONE:
            return None  # write_output refuses to overwrite it: an error row, as in a single process
        reason = (
            "already written from the same input with the same settings, by an attempt of this run whose worker "
            "was lost or by another run (journal record attached)"
        )
        return FileReport(
            input=photo.job.source, status=Status.SKIPPED, output=output, reason=reason, journal=fresh.record
        )


# ------------------------------------------------------------------------------------------------ driver


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[Any]:
    """Ray, initialized here unless it already is (then left running, as found)."""
    import logging

    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _data_context(object_store_memory: int) -> Iterator[Any]:
    """Ray Data settings for this run (restored afterwards): our progress bar instead of Ray's, the
    object store cap, completion order."""
    from ray.data import DataContext

    context = DataContext.get_current()
    names = ("enable_progress_bars", "print_on_execution_start", "max_errored_blocks")
    saved = {name: getattr(context, name) for name in names}
    saved_limits = context.execution_options.resource_limits
    saved_order = context.execution_options.preserve_order
    try:
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        context.max_errored_blocks = 0
        context.execution_options.resource_limits = saved_limits.copy(object_store_memory=float(object_store_memory))
        context.execution_options.preserve_order = False
        yield context
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        context.execution_options.resource_limits = saved_limits
        context.execution_options.preserve_order = saved_order


def _build_dataset(ray, plan: RayPlan, spec: _Spec, workers: _Workers, config: RayConfig):
    import ray.data

    items = [
        {"number": number, "source": source, "output": str(job.output)}
        for number, (job, source) in enumerate(zip(plan.jobs, plan.sources))
    ]
    dataset = ray.data.from_items(
        items, override_num_blocks=min(_MAX_BLOCKS, max(1, math.ceil(len(items) / _ROWS_PER_BLOCK)))
    )
    retries = {"max_restarts": config.max_worker_restarts, "max_task_retries": config.max_worker_restarts}

    def stage(dataset, udf, size: int, *, batch_size: int, args: tuple = (), gpus: float = 0.0):
        with warnings.catch_warnings():  # the restart options are still keyword arguments in Ray 2.60
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
            return dataset.map_batches(
                udf,
                fn_constructor_args=args,
                batch_size=batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=2),
                num_cpus=workers.cpus_each,
                num_gpus=gpus or None,
                **retries,
            )

    fault = os.environ.get(FAULT_ENV) or None
    dataset = stage(dataset, OpenStage, workers.detect, batch_size=1, args=(spec,))
    dataset = stage(
        dataset,
        ReplaceStage,
        workers.anonymize,
        batch_size=spec.run.options.batch_size,
        args=(spec, fault),
        gpus=workers.gpus_per_model,
    )
    return stage(dataset, WriteStage, workers.write, batch_size=1, args=(spec,))


def _describe_failure(error: BaseException) -> str:
    """The innermost exception behind a Ray failure, as ``Type: first line``."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None) or error.__cause__
        if not isinstance(inner, BaseException):
            break
        error = inner
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _unreported(plan: RayPlan, reported: set[int], why: str, *, since: float, run: FileRun) -> Iterator[FileReport]:
    """Rows for the jobs a stopped run did not report: written (its journal has this run's record of the
    bytes on disk, written after ``since``) or not processed."""
    journal = Journal(plan.journal)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since - 1))
    for number, job in enumerate(plan.jobs):
        if number in reported:
            continue
        name = plan.sources[number] if plan.is_remote(number) else job.input
        record = None
        try:
            if job.output.is_file() and not job.output.is_symlink():
                record = journal.record_for(job.output, sha256_file(job.output))
        except OSError:
            record = None
        if (
            record is not None
            and record.get("settings_sha256") == run.settings_sha256
            and str(record.get("written", "")) >= started
        ):
            yield FileReport(
                input=name,
                status=Status(record.get("status", "ok")),
                output=job.output,
                reason=f"written just before the run stopped ({why}); faces as in the journal record",
                journal=record,
            )
        else:
            yield FileReport(input=name, status=Status.ERROR, error=f"not processed: {why}")


def process_files_ray(
    plan: FilePlan,
    *,
    run: FileRun,
    detector: str = "centerface",
    threshold: float = 0.3,
    load_pipeline: Callable[[], Any] | None = None,
    model: str | None = None,
    config: RayConfig = RayConfig(),
) -> Iterator[FileReport]:
    """:func:`~face_anon.orchestration.batch.process_files` on a Ray cluster: one report per job, as each
    completes (in no particular order).

    Args:
        plan: from :func:`plan_inputs` (or ``plan_files``).
        run: the run's options and settings, as for ``process_files`` (its selector and its
            ``load_pipeline`` must pickle: they are sent to the actors).
        detector, threshold: the detector each actor loads (``load_detector(detector, threshold=...)``).
        load_pipeline: loads the model on a model actor (``mode="anonymize"``); called once per actor.
        model: the model's folder or Hub id, to read its crop size before any model is loaded
            (None: the published model's); ``run.options.crop_size`` overrides it.
        config: the cluster and the workers (:class:`RayConfig`).

    Raises :class:`~face_anon.errors.ModelLoadError` when the model cannot be loaded and
    :class:`RayWorkerError` when Ray cannot keep the stages running; before raising (and when
    interrupted) it yields a row for every job not yet reported: written (per the journal) or not processed.
    """
    require_ray()
    if not isinstance(plan, RayPlan):
        plan = RayPlan(
            jobs=plan.jobs, skipped=plan.skipped, journal=plan.journal, sources=tuple(str(j.input) for j in plan.jobs)
        )
    if not plan.jobs:
        return
    shipped = dataclasses.replace(run, journal=None, video_progress=None)
    check_sendable(shipped.selector, "selector")
    check_sendable(shipped.track_selector, "track_selector")
    check_sendable(load_pipeline, "load_pipeline")
    since = time.time()
    reported: set[int] = set()
    try:
        crop_size = resolve_crop_size(run.options, model)
        with _ray_session(config.address) as ray, _data_context(config.object_store_memory):
            workers = plan_workers(config, ray.cluster_resources())
            spec = _Spec(
                run=shipped,
                journal=plan.journal,
                detector=detector,
                threshold=float(threshold),
                crop_size=crop_size,
                load_pipeline=load_pipeline,
                gpus_per_model=workers.gpus_per_model,
                torch_threads=workers.torch_threads,
            )
            dataset = _build_dataset(ray, plan, spec, workers, config)
            batches = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
            try:
                stopped = None
                for batch in batches:
                    for number, kind, item in _rows(batch):
                        if kind == _STOPPED:
                            stopped = stopped or item
                        elif number not in reported:  # (a block is delivered once; guard anyway)
                            reported.add(number)
                            yield item
                    if stopped is not None:
                        raise ModelLoadError(stopped)
            finally:
                batches.close()  # stops the pipeline's actors now (an early stop), not at garbage collection
    except KeyboardInterrupt:
        yield from _unreported(plan, reported, "interrupted", since=since, run=run)
        raise
    except ModelLoadError as error:
        yield from _unreported(plan, reported, str(error), since=since, run=run)
        raise
    except Exception as error:  # noqa: BLE001 - Ray wraps what failed in its own exceptions
        why = f"the Ray job failed: {_describe_failure(error)}"
        yield from _unreported(plan, reported, why, since=since, run=run)
        raise RayWorkerError(why) from error


def _default_loader(model: str | None, device: str, dtype: str) -> Any:
    from ..replacers.diffusion import load_pipeline

    try:
        return load_pipeline(model, device, dtype)
    except Exception as error:  # noqa: BLE001 - reported as one clear line
        raise ModelLoadError(f"cannot load the model (--model {model or 'default'}): {error}") from error


def anonymize_with_ray(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    options: AnonymizeOptions = AnonymizeOptions(),
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    detector: str = "centerface",
    threshold: float = 0.3,
    keep_metadata: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    selector: FaceSelector | None = None,
    load_pipeline: Callable[[], Any] | None = None,
    config: RayConfig = RayConfig(),
    progress: bool = False,
) -> list[FileReport]:
    """``face-anon INPUT... -o OUTPUT --engine ray`` from Python: the report rows, one per input (in the
    plan's order, then the files a scan passed over), as the command line's ``--json`` writes them.

    Args:
        inputs: files, folders, text files listing paths or URIs, or URIs (``s3://bucket/photos``).
        output: the output folder (or file name, for one local input file).
        options, keep_metadata, max_pixels: as for the command line.
        model, device, dtype: the model each actor loads (``load_pipeline(model, device, dtype)``); or
            give ``load_pipeline``, a picklable function that returns it (``model`` still names its
            folder for the crop size, or set ``options.crop_size``).
        detector, threshold: the face detector.
        selector: the selection hook (it must pickle); its ``settings`` attribute, if any, joins the
            settings that decide an output, as on the command line (so that resuming notices a change).
        config: cluster and workers (:class:`RayConfig`).
        progress: show a progress bar (images, faces per second) on stderr.

    A model that cannot be loaded stops the run: the rows of files it did not reach say so, as in the
    command line's report.
    """
    plan = plan_inputs(inputs, output)
    run = FileRun(
        options=options,
        journal=Journal(plan.journal),
        keep_metadata=keep_metadata,
        max_pixels=max_pixels,
        settings={
            **engine_settings(options, detector=detector, threshold=threshold, model=model, dtype=dtype),
            **dict(getattr(selector, "settings", None) or {}),
        },
        selector=selector,
    )
    if load_pipeline is None and options.mode == "anonymize":
        load_pipeline = functools.partial(_default_loader, model, device, dtype)
    reports: list[FileReport] = []
    stopped = None
    meter = ProgressMeter(len(plan.jobs), enabled=progress)
    try:
        for report in process_files_ray(
            plan,
            run=run,
            detector=detector,
            threshold=threshold,
            load_pipeline=load_pipeline,
            model=model,
            config=config,
        ):
            reports.append(report)
            meter.update(report)
    except ModelLoadError as error:
        stopped = str(error)
    finally:
        meter.close()
    return assemble_report(plan, reports, stopped=stopped)


# ------------------------------------------------------------------------------------------------ progress


_REPLACED = frozenset(
    {
        FaceAction.ANONYMIZED,
        FaceAction.BLURRED,
        FaceAction.PIXELATED,
        FaceAction.BLACKED_OUT,
        FaceAction.BLACKED_OUT_ON_ERROR,
    }
)


def faces_replaced(report: FileReport) -> int:
    """Faces this run replaced in one report row (what faces per second counts)."""
    return sum(outcome.action in _REPLACED for outcome in report.outcomes)


class ProgressMeter:
    """A progress bar in images, with faces per second beside it."""

    def __init__(self, total: int, *, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="image", disable=not enabled, file=sys.stderr)
        self.faces, self.started = 0, time.monotonic()

    def update(self, report: FileReport) -> None:
        self.faces += faces_replaced(report)
        elapsed = time.monotonic() - self.started
        if elapsed > 0:
            self.bar.set_postfix_str(f"{self.faces / elapsed:.2f} faces/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


__all__ = [
    "FAULT_ENV",
    "RAY_INSTALL",
    "OpenStage",
    "ProgressMeter",
    "RayConfig",
    "RayPlan",
    "RayWorkerError",
    "ReplaceStage",
    "WriteStage",
    "anonymize_with_ray",
    "check_sendable",
    "faces_replaced",
    "is_uri",
    "plan_inputs",
    "plan_workers",
    "process_files_ray",
    "require_ray",
    "resolve_crop_size",
]
