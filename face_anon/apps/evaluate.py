"""``face-anon-evaluate``: measure how well photos and videos were anonymized.

A thin layer: parse the arguments, call ``face_anon.evaluation.evaluate``, show progress, write the
reports. A command of its own, since ``face-anon`` takes any number of input paths.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from ..detection import DETECTOR_NAMES, load_detector
from ..errors import InputError
from ..io.images import DEFAULT_MAX_PIXELS


DESCRIPTION = """\
Measure an anonymization on your own data: for every face of ORIGINAL, find its counterpart in
ANONYMIZED (by box overlap) and report how often the anonymized face is still recognised as the
original person (re-identification and rank-1, with dlib's face recognition model), how often it is
still detected as a face, how far its landmarks, yaw and roll moved, and for videos how stable each
track's new identity is and how much faces flicker. ORIGINAL and ANONYMIZED are two files, or two
folders whose photos and videos pair by relative path.
"""

EPILOG = """\
examples:
  face-anon-evaluate photos/ photos_anon/ --json evaluation.json --report-dir evaluation/
  face-anon-evaluate clip.mp4 clip_anon.mp4 --json clip.json --frame-step 5

Calibration: an unchanged copy scores about 100% re-identification; blur and black boxes about 0%,
black boxes also near 0% detection retention.
Exit status: 0 when every pair was evaluated, 1 when some pair failed, 2 for bad arguments.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {text}, expected a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"got {text}, expected a finite number > 0")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"got {text}, expected a finite number >= 0")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"got {text}, expected a number in (0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="face-anon-evaluate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("original", metavar="ORIGINAL", help="the original photo, video or folder")
    parser.add_argument("anonymized", metavar="ANONYMIZED", help="its anonymized version (same names below a folder)")
    parser.add_argument("--json", metavar="REPORT", required=True, help="write the JSON report here")
    parser.add_argument(
        "--report-dir", metavar="DIR", default=None, help="also write report.md and distances.png (a histogram) here"
    )
    parser.add_argument(
        "--match-threshold",
        type=_positive_float,
        default=None,
        metavar="DISTANCE",
        help="same-person distance (default: the embedder's, 0.6 for dlib)",
    )
    parser.add_argument(
        "--min-iou",
        type=_fraction,
        default=0.3,
        help="box overlap for an anonymized detection to count as a face's counterpart (default: 0.3)",
    )
    parser.add_argument(
        "--min-eye-distance",
        type=_non_negative_float,
        default=None,
        metavar="PIXELS",
        help="smaller faces are too small to identify and left out of re-identification (default: 16)",
    )
    parser.add_argument(
        "--frame-step",
        type=_positive_int,
        default=1,
        metavar="N",
        help="videos: evaluate every N-th frame (default: 1)",
    )
    parser.add_argument("--threshold", type=float, default=0.3, help="detector score threshold, 0..1 (default: 0.3)")
    parser.add_argument(
        "--detector", choices=DETECTOR_NAMES, default="centerface", help="face detector (default: centerface)"
    )
    parser.add_argument(
        "--skip-unpaired",
        action="store_true",
        help="evaluate the pairs there are when some files exist on one side only (default: refuse)",
    )
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse photos with more pixels than this (default: {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def _check_outputs(args: argparse.Namespace) -> None:
    """The reports must not overwrite an input, nor land inside the folders being compared."""
    inputs = [Path(args.original).resolve(), Path(args.anonymized).resolve()]
    if Path(args.json).resolve() in inputs:
        raise InputError("--json", detail=f"{args.json!r} is one of the inputs; it would be overwritten")
    if args.report_dir is not None:
        folder = Path(args.report_dir).resolve()
        for path in inputs:
            if path.is_dir() and (folder == path or path in folder.parents):
                raise InputError("--report-dir", detail=f"{args.report_dir!r} is inside {str(path)!r}, an input folder")


def _summary_line(report: dict) -> str:
    counts = report["counts"]

    def percent(key: str) -> str:
        value = report[key]
        return "n/a" if value is None else f"{100 * value:.1f}%"

    error = report["landmark_error"]
    text = (
        f"{counts['files']} files ({counts['files_failed']} failed), {counts['faces']} faces: re-identification "
        f"{percent('reidentification_rate')}, rank-1 {percent('rank1_rate')}, detection retention "
        f"{percent('detection_retention')}, landmark error {'n/a' if error is None else f'{error:.3f}'}"
    )
    if "flicker_ratio" in report:
        stability, flicker = report["identity_stability"], report["flicker_ratio"]
        text += (
            f", identity stability {'n/a' if stability is None else f'{stability:.3f}'}"
            f", flicker ratio {'n/a' if flicker is None else f'{flicker:.2f}'}"
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from ..evaluation import EvaluationOptions, evaluate_pairs, write_reports
    from ..evaluation.pairs import pair_media
    from ..identity import MIN_EYE_DISTANCE, IdentityModelsMissing, load_embedder

    try:
        options = EvaluationOptions(
            threshold=args.match_threshold,
            min_iou=args.min_iou,
            min_eye_distance=MIN_EYE_DISTANCE if args.min_eye_distance is None else args.min_eye_distance,
            frame_step=args.frame_step,
            max_pixels=args.max_pixels,
        )
        _check_outputs(args)
        pairs, unpaired = pair_media(args.original, args.anonymized, skip_unpaired=args.skip_unpaired)
        if args.report_dir is not None and importlib.util.find_spec("matplotlib") is None:
            raise InputError(
                "--report-dir", detail="the histogram needs matplotlib (pip install 'face-anon[identity]')"
            )
        detector = load_detector(args.detector, threshold=args.threshold)
        embedder = load_embedder("dlib")
    except IdentityModelsMissing as error:
        print(f"face-anon-evaluate: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        parser.error(str(error))

    from tqdm.auto import tqdm

    with tqdm(total=len(pairs), unit="file", disable=args.quiet, file=sys.stderr) as progress:

        def on_file(record) -> None:
            if record.status == "error":
                progress.write(f"face-anon-evaluate: {record.name}: {record.error}", file=sys.stderr)
            progress.update(1)

        report = evaluate_pairs(
            pairs,
            detector=detector,
            embedder=embedder,
            options=options,
            on_file=on_file,
            original=args.original,
            anonymized=args.anonymized,
            unpaired=unpaired,
        )
    write_reports(report, args.json, args.report_dir)
    print(f"face-anon-evaluate: {_summary_line(report)}", file=sys.stderr)
    return 1 if report["counts"]["files_failed"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
