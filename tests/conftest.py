"""Shared test set-up: offline, tiny models built once per session from the reference fixture (builders in
`helpers.py`; tests import from there, never from this file)."""

from pathlib import Path

import pytest
import torch
from helpers import FIXTURE_DIR, build_tiny_pipeline

from pipeline_face_anon import FaceAnonPipeline


# The models are tiny: one thread is as fast, and does not fight the subprocesses some tests start.
torch.set_num_threads(1)


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
