"""Fixtures of the identity tests: the detector, the dlib embedder and the faces of the test people."""

import pytest

from . import identity_helpers as people


@pytest.fixture(scope="session")
def detector():
    from face_anon.detection import CenterFaceDetector

    return CenterFaceDetector()


@pytest.fixture(scope="session")
def embedder():
    from face_anon.identity import DlibFaceEmbedder

    return DlibFaceEmbedder()


@pytest.fixture(scope="session")
def find(detector):
    """Faces of an image as ``face-anon`` finds them (refined landmarks)."""
    from face_anon.orchestration.options import AnonymizeOptions
    from face_anon.orchestration.stages import find_faces

    return lambda image: find_faces(image, detector, AnonymizeOptions())


@pytest.fixture(scope="session")
def people_embeddings(find, embedder):
    """name -> the embedding of the one face of each test person's photo."""
    out = {}
    for name, image in (
        ("astronaut", people.astronaut()),
        ("cameraman", people.cameraman()),
        ("hopper", people.hopper()),
    ):
        faces = find(image)
        assert len(faces) == 1, (name, faces)
        out[name] = embedder.embed(image, faces)[0]
    return out
