"""Builders shared by the model tests: the reference fixture's cases, tiny pipelines, and an independent manual
denoising loop to compare the pipeline with. Offline: imported first (by `conftest.py`), it sets the offline flags
before diffusers and transformers read them."""

import os


# Tests never reach the Hub; set before diffusers/transformers read their settings.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
from diffusers import DDIMScheduler  # noqa: E402

from pipeline_face_anon import FaceAnonPipeline  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from authors_model import authors_denoising  # noqa: E402


FIXTURE_DIR = Path(__file__).parent / "fixtures" / "reference_tiny"
MANIFEST = json.loads((FIXTURE_DIR / "manifest.json").read_text())
# Cases with a deterministic expected output (the DDPM case is a smoke run of the reference only).
CASES = [case for case in MANIFEST["cases"] if case.get("expected_output")]
ATOL = MANIFEST["tolerances_suggestion"]["expected_outputs_abs"]


def load_input(name: str) -> PIL.Image.Image:
    return PIL.Image.open(FIXTURE_DIR / "inputs" / f"{name}.png").convert("RGB")


def load_expected(relative_path: str) -> np.ndarray:
    return np.load(FIXTURE_DIR / relative_path)


def case_call_kwargs(case: dict) -> dict:
    """A fixture case as a call in this pipeline's spelling (`image=`, `source_image=` only for swaps)."""
    spec = case["case_spec"]

    def images(names):
        return [load_input(n) for n in names] if isinstance(names, list) else load_input(names)

    kwargs = {
        "image": images(spec["conditioning"]),
        "anonymization_degree": spec["anonymization_degree"],
        "guidance_scale": spec["guidance_scale"],
        "num_inference_steps": spec["num_inference_steps"],
        "height": spec["size"],
        "width": spec["size"],
        "output_type": "np",
    }
    if spec["anonymization_degree"] == 0:
        kwargs["source_image"] = images(spec["source"])
    return kwargs


def case_latents(case: dict) -> torch.Tensor:
    return torch.from_numpy(load_expected(case["init_latents"]["file"]))


def build_tiny_pipeline() -> FaceAnonPipeline:
    """The fixture's original-layout checkpoints in our pipeline, with the manifest's DDIM scheduler."""
    pipe = FaceAnonPipeline.from_original(FIXTURE_DIR / "face_model", FIXTURE_DIR / "sd", FIXTURE_DIR / "clip")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def relative_files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in Path(folder).rglob("*") if path.is_file())


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def env_without_this_checkout(**extra: str) -> dict[str, str]:
    """The environment for a fresh interpreter that must not import this checkout's modules from `PYTHONPATH` (the
    installed package still provides them, as for any user who installed face-anon)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(extra)
    return env


@torch.no_grad()
def manual_anonymization(
    pipe: FaceAnonPipeline,
    image: PIL.Image.Image,
    scheduler,
    *,
    num_inference_steps: int,
    size: int,
    generator: torch.Generator,
    anonymization_degree: float = 1.25,
    guidance_scale: float = 4.0,
) -> torch.Tensor:
    """Anonymization with guidance as the reference implementation computes it, on `pipe`'s networks and a
    `scheduler` of its own: the final latents. Independent of the pipeline's loop, its batching and its attention:
    the encoders are called here, and the ReferenceNets and the loop are `benchmarks/authors_model.py`'s (both
    ReferenceNets at the doubled batch; queries, keys and values for all 3N tokens at every step).

    Draws from `generator` in the pipeline's documented order: initial noise, VAE posterior noise, step noise.
    """
    scheduler.set_timesteps(num_inference_steps)
    latent_size = size // pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, latent_size, latent_size)
    latents = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma

    pixels = pipe.preprocess_image(image, size, size, "image")
    clip_pixels = pipe.feature_extractor(images=pixels, do_rescale=False, return_tensors="pt").pixel_values
    embedding = pipe.image_encoder(clip_pixels).pooler_output[:, None]  # [1, 1, dim]
    encoded = pipe.vae.encode(2 * pixels - 1)
    if hasattr(encoded, "latent_dist"):
        posterior = encoded.latent_dist
        face = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    else:
        face = encoded.latents
    return authors_denoising(
        pipe,
        latents,
        face * pipe.vae.config.scaling_factor,
        embedding,
        scheduler,
        anonymization_degree=anonymization_degree,
        guidance_scale=guidance_scale,
        generator=generator,
    )
