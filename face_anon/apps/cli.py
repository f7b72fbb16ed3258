"""``face-anon``: anonymize every face in photos and folders of photos.

A thin layer: parse the arguments, call ``face_anon.files``, show progress, write the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..detection import DETECTOR_NAMES, load_detector
from ..io.images import DEFAULT_MAX_PIXELS, write_atomic
from ..orchestration.batch import FileReport, plan_jobs, process_files
from ..orchestration.photo import ON_ERROR_CHOICES, AnonymizeOptions
from ..replacers.base import MODES
from ..replacers.diffusion import DTYPES, load_pipeline, resolve_device, resolve_dtype


DESCRIPTION = """\
Anonymize every face in photos with the diffusion model of "Face Anonymization Made Simple"
(WACV 2025), or blur, pixelate or black them out. Faces are found with the bundled CenterFace
detector, aligned as FFHQ was, replaced in batches and blended back with a soft mask: pixels
outside the faces are left as they were. Metadata (EXIF, GPS, XMP, comments) is removed.
"""

EPILOG = """\
examples:
  face-anon photo.jpg -o photo_anon.jpg
  face-anon holidays/ -o holidays_anon/ --batch-size 8 --json report.json
  face-anon scans/ -o scans_blurred/ --mode blur
  face-anon photo.jpg -o out/ --model ./face-anon-converted --device cuda --dtype float16

Outputs that already exist are skipped, so an interrupted run can simply be started again.
Exit status: 0 when every photo was written, 1 when some photo failed, 2 for bad arguments.
"""


class _ModelLoadError(RuntimeError):
    """The face model could not be loaded; every photo with faces would fail."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}, expected a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"got {value}, expected an integer >= 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"got {text}, expected a number >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="face-anon",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="output folder, or an image file name when there is a single input file",
    )
    parser.add_argument(
        "--model",
        metavar="REPO_OR_DIR",
        default=None,
        help="converted face-anon pipeline (Hub id or folder); default: assemble the authors' published weights",
    )
    parser.add_argument("--mode", choices=MODES, default="anonymize", help="what to do with faces (default: anonymize)")
    parser.add_argument("--degree", type=_non_negative_float, default=1.25, help="anonymization degree (default: 1.25)")
    parser.add_argument("--steps", type=_positive_int, default=25, help="denoising steps (default: 25)")
    parser.add_argument("--guidance", type=_non_negative_float, default=4.0, help="guidance scale (default: 4.0)")
    parser.add_argument(
        "--seed", type=_non_negative_int, default=0, help="face i of a photo uses seed + i (default: 0)"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=4, help="faces per model call (default: 4)")
    parser.add_argument(
        "--size",
        type=_positive_int,
        default=None,
        metavar="PIXELS",
        help="side of the aligned face crops (default: the model's size, 512; 256 for blur/pixelate/black)",
    )
    parser.add_argument(
        "--min-face-size",
        type=_non_negative_float,
        default=0.0,
        metavar="PIXELS",
        help="leave faces smaller than this alone (longer side of the box; default: 0, treat all)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.3,
        help="detector score threshold, 0..1 (default: 0.3)",
    )
    parser.add_argument(
        "--detector", choices=DETECTOR_NAMES, default="centerface", help="face detector (default: centerface)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="model dtype (default: float16 on GPU, else float32)"
    )
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="fail",
        help="a face that cannot be anonymized: fail = write nothing for that photo (default); redact = black it out",
    )
    parser.add_argument("--keep-metadata", action="store_true", help="keep EXIF (incl. GPS), XMP and comments")
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse images with more pixels than this (default: {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument("--json", metavar="REPORT", default=None, help="write a JSON report: one object per input")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def _summary(reports: Sequence[FileReport]) -> str:
    counts = {status: sum(r.status == status for r in reports) for status in ("ok", "no_faces", "error")}
    skipped = sum(r.skipped for r in reports)
    faces = sum(len(r.outcomes) for r in reports)
    text = (
        f"{len(reports)} photos: {counts['ok']} with faces, {counts['no_faces']} without, "
        f"{counts['error']} failed; {faces} faces"
    )
    return text + (f" ({skipped} already written, skipped)" if skipped else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = AnonymizeOptions(
            mode=args.mode,
            degree=args.degree,
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
            batch_size=args.batch_size,
            crop_size=args.size,
            min_face_size=args.min_face_size,
            on_error=args.on_error,
        )
        jobs = plan_jobs(args.inputs, args.output)
        detector = load_detector(args.detector, threshold=args.threshold)
        if args.mode == "anonymize":
            resolve_dtype(args.dtype, resolve_device(args.device))
    except ValueError as error:
        parser.error(str(error))

    def load_model():
        try:
            return load_pipeline(args.model, args.device, args.dtype)
        except Exception as error:  # noqa: BLE001 - reported as one clear line, then exit 1
            raise _ModelLoadError(f"cannot load the model (--model {args.model or 'default'}): {error}") from error

    from tqdm.auto import tqdm

    reports: dict = {}
    stopped = None  # why the run ended early, if it did
    try:
        with tqdm(total=len(jobs), unit="photo", disable=args.quiet, file=sys.stderr) as progress:
            for report in process_files(
                jobs,
                detector=detector,
                options=options,
                load_pipeline=load_model,
                keep_metadata=args.keep_metadata,
                max_pixels=args.max_pixels,
            ):
                reports[report.input] = report
                if report.status == "error":
                    progress.write(f"face-anon: {report.input}: {report.error}", file=sys.stderr)
                progress.update(1)
    except _ModelLoadError as error:
        print(f"face-anon: {error}", file=sys.stderr)
        stopped = str(error)
    except KeyboardInterrupt:
        stopped = "interrupted"
        raise
    finally:
        # Every input gets an entry; ones the run did not reach say why (nothing was written for them).
        ordered = [
            reports.get(job.input) or FileReport(job.input, None, "error", f"not processed: {stopped or 'stopped'}")
            for job in jobs
        ]
        if args.json is not None:
            text = json.dumps([report.to_json() for report in ordered], indent=2)
            write_atomic(args.json, (text + "\n").encode("utf-8"))
        if not args.quiet or any(r.status == "error" for r in ordered):
            print(f"face-anon: {_summary(ordered)}", file=sys.stderr)
    return 1 if any(report.status == "error" for report in ordered) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
