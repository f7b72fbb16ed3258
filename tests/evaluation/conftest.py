"""Fixtures of the evaluation tests: photo sets made from the test people, and their anonymized versions."""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from identity import identity_helpers as people


PHOTOS = {
    "astronaut.png": people.astronaut,
    "cameraman.png": people.cameraman,
    "people/hopper.png": people.hopper,  # pairs by relative path below the folders
}


@pytest.fixture(scope="session")
def detector():
    from face_anon.detection import CenterFaceDetector

    return CenterFaceDetector()


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


def anonymize_folder(originals: Path, folder: Path, detector, options, pipeline=None) -> Path:
    """Every photo of ``originals`` through ``anonymize_photos``, written below ``folder`` (PNG, lossless)."""
    from face_anon.orchestration.photo import anonymize_photos

    for name in PHOTOS:
        image = np.asarray(PIL.Image.open(originals / name).convert("RGB"))
        (result,) = anonymize_photos([image], detector=detector, pipeline=pipeline, options=options)
        assert result.image is not None, result.error
        people.save(np.asarray(result.image), folder / name)
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
