"""Report records: what happened to each face and each file, and the JSON report built from them.

Every record is built with keywords and says only what this run did or verified: a file skipped
because an earlier run wrote it carries that run's journal record, not face actions of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..detection import Face
from ..io.files import FilePlan, Journal
from ..replacers.base import FaceAction


class Status(str, Enum):
    """The outcome of one photo or file (the value is the report's string)."""

    OK = "ok"  # faces found, each replaced or left alone as its outcome says; the output was written
    NO_FACES = "no_faces"  # no face found; the output was written with the input's pixels
    ERROR = "error"  # nothing was written; ``error`` says why
    SKIPPED = "skipped"  # not processed on purpose; ``reason`` says why (e.g. already written, hidden file)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, kw_only=True)
class FaceOutcome:
    """A face found in a photo and what was done to it.

    ``reason`` says why a face was kept or left alone; ``matched_reference`` and ``distance`` are
    filled by a selection hook that compares faces with reference identities.
    """

    face: Face
    action: FaceAction
    error: str | None = None
    reason: str | None = None
    matched_reference: str | None = None
    distance: float | None = None

    def to_json(self) -> dict:
        return {
            **self.face.to_json(),
            "action": str(self.action),
            "error": self.error,
            "reason": self.reason,
            "matched_reference": self.matched_reference,
            "distance": None if self.distance is None else round(float(self.distance), 4),
        }


@dataclass(frozen=True, kw_only=True)
class FileReport:
    """What happened to one input file (one entry of ``--json REPORT``).

    ``output`` is set only when this run wrote it (``ok``, ``no_faces``) or found it written by an
    earlier run with the same input and options (``skipped``, with that run's ``journal`` record).
    Face coordinates are in the input's pixels after its EXIF orientation is applied.
    """

    input: Path | str
    status: Status
    output: Path | None = None
    error: str | None = None
    reason: str | None = None
    outcomes: tuple[FaceOutcome, ...] = ()
    notes: tuple[str, ...] = ()
    journal: Mapping[str, Any] | None = None

    def to_json(self) -> dict:
        entry = {
            "input": str(self.input),
            "output": None if self.output is None else str(self.output),
            "status": str(self.status),
            "error": self.error,
            "reason": self.reason,
            "faces": [outcome.to_json() for outcome in self.outcomes],
            "skipped": self.status is Status.SKIPPED,  # kept for readers of the first report format
            "notes": list(self.notes),
        }
        if self.journal is not None:
            entry["journal"] = dict(self.journal)
        return entry


def not_processed(path: os.PathLike, why: str) -> FileReport:
    """The row of an input the run never reached (nothing was written for it)."""
    return FileReport(input=Path(path), status=Status.ERROR, error=f"not processed: {why}")


def assemble_report(
    plan: FilePlan, reports: Iterable[FileReport], *, stopped: str | None = None, journal: Journal | None = None
) -> list[FileReport]:
    """The whole run's report: one row per job in the plan's order, then one ``skipped`` row per entry
    the folder scan passed over.

    A job without a report is ``not processed: {stopped}``, unless ``journal`` (the run's) shows that
    this run wrote its output just before it stopped: then the row says so and carries the journal's
    record of the faces, so that every output on disk has its row.
    """
    by_input = {Path(report.input): report for report in reports}
    rows = []
    for job in plan.jobs:
        row = by_input.get(job.input)
        record = None if row is not None or journal is None else journal.written_here(job.output)
        if record is not None:
            row = FileReport(
                input=job.input,
                status=Status(record["status"]),
                output=job.output,
                reason=f"written just before the run stopped ({stopped or 'stopped'}); faces as in the journal record",
                journal=record,
            )
        rows.append(row or not_processed(job.input, stopped or "stopped"))
    rows += [FileReport(input=entry.path, status=Status.SKIPPED, reason=entry.reason) for entry in plan.skipped]
    return rows


def report_json(reports: Iterable[FileReport]) -> str:
    """The report file's text: a JSON list with one object per row."""
    return json.dumps([report.to_json() for report in reports], indent=2) + "\n"


def summarize(reports: Sequence[FileReport]) -> str:
    """One line for people: files by status, faces (photos) and face tracks (videos) treated, files a
    scan passed over."""
    counts = {status: sum(report.status is status for report in reports) for status in Status}
    resumed = sum(report.status is Status.SKIPPED and report.journal is not None for report in reports)
    passed_over = counts[Status.SKIPPED] - resumed
    faces = sum(len(report.outcomes) for report in reports)
    videos = [report for report in reports if hasattr(report, "tracks")]  # VideoReport rows
    tracks = sum(len(report.tracks) for report in videos)
    noun = "files" if videos and len(videos) < len(reports) else "videos" if videos else "photos"
    treated = [f"{faces} faces" + (" in photos" if videos else "")] if faces or not videos else []
    if videos:
        treated.append(f"{tracks} face tracks in videos")
    text = (
        f"{len(reports) - passed_over} {noun}: {counts[Status.OK]} with faces, {counts[Status.NO_FACES]} without, "
        f"{counts[Status.ERROR]} failed; {', '.join(treated)}"
    )
    if resumed:
        text += f" ({resumed} already written, skipped)"
    if passed_over:
        text += f"; {passed_over} other files skipped (see the report)"
    return text


def exit_status(reports: Sequence[FileReport]) -> int:
    """0 when no row is an error, else 1 (the command line's exit status after a run)."""
    return 1 if any(report.status is Status.ERROR for report in reports) else 0


__all__ = [
    "FaceOutcome",
    "FileReport",
    "Status",
    "assemble_report",
    "exit_status",
    "not_processed",
    "report_json",
    "summarize",
]
