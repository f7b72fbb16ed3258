"""Shared test set-up: offline, tiny models built once per session from the reference fixture."""

import json
import os
from pathlib import Path


# Tests never reach the Hub; set before diffusers/transformers read their settings.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import DDIMScheduler  # noqa: E402

from pipeline_face_anon import FaceAnonPipeline  # noqa: E402


# The models are tiny: one thread is as fast, and does not fight the subprocesses some tests start.
torch.set_num_threads(1)


FIXTURE_DIR = Path(__file__).parent / "fixtures" / "reference_tiny"
MANIFEST = json.loads((FIXTURE_DIR / "manifest.json").read_text())
# Cases with a deterministic expected output (the DDPM case is a smoke run of the reference only).
CASES = [case for case in MANIFEST["cases"] if case.get("expected_output")]


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


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def tiny_pipeline() -> FaceAnonPipeline:
    """Shared across the session: tests must not change its components (build their own to do so)."""
    return build_tiny_pipeline()


@pytest.fixture
def fresh_pipeline() -> FaceAnonPipeline:
    """A pipeline of its own, for tests that swap schedulers, dtypes or processors."""
    return build_tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_pipeline, tmp_path_factory) -> Path:
    """The tiny pipeline saved as a Hub-style folder (`DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`)."""
    path = tmp_path_factory.mktemp("tiny-face-anon")
    tiny_pipeline.save_pretrained(path)
    return path
