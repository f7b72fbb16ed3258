# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""Speed of `FaceAnonPipeline` against the reference implementation's math, on the same weights, in one run.

Builds the pipeline with random weights at the real sizes (Stable Diffusion 2.1 UNet and ReferenceNets, SD 2.1's
VAE, CLIP ViT-L/14's vision tower; no download) and reports, for anonymization with guidance:

1. whether our attention is the reference attention's function on these weights (UNet outputs, compared with a
   higher-precision run);
2. one UNet step for 1, 4, 8, 16 faces (UNet batch 2, 8, 16, 32) with the reference attention (queries, keys
   and values for all 3N tokens of `[own ; source ; driving]`, `authors_model.ConcatenatedReferenceAttnProcessor`)
   and with ours (queries for the N own tokens, reference keys and values projected once per call);
3. end to end, the faces of one photo batched: our pipeline and `authors_model.authors_pipeline`, a model of the
   authors' per-call structure on the same components: seconds per face, faces per second, peak device memory;
4. on CUDA: that the denoising loop makes no host-device synchronisation, where the time of a call goes, the
   float16 VAE decode against float32, and (`--compile`) the UNet under `torch.compile(fullgraph=True)`.

    python benchmarks/benchmark_speed.py                     # GPU, SD 2.1 sizes, float16, 512 px, 25 steps
    python benchmarks/benchmark_speed.py --small             # 2 CPU cores, a few minutes: tiny UNet, 128 px
    python benchmarks/benchmark_speed.py --dry-run           # seconds: every code path at toy sizes

Results: a table on stdout and everything as JSON (`--json`). `benchmarks/README.md` holds measured tables.
"""

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path


_HERE = Path(__file__).resolve().parent
sys.path.append(str(_HERE.parent))  # the repository root
sys.path.insert(0, str(_HERE))

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
from authors_model import authors_pipeline, install_concatenated_processors  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel  # noqa: E402

from modeling_referencenet import (  # noqa: E402
    ReferenceNetModel,
    install_reference_processors,
    project_reference_states,
)
from pipeline_face_anon import FaceAnonPipeline  # noqa: E402


# ----------------------------------------------------------------------------------------------- model sizes

_SD21_UNET = dict(  # stabilityai/stable-diffusion-2-1 unet/config.json (the face model's three nets share it)
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=True,
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)
_SD21_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=768,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    scaling_factor=0.18215,
)
_CLIP_L14 = dict(  # openai/clip-vit-large-patch14, vision tower
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
_TINY_UNET = dict(  # the reference fixture's face nets (tests/fixtures/reference_tiny/manifest.json)
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(16, 32, 32),
    attention_head_dim=(1, 2, 2),
    cross_attention_dim=32,
    use_linear_projection=True,
    upcast_attention=True,
    norm_num_groups=8,
)
_TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=32,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(16, 32),
    scaling_factor=0.18215,
)
_TINY_CLIP = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=4,
    projection_dim=16,
)
_SD21_SCHEDULER = dict(  # SD 2.1's scheduler config, loaded as DDPMScheduler as the authors do
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="v_prediction",
    timestep_spacing="leading",
)

PRESETS = {
    # The published model's sizes: 512 px faces, 64 x 64 latents, 4096 own tokens at the UNet's top level.
    "sd21": dict(unet=_SD21_UNET, vae=_SD21_VAE, clip=_CLIP_L14, size=512, faces=(1, 4, 8, 16), steps=25),
    # 2 CPU cores in a few minutes, at a size where attention matters: tiny nets, a VAE of scale factor 2, 128 px,
    # so 64 x 64 latents and 4096 own tokens at the top level as in the real model.
    "small": dict(unet=_TINY_UNET, vae=_TINY_VAE, clip=_TINY_CLIP, size=128, faces=(1, 4), steps=4),
    # Every code path in seconds.
    "dry-run": dict(unet=_TINY_UNET, vae=_TINY_VAE, clip=_TINY_CLIP, size=32, faces=(1, 2), steps=2),
}


def build_pipeline(preset: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> FaceAnonPipeline:
    """`FaceAnonPipeline` with random weights (PyTorch's default initialisation) at `preset`'s sizes."""
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: seconds instead of minutes for 2.6 billion parameters
        unet = UNet2DConditionModel(**preset["unet"])
        referencenet = ReferenceNetModel(**preset["unet"])
        conditioning_referencenet = ReferenceNetModel(**preset["unet"])
        vae = AutoencoderKL(**preset["vae"])
        image_encoder = CLIPVisionModel(CLIPVisionConfig(**preset["clip"]))
    clip_size = preset["clip"]["image_size"]
    pipe = FaceAnonPipeline(
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": clip_size}, crop_size=clip_size),
        referencenet=referencenet,
        conditioning_referencenet=conditioning_referencenet,
        unet=unet,
        scheduler=DDPMScheduler.from_config(_SD21_SCHEDULER),
    )
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_faces(count: int, size: int, seed: int = 0) -> list[PIL.Image.Image]:
    """Smooth random RGB images standing in for aligned face crops (random weights make content irrelevant)."""
    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        faces.append(PIL.Image.fromarray(coarse).resize((size, size), PIL.Image.BICUBIC))
    return faces


# --------------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_time(fn, device: torch.device):
    """Seconds `fn()` takes, the device's queued work included; returns (seconds, fn's result)."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


# ------------------------------------------------------------------------------------------- UNet steps


def state_shapes(pipe: FaceAnonPipeline, size: int) -> dict[str, tuple[int, int]]:
    """(tokens N, channels C) of each ReferenceNet state at `size` px, from one batch-1 ReferenceNet pass."""
    latent = size // pipe.vae_scale_factor
    device, dtype = pipe._execution_device, pipe.unet.dtype
    with torch.no_grad():
        states = pipe.referencenet(
            torch.zeros(1, 4, latent, latent, device=device, dtype=dtype),
            0,
            torch.zeros(1, 1, pipe.unet.config.cross_attention_dim, device=device, dtype=dtype),
        ).states
    return {layer: tuple(state.shape[1:]) for layer, state in states.items()}


def step_inputs(pipe: FaceAnonPipeline, faces: int, size: int, shapes: dict, seed: int = 0) -> dict:
    """One guided UNet step's inputs for `faces` faces: batch 2 * faces, `[source ; driving]` states per layer."""
    device, dtype = pipe._execution_device, pipe.unet.dtype
    generator = torch.Generator(device).manual_seed(seed)
    batch, latent = 2 * faces, size // pipe.vae_scale_factor

    def randn(*shape):
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)

    return dict(
        sample=randn(batch, pipe.unet.config.in_channels, latent, latent),
        timestep=torch.tensor(501, device=device),
        encoder_hidden_states=randn(batch, 2, pipe.unet.config.cross_attention_dim),
        states={layer: randn(batch, 2 * tokens, channels) for layer, (tokens, channels) in shapes.items()},
    )


@torch.no_grad()
def install_ours(unet, states: dict) -> dict:
    """Our processors on `unet`; returns the step's `cross_attention_kwargs`: keys and values projected once."""
    install_reference_processors(unet)
    return {"reference_keys_values": project_reference_states(unet, states)}


def install_reference(unet, states: dict) -> dict:
    """The reference attention on `unet`; returns the step's `cross_attention_kwargs`: the raw states."""
    install_concatenated_processors(unet)
    return {"reference_states": states}


@torch.no_grad()
def unet_step(unet, inputs: dict, attention_kwargs: dict) -> torch.Tensor:
    return unet(
        inputs["sample"],
        inputs["timestep"],
        encoder_hidden_states=inputs["encoder_hidden_states"],
        cross_attention_kwargs=attention_kwargs,
        return_dict=False,
    )[0]


def time_unet_steps(pipe, inputs, variants: dict, warmup: int, rounds: int, repeats: int, context=None) -> dict:
    """Per-step time of each variant (`name -> install(unet, states) -> cross_attention_kwargs`) on the same inputs.

    Rounds interleave the variants (so a change in the machine's load hits all of them alike); a round installs a
    variant (reference keys and values are projected then, outside the timing), warms up, and times `repeats`
    back-to-back steps, as the denoising loop runs them. Reports the fastest round and the median round; on the
    CPU also the process's CPU time per step (`cpu_ms`, fastest round), which other jobs on the machine do not
    inflate when torch runs one thread (`--threads 1`).
    """
    device, unet = pipe._execution_device, pipe.unet
    times, cpu_times = {name: [] for name in variants}, {name: [] for name in variants}
    with context() if context else contextlib.nullcontext():
        for round_ in range(rounds):
            for name, install in variants.items():
                attention_kwargs = install(unet, inputs["states"])
                for _ in range(warmup if round_ == 0 else 1):
                    unet_step(unet, inputs, attention_kwargs)
                cpu_start = time.process_time()
                seconds, _ = wall_time(
                    lambda kwargs=attention_kwargs: [unet_step(unet, inputs, kwargs) for _ in range(repeats)], device
                )
                times[name].append(seconds / repeats)
                cpu_times[name].append((time.process_time() - cpu_start) / repeats)
                del attention_kwargs
    results = {
        name: {"ms": 1e3 * min(t), "ms_median": 1e3 * statistics.median(t), "ms_rounds": [1e3 * x for x in t]}
        for name, t in times.items()
    }
    if device.type == "cpu":
        for name, t in cpu_times.items():
            results[name]["cpu_ms"] = 1e3 * min(t)
    return results


def step_flops(pipe, size: int, shapes: dict) -> dict:
    """Floating-point operations of one guided UNet step for one face (batch 2), per attention form: matrix
    products, convolutions and attention (not elementwise work), counted by `torch.utils.flop_counter` on a copy of
    the UNet on the meta device (no arithmetic runs; the count does not depend on which kernels a device has)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(pipe.unet.config).to(pipe.unet.dtype)
    latent, dtype = size // pipe.vae_scale_factor, pipe.unet.dtype
    sample = torch.empty(2, unet.config.in_channels, latent, latent, device="meta", dtype=dtype)
    tokens = torch.empty(2, 2, unet.config.cross_attention_dim, device="meta", dtype=dtype)
    states = {layer: torch.empty(2, 2 * n, c, device="meta", dtype=dtype) for layer, (n, c) in shapes.items()}
    flops = {}
    for name, install in (("reference", install_reference), ("ours", install_ours)):
        with torch.no_grad():
            attention_kwargs = install(unet, states)
            with FlopCounterMode(display=False) as counter:
                unet(
                    sample,
                    torch.tensor(501, device="meta"),
                    encoder_hidden_states=tokens,
                    cross_attention_kwargs=attention_kwargs,
                )
        flops[name] = counter.get_total_flops()
    return flops


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """The card's measured rate for one large matrix product in `dtype` (random data), a ceiling to compare with."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds, _ = wall_time(lambda: [a @ b for _ in range(10)], device)
    return 2 * n**3 * 10 / seconds / 1e12


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.double(), reference.double()
    return ((value - reference).norm() / reference.norm()).item()


@contextlib.contextmanager
def exact_float32():
    """No TF32 in matrix products and convolutions while computing a float32 reference."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_attention_equivalence(pipe: FaceAnonPipeline, size: int, shapes: dict, faces: int = 1) -> dict:
    """Our attention and the reference attention on the benchmark's weights: both UNet outputs in the pipeline's
    dtype, against the reference attention in a higher precision (float32, or float64 when the pipeline runs in
    float32). Ours passes when its error is within twice the reference attention's own rounding error."""
    inputs = step_inputs(pipe, faces, size, shapes, seed=1)
    ours = unet_step(pipe.unet, inputs, install_ours(pipe.unet, inputs["states"])).float()
    reference = unet_step(pipe.unet, inputs, install_reference(pipe.unet, inputs["states"])).float()

    high_dtype = torch.float64 if pipe.unet.dtype == torch.float32 else torch.float32
    high = copy.deepcopy(pipe.unet).to(high_dtype)
    high_inputs = {k: v.to(high_dtype) if k != "timestep" else v for k, v in inputs.items() if k != "states"}
    high_inputs["states"] = {layer: state.to(high_dtype) for layer, state in inputs["states"].items()}
    with exact_float32():
        exact = unet_step(high, high_inputs, install_reference(high, high_inputs["states"]))
        ours_high = unet_step(high, high_inputs, install_ours(high, high_inputs["states"]))
    del high
    result = {
        "faces": faces,
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "high_precision": str(high_dtype).removeprefix("torch."),
        "ours_vs_exact": relative_error(ours, exact),
        "reference_vs_exact": relative_error(reference, exact),
        "ours_vs_reference": relative_error(ours, reference),
        "ours_high_vs_exact": relative_error(ours_high, exact),
        "finite": bool(torch.isfinite(ours).all() and torch.isfinite(reference).all()),
    }
    result["passed"] = result["finite"] and result["ours_vs_exact"] <= 2 * result["reference_vs_exact"] + 1e-6
    return result


# ------------------------------------------------------------------------------------------- end to end


def run_ours(pipe, faces, args, generator_seed=0, **kwargs):
    generator = torch.Generator(pipe._execution_device).manual_seed(generator_seed)
    return pipe(
        faces,
        anonymization_degree=1.25,
        guidance_scale=4.0,
        num_inference_steps=kwargs.pop("steps", args.steps),
        height=args.size,
        width=args.size,
        generator=generator,
        output_type=kwargs.pop("output_type", "np"),
        **kwargs,
    ).images


def run_authors(pipe, faces, args, generator_seed=0, **kwargs):
    generator = torch.Generator(pipe._execution_device).manual_seed(generator_seed)
    return authors_pipeline(
        pipe,
        faces,
        anonymization_degree=1.25,
        guidance_scale=4.0,
        num_inference_steps=kwargs.pop("steps", args.steps),
        height=args.size,
        width=args.size,
        generator=generator,
        output_type="np",
        **kwargs,
    )


def time_end_to_end(pipe, runs: dict, count: int, args) -> dict:
    """Seconds per call of each pipeline (`name -> run`) on `count` faces, interleaved like `time_unet_steps`:
    one warm-up call each (2 steps, same shapes), then `args.e2e_repeats` rounds; the fastest round counts."""
    device = pipe._execution_device
    faces = make_faces(count, args.size)
    for run in runs.values():
        run(pipe, faces, args, steps=min(2, args.steps))
    times, peaks, finite = {name: [] for name in runs}, {}, {}
    for _ in range(args.e2e_repeats):
        for name, run in runs.items():
            reset_peak_memory(device)
            seconds, images = wall_time(lambda run=run: run(pipe, faces, args), device)
            times[name].append(seconds)
            peaks[name] = peak_memory_gb(device)
            finite[name] = bool(np.isfinite(images).all())
    results = {}
    for name, t in times.items():
        seconds = min(t)
        results[name] = {
            "faces": count,
            "seconds": seconds,
            "seconds_all": t,
            "seconds_per_face": seconds / count,
            "faces_per_second": count / seconds,
            "peak_memory_gb": peaks[name],
            "finite": finite[name],
        }
    return results


class _LoopSyncWatch:
    """Turns CUDA's sync debug mode to 'warn' after the first denoising step and off after the last, so only steps
    2..n of the loop are watched; counts the synchronising calls they make."""

    def __init__(self, num_steps: int) -> None:
        self.num_steps = num_steps

    def step(self, step: int) -> None:
        if step == 0:
            torch.cuda.set_sync_debug_mode("warn")
        if step == self.num_steps - 1:
            torch.cuda.set_sync_debug_mode(0)

    def pipeline_callback(self, pipe, step, timestep, callback_kwargs):
        self.step(step)
        return callback_kwargs


def count_loop_syncs(pipe, args, faces: int = 2) -> dict:
    """Host-device synchronisations inside the denoising loop, ours and the authors' model (CUDA only)."""
    images, counts = make_faces(faces, args.size), {}
    for name in ("ours", "authors_model"):
        watch = _LoopSyncWatch(args.steps)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if name == "ours":
                    run_ours(pipe, images, args, callback_on_step_end=watch.pipeline_callback)
                else:
                    run_authors(pipe, images, args, step_callback=lambda i, n, watch=watch: watch.step(i))
            finally:
                torch.cuda.set_sync_debug_mode(0)
        messages = [str(w.message).splitlines()[0] for w in caught if "called a synchronizing" in str(w.message)]
        counts[name] = {"syncs_in_steps_2_to_n": len(messages), "first": messages[:3]}
    return counts


def stage_breakdown(pipe, count: int, args) -> dict:
    """Seconds per stage of one call of ours (synchronised at stage boundaries only, never inside the loop)."""
    device = pipe._execution_device
    stages = ("preprocess_image", "encode_image", "prepare_image_latents", "encode_reference_states", "decode_latents")
    totals = dict.fromkeys(stages, 0.0)

    def timed(name, method):
        def wrapper(*a, **k):
            seconds, result = wall_time(lambda: method(*a, **k), device)
            totals[name] += seconds
            return result

        return wrapper

    faces = make_faces(count, args.size)
    for name in stages:
        setattr(pipe, name, timed(name, getattr(pipe, name)))
    try:
        total, _ = wall_time(lambda: run_ours(pipe, faces, args), device)
    finally:
        for name in stages:
            delattr(pipe, name)  # back to the class's methods
    totals["denoising_loop_and_rest"] = total - sum(totals.values())
    return {"faces": count, "total_seconds": total, "seconds": totals}


def vae_decode_precision(pipe, args, count: int = 4) -> dict:
    """The VAE decode in the pipeline's dtype against float32, on latents from a real call: the difference in
    [0, 1] pixel values, and the decode's time in each (also channels-last and with cuDNN's autotuner, on CUDA)."""
    device = pipe._execution_device
    latents = run_ours(pipe, make_faces(count, args.size), args, output_type="latent")
    scaled = latents / pipe.vae.config.scaling_factor
    vae32 = copy.deepcopy(pipe.vae).float()

    def decode(vae, dtype):
        with torch.no_grad():
            wall_time(lambda: vae.decode(scaled.to(dtype)).sample, device)  # warm-up
            return wall_time(lambda: vae.decode(scaled.to(dtype)).sample.float(), device)

    low_dtype = pipe.vae.dtype
    low_seconds, low = decode(pipe.vae, low_dtype)
    with exact_float32():
        high_seconds, high = decode(vae32, torch.float32)
    del vae32
    low01, high01 = (low / 2 + 0.5).clamp(0, 1), (high / 2 + 0.5).clamp(0, 1)
    result = {
        "faces": count,
        "max_abs_diff_01": (low01 - high01).abs().max().item(),
        "mean_abs_diff_01": (low01 - high01).abs().mean().item(),
        "finite": bool(torch.isfinite(low).all()),
        "decode_seconds_low": low_seconds,
        "decode_seconds_float32": high_seconds,
    }
    if device.type == "cuda":
        pipe.vae.to(memory_format=torch.channels_last)
        try:
            result["decode_seconds_low_channels_last"] = decode(pipe.vae, low_dtype)[0]
        finally:
            pipe.vae.to(memory_format=torch.contiguous_format)
        saved, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
        try:
            result["decode_seconds_low_cudnn_benchmark"] = decode(pipe.vae, low_dtype)[0]
        finally:
            torch.backends.cudnn.benchmark = saved
    return result


def eager_variants(pipe, args, shapes, count: int) -> dict:
    """Our UNet step on CUDA with each scaled-dot-product-attention backend and with channels-last convolutions:
    per-step time and the output's relative difference from the default (the same function, other kernels)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    inputs = step_inputs(pipe, count, args.size, shapes)
    default_output = unet_step(pipe.unet, inputs, install_ours(pipe.unet, inputs["states"])).float()
    variants = {
        "default": (contextlib.nullcontext, None),
        "cudnn_attention": (lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION), None),
        "flash_attention": (lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION), None),
        "efficient_attention": (lambda: sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION), None),
        "channels_last": (contextlib.nullcontext, torch.channels_last),
    }
    results = {"faces": count}
    for name, (context, memory_format) in variants.items():
        try:
            if memory_format is not None:
                pipe.unet.to(memory_format=memory_format)
            with context():
                output = unet_step(pipe.unet, inputs, install_ours(pipe.unet, inputs["states"])).float()
            timing = time_unet_steps(
                pipe, inputs, {name: install_ours}, args.warmup, args.rounds, args.repeats, context
            )
            results[name] = dict(timing[name], relative_difference=relative_error(output, default_output))
        except Exception as error:  # a backend this card or build lacks
            results[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        finally:
            if memory_format is not None:
                pipe.unet.to(memory_format=torch.contiguous_format)
    return results


def compiled_run(pipe, args, shapes, count: int) -> dict:
    """The UNet under `torch.compile(fullgraph=True)`: compile time, per-step time, end to end, recompiles. Leaves
    the UNet compiled (the last section of a run)."""
    from torch._dynamo.utils import counters

    device = pipe._execution_device
    faces = make_faces(count, args.size)
    eager = run_ours(pipe, faces, args, steps=2)
    pipe.unet.compile(fullgraph=True, mode=args.compile_mode, backend=args.compile_backend)
    graphs_before = counters["stats"]["unique_graphs"]
    compile_seconds, compiled = wall_time(lambda: run_ours(pipe, faces, args, steps=2), device)
    result = {
        "faces": count,
        "mode": args.compile_mode,
        "backend": args.compile_backend,
        "first_call_seconds": compile_seconds,
        "max_abs_diff_vs_eager": float(np.abs(compiled - eager).max()),
    }
    inputs = step_inputs(pipe, count, args.size, shapes)
    result["step"] = time_unet_steps(pipe, inputs, {"ours": install_ours}, args.warmup, args.rounds, args.repeats)[
        "ours"
    ]
    del inputs
    result["end_to_end"] = time_end_to_end(pipe, {"ours": run_ours}, count, args)["ours"]
    result["graphs_compiled"] = counters["stats"]["unique_graphs"] - graphs_before
    return result


# ----------------------------------------------------------------------------------------------------- main


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    import diffusers
    import transformers

    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "device_type": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["device_memory_gb"] = torch.cuda.get_device_properties(device).total_memory / 1e9
    else:
        try:
            with open("/proc/cpuinfo") as f:
                env["device"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return env


def print_table(results: dict) -> None:
    env = results["environment"]
    print(
        f"\n{env['device']} | {env['dtype']} | {results['config']['size']} px | {results['config']['steps']} steps | "
        f"torch {env['torch']} | diffusers {env['diffusers']}"
    )
    eq = results.get("attention_equivalence")
    if eq:
        print(
            f"attention: ours vs exact {eq['ours_vs_exact']:.2e}, reference vs exact {eq['reference_vs_exact']:.2e}, "
            f"ours vs reference {eq['ours_vs_reference']:.2e} -> {'same function' if eq['passed'] else 'DIFFERENT'}"
        )
    flops = results.get("flops_per_face_step")
    if flops:
        print(
            f"UNet step, one face with guidance: reference {flops['reference'] / 1e9:.1f} GFLOP, "
            f"ours {flops['ours'] / 1e9:.1f} GFLOP; matrix-product ceiling {results.get('matmul_tflops', 0):.0f} TFLOP/s"
        )
    steps = results.get("unet_step", {})
    e2e = {r["faces"]: r for r in results.get("end_to_end", {}).get("ours", [])}
    authors = {r["faces"]: r for r in results.get("end_to_end", {}).get("authors_model", [])}
    print(
        "| faces | UNet step, reference attention (ms) | UNet step, ours (ms) | ratio | "
        "authors' model s/face | ours s/face | ours faces/s | ours peak GB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for step in steps.values():
        faces = step["faces"]
        ours, a = e2e.get(faces), authors.get(faces)
        peak = ours and ours["peak_memory_gb"]
        print(
            f"| {faces} | {step['reference']['ms']:.1f} | {step['ours']['ms']:.1f} | {step['ratio']:.2f} | "
            f"{a['seconds_per_face'] if a else float('nan'):.3f} | {ours['seconds_per_face'] if ours else float('nan'):.3f} | "
            f"{ours['faces_per_second'] if ours else float('nan'):.2f} | {peak if peak else float('nan'):.1f} |"
        )
    for step in steps.values():
        if "cpu_ratio" in step:
            print(
                f"UNet step, {step['faces']} face(s), CPU time ({env['cpu_threads']} thread(s)): reference "
                f"{step['reference']['cpu_ms']:.1f} ms, ours {step['ours']['cpu_ms']:.1f} ms, ratio {step['cpu_ratio']:.2f}"
            )
    compiled = results.get("compiled")
    if compiled and "step" in compiled:
        c = compiled
        print(
            f"compiled ({c['faces']} faces): step {c['step']['ms']:.1f} ms, "
            f"{c['end_to_end']['faces_per_second']:.2f} faces/s, first call {c['first_call_seconds']:.0f} s, "
            f"graphs {c['graphs_compiled']}, max |compiled - eager| {c['max_abs_diff_vs_eager']:.1e}"
        )
    for name in ("loop_syncs", "stage_breakdown", "vae_decode", "eager_variants", "errors"):
        if results.get(name):
            print(f"{name}: {json.dumps(results[name])[:600]}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--small", action="store_true", help="tiny nets at 128 px for 2 CPU cores (default: SD 2.1 sizes)"
    )
    parser.add_argument("--dry-run", action="store_true", help="toy sizes, 2 steps: check every code path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=("float16", "bfloat16", "float32"), help="default: float16 on CUDA, else float32"
    )
    parser.add_argument("--faces", type=int, nargs="+", help="faces per call (default: the preset's)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    parser.add_argument(
        "--authors-faces", type=int, nargs="*", help="face counts for the authors' model (default: all)"
    )
    parser.add_argument("--compile", action="store_true", help="also time the UNet under torch.compile(fullgraph=True)")
    parser.add_argument("--compile-faces", type=int, help="faces for the compiled run (default: the largest)")
    parser.add_argument("--compile-mode", default=None)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's; 1 for --small on a busy machine)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--e2e-repeats", type=int, default=1)
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="sections to skip: equivalence steps e2e authors syncs breakdown vae variants",
    )
    parser.add_argument("--json", type=Path, help="write all results here (rewritten after every section)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    preset_name = "dry-run" if args.dry_run else "small" if args.small else "sd21"
    preset = PRESETS[preset_name]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    args.size, args.steps = preset["size"], args.steps or preset["steps"]
    faces_list = args.faces or list(preset["faces"])
    authors_faces = faces_list if args.authors_faces is None else args.authors_faces

    results = {
        "environment": environment(device, dtype),
        "config": {
            "preset": preset_name,
            "size": args.size,
            "steps": args.steps,
            "faces": faces_list,
            "anonymization_degree": 1.25,
            "guidance_scale": 4.0,
            "scheduler": "DDPMScheduler (SD 2.1 config)",
        },
        "errors": {},
    }

    def save():
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))

    @contextlib.contextmanager
    def section(name):
        start = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            yield
        except Exception:  # keep going: one broken section must not lose the others' numbers
            results["errors"][name] = traceback.format_exc()[-3000:]
            print(results["errors"][name], flush=True)
        print(f"[{time.strftime('%H:%M:%S')}] {name} done in {time.perf_counter() - start:.1f} s", flush=True)
        save()

    seconds, pipe = wall_time(lambda: build_pipeline(preset, device, dtype), device)
    results["build_seconds"] = seconds
    shapes = state_shapes(pipe, args.size)
    results["state_shapes"] = shapes
    print(f"built in {seconds:.1f} s; states {shapes}", flush=True)

    if "equivalence" not in args.skip:
        with section("equivalence"):
            results["attention_equivalence"] = check_attention_equivalence(pipe, args.size, shapes)

    if "steps" not in args.skip:
        with section("flops"):
            results["flops_per_face_step"] = step_flops(pipe, args.size, shapes)
            if device.type == "cuda":
                results["matmul_tflops"] = matmul_tflops(device, dtype)
        results["unet_step"] = {}
        for faces in faces_list:
            with section(f"steps[{faces}]"):
                inputs = step_inputs(pipe, faces, args.size, shapes)
                variants = {"reference": install_reference, "ours": install_ours}
                timing = dict(faces=faces, unet_batch=2 * faces)
                timing.update(time_unet_steps(pipe, inputs, variants, args.warmup, args.rounds, args.repeats))
                timing["ratio"] = timing["ours"]["ms"] / timing["reference"]["ms"]
                if device.type == "cpu":
                    timing["cpu_ratio"] = timing["ours"]["cpu_ms"] / timing["reference"]["cpu_ms"]
                for name in ("reference", "ours"):
                    flops = results.get("flops_per_face_step", {}).get(name)
                    if flops:
                        timing[name]["tflops_per_s"] = faces * flops / (timing[name]["ms"] / 1e3) / 1e12
                results["unet_step"][str(faces)] = timing
                del inputs

    if "e2e" not in args.skip:
        results["end_to_end"] = {"ours": [], "authors_model": []}
        for faces in faces_list:
            with section(f"e2e[{faces}]"):
                runs = {"ours": run_ours}
                if "authors" not in args.skip and faces in authors_faces:
                    runs["authors_model"] = run_authors
                for name, result in time_end_to_end(pipe, runs, faces, args).items():
                    results["end_to_end"][name].append(result)

    if device.type == "cuda" and "syncs" not in args.skip:
        with section("syncs"):
            results["loop_syncs"] = count_loop_syncs(pipe, args)

    if "breakdown" not in args.skip:
        with section("breakdown"):
            results["stage_breakdown"] = stage_breakdown(pipe, max(faces_list), args)

    if dtype != torch.float32 and "vae" not in args.skip:
        with section("vae"):
            results["vae_decode"] = vae_decode_precision(pipe, args, count=min(4, max(faces_list)))

    if (device.type == "cuda" or args.dry_run) and "variants" not in args.skip:
        with section("variants"):
            results["eager_variants"] = eager_variants(pipe, args, shapes, max(faces_list))

    if args.compile:
        with section("compile"):
            results["compiled"] = compiled_run(pipe, args, shapes, args.compile_faces or max(faces_list))

    if not results["errors"]:
        del results["errors"]
    save()
    print_table(results)
    return results


if __name__ == "__main__":
    sys.exit(1 if main().get("errors") else 0)  # a failed section fails the run (CI runs `--dry-run`)
