"""The Ray engine against the single-process run on the same photos: photos and faces per second, and the
time per photo that Ray adds (``benchmarks/README.md``, "Datasets on Ray", has the method and the numbers).

For each mode (blur; diffusion with the tiny test model, or SD 2.1-size random weights on a GPU) it runs
``process_files`` in this process, then ``process_files_ray`` on a local Ray cluster with 1 and with 2
model workers, each on a fresh output folder, and records when each photo's report row arrives:

- ``total``: seconds from the start to the last row (startup, model loading and pipeline fill included);
- ``first``: seconds to the first row;
- ``steady``: photos per second once running: the slope of a line fitted to the arrival times of the last
  three quarters of the rows (startup excluded; Ray delivers rows in blocks of a few photos, hence the fit);
- ``added``: steady seconds per photo of the Ray run minus those of the single process.

Then, without Ray, ``stages``: the CPU seconds per photo (this process, all threads) of ``process_files`` and
of the three stages' Ray Data functions called here one after the other on the same photos. Their difference is
the work that splitting a photo into stages adds (the second decode and hash of the input, pickling, crop
digests), before Ray moves anything: CPU time, which a machine shared with other jobs inflates far less than
wall time.

Run from the repository root with the test and ray extras installed (photos are built from scikit-image's
astronaut with the test helpers)::

    python benchmarks/ray_speed.py                      # 2 CPU cores: a few minutes
    python benchmarks/ray_speed.py --dry-run            # every code path at toy sizes
    python benchmarks/ray_speed.py --model sd21 --device cuda --modes diffusion --photos 64 --workers 1
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
import PIL.Image  # noqa: E402
from photo.photo_helpers import Placement, compose  # noqa: E402

from face_anon import AnonymizeOptions, FileRun, Journal, engine_settings, load_detector, process_files  # noqa: E402
from face_anon.io.files import sha256_bytes  # noqa: E402
from face_anon.io.images import load_image  # noqa: E402
from face_anon.orchestration.ray_runner import (  # noqa: E402
    OpenStage,
    RayConfig,
    ReplaceStage,
    WriteStage,
    _rows,
    _Spec,
    _table,
    faces_replaced,
    plan_inputs,
    process_files_ray,
    resolve_crop_size,
)


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> Path:
    """``count`` JPEG photos with 1 to 3 faces each, about a fifth of the photo's height."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    scale = 0.2 * height / 120
    for number in range(count):
        faces = 1 + number % 3
        placements = [Placement((width * (k + 1) / (faces + 1), height * 0.5), scale, 8.0 * k) for k in range(faces)]
        image = compose(width, height, placements, seed=number)
        PIL.Image.fromarray(image).save(folder / f"{number:04d}.jpg", quality=90)
    return folder


def _sd21(device: str, dtype: str):
    import torch
    from benchmark_speed import PRESETS, build_pipeline

    return build_pipeline(PRESETS["sd21"], torch.device(device), getattr(torch, dtype))


def _saved_tiny(folder: Path) -> str:
    from helpers import build_tiny_pipeline

    build_tiny_pipeline().save_pretrained(folder)
    return str(folder)


def _load(model_dir: str, device: str, dtype: str):
    from face_anon.replacers.diffusion import load_pipeline

    return load_pipeline(model_dir, device, dtype)


def timings(reports, start: float) -> dict:
    """Arrival times of the report rows, as the metrics in the module docstring."""
    arrivals, faces = [], 0
    for report in reports:
        arrivals.append(time.perf_counter() - start)
        faces += faces_replaced(report)
    count = len(arrivals)
    tail = np.array(arrivals[count // 4 :])
    seconds_per_photo = np.polyfit(np.arange(len(tail)), tail, 1)[0] if len(tail) > 2 else 0.0
    return {
        "photos": count,
        "faces": faces,
        "total_s": round(arrivals[-1], 2),
        "first_s": round(arrivals[0], 2),
        "photos_per_s": round(count / arrivals[-1], 3),
        "faces_per_s": round(faces / arrivals[-1], 3),
        "steady_photos_per_s": round(1 / seconds_per_photo, 3) if seconds_per_photo > 1e-3 else None,
    }


def _plan_and_run(photos: Path, out: Path, options: AnonymizeOptions):
    plan = plan_inputs([photos], out)
    settings = engine_settings(options, detector="centerface", threshold=0.3, model="benchmark")
    return plan, FileRun(options=options, journal=Journal(plan.journal), settings=settings)


def stage_cpu(photos: Path, scratch: Path, options: AnonymizeOptions, loader) -> dict:
    """CPU seconds per photo of ``process_files`` and of the Ray stages' functions run in this process."""
    import pyarrow as pa
    import torch

    plan, run = _plan_and_run(photos, scratch / "single", options)
    detector = load_detector()
    start = time.process_time()
    list(process_files(plan, detector=detector, run=run, load_pipeline=loader))
    single = time.process_time() - start

    plan, run = _plan_and_run(photos, scratch / "staged", options)
    spec = _Spec(
        run=dataclasses.replace(run, journal=None),
        journal=plan.journal,
        detector="centerface",
        threshold=0.3,
        crop_size=resolve_crop_size(options, None),
        load_pipeline=loader,
        gpus_per_model=0.0,
        torch_threads=torch.get_num_threads(),
    )
    stages = {"open": OpenStage(spec), "replace": ReplaceStage(spec), "write": WriteStage(spec)}
    seconds = dict.fromkeys(stages, 0.0)
    between: list = []  # the tables that travel between stages
    for first in range(0, len(plan.jobs), options.batch_size):
        jobs = plan.jobs[first : first + options.batch_size]
        table = pa.table(
            {
                "number": list(range(first, first + len(jobs))),
                "source": [str(job.input) for job in jobs],
                "output": [str(job.output) for job in jobs],
            }
        )
        for name, stage in stages.items():
            start = time.process_time()
            table = stage(table)
            seconds[name] += time.process_time() - start
            between.append(table)
    count = len(plan.jobs)
    staged = sum(seconds.values())
    result = {"single_cpu_s_per_photo": round(single / count, 3)}
    result |= {f"{name}_cpu_s_per_photo": round(value / count, 3) for name, value in seconds.items()}
    result |= {
        "staged_cpu_s_per_photo": round(staged / count, 3),
        "added_cpu_s_per_photo": round((staged - single) / count, 3),
    }
    same = all(
        (scratch / "single" / job.output.name).read_bytes() == (scratch / "staged" / job.output.name).read_bytes()
        for job in plan.jobs
    )
    result["same_outputs"] = same

    # The work only the split does, timed alone (fastest of 3): the write stage's second read, hash and decode
    # of each input, and packing and unpacking every table that travels between stages (pickle + Arrow).
    def fastest(function) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return min(times)

    def reread_one(path: Path):
        data = path.read_bytes()
        return sha256_bytes(data), load_image(path, data=data)

    reread = fastest(lambda: [reread_one(job.input) for job in plan.jobs])
    packing = fastest(lambda: [_table(_rows(table)) for table in between])
    result["reread_s_per_photo"] = round(reread / count, 4)
    result["packing_s_per_photo"] = round(packing / count, 4)
    result["payload_bytes_per_photo"] = round(sum(table.nbytes for table in between) / count)
    return result


def run_once(engine: str, photos: Path, out: Path, options: AnonymizeOptions, loader, workers: int = 1) -> dict:
    plan, run = _plan_and_run(photos, out, options)
    start = time.perf_counter()
    if engine == "single":
        reports = process_files(plan, detector=load_detector(), run=run, load_pipeline=loader)
    else:
        config = RayConfig(anonymize_workers=workers)
        reports = process_files_ray(plan, run=run, load_pipeline=loader, config=config)
    result = timings(reports, start)
    missing = [job for job in plan.jobs if not job.output.exists()]
    assert not missing, f"{engine}: {len(missing)} outputs missing"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--photo-size", type=int, nargs=2, default=(640, 480))
    parser.add_argument("--modes", nargs="+", default=["blur", "diffusion"], choices=["blur", "diffusion"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="model workers of the Ray runs")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ray", "stages"], help="sections to leave out")
    parser.add_argument("--model", choices=["tiny", "sd21"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float16 for sd21, float32 for tiny")
    parser.add_argument("--steps", type=int, default=None, help="default: 25 for sd21, 4 for tiny")
    parser.add_argument("--size", type=int, default=None, help="crop size; default 512 for sd21, 32 for tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of this process (the single-process runs); Ray's CPU model workers take one each on 2 "
        "cores (their share of the CPUs, rounded down, at least 1)",
    )
    parser.add_argument("--dry-run", action="store_true", help="4 photos, 1 worker, 2 steps: every code path")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.dry_run:
        args.photos, args.workers, args.steps, args.photo_size = 4, [1], 2, (320, 240)
    sd21 = args.model == "sd21"
    dtype = args.dtype or ("float16" if sd21 else "float32")
    steps = args.steps or (25 if sd21 else 4)
    crop = args.size or (512 if sd21 else 32)

    import ray
    import ray.cloudpickle
    import torch

    torch.set_num_threads(args.threads)

    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": round(os.getloadavg()[0], 2),
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "ray": ray.__version__,
        },
        "settings": {"photos": args.photos, "photo_size": list(args.photo_size), "model": args.model, "steps": steps}
        | {"crop_size": crop, "batch_size": args.batch_size, "dtype": dtype},
    }
    with tempfile.TemporaryDirectory(prefix="ray-speed-") as scratch:
        scratch = Path(scratch)
        photos = make_photos(scratch / "photos", args.photos, tuple(args.photo_size))
        if sd21:
            import benchmark_speed

            ray.cloudpickle.register_pickle_by_value(benchmark_speed)
            loader = functools.partial(_sd21, args.device, dtype)
        else:
            loader = functools.partial(_load, _saved_tiny(scratch / "tiny"), args.device, dtype)
        if "ray" not in args.skip:
            start = time.perf_counter()
            ray.init(include_dashboard=False, logging_level="WARNING")
            results["ray_init_s"] = round(time.perf_counter() - start, 2)
            results["ray_cpus"] = ray.cluster_resources().get("CPU")
        for mode in args.modes:
            options = AnonymizeOptions(
                mode="anonymize" if mode == "diffusion" else mode,
                num_inference_steps=steps,
                crop_size=crop if mode == "diffusion" else None,
                batch_size=args.batch_size,
            )
            model_loader = loader if mode == "diffusion" else None
            runs = {}
            if "stages" not in args.skip:
                runs["stages"] = stage_cpu(photos, scratch / f"{mode}-stages", options, model_loader)
                print(mode, "stages", runs["stages"], flush=True)
            if "ray" in args.skip:
                results[mode] = runs
                continue
            runs["single"] = run_once("single", photos, scratch / f"{mode}-single", options, model_loader)
            print(mode, "single", runs["single"], flush=True)
            for workers in args.workers:
                name = f"ray x{workers}"
                out = scratch / f"{mode}-ray-{workers}"
                runs[name] = run_once("ray", photos, out, options, model_loader, workers)
                single, mine = runs["single"]["steady_photos_per_s"], runs[name]["steady_photos_per_s"]
                if single and mine:
                    runs[name]["added_s_per_photo"] = round(1 / mine - 1 / single, 3)
                print(mode, name, runs[name], flush=True)
            results[mode] = runs
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        if ray.is_initialized():
            ray.shutdown()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
