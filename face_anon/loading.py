"""Loading the face model once, on the device and in the dtype asked for."""

from __future__ import annotations

from typing import Any

DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``mps`` on Apple silicon, else ``cpu``."""
    import torch

    if device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"device: got {device!r}, expected auto, cpu, cuda, cuda:N or mps ({error})") from error
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str = "auto", device: str = "cpu"):
    """``auto`` -> float16 on a GPU, float32 on the CPU (half precision is slow or missing there)."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype: got {dtype!r}, expected one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    return getattr(torch, dtype)


def load_pipeline(model: str | None = None, device: str = "auto", dtype: str = "auto") -> Any:
    """The face model as a ``FaceAnonPipeline``, ready to call.

    Args:
        model: a converted repository id or folder (``DiffusionPipeline.from_pretrained`` with the
            pipeline's remote code), or None to assemble the authors' published weights
            (``FaceAnonPipeline.from_original``: face model, Stable Diffusion 2.1 VAE/scheduler, CLIP).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if model is None:
        from pipeline_face_anon import FaceAnonPipeline

        pipeline = FaceAnonPipeline.from_original(torch_dtype=torch_dtype)  # the authors' three repositories
    else:
        from diffusers import DiffusionPipeline

        pipeline = DiffusionPipeline.from_pretrained(model, trust_remote_code=True, dtype=torch_dtype)
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)  # the command line shows one bar over photos instead
    return pipeline
