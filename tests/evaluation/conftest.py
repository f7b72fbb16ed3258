"""Fixtures of the evaluation tests: photo sets made from the test people, and their anonymized versions."""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from identity import identity_helpers as people

from .evaluation_helpers import DETECTOR_THRESHOLD, PHOTOS, anonymize_folder


@pytest.fixture(scope="session")
def detector():
    """The detector ``face-anon-evaluate --threshold 0.5`` uses (the anonymized sets are made with it too)."""
    from face_anon.detection import load_detector

    return load_detector(threshold=DETECTOR_THRESHOLD)


@pytest.fixture(scope="session")
def embedder():
    from face_anon.identity import DlibFaceEmbedder

    return DlibFaceEmbedder()


@pytest.fixture(scope="session")
def originals(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("originals")
    for name, build in PHOTOS.items():
        people.save(build(), folder / name)
    return folder


@pytest.fixture(scope="session")
def controls(originals, detector, tmp_path_factory) -> dict[str, Path]:
    """The calibration controls: an unchanged copy, blurred faces and black boxes."""
    from face_anon.orchestration.options import AnonymizeOptions

    out = {}
    copy = tmp_path_factory.mktemp("copy")
    for name in PHOTOS:
        people.save(np.asarray(PIL.Image.open(originals / name)), copy / name)
    out["copy"] = copy
    for mode in ("blur", "black"):
        out[mode] = anonymize_folder(originals, tmp_path_factory.mktemp(mode), detector, AnonymizeOptions(mode=mode))
    return out
