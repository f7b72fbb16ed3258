"""Video: frames per second of the whole loop, and how steady the anonymized faces are over time.

Sections (``benchmarks/README.md``, "Video", has the method and the numbers):

- ``speed``: frames per second of ``anonymize_video`` on a generated 720p clip with 1 and with 4 faces:
  decode, detect (the default robust detector, and the bare one), track, replace, encode. Blur mode
  needs no model; ``--model sd21`` (GPU) runs the diffusion mode on Stable Diffusion 2.1-size random
  weights instead (``benchmark_speed.build_pipeline``), float16, 25 steps, per-track identities.
  ``io`` is decoding and re-encoding alone (a clip without faces), ``detect`` the detector per frame.
- ``stability``: the mean frame-to-frame change inside the face region of the output divided by the
  same of the input, diffusion mode on the tiny test model, with one identity per track (the default)
  and with a new seed per frame (``VideoOptions(identity="frame")``). 1 means the face changes as much
  as the input's; per-frame identities flicker far above that.

Run from the repository root with the test extras installed (clips are built from scikit-image's
astronaut with the test helpers)::

    python benchmarks/video_speed.py                   # 2 CPU cores: a few minutes
    python benchmarks/video_speed.py --dry-run         # every code path at toy sizes, seconds
    python benchmarks/video_speed.py --model sd21 --device cuda --skip stability
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from photo.photo_helpers import Placement, compose, mask_union  # noqa: E402
from video.video_helpers import decode_frames, write_clip  # noqa: E402

from face_anon import AnonymizeOptions  # noqa: E402
from face_anon.detection import load_detector  # noqa: E402
from face_anon.io.video import DecodedFrame, VideoReader, VideoWriter  # noqa: E402
from face_anon.orchestration.video import VideoOptions, anonymize_video  # noqa: E402


def scene(count: int, faces: int, size: tuple[int, int], frame: int) -> list[Placement]:
    """``faces`` heads spread over the frame, each drifting slowly (a few pixels per frame)."""
    width, height = size
    scale = 0.22 * height / 120  # faces about a fifth of the frame's height
    out = []
    for k in range(faces):
        column, row = k % 2, k // 2
        cx = width * (0.3 + 0.4 * column) + 2.0 * frame
        cy = height * (0.35 + 0.35 * row if faces > 2 else 0.5) + 0.8 * frame
        out.append(Placement((cx, cy), scale * (1 + 0.002 * frame)))
    return out


def make_clip(path: Path, faces: int, size: tuple[int, int], frames: int, crf: int = 18) -> list[list[Placement]]:
    scenes = [scene(frames, faces, size, i) for i in range(frames)]
    images = [compose(*size, placements) for placements in scenes]
    write_clip(path, images, options={"crf": str(crf)})
    return scenes


def timed(function, cpu: dict | None = None) -> tuple[float, object]:
    """Wall seconds of ``function()`` and its result; ``cpu["seconds"]`` gets the process's CPU seconds
    (all threads), which a machine shared with other jobs inflates far less than the wall time."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = function()
    if cpu is not None:
        cpu["seconds"] = time.process_time() - start_cpu
    return time.perf_counter() - start, result


def copy_video(source: Path, target: Path) -> int:
    """Decode and re-encode with nothing changed: the I/O part of the loop."""
    frames = 0
    with VideoReader(source) as reader, VideoWriter(target, reader) as writer:
        for item in reader:
            if isinstance(item, DecodedFrame):
                writer.write(item)
                frames += 1
            else:
                writer.copy(item)
        writer.commit(overwrite=True)
    return frames


def speed(args, folder: Path) -> dict:
    size = args.size
    results = {}
    pipeline = None
    if args.model == "sd21":
        import torch
        from benchmark_speed import PRESETS, build_pipeline

        pipeline = build_pipeline(PRESETS["sd21"], torch.device(args.device), torch.float16)
    empty = folder / "empty.mp4"
    make_clip(empty, 0, size, args.frames)
    seconds, frames = timed(lambda: copy_video(empty, folder / "copy.mp4"))
    results["io_fps"] = frames / seconds  # decode and re-encode a clip without faces
    for faces in args.faces:
        clip = folder / f"clip_{faces}.mp4"
        make_clip(clip, faces, size, args.frames)
        row: dict = {"faces": faces, "frames": args.frames, "size": f"{size[0]}x{size[1]}"}
        images = decode_frames(clip)[0][: args.detect_frames]
        for robust in (True, False):
            detector = load_detector(robust=robust)
            seconds, _ = timed(lambda d=detector, im=images: [d.detect(image) for image in im])
            row[f"detect_{'robust' if robust else 'bare'}_s_per_frame"] = seconds / len(images)
        detector = load_detector()
        if pipeline is None:
            options = AnonymizeOptions(mode="blur", batch_size=args.batch_size)
        else:
            options = AnonymizeOptions(num_inference_steps=args.steps, batch_size=args.batch_size)
        output = folder / f"out_{faces}.mp4"
        cpu: dict = {}
        seconds, report = timed(
            lambda o=options, c=clip, out=output, d=detector: anonymize_video(
                c, out, detector=d, pipeline=pipeline, options=o, overwrite=True
            ),
            cpu,
        )
        row["cpu_s_per_frame"] = cpu["seconds"] / report.frames
        assert report.status == "ok", report.error
        row["mode"] = options.mode if pipeline is None else "anonymize (sd21 random weights, float16)"
        row["tracks"] = len(report.tracks)
        row["fps"] = report.frames / seconds
        row["faces_per_s"] = sum(t.detected + t.interpolated + t.extended for t in report.tracks) / seconds
        results[f"{faces}_faces"] = row
        print(json.dumps({**row, "io_fps": results["io_fps"]}), flush=True)
    return results


def flicker(frames: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """Mean absolute change from each frame to the next inside the later frame's face mask (8-bit levels)."""
    changes = []
    for previous, current, mask in zip(frames[:-1], frames[1:], masks[1:]):
        difference = np.abs(current.astype(np.float32) - previous.astype(np.float32))
        changes.append(float(difference[mask].mean()))
    return float(np.mean(changes))


def stability(args, folder: Path) -> dict:
    import helpers

    pipeline = helpers.build_tiny_pipeline()
    size, count = (256, 192), args.stability_frames
    scenes = [[Placement((100 + 1.5 * i, 96 + 0.5 * i), 0.8)] for i in range(count)]
    clip = folder / "steady.mkv"
    write_clip(clip, [compose(*size, placements) for placements in scenes])
    detector = load_detector()
    masks = [
        mask_union([p.landmarks() for p in placements], 64, (size[1], size[0], 3), detector.eye_scale)
        for placements in scenes
    ]
    source, _, _ = decode_frames(clip)
    base = flicker(source, masks)
    results = {"input_change": base, "frames": count}
    options = AnonymizeOptions(crop_size=args.tiny_crop, num_inference_steps=args.tiny_steps, batch_size=8)
    for identity in ("track", "frame"):
        output = folder / f"steady_{identity}.mkv"
        report = anonymize_video(
            clip,
            output,
            detector=detector,
            pipeline=pipeline,
            options=options,
            video=VideoOptions(crf=0, identity=identity),
            overwrite=True,
        )
        assert report.status == "ok", report.error
        frames, _, _ = decode_frames(output)
        change = flicker(frames, masks)
        results[identity] = {"output_change": change, "ratio": change / base}
        print(json.dumps({identity: results[identity], "input_change": base}), flush=True)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes: check every code path in seconds")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--detect-frames", type=int, default=6, help="frames the detector alone is timed on")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the speed clip")
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", choices=("none", "sd21"), default="none", help="sd21: diffusion on random weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--stability-frames", type=int, default=12)
    parser.add_argument("--tiny-crop", type=int, default=32)
    parser.add_argument("--tiny-steps", type=int, default=4)
    parser.add_argument("--skip", nargs="*", default=[], choices=("speed", "stability"))
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.frames, args.size, args.faces, args.stability_frames, args.tiny_steps = 4, "160x96", [1], 4, 2
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    import torch

    environment = {"cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    results: dict = {"environment": environment}
    with tempfile.TemporaryDirectory() as folder:
        if "speed" not in args.skip:
            results["speed"] = speed(args, Path(folder))
        if "stability" not in args.skip:
            results["stability"] = stability(args, Path(folder))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
