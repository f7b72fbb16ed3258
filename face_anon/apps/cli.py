"""``face-anon``: anonymize every face in photos and folders of photos.

A thin layer: parse the arguments, call the library (plan the files, run them, assemble the report),
show progress, write the report. Every check of a value lives in the library; a bad value exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..detection import load_detector
from ..errors import InputError, ModelLoadError
from ..identity import DEFAULT_UNCERTAINTY_BAND, IdentityModelsMissing, make_selector
from ..io.files import Journal, check_report_path, plan_files, write_atomic
from ..io.images import DEFAULT_MAX_PIXELS, load_image
from ..io.video import DEFAULT_CRF, is_video_path
from ..orchestration.batch import FileRun, engine_settings, process_files
from ..orchestration.options import LIMITS, ON_ERROR_CHOICES, AnonymizeOptions, check_option
from ..orchestration.ray_runner import (
    RayConfig,
    check_sendable,
    faces_replaced,
    plan_inputs,
    process_files_ray,
    require_ray,
)
from ..orchestration.report import Status, assemble_report, exit_status, report_json, summarize
from ..orchestration.video import VideoOptions, VideoProgress, identity_crop
from ..replacers.base import MODES
from ..replacers.diffusion import DTYPES, load_pipeline, resolve_device, resolve_dtype


DESCRIPTION = """\
Anonymize every face in photos with the diffusion model of "Face Anonymization Made Simple"
(WACV 2025), or blur, pixelate or black them out. Faces are found with the bundled CenterFace
detector, aligned as FFHQ was, replaced in batches and blended back with a soft mask: pixels
outside the faces are left as they were. Metadata (EXIF, GPS, XMP, comments) is removed.
Videos (mp4, mov, mkv, webm, avi) are tracked: one new identity per person, every frame covered,
timestamps, audio and rotation kept, location tags and data streams removed.
"""

EPILOG = """\
examples:
  face-anon photo.jpg -o photo_anon.jpg
  face-anon holidays/ -o holidays_anon/ --batch-size 8 --json report.json
  face-anon scans/ -o scans_blurred/ --mode blur
  face-anon photo.jpg -o out/ --model ./face-anon-converted --device cuda --dtype float16
  face-anon clip.mp4 -o clip_anon.mp4 --crf 18

Every output is recorded in OUTPUT's journal (.face-anon-journal.jsonl). Started again, a run skips
the outputs it wrote from the same input with the same settings, redoes its own outputs made with
other settings, and never touches a file it did not write (that input is an error).
Exit status: 0 when every photo was written (or skipped), 1 when some photo failed, 2 for bad
arguments, 130 / 143 when interrupted by SIGINT / SIGTERM (the report lists what was not processed).
"""


def _option_type(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that checks the value with the library's own limits for option ``name``."""

    def convert(text: str) -> Any:
        expected = LIMITS[name][1]
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {expected} (sets {name})") from None
        try:
            return check_option(name, value)
        except InputError:
            raise argparse.ArgumentTypeError(f"got {text}, expected {expected} (sets {name})") from None

    return convert


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}, expected a positive integer")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"got {text}, expected a number >= 0")
    return value


def _face_indices(text: str) -> tuple[int, ...]:
    try:
        indices = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected face indices like 0,2") from None
    if any(index < 0 for index in indices):
        raise argparse.ArgumentTypeError(f"got {text!r}, expected face indices >= 0")
    return indices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="face-anon",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("inputs", nargs="+", metavar="INPUT", help="image or video files, or folders (searched recursively)")
    add(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="output folder, or a file name (image for a photo, video for a video) when there is a single input file",
    )
    add(
        "--model",
        metavar="REPO_OR_DIR",
        default=None,
        help="converted face-anon pipeline (Hub id or folder); default: assemble the authors' published weights",
    )
    add("--mode", choices=MODES, default="anonymize", help="what to do with faces (default: anonymize)")
    add(
        "--degree",
        "--anonymization-degree",
        dest="anonymization_degree",
        type=_option_type("anonymization_degree", float),
        default=1.25,
        metavar="DEGREE",
        help=f"sets anonymization_degree: {LIMITS['anonymization_degree'][1]} (default: 1.25)",
    )
    add(
        "--steps",
        "--num-inference-steps",
        dest="num_inference_steps",
        type=_option_type("num_inference_steps", int),
        default=25,
        metavar="STEPS",
        help="sets num_inference_steps: denoising steps, a positive integer (default: 25)",
    )
    add(
        "--guidance",
        "--guidance-scale",
        dest="guidance_scale",
        type=_option_type("guidance_scale", float),
        default=4.0,
        metavar="SCALE",
        help="sets guidance_scale: classifier-free guidance, a finite number >= 0 (default: 4.0)",
    )
    add(
        "--seed",
        type=_option_type("seed", int),
        default=0,
        help="sets seed: face i of a photo uses seed + i, an integer >= 0 (default: 0)",
    )
    add(
        "--batch-size",
        type=_option_type("batch_size", int),
        default=4,
        help="sets batch_size: faces per model call, a positive integer (default: 4)",
    )
    add(
        "--size",
        dest="crop_size",
        type=_option_type("crop_size", int),
        default=None,
        metavar="PIXELS",
        help="sets crop_size: side of the aligned face crops (default: the model's size, 512; 256 for "
        "blur/pixelate/black)",
    )
    add(
        "--min-face-size",
        type=_option_type("min_face_size", float),
        default=0.0,
        metavar="PIXELS",
        help="sets min_face_size: leave faces smaller than this alone (longer side of the box; default: 0, treat all)",
    )
    add("--threshold", type=float, default=0.3, help="detector score threshold, between 0 and 1 (default: 0.3)")
    add("--detector", default="centerface", help="face detector (default: centerface)")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    add("--dtype", choices=DTYPES, default="auto", help="model dtype (default: float16 on GPU, else float32)")
    add(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="fail",
        help="sets on_error: a face that cannot be anonymized: fail = write nothing for that photo (default); "
        "redact = black it out",
    )
    add("--keep-metadata", action="store_true", help="keep EXIF (incl. GPS), XMP and comments")
    add(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse images with more pixels than this (default: {DEFAULT_MAX_PIXELS})",
    )
    add(
        "--json",
        metavar="REPORT",
        default=None,
        help="write a JSON report, one object per input; refused (before any work) if REPORT is an input, an "
        "output, the journal, or an existing file that is not a face-anon report",
    )
    # Who is anonymized (helper F): reference people, face indices.
    add(
        "--keep",
        nargs="+",
        action="extend",
        default=[],
        metavar="PHOTO",
        help="leave the people shown in these reference photos (one face each) as they are and anonymize everyone "
        "else; a face near the match threshold is anonymized (reported 'uncertain')",
    )
    add(
        "--only",
        nargs="+",
        action="extend",
        default=[],
        metavar="PHOTO",
        help="anonymize only the people shown in these reference photos (one face each); uncertain faces are "
        "anonymized too",
    )
    add(
        "--keep-faces",
        type=_face_indices,
        default=(),
        metavar="I,J",
        help="leave these faces of the one input photo as they are (their indices in its JSON report)",
    )
    add(
        "--match-threshold",
        type=float,
        default=None,
        metavar="DISTANCE",
        help="sets threshold: same-person distance for --keep/--only (default: the embedder's, 0.6 for dlib)",
    )
    add(
        "--uncertainty-band",
        type=float,
        default=DEFAULT_UNCERTAINTY_BAND,
        metavar="DISTANCE",
        help="sets band: faces this close to the threshold are uncertain and anonymized "
        f"(default: {DEFAULT_UNCERTAINTY_BAND})",
    )
    # Videos (helper E).
    add(
        "--crf",
        type=int,
        default=DEFAULT_CRF,
        help=f"video quality, 0 (lossless) to 51; 18 is visually lossless (default: {DEFAULT_CRF})",
    )
    add(
        "--identity",
        metavar="FACE.png",
        default=None,
        help="videos, mode anonymize: give every person this face's identity instead of a new one per person "
        "(an image with exactly one face)",
    )
    # A Ray cluster (helper H): face_anon.orchestration.ray_runner.
    add(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: a Ray Data pipeline on a local or remote Ray cluster, where "
        "INPUT may also be a text file listing paths or URIs, or a URI (s3://bucket/photos)",
    )
    add("--ray-address", metavar="ADDR", default=None, help="Ray cluster to join (default: start a local one)")
    add(
        "--num-gpus-per-worker",
        type=_non_negative_float,
        default=None,
        metavar="G",
        help="GPUs per model worker (default: 1 when the cluster has GPUs, else 0: CPU workers)",
    )
    add("--detect-workers", type=_positive_int, default=None, metavar="N", help="Ray workers reading and detecting")
    add("--anonymize-workers", type=_positive_int, default=None, metavar="M", help="Ray workers holding the model")
    add("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


class _VideoBar:
    """A second progress bar, in frames, for the video being worked on; faces/s in its postfix."""

    def __init__(self, tqdm, disable: bool) -> None:
        self.tqdm, self.disable, self.bar, self.input = tqdm, disable, None, None

    def __call__(self, progress: VideoProgress) -> None:
        if self.bar is None or self.input != progress.input:
            self.close()
            self.input = progress.input
            self.bar = self.tqdm(
                total=progress.frames,
                unit="frame",
                desc=progress.input.name,
                leave=False,
                position=1,
                disable=self.disable,
                file=sys.stderr,
            )
        self.bar.update(progress.frame - self.bar.n)
        elapsed = self.bar.format_dict.get("elapsed") or 0.0
        if elapsed > 0:
            self.bar.set_postfix_str(f"{progress.faces / elapsed:.1f} faces/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: stop, write the report, exit 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM is handled like Ctrl-C: the first one stops the run (the current write is abandoned
    atomically), later ones are ignored so the report can still be written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum, frame):
        if not received:
            received.append(signum)
            raise _Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # 1. Check everything before any work: options, files, report path, detector, device.
    try:
        options = AnonymizeOptions(
            mode=args.mode,
            anonymization_degree=args.anonymization_degree,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            seed=args.seed,
            batch_size=args.batch_size,
            crop_size=args.crop_size,
            min_face_size=args.min_face_size,
            on_error=args.on_error,
        )
        video = VideoOptions(crf=args.crf)
        ray_config = None
        if args.engine == "ray":
            require_ray()  # else exit 2 with the install command
            ray_config = RayConfig(
                address=args.ray_address,
                num_gpus_per_worker=args.num_gpus_per_worker,
                detect_workers=args.detect_workers,
                anonymize_workers=args.anonymize_workers,
            )
            plan = plan_inputs(args.inputs, args.output)
        else:
            plan = plan_files(args.inputs, args.output)
        report_path = None if args.json is None else check_report_path(args.json, plan)
        detector = load_detector(args.detector, threshold=args.threshold)
        if args.keep_faces and (len(plan.jobs) != 1 or is_video_path(plan.jobs[0].input)):
            raise InputError(
                "--keep-faces", detail="chooses faces of one photo by their report index; give exactly one input photo"
            )
        # Reference photos are read and checked here, before any work (a bad one exits 2, naming it).
        selector = make_selector(
            keep=args.keep,
            only=args.only,
            keep_faces=args.keep_faces,
            detector=detector,
            options=options,
            threshold=args.match_threshold,
            band=args.uncertainty_band,
            max_pixels=args.max_pixels,
        )
        if ray_config is not None:
            check_sendable(selector, "--keep/--only/--keep-faces")  # the hook runs on the Ray workers
        identity = None
        if args.identity is not None:
            if args.mode != "anonymize":
                raise InputError("--identity", args.identity, detail=f"needs --mode anonymize, not {args.mode}")
            identity = load_image(args.identity).rgb
            identity_crop(identity, detector=detector, crop_size=64)  # exactly one face, or exit 2
        if args.mode == "anonymize":
            resolve_dtype(args.dtype, resolve_device(args.device))
    except (ValueError, IdentityModelsMissing) as error:
        parser.error(str(error))

    def load_model():
        try:
            return load_pipeline(args.model, args.device, args.dtype)
        except Exception as error:  # noqa: BLE001 - reported as one clear line, then exit 1
            raise ModelLoadError(f"cannot load the model (--model {args.model or 'default'}): {error}") from error

    run = FileRun(
        options=options,
        journal=Journal(plan.journal),
        keep_metadata=args.keep_metadata,
        max_pixels=args.max_pixels,
        settings={
            **engine_settings(
                options, detector=args.detector, threshold=args.threshold, model=args.model, dtype=args.dtype
            ),
            **(selector.settings if selector is not None else {}),
        },
        selector=selector,
        track_selector=None if selector is None else selector.track,
        video=video,
        identity=identity,
    )

    # 2. Run, one report row per file as it completes.
    from tqdm.auto import tqdm

    reports = []
    stopped = None  # why the run ended early, if it did
    interrupted = None
    with _signals_interrupt():
        try:
            video_bar = _VideoBar(tqdm, args.quiet)
            run = dataclasses.replace(run, video_progress=video_bar)
            with tqdm(total=len(plan.jobs), unit="file", disable=args.quiet, file=sys.stderr) as progress:
                if ray_config is not None:
                    files = process_files_ray(
                        plan,
                        run=run,
                        detector=args.detector,
                        threshold=args.threshold,
                        load_pipeline=load_model,
                        model=args.model,
                        config=ray_config,
                    )
                else:
                    files = process_files(plan, detector=detector, run=run, load_pipeline=load_model)
                faces = 0
                for report in files:
                    video_bar.close()
                    reports.append(report)
                    if report.status is Status.ERROR:
                        progress.write(f"face-anon: {report.input}: {report.error}", file=sys.stderr)
                    faces += faces_replaced(report)
                    elapsed = progress.format_dict.get("elapsed") or 0.0
                    if elapsed > 0:
                        progress.set_postfix_str(f"{faces / elapsed:.2f} faces/s", refresh=False)
                    progress.update(1)
        except ModelLoadError as error:
            print(f"face-anon: {error}", file=sys.stderr)
            stopped = str(error)
        except KeyboardInterrupt as error:
            interrupted = error.signum if isinstance(error, _Interrupted) else signal.SIGINT
            stopped = "interrupted"
        finally:
            # 3. The report: every input gets a row; ones the run did not reach say why.
            rows = assemble_report(plan, reports, stopped=stopped, journal=run.journal)
            if report_path is not None:
                try:
                    write_atomic(report_path, report_json(rows).encode("utf-8"))
                except OSError as error:  # checked before the work, yet the disk can still fill up
                    print(f"face-anon: cannot write the report {str(report_path)!r}: {error}", file=sys.stderr)
                    report_path = None
            if not args.quiet or stopped or any(row.status is Status.ERROR for row in rows):
                print(f"face-anon: {summarize(rows)}", file=sys.stderr)
    if interrupted is not None:
        print(f"face-anon: interrupted by {signal.Signals(interrupted).name}", file=sys.stderr)
        return 128 + int(interrupted)
    if args.json is not None and report_path is None:
        return 1  # the report was asked for and could not be written
    return exit_status(rows)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
