"""Reference photos: exactly one identifiable face each, or an error naming the photo."""

import numpy as np
import pytest

from face_anon.identity import load_references

from . import identity_helpers as people


def test_one_reference_per_photo_named_by_its_path(tmp_path, detector, embedder, people_embeddings):
    paths = [
        people.save(people.jpeg(people.astronaut(), 60), tmp_path / "alice.jpg"),
        people.save(people.hopper(), tmp_path / "grace.png"),
    ]
    gallery = load_references(paths, detector=detector, embedder=embedder)
    assert gallery.names == [str(p) for p in paths]
    assert np.linalg.norm(gallery.matrix[0] - people_embeddings["astronaut"]) < 0.35
    assert np.linalg.norm(gallery.matrix[1] - people_embeddings["hopper"]) < 1e-6


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: people.background(300, 200), "no face found"),
        (lambda: people.side_by_side(people.astronaut(), people.cameraman()), "2 faces found"),
        (lambda: people.resized(people.astronaut(), 0.25), "too small to identify"),
    ],
    ids=["no face", "two faces", "tiny face"],
)
def test_a_reference_photo_must_show_one_identifiable_face(tmp_path, detector, embedder, build, message):
    path = people.save(build(), tmp_path / "reference.png")
    with pytest.raises(ValueError, match=message) as error:
        load_references([path], detector=detector, embedder=embedder, argument="--keep")
    assert str(error.value).startswith("--keep: ") and str(path) in str(error.value)


def test_an_unreadable_reference_photo_is_named(tmp_path, detector, embedder):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not a photo")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_references([path], detector=detector, embedder=embedder, argument="--only")
