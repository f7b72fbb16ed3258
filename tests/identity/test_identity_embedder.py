"""dlib's face embeddings on our own landmarks: the same person matches under everyday changes, different
people do not, and the chip is cut where dlib's own alignment cuts it."""

import subprocess
import sys

import numpy as np
import pytest

from face_anon.geometry.alignment import transform_points
from face_anon.identity import DlibFaceEmbedder, IdentityModelsMissing, dlib_chip_alignment, eye_distance
from face_anon.identity.embedders import DLIB_CHIP_TEMPLATE, similarity_transform

from . import identity_helpers as people


# Same person, slightly changed photo: dlib puts these well under its 0.6 threshold (we measured 0.04-0.22).
SAME_PERSON_LIMIT = 0.35

CHANGES = {
    "half size": lambda image: people.resized(image, 0.5),
    "1.5x size": lambda image: people.resized(image, 1.5),
    "turned 10 degrees": lambda image: people.rotated(image, 10.0),
    "JPEG quality 30": lambda image: people.jpeg(image, 30),
}


@pytest.mark.parametrize("person", ["astronaut", "hopper"])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_same_face_matches_itself_after_everyday_changes(person, change, find, embedder, people_embeddings):
    image = CHANGES[change](getattr(people, person)())
    faces = find(image)
    assert len(faces) == 1
    distance = float(np.linalg.norm(embedder.embed(image, faces)[0] - people_embeddings[person]))
    assert distance < SAME_PERSON_LIMIT, (person, change, distance)


def test_different_people_do_not_match(people_embeddings, embedder):
    names = sorted(people_embeddings)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            distance = float(np.linalg.norm(people_embeddings[first] - people_embeddings[second]))
            assert distance > embedder.threshold, (first, second, distance)


def test_embeddings_are_128_numbers_and_repeatable(find, embedder):
    image = people.astronaut()
    faces = find(image)
    first = embedder.embed(image, faces)
    assert first.shape == (1, 128) and first.dtype == np.float64 and np.all(np.isfinite(first))
    np.testing.assert_array_equal(first, embedder.embed(image, faces))
    assert embedder.embed(image, []).shape == (0, 128)


def test_several_faces_of_one_photo_embed_as_each_alone(find, embedder):
    photo = people.side_by_side(people.astronaut(), people.cameraman())
    faces = find(photo)
    assert len(faces) == 2
    together = embedder.embed(photo, faces)
    for face, row in zip(faces, together):
        np.testing.assert_allclose(embedder.embed(photo, [face])[0], row, atol=1e-6)


def test_the_chip_puts_our_landmarks_on_the_template(find):
    face = find(people.hopper())[0]
    alignment = dlib_chip_alignment(face.landmark_array)
    assert alignment.size == 150
    placed = transform_points(alignment.matrix, face.landmark_array)
    # A least-squares fit of a real face: within a few chip pixels of the template, eyes closest.
    assert np.abs(placed - DLIB_CHIP_TEMPLATE).max() < 6.0
    assert np.abs(placed[:2] - DLIB_CHIP_TEMPLATE[:2]).max() < 3.0


def test_our_chip_agrees_with_dlibs_own_alignment(find, embedder, people_embeddings):
    """The dlib 5-point path cuts the chip exactly as the model was trained; ours must land close to it."""
    dlib5 = DlibFaceEmbedder(alignment="dlib5")
    for person in ("astronaut", "hopper"):
        image = getattr(people, person)()
        distance = float(np.linalg.norm(dlib5.embed(image, find(image))[0] - people_embeddings[person]))
        assert distance < 0.25, (person, distance)


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = np.radians(23.0), 1.7, np.array([12.0, -4.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = source @ rotation.T + shift
    matrix = similarity_transform(source, target)
    np.testing.assert_allclose(matrix[:, :2], rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)
    with pytest.raises(ValueError, match="landmarks"):
        similarity_transform(np.ones((5, 2)), target)


def test_eye_distance_is_the_distance_between_the_eye_landmarks(find):
    face = find(people.astronaut())[0]
    points = face.landmark_array
    assert eye_distance(face) == pytest.approx(float(np.hypot(*(points[1] - points[0]))))
    assert 40 < eye_distance(face) < 50  # the astronaut's pupils are about 45 px apart


def test_missing_model_files_say_what_to_install(tmp_path):
    with pytest.raises(IdentityModelsMissing, match=r"face-anon\[identity\]"):
        DlibFaceEmbedder(model_dir=tmp_path)


def test_a_bad_alignment_name_is_refused():
    with pytest.raises(ValueError, match="alignment: got 'mtcnn'"):
        DlibFaceEmbedder(alignment="mtcnn")


def test_the_model_files_are_found_without_importing_their_package():
    """face_recognition_models' __init__ needs pkg_resources (gone from current setuptools): never import it."""
    code = (
        "import sys; from face_anon.identity.embedders import dlib_model_dir; "
        "folder = dlib_model_dir(); "
        "assert 'face_recognition_models' not in sys.modules; "
        "print(sorted(p.name for p in folder.iterdir() if p.suffix == '.dat'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "dlib_face_recognition_resnet_model_v1.dat" in out
