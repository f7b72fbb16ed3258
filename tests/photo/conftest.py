"""Fixtures of the whole-photo tests (the tiny model fixtures come from ``tests/conftest.py``)."""

import numpy as np
import pytest

from .photo_helpers import SCENE, SCENE_SIZE, compose


@pytest.fixture(scope="session")
def detector():
    from face_anon.detection import CenterFaceDetector

    return CenterFaceDetector()


@pytest.fixture(scope="session")
def scene() -> np.ndarray:
    """The test photo: the astronaut's face pasted seven times (see ``photo_helpers.SCENE``)."""
    image = compose(*SCENE_SIZE, SCENE)
    image.setflags(write=False)
    return image


@pytest.fixture(scope="session")
def scene_faces(detector, scene):
    from face_anon import AnonymizeOptions, find_faces

    return find_faces(scene, detector, AnonymizeOptions())
