"""Fixtures of the training tests (offline settings and thread count come from ``tests/conftest.py``)."""

import sys
from pathlib import Path

import pytest


# `train_face_anon.py` and `face_anon_training/` sit at the repository root, which is not installed.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from .training_helpers import build_base_model, write_triplets  # noqa: E402


@pytest.fixture(scope="session")
def base_model(tmp_path_factory):
    """`(sd, clip)`: the tiny base model folders, built once per session."""
    return build_base_model(tmp_path_factory.mktemp("base-model"))


@pytest.fixture(scope="session")
def train_data_dir(tmp_path_factory):
    """Three triplets of 40 x 40 photos (resized to 32 by training)."""
    return write_triplets(tmp_path_factory.mktemp("triplets"))
