"""The diffusion model as a face replacer, and loading it once on the device and in the dtype asked for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image

from ..errors import InputError
from .base import ACTIONS


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


class DiffusionAnonymizer:
    """The face model as a replacer: one pipeline call per batch (per face on the CPU), one seeded generator
    per face.

    Each face gets ``torch.Generator().manual_seed(seed)`` with its own seed. On the CPU the pipeline
    runs one face per call: the float rounding of CPU kernels depends on how many images share a call,
    so this makes a face's pixels the same whatever the batch (command line at any ``--batch-size``,
    Ray, video), given the same torch thread count. On a GPU a batch is one call (the faster way); a
    different batch can then move a value by rounding (on the CPU: about one value in 3000, one level).
    A crop with an identity source is swapped (the pipeline's ``source_image``, which needs
    ``anonymization_degree=0``); a crop without one is anonymized with ``anonymization_degree``, which
    must then be above 0 (0 would give the face its own identity back). A result that is one flat
    colour (what NaNs in half precision decode to) counts as a failure (None).

    Args:
        pipeline: a loaded ``FaceAnonPipeline`` (or anything called the same way).
        anonymization_degree: how far each identity moves (the authors use 1.25 for whole photos).
        num_inference_steps: denoising steps (the authors use 25 for whole photos).
        guidance_scale: classifier-free guidance scale (the authors use 4.0).
        crop_size: side of the crops; default the pipeline's own image size (512 for the published model).
        one_face_per_call: run the pipeline once per face (batch-independent pixels); default: on the CPU.
    """

    action = ACTIONS["anonymize"]

    def __init__(
        self,
        pipeline: Any,
        *,
        anonymization_degree: float = 1.25,
        num_inference_steps: int = 25,
        guidance_scale: float = 4.0,
        crop_size: int | None = None,
        one_face_per_call: bool | None = None,
    ) -> None:
        if pipeline is None:
            raise InputError("pipeline", None, "a loaded FaceAnonPipeline for mode 'anonymize'")
        if crop_size is None:
            crop_size = int(pipeline.default_image_size)
        self.pipeline = pipeline
        self.anonymization_degree = float(anonymization_degree)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.crop_size = int(crop_size)
        self.one_face_per_call = one_face_per_call

    def __call__(
        self,
        crops: Sequence[np.ndarray],
        seeds: Sequence[int],
        sources: Sequence[np.ndarray | None] | None = None,
    ) -> list[np.ndarray | None]:
        if len(seeds) != len(crops):
            raise InputError("seeds", f"{len(seeds)} seeds", f"one per crop ({len(crops)})")
        if sources is not None and len(sources) != len(crops):
            raise InputError("sources", f"{len(sources)} sources", f"one per crop ({len(crops)}) or None")
        sources = [None] * len(crops) if sources is None else list(sources)
        swaps = [i for i, source in enumerate(sources) if source is not None]
        plain = [i for i, source in enumerate(sources) if source is None]
        if plain and self.anonymization_degree == 0:
            raise InputError(
                "anonymization_degree", 0.0, "a degree above 0 for a face without an identity source (0 keeps it)"
            )
        results: list[np.ndarray | None] = [None] * len(crops)
        for indices, swap in ((plain, False), (swaps, True)):
            if not indices:
                continue
            outputs = self._generate(
                [crops[i] for i in indices],
                [seeds[i] for i in indices],
                [sources[i] for i in indices] if swap else None,
            )
            for i, output in zip(indices, outputs):
                results[i] = output
        return results

    def _one_face_per_call(self) -> bool:
        if self.one_face_per_call is not None:
            return bool(self.one_face_per_call)
        device = getattr(self.pipeline, "device", None)  # a stand-in without one is called as it is
        return getattr(device, "type", None) == "cpu"

    def _generate(self, crops, seeds, sources) -> list[np.ndarray | None]:
        if len(crops) > 1 and self._one_face_per_call():
            return [
                output
                for i in range(len(crops))
                for output in self._generate(
                    crops[i : i + 1], seeds[i : i + 1], None if sources is None else sources[i : i + 1]
                )
            ]
        import torch

        kwargs = {}
        if sources is not None:
            kwargs["source_image"] = [PIL.Image.fromarray(np.asarray(source)).convert("RGB") for source in sources]
        output = self.pipeline(
            image=[PIL.Image.fromarray(crop) for crop in crops],
            anonymization_degree=0.0 if sources is not None else self.anonymization_degree,
            guidance_scale=self.guidance_scale,
            num_inference_steps=self.num_inference_steps,
            height=self.crop_size,
            width=self.crop_size,
            generator=[torch.Generator().manual_seed(int(seed)) for seed in seeds],
            output_type="pil",
            **kwargs,
        )
        if len(output.images) != len(crops):
            raise RuntimeError(f"the pipeline returned {len(output.images)} images for {len(crops)} faces")
        results: list[np.ndarray | None] = []
        for image in output.images:
            if image.size != (self.crop_size, self.crop_size):
                image = image.resize((self.crop_size, self.crop_size), PIL.Image.LANCZOS)
            array = np.asarray(image.convert("RGB"))
            results.append(None if float(array.std()) < 1.0 else array)
        return results
