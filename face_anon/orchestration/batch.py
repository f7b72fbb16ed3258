"""Files and folders: which outputs to write, and writing them safely and resumably.

``plan_jobs`` turns inputs and an output into (input, output) pairs; ``process_files`` runs them,
batching faces across photos, and yields one :class:`FileReport` per input. Outputs are written
atomically and never over an existing file, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..detection import Face, FaceDetector
from ..io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    LoadedImage,
    Metadata,
    encode_image,
    format_for,
    load_image,
    merge_into_source,
    write_atomic,
)
from ..io.jpeg import strip_jpeg
from ..replacers.base import ACTIONS
from .photo import IGNORED_SMALL, AnonymizeOptions, FaceOutcome, anonymize_photos, detect_faces, make_replacer


@dataclass(frozen=True)
class FileJob:
    """One input file and the output it becomes."""

    input: Path
    output: Path


@dataclass
class FileReport:
    """What happened to one input (one entry of ``--json REPORT``).

    ``status``: ``ok``, ``no_faces`` (copied through without metadata) or ``error`` (nothing written).
    ``skipped``: the output existed from an earlier run and was left alone (faces re-detected for
    the report). Face coordinates are in the input's pixels after its EXIF orientation is applied.
    """

    input: Path
    output: Path | None
    status: str
    error: str | None = None
    outcomes: list[FaceOutcome] = field(default_factory=list)
    skipped: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "input": str(self.input),
            "output": None if self.output is None else str(self.output),
            "status": self.status,
            "error": self.error,
            "faces": [outcome.to_json() for outcome in self.outcomes],
            "skipped": self.skipped,
            "notes": list(self.notes),
        }


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _scan(folder: Path, exclude: Path | None) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), skipping hidden ones and the output folder."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS or _is_hidden(path, folder):
            continue
        if exclude is not None and exclude in path.resolve().parents:
            continue
        found.append(path)
    return found


def plan_jobs(inputs: Sequence[str | os.PathLike], output: str | os.PathLike) -> list[FileJob]:
    """Pair every input image with its output path.

    A single input file with an image extension in ``output`` (e.g. ``-o out.jpg``) writes that file;
    otherwise ``output`` is a folder: input files go to ``output/NAME``, folders are scanned
    recursively for images and mirrored below ``output``. Raises ValueError for a missing input,
    an output that would overwrite an input, or two inputs mapped to the same output.
    """
    if not inputs:
        raise ValueError("INPUT: got no inputs, expected at least one image file or folder")
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.exists():
            raise ValueError(f"INPUT: {str(path)!r} does not exist")
        if not (path.is_file() or path.is_dir()):
            raise ValueError(f"INPUT: {str(path)!r} is neither a file nor a folder")
    output = Path(output)
    single_file = (
        len(paths) == 1 and paths[0].is_file() and output.suffix.lower() in IMAGE_EXTENSIONS and not output.is_dir()
    )
    if single_file:
        jobs = [FileJob(paths[0], output)]
    else:
        if output.exists() and not output.is_dir():
            raise ValueError(f"output: {str(output)!r} is a file; with several inputs or a folder it must be a folder")
        exclude = output.resolve()
        jobs = []
        for path in paths:
            if path.is_file():
                jobs.append(FileJob(path, output / path.name))
            else:
                jobs.extend(FileJob(f, output / f.relative_to(path)) for f in _scan(path, exclude))

    inputs_resolved = {job.input.resolve() for job in jobs}
    seen: dict[Path, Path] = {}
    for job in jobs:
        target = job.output.resolve()
        if target in inputs_resolved or (job.output.exists() and job.output.samefile(job.input)):
            raise ValueError(f"output: {str(job.output)!r} is also an input; face-anon never overwrites an input")
        if target in seen:
            raise ValueError(
                f"output: inputs {str(seen[target])!r} and {str(job.input)!r} would both be written to "
                f"{str(job.output)!r}; process them separately or rename one"
            )
        seen[target] = job.input
    return jobs


def _metadata_for_output(loaded: LoadedImage, keep_metadata: bool) -> Metadata:
    if keep_metadata:
        return loaded.metadata
    return Metadata(icc_profile=loaded.metadata.icc_profile)


def _copy_through(job: FileJob, loaded: LoadedImage, keep_metadata: bool) -> None:
    """Write a photo without faces: JPEG data copied losslessly when possible, else re-encoded."""
    fmt = format_for(job.output)
    if fmt == "JPEG" and loaded.format == "JPEG" and loaded.orientation == 1:
        try:
            write_atomic(job.output, strip_jpeg(job.input.read_bytes(), keep_metadata=keep_metadata))
            return
        except ValueError:
            pass  # unusual stream layout: re-encode below instead
    write_atomic(job.output, encode_image(loaded.source, fmt, _metadata_for_output(loaded, keep_metadata)))


@dataclass
class _Pending:
    job: FileJob
    loaded: LoadedImage
    faces: list[Face]


def process_files(
    jobs: Sequence[FileJob],
    *,
    detector: FaceDetector,
    options: AnonymizeOptions = AnonymizeOptions(),
    pipeline: Any = None,
    load_pipeline: Callable[[], Any] | None = None,
    keep_metadata: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[FileReport]:
    """Anonymize every job's photo and write its output; yield a report per job as it completes.

    Faces of consecutive photos are gathered until a batch is full, so reports may come out of
    order. For ``mode="anonymize"`` give ``pipeline``, or ``load_pipeline`` to load the model only
    once a face actually needs it (a resumed or face-free run then never loads it).
    """
    replacer = None
    pending: list[_Pending] = []

    def flush() -> Iterator[FileReport]:
        nonlocal replacer, pipeline
        if not pending:
            return
        if replacer is None:
            if options.mode == "anonymize" and pipeline is None:
                if load_pipeline is None:
                    raise ValueError("pipeline: mode 'anonymize' needs a pipeline or a load_pipeline function")
                pipeline = load_pipeline()
            replacer = make_replacer(options, pipeline)
        group = list(pending)
        pending.clear()
        results = anonymize_photos(
            [item.loaded.rgb for item in group],
            detector=detector,
            options=options,
            faces=[item.faces for item in group],
            replacer=replacer,
        )
        for item, result in zip(group, results):
            job, loaded = item.job, item.loaded
            if result.status == "error":
                yield FileReport(job.input, None, "error", result.error, result.outcomes, notes=loaded.notes)
                continue
            try:
                image = merge_into_source(loaded, np.asarray(result.image))
                data = encode_image(image, format_for(job.output), _metadata_for_output(loaded, keep_metadata))
                if job.output.exists():  # appeared meanwhile (another run): never overwrite
                    yield FileReport(job.input, job.output, result.status, None, result.outcomes, True, loaded.notes)
                    continue
                write_atomic(job.output, data)
            except OSError as error:
                yield FileReport(job.input, None, "error", f"cannot write output: {error}", result.outcomes)
                continue
            yield FileReport(job.input, job.output, result.status, None, result.outcomes, notes=loaded.notes)

    for job in jobs:
        try:
            format_for(job.output)
            loaded = load_image(job.input, max_pixels=max_pixels)
        except ValueError as error:  # ImageLoadError, or an output format we cannot write
            yield FileReport(job.input, None, "error", str(error))
            continue
        faces = detect_faces(loaded.rgb, detector, options)
        small = [face.size < options.min_face_size for face in faces]
        if job.output.exists() or all(small):
            # Nothing to replace: either done by an earlier run, or no face (large enough) in the photo.
            outcomes = [FaceOutcome(f, IGNORED_SMALL if s else ACTIONS[options.mode]) for f, s in zip(faces, small)]
            status = "ok" if faces else "no_faces"
            if job.output.exists():
                yield FileReport(job.input, job.output, status, None, outcomes, skipped=True, notes=loaded.notes)
                continue
            try:
                _copy_through(job, loaded, keep_metadata)
            except OSError as error:
                yield FileReport(
                    job.input, None, "error", f"cannot write output: {error}", outcomes, notes=loaded.notes
                )
                continue
            yield FileReport(job.input, job.output, status, None, outcomes, notes=loaded.notes)
            continue
        pending.append(_Pending(job, loaded, faces))
        if sum(len(item.faces) for item in pending) >= options.batch_size:
            yield from flush()
    yield from flush()
