"""Files and folders: which outputs to write, writing them atomically, and the journal that makes resuming safe.

- :func:`plan_files` pairs every input image with its output and lists what a folder scan passes over.
- :func:`write_atomic` writes through a short-named temporary file and a rename: a reader sees no file
  or the whole file, never part of one.
- :class:`Journal` (``.face-anon-journal.jsonl`` in the output folder) records every output this tool
  writes, with the sha256 of the input, of the settings and of the output. :func:`resume_state` trusts
  an existing output only when the journal says this tool wrote exactly those bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import PIL.Image

from ..errors import InputError
from .images import FORMATS_BY_EXTENSION, IMAGE_EXTENSIONS
from .video import VIDEO_EXTENSIONS


JOURNAL_NAME = ".face-anon-journal.jsonl"
JOURNAL_VERSION = 1
# Image suffixes an output name may end with that we cannot write: refused rather than taken for a folder.
_UNWRITABLE_IMAGE_SUFFIXES = {".heic", ".heif", ".avif", ".jxl", ".jp2", ".raw", ".dng", ".cr2", ".nef", ".arw"}


# ------------------------------------------------------------------------------------------------ writing


def write_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader (or a resumed run) sees either the old state or the whole new file, never a partial
    one; on any failure, interruption included, the temporary file is removed. The temporary name is
    short and hidden (``.fa-XXXXXXXXXXXX.part``), so outputs whose names are near the file system's
    limit work and folder scans skip it. With ``overwrite=False`` an existing ``path`` is never
    replaced: FileExistsError (the check and the write are one step, a hard link).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".fa-{secrets.token_hex(6)}.part"
    try:
        with open(temporary, "xb") as file:  # "x": the usual umask-based permissions, never an existing file
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            _link_without_replacing(temporary, path)
        _fsync_folder(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _link_without_replacing(temporary: Path, path: Path) -> None:
    try:
        os.link(temporary, path)  # fails with FileExistsError if path exists, atomically
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # A file system without hard links: check, then rename (a narrow window instead of none).
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from error
        os.replace(temporary, path)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (on systems that allow opening folders)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ planning


@dataclass(frozen=True, kw_only=True)
class FileJob:
    """One input file and the output it becomes.

    ``uri``: set for an input read through a file system (``s3://...``; the caller passes its bytes to
    ``open_file``), which reports and the journal then name instead of ``input``.
    """

    input: Path
    output: Path
    uri: str | None = None

    @property
    def source(self) -> Path | str:
        """The input as reports and the journal name it: its URI, or its path."""
        return self.input if self.uri is None else self.uri


@dataclass(frozen=True, kw_only=True)
class SkippedFile:
    """A file or folder a folder scan passed over, and why (it gets a ``skipped`` report row)."""

    path: Path
    reason: str


@dataclass(frozen=True, kw_only=True)
class FilePlan:
    """The jobs of a run, what the scan passed over, and where the journal lives."""

    jobs: tuple[FileJob, ...]
    skipped: tuple[SkippedFile, ...]
    journal: Path

    @property
    def inputs(self) -> list[Path]:
        return [job.input for job in self.jobs]


def _scan(folder: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Image files under ``folder`` (recursive, sorted) and every entry passed over, with the reason."""
    found: list[Path] = []
    skipped: list[SkippedFile] = []
    for root, folders, files in os.walk(folder, followlinks=False, onerror=None):
        root_path = Path(root)
        for name in sorted(folders):
            path = root_path / name
            if name.startswith("."):
                skipped.append(SkippedFile(path=path, reason="hidden folder (not searched)"))
            elif path.is_symlink():
                skipped.append(SkippedFile(path=path, reason="symbolic link to a folder (not followed)"))
        folders[:] = sorted(
            name for name in folders if not name.startswith(".") and not (root_path / name).is_symlink()
        )
        for name in sorted(files):
            path = root_path / name
            suffix = path.suffix.lower()
            if name.startswith("."):
                reason = "hidden file"
            elif path.is_symlink() and not path.exists():
                reason = "dangling symbolic link"
            elif not path.is_file():
                reason = "not a regular file"
            elif suffix not in IMAGE_EXTENSIONS and suffix not in VIDEO_EXTENSIONS:  # videos: helper E
                reason = f"extension {suffix or '(none)'!r} is not one face-anon reads and writes"
            else:
                found.append(path)
                continue
            skipped.append(SkippedFile(path=path, reason=reason))
    return sorted(found), sorted(skipped, key=lambda entry: entry.path)


def _image_suffix_we_cannot_write(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix not in FORMATS_BY_EXTENSION and (
        suffix in _UNWRITABLE_IMAGE_SUFFIXES or suffix in PIL.Image.registered_extensions()
    )


def _overlap(output: Path, folder: Path) -> str | None:
    """How a resolved output folder overlaps a resolved input folder, if it does."""
    if output == folder:
        return "is the input folder"
    if folder in output.parents:
        return "is inside the input folder"
    if output in folder.parents:
        return "contains the input folder"
    return None


def check_writable(path: Path, argument: str) -> None:
    """The nearest existing folder at or above ``path`` must let us create files."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(argument, str(path), detail=f"cannot be created: {str(existing)!r} is a file, not a folder")
    try:  # a real probe: permission bits say nothing for root, read-only mounts or special file systems
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise InputError(
            argument, str(path), detail=f"cannot be written: {str(existing)!r} refuses new files ({error.strerror})"
        ) from None


def plan_files(inputs: Sequence[str | os.PathLike], output: str | os.PathLike) -> FilePlan:
    """Pair every input image with its output path.

    A single input file and an ``output`` with an image extension we write (e.g. ``-o out.jpg``)
    writes that file; otherwise ``output`` is a folder: input files go to ``output/NAME``, folders are
    scanned recursively for images and mirrored below ``output`` (hidden entries, symbolic links to
    folders, dangling links and other extensions are listed in ``skipped``).

    Raises :class:`InputError` for a missing input, an output folder that is, contains or lies inside
    an input folder, an output that would overwrite an input, two inputs mapped to the same output,
    an image file name we cannot write (``-o anon.heic``) and a folder we cannot write into.
    """
    if not inputs:
        raise InputError("INPUT", [], "at least one image file or folder")
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.exists():
            raise InputError("INPUT", str(path), detail="does not exist")
        if not (path.is_file() or path.is_dir()):
            raise InputError("INPUT", str(path), detail="is neither a file nor a folder")
    output = Path(output)
    if _image_suffix_we_cannot_write(output) and not output.is_dir():
        allowed = ", ".join(sorted(FORMATS_BY_EXTENSION))
        raise InputError("output", str(output), f"a folder or an image file name ending in one of {allowed}")
    writable_name = output.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS and not output.is_dir()
    single_file = len(paths) == 1 and paths[0].is_file() and writable_name
    skipped: list[SkippedFile] = []
    if single_file:
        # A video becomes a video file and a photo a photo (videos: helper E).
        if (paths[0].suffix.lower() in VIDEO_EXTENSIONS) != (output.suffix.lower() in VIDEO_EXTENSIONS):
            kind = (
                "a video file name (.mp4, .mov, .mkv, .webm, .avi)"
                if paths[0].suffix.lower() in VIDEO_EXTENSIONS
                else "an image file name"
            )
            raise InputError("output", str(output), detail=f"must be {kind} for input {str(paths[0])!r}")
        jobs = [FileJob(input=paths[0], output=output)]
        journal = output.parent / JOURNAL_NAME
    else:
        if writable_name and not output.exists():
            raise InputError(
                "output",
                str(output),
                detail="looks like an image file name, but several inputs or a folder need an output folder",
            )
        if output.exists() and not output.is_dir():
            raise InputError(
                "output", str(output), detail="is a file; with several inputs or a folder it must be a folder"
            )
        resolved_output = output.resolve()
        jobs = []
        for path in paths:
            if path.is_file():
                jobs.append(FileJob(input=path, output=output / path.name))
                continue
            overlap = _overlap(resolved_output, path.resolve())
            if overlap:
                raise InputError(
                    "output", str(output), detail=f"{overlap} {str(path)!r}; choose an output folder outside it"
                )
            found, passed_over = _scan(path)
            jobs.extend(FileJob(input=f, output=output / f.relative_to(path)) for f in found)
            skipped.extend(passed_over)
        journal = output / JOURNAL_NAME

    inputs_resolved = {job.input.resolve() for job in jobs}
    seen: dict[Path, Path] = {}
    for job in jobs:
        target = job.output.resolve()
        if target in inputs_resolved or (job.output.exists() and job.output.samefile(job.input)):
            raise InputError("output", str(job.output), detail="is also an input; face-anon never overwrites an input")
        if target in seen:
            raise InputError(
                "output",
                str(job.output),
                detail=f"inputs {str(seen[target])!r} and {str(job.input)!r} would both be written there; "
                "process them separately or rename one",
            )
        seen[target] = job.input
    if jobs:
        check_writable(journal.parent, "output")
    return FilePlan(jobs=tuple(jobs), skipped=tuple(skipped), journal=journal)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def is_report_file(path: Path) -> bool:
    """Whether ``path`` holds a report this tool writes: a JSON list of objects with ``input`` and ``status``."""
    try:
        with open(path, "rb") as file:
            entries = json.loads(file.read(256 << 20))
    except (OSError, ValueError):
        return False
    return isinstance(entries, list) and all(
        isinstance(entry, dict) and "input" in entry and "status" in entry for entry in entries
    )


def check_report_path(report: str | os.PathLike, plan: FilePlan) -> Path:
    """Refuse a report path that would destroy something: an input, an output, the journal, a folder,
    an existing file that is not a face-anon report, or a place we cannot write. Checked before any work."""
    report = Path(report)
    for job in plan.jobs:
        if _same_file(report, job.input):
            raise InputError("--json", str(report), detail="is an input; face-anon never overwrites an input")
        if _same_file(report, job.output):
            raise InputError("--json", str(report), detail="is where an output will be written")
    if _same_file(report, plan.journal):
        raise InputError("--json", str(report), detail="is the resume journal")
    if report.is_dir():
        raise InputError("--json", str(report), detail="is a folder; give a file name")
    if report.exists() and not is_report_file(report):
        raise InputError(
            "--json", str(report), detail="exists and is not a face-anon report; it is left alone (choose another name)"
        )
    check_writable(report.parent, "--json")
    return report


# ------------------------------------------------------------------------------------------------ journal


class Journal:
    """The record of every output written into one folder: one JSON object per line, appended and fsynced.

    A row is appended *before* its output is renamed into place, with the sha256 of the bytes about to be
    written; so an output on disk whose sha256 matches a row was written by this tool, whatever moment
    an earlier run was stopped at. Rows that cannot be parsed (a line torn by a crash) are ignored.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._rows: dict[str, list[dict]] = {}
        self._mine: dict[str, dict] = {}  # rows this object appended (this run's)
        self._read()

    def _read(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("version") == JOURNAL_VERSION and isinstance(row.get("output"), str):
                self._rows.setdefault(row["output"], []).append(row)

    def key(self, output: Path) -> str:
        """An output's name in the journal: its path relative to the journal's folder."""
        try:
            return output.resolve().relative_to(self.path.parent.resolve()).as_posix()
        except ValueError:
            return str(output.resolve())

    def record_for(self, output: Path, output_sha256: str) -> dict | None:
        """The latest row saying this tool wrote exactly these bytes to ``output``, or None."""
        rows = [row for row in self._rows.get(self.key(output), ()) if row.get("output_sha256") == output_sha256]
        return rows[-1] if rows else None

    def append(self, row: Mapping[str, Any]) -> dict:
        """Add a row (``output`` is a Path; ``version`` and ``written`` are filled in) and make it durable."""
        entry = {"version": JOURNAL_VERSION, **row, "output": self.key(Path(row["output"]))}
        entry.setdefault("written", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        self._rows.setdefault(entry["output"], []).append(entry)
        self._mine[entry["output"]] = entry
        return entry

    def written_here(self, output: Path) -> dict | None:
        """The row this object appended for ``output`` if the file there holds exactly those bytes: an
        output this run wrote, even if it was stopped before reporting it."""
        row = self._mine.get(self.key(output))
        if row is None or not output.is_file() or output.is_symlink():
            return None
        return row if sha256_file(output) == row.get("output_sha256") else None


class Resume(str, Enum):
    """What to do with a job's output path, given what is there and what the journal says."""

    WRITE = "write"  # nothing there: write it
    DONE = "done"  # this tool wrote it from the same input bytes with the same settings: skip
    REPLACE = "replace"  # this tool wrote it, from another input or with other settings: write it again
    FOREIGN = "foreign"  # something this tool did not write (or cannot vouch for): never touch it


@dataclass(frozen=True, kw_only=True)
class ResumeState:
    action: Resume
    record: dict | None = None
    reason: str | None = None


def resume_state(job: FileJob, journal: Journal, *, input_sha256: str, settings_sha256: str) -> ResumeState:
    """Decide what a run may do with ``job.output`` (see :class:`Resume`)."""
    output = job.output
    if not os.path.lexists(output):
        return ResumeState(action=Resume.WRITE)
    if output.is_symlink() or not output.is_file():
        return ResumeState(action=Resume.FOREIGN, reason=_foreign(output, journal, "is not a regular file"))
    record = journal.record_for(output, sha256_file(output))
    if record is None:
        return ResumeState(action=Resume.FOREIGN, reason=_foreign(output, journal, "was not written by face-anon"))
    if record.get("input_sha256") == input_sha256 and record.get("settings_sha256") == settings_sha256:
        return ResumeState(
            action=Resume.DONE,
            record=record,
            reason="already written by an earlier run of face-anon "
            "from the same input with the same settings (journal record attached)",
        )
    changed = "input" if record.get("input_sha256") != input_sha256 else "settings"
    return ResumeState(action=Resume.REPLACE, record=record, reason=f"earlier face-anon output with other {changed}")


def _foreign(output: Path, journal: Journal, what: str) -> str:
    return (
        f"output {str(output)!r} exists and {what} (no matching record in {journal.path.name}); it is left "
        "alone: move it away or choose another output"
    )


__all__ = [
    "JOURNAL_NAME",
    "FileJob",
    "FilePlan",
    "Journal",
    "Resume",
    "ResumeState",
    "SkippedFile",
    "check_report_path",
    "is_report_file",
    "plan_files",
    "resume_state",
    "sha256_bytes",
    "sha256_file",
    "write_atomic",
]
