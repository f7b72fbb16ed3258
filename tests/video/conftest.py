"""Fixtures of the video tests (the tiny model fixtures come from ``tests/conftest.py``)."""

import pytest


@pytest.fixture(scope="session")
def detector():
    from face_anon.detection import CenterFaceDetector

    return CenterFaceDetector()
