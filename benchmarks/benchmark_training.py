# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""Training speed and memory of `train_face_anon.py`: optimizer steps per second and peak memory.

Builds a base model with random weights at a preset's sizes (`benchmark_speed.PRESETS`: the tiny test nets, or
Stable Diffusion 2.1's UNet, VAE and CLIP ViT-L/14's vision tower; no download) and a few random triplets, then
runs the training script twice in fresh processes, for `--warmup_steps` and for `--warmup_steps + --steps` optimizer
steps. Steps per second = `--steps` / the difference of the two runs' times inside `main()`, so start-up, model
loading and the final save cancel out; the CPU time per step is reported too, which a busy machine changes less.
Peak memory: the device's (`torch.cuda.max_memory_allocated`) on CUDA, the
process's resident set (`ru_maxrss`, Python and libraries included) on the CPU.

    python benchmarks/benchmark_training.py                  # 2 CPU cores: tiny nets, 32 px, float32
    python benchmarks/benchmark_training.py --preset sd21    # GPU: SD 2.1 sizes, 512 px, fp16, checkpointing

Other flags are passed to `train_face_anon.py` (`--use_8bit_adam`, `--train_batch_size 2`, ...).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


_HERE = Path(__file__).resolve().parent
sys.path.append(str(_HERE.parent))  # the repository root
sys.path.insert(0, str(_HERE))

# A child process: runs the training script in-process and reports its time and peak memory as one JSON line.
_RUN = """
import json, resource, sys, time
import torch
sys.path.insert(0, sys.argv[1])
import train_face_anon
start, cpu_start = time.perf_counter(), time.process_time()
train_face_anon.main(sys.argv[2:])
if torch.cuda.is_available():
    torch.cuda.synchronize()
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result = {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_bytes": peak, "cuda": torch.cuda.is_available()}
print("RESULT " + json.dumps(result))
"""

DEFAULTS = {
    "tiny": dict(resolution=32, mixed_precision="no", extra=[]),
    "sd21": dict(resolution=512, mixed_precision="fp16", extra=["--gradient_checkpointing"]),
}


def build_base(folder: Path, preset_name: str, num_triplets: int, resolution: int) -> tuple[Path, Path, Path]:
    """Random-weight base model (`sd/`: unet, vae, scheduler; `clip/`) and `data/` with `num_triplets` rows."""
    import torch
    from benchmark_speed import _SD21_SCHEDULER, PRESETS, make_faces
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    preset = PRESETS["dry-run" if preset_name == "tiny" else "sd21"]
    sd, clip, data = folder / "sd", folder / "clip", folder / "data"
    torch.manual_seed(0)
    UNet2DConditionModel(**preset["unet"]).save_pretrained(sd / "unet")
    AutoencoderKL(**preset["vae"]).save_pretrained(sd / "vae")
    DDPMScheduler.from_config(_SD21_SCHEDULER).save_pretrained(sd / "scheduler")
    CLIPVisionModel(CLIPVisionConfig(**preset["clip"])).save_pretrained(clip)
    clip_size = preset["clip"]["image_size"]
    CLIPImageProcessor(size={"shortest_edge": clip_size}, crop_size=clip_size).save_pretrained(clip)
    data.mkdir()
    faces = make_faces(num_triplets + 2, resolution)
    for i, face in enumerate(faces):
        face.save(data / f"{i}.png")
    rows = [
        {"source_image": f"{i}.png", "conditioning_image": f"{i + 1}.png", "ground_truth": f"{i + 2}.png"}
        for i in range(num_triplets)
    ]
    (data / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return sd, clip, data


def run_training(sd: Path, clip: Path, data: Path, output_dir: Path, steps: int, args, extra: list[str]) -> dict:
    argv = [
        "--pretrained_model_name_or_path", str(sd), "--clip_model_name_or_path", str(clip),
        "--train_data_dir", str(data), "--output_dir", str(output_dir),
        "--resolution", str(args.resolution), "--mixed_precision", args.mixed_precision,
        "--train_batch_size", str(args.train_batch_size), "--gradient_accumulation_steps", "1",
        "--max_train_steps", str(steps), "--checkpointing_steps", str(10**9), "--validation_steps", str(10**9),
        "--report_to", "none", "--learning_rate", "1e-5",
        *extra,
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    completed = subprocess.run(
        [sys.executable, "-c", _RUN, str(_HERE.parent), *argv], capture_output=True, text=True, env=env
    )
    if completed.returncode != 0:
        raise RuntimeError(f"training failed:\n{completed.stderr[-4000:]}")
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(DEFAULTS), default="tiny")
    parser.add_argument("--steps", type=int, default=20, help="Timed optimizer steps.")
    parser.add_argument("--warmup_steps", type=int, default=3, help="Steps of the shorter run (subtracted).")
    parser.add_argument("--train_batch_size", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=None, help="Default: the preset's.")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args, extra = parser.parse_known_args(argv)
    defaults = DEFAULTS[args.preset]
    args.resolution = args.resolution or defaults["resolution"]
    args.mixed_precision = args.mixed_precision or defaults["mixed_precision"]
    extra = defaults["extra"] + extra

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        sd, clip, data = build_base(folder, args.preset, max(4, args.train_batch_size), args.resolution)
        short = run_training(sd, clip, data, folder / "short", args.warmup_steps, args, extra)
        long = run_training(sd, clip, data, folder / "long", args.warmup_steps + args.steps, args, extra)
    seconds = long["seconds"] - short["seconds"]
    results = {
        "preset": args.preset,
        "resolution": args.resolution,
        "train_batch_size": args.train_batch_size,
        "mixed_precision": args.mixed_precision,
        "flags": extra,
        "device": "cuda" if long["cuda"] else "cpu",
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "steps": args.steps,
        "steps_per_second": args.steps / seconds,
        "seconds_per_step": seconds / args.steps,
        # CPU time of the process (all its threads): on a shared machine, what a step costs whatever the load
        "cpu_seconds_per_step": (long["cpu_seconds"] - short["cpu_seconds"]) / args.steps,
        "load_average": os.getloadavg()[0],
        "peak_memory_gib": long["peak_bytes"] / 2**30,
        "peak_memory_kind": "device (max_memory_allocated)" if long["cuda"] else "process resident set (ru_maxrss)",
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
