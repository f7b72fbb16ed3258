"""Writing an evaluation: the JSON report, and a short Markdown report with a histogram (PNG).

Everything is drawn from the JSON object :func:`~face_anon.evaluation.summary.summarize` returns, so
the Markdown and the picture show exactly the numbers the JSON holds. Files are written atomically.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from ..io.files import write_atomic


HISTOGRAM_FILE = "distances.png"
MARKDOWN_FILE = "report.md"


def report_json(report: dict) -> str:
    """The JSON report's text."""
    return json.dumps(report, indent=2) + "\n"


def histogram_png(report: dict) -> bytes:
    """A histogram of identity distances, anonymized vs original (and between different originals,
    when there are several), with the same-person threshold drawn as a line; PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    series = (
        ("distances", "anonymized vs its original", "tab:blue"),
        ("distances_between_originals", "between different originals", "tab:gray"),
    )
    for key, label, colour in series:
        histogram = report[key]["histogram"]
        if histogram is None:
            continue
        edges, counts = histogram["edges"], histogram["counts"]
        total = max(1, sum(counts))
        widths = [right - left for left, right in zip(edges[:-1], edges[1:])]
        shares = [count / total for count in counts]
        axes.bar(edges[:-1], shares, width=widths, align="edge", alpha=0.6, color=colour, label=f"{label} (n={total})")
    threshold = report["threshold"]
    axes.axvline(threshold, color="tab:red", linestyle="--", label=f"same-person threshold {threshold:g}")
    axes.set_xlabel(f"identity distance ({report['embedder']})")
    axes.set_ylabel("share of pairs")
    axes.set_title("Identity distances: below the line, a face is still recognised")
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None, unit: str = "", digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(report: dict, histogram_file: str | None = HISTOGRAM_FILE) -> str:
    """The Markdown report: the headline numbers with what they mean, the histogram, the files."""
    counts = report["counts"]
    threshold = report["threshold"]
    lines = [
        "# Anonymization evaluation",
        "",
        f"Original `{report['original']}`, anonymized `{report['anonymized']}`: {counts['files']} files "
        f"({counts['files_failed']} failed), {counts['faces']} faces in the originals "
        f"({counts['identifiable_faces']} large enough to identify). Embedder `{report['embedder']}`, "
        f"same person below distance {threshold:g}.",
        "",
        "| measure | value | meaning |",
        "|---|---|---|",
        f"| re-identification rate | {_percent(report['reidentification_rate'])} | anonymized faces still within "
        f"{threshold:g} of their original (lower is more private; an unchanged copy scores 100%) |",
        f"| rank-1 rate | {_percent(report['rank1_rate'])} | anonymized faces whose nearest original among "
        f"{counts['rank1_identities']} is their own (chance: 1 in {max(1, counts['rank1_identities'])}) |",
        f"| detection retention | {_percent(report['detection_retention'])} | faces still found by the detector "
        "(a realistic face stays a face; a black box does not) |",
        f"| landmark error | {_number(report['landmark_error'])} | mean landmark shift over the inter-ocular "
        "distance, detected faces (lower keeps pose and expression) |",
        f"| yaw / roll difference | {_number(report['yaw_difference'], ' deg', 1)} / "
        f"{_number(report['roll_difference'], ' deg', 1)} | head turn and tilt change estimated from landmarks |",
    ]
    if "flicker_ratio" in report:
        lines += [
            f"| identity stability | {_number(report['identity_stability'])} (original "
            f"{_number(report['identity_stability_original'])}) | mean cosine similarity of a video track's "
            "anonymized faces (one consistent person is close to the original's) |",
            f"| flicker ratio | {_number(report['flicker_ratio'], digits=2)} | frame-to-frame change inside "
            "faces, anonymized over original (1 = as steady as the original) |",
        ]
    distances = report["distances"]
    lines += [""]
    if histogram_file is not None:
        lines += [f"![Identity distances]({histogram_file})", ""]
    if distances["count"]:
        lines += [
            f"Distances anonymized vs original: mean {distances['mean']:.3f}, median {distances['median']:.3f}, "
            f"min {distances['min']:.3f}, max {distances['max']:.3f} (n={distances['count']}).",
            "",
        ]
    lines += [
        "These numbers come from dlib's face recognition model; they are not comparable one-to-one with "
        "papers that measure with AdaFace or FaceNet.",
        "",
        "## Files",
        "",
        "| file | kind | status | faces | re-identified | detected | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["files"]:
        note = row["error"] or ""
        if row["kind"] == "video" and row["status"] == "ok":
            note = f"{row['evaluated_frames']} of {row['frames']} frames; flicker ratio {_number(row['flicker_ratio'], digits=2)}"
        lines.append(
            f"| {_cell(row['file'])} | {row['kind']} | {row['status']} | {row['faces']} | {row['reidentified']} | "
            f"{row['detected']} | {_cell(note)} |"
        )
    if report["unpaired"]:
        lines += ["", f"Skipped, found on one side only: {', '.join(_cell(n) for n in report['unpaired'])}."]
    return "\n".join(lines) + "\n"


def write_reports(
    report: dict, json_path: str | os.PathLike, report_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Write the JSON report, and with ``report_dir`` also ``report.md`` and ``distances.png`` there.

    Returns the paths written.
    """
    written = [Path(json_path)]
    write_atomic(json_path, report_json(report).encode("utf-8"))
    if report_dir is not None:
        folder = Path(report_dir)
        write_atomic(folder / HISTOGRAM_FILE, histogram_png(report))
        write_atomic(folder / MARKDOWN_FILE, report_markdown(report).encode("utf-8"))
        written += [folder / MARKDOWN_FILE, folder / HISTOGRAM_FILE]
    return written


__all__ = ["histogram_png", "report_json", "report_markdown", "write_reports"]
