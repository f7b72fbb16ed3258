"""Matching and deciding, as pure functions: the band fails towards privacy, tracks decide once."""

import numpy as np
import pytest

from face_anon.detection import Face
from face_anon.identity import (
    IdentitySelector,
    Reference,
    ReferenceGallery,
    Verdict,
    decide_track,
    keeps,
    match_embeddings,
    verdict_for,
)


def _gallery(*vectors, names=None):
    names = names or [f"ref{i}.jpg" for i in range(len(vectors))]
    return ReferenceGallery(tuple(Reference(name=n, embedding=np.asarray(v, float)) for n, v in zip(names, vectors)))


def _at(distance, dimension=4):
    """A vector at ``distance`` from the origin (the reference of ``_gallery(ORIGIN)``)."""
    vector = np.zeros(dimension)
    vector[0] = distance
    return vector


ORIGIN = np.zeros(4)


@pytest.mark.parametrize(
    ("distance", "verdict"),
    [
        (0.0, Verdict.SAME),
        (0.549, Verdict.SAME),
        (0.55, Verdict.UNCERTAIN),  # the band's edges decide nothing
        (0.6, Verdict.UNCERTAIN),
        (0.65, Verdict.UNCERTAIN),
        (0.651, Verdict.DIFFERENT),
        (2.0, Verdict.DIFFERENT),
    ],
)
def test_the_band_around_the_threshold_is_uncertain(distance, verdict):
    assert verdict_for(distance, threshold=0.6, band=0.05) is verdict


def test_without_a_band_only_the_threshold_itself_is_uncertain():
    assert verdict_for(0.5999, threshold=0.6, band=0.0) is Verdict.SAME
    assert verdict_for(0.6, threshold=0.6, band=0.0) is Verdict.UNCERTAIN
    assert verdict_for(0.6001, threshold=0.6, band=0.0) is Verdict.DIFFERENT


@pytest.mark.parametrize(
    ("verdict", "keep_mode", "only_mode"),
    [(Verdict.SAME, True, False), (Verdict.DIFFERENT, False, True), (Verdict.UNCERTAIN, False, False)],
)
def test_only_a_certain_verdict_keeps_a_face(verdict, keep_mode, only_mode):
    (match,) = match_embeddings(
        _at({"same": 0.1, "different": 1.0, "uncertain": 0.6}[verdict.value])[None], _gallery(ORIGIN), threshold=0.6
    )
    assert match.verdict is verdict
    assert keeps(match, "keep") is keep_mode
    assert keeps(match, "only") is only_mode


def test_the_nearest_reference_is_reported_with_its_distance():
    gallery = _gallery(ORIGIN, _at(1.0), names=["alice.jpg", "bob.jpg"])
    matches = match_embeddings(np.stack([_at(0.9), _at(0.2), _at(3.0)]), gallery, threshold=0.6)
    assert [m.nearest for m in matches] == ["bob.jpg", "alice.jpg", "bob.jpg"]
    np.testing.assert_allclose([m.distance for m in matches], [0.1, 0.2, 2.0])
    assert [m.matched_reference for m in matches] == ["bob.jpg", "alice.jpg", None]
    assert "matches bob.jpg" in matches[0].note and "matches no reference" in matches[2].note


def test_a_face_too_small_to_identify_is_uncertain_even_at_distance_zero():
    matches = match_embeddings(
        np.stack([ORIGIN, ORIGIN]), _gallery(ORIGIN), threshold=0.6, eye_distances=[10.0, 30.0], min_eye_distance=16
    )
    assert [m.verdict for m in matches] == [Verdict.UNCERTAIN, Verdict.SAME]
    assert "too small" in matches[0].note


def test_bad_matching_settings_are_refused():
    with pytest.raises(ValueError, match="band"):
        match_embeddings(ORIGIN[None], _gallery(ORIGIN), threshold=0.6, band=0.7)
    with pytest.raises(ValueError, match="threshold"):
        match_embeddings(ORIGIN[None], _gallery(ORIGIN), threshold=0.0)
    with pytest.raises(ValueError, match="mode"):
        keeps(match_embeddings(ORIGIN[None], _gallery(ORIGIN), threshold=0.6)[0], "skip")
    with pytest.raises(ValueError, match="references"):
        ReferenceGallery(())


# ------------------------------------------------------------------------------------------------ tracks


def test_a_track_is_decided_once_from_its_median_embedding():
    # 7 frames of the reference person, 3 blurred frames far off: the median still is the person.
    frames = np.stack([_at(0.1)] * 7 + [_at(1.5)] * 3)
    decision = decide_track(frames, _gallery(ORIGIN), mode="keep", threshold=0.6)
    assert decision.keep and decision.matched_reference == "ref0.jpg"
    assert decision.distance == pytest.approx(0.1)
    # Per frame, 3 of the 10 frames would have been anonymized: the flicker a track decision prevents.
    per_frame = [keeps(m, "keep") for m in match_embeddings(frames, _gallery(ORIGIN), threshold=0.6)]
    assert per_frame.count(False) == 3


def test_a_track_near_the_threshold_is_anonymized_in_both_modes():
    frames = np.stack([_at(0.58), _at(0.62), _at(0.6)])
    for mode in ("keep", "only"):
        decision = decide_track(frames, _gallery(ORIGIN), mode=mode, threshold=0.6)
        assert not decision.keep and decision.reason.startswith("uncertain")


def test_small_frames_are_left_out_of_a_tracks_median():
    frames = np.stack([_at(2.0), _at(2.0), _at(0.1)])
    decision = decide_track(frames, _gallery(ORIGIN), threshold=0.6, eye_distances=[5.0, 6.0, 40.0])
    assert decision.keep  # only the large frame counts
    none_large = decide_track(frames, _gallery(ORIGIN), threshold=0.6, eye_distances=[5.0, 6.0, 7.0])
    assert not none_large.keep and "no frame" in none_large.reason


# ------------------------------------------------------------------------------------------------ the hook


class _BoxEmbedder:
    """A stand-in embedder: a face's embedding is looked up by its box's left edge."""

    name = "fake"
    threshold = 0.6

    def __init__(self, by_left):
        self.by_left = by_left

    def embed(self, image, faces):
        out = []
        for face in faces:
            value = self.by_left[face.box[0]]
            if value is None:
                raise RuntimeError("cannot embed")
            out.append(value)
        return np.stack(out)


def _face(left, eye_distance=40.0):
    landmarks = ((left + 10, 50), (left + 10 + eye_distance, 50), (left + 30, 70), (left + 15, 90), (left + 45, 90))
    return Face((left, 20.0, left + 60.0, 110.0), 0.9, tuple((float(x), float(y)) for x, y in landmarks))


IMAGE = np.zeros((200, 400, 3), np.uint8)


def test_the_hook_keeps_reference_people_and_anonymizes_the_uncertain():
    faces = [_face(0.0), _face(100.0), _face(200.0), _face(300.0, eye_distance=8.0)]
    embedder = _BoxEmbedder({0.0: _at(0.1), 100.0: _at(1.2), 200.0: _at(0.6), 300.0: _at(0.0)})
    keep = IdentitySelector(embedder=embedder, gallery=_gallery(ORIGIN, names=["alice.jpg"]), mode="keep")
    decisions = keep(IMAGE, faces)
    assert [d.keep for d in decisions] == [True, False, False, False]
    assert decisions[0].matched_reference == "alice.jpg" and decisions[0].distance == pytest.approx(0.1)
    assert decisions[1].matched_reference is None and decisions[1].distance == pytest.approx(1.2)
    assert decisions[2].reason.startswith("uncertain") and decisions[3].reason.startswith("uncertain")

    only = IdentitySelector(embedder=embedder, gallery=_gallery(ORIGIN, names=["alice.jpg"]), mode="only")
    assert [d.keep for d in only(IMAGE, faces)] == [False, True, False, False]


def test_keep_faces_by_index_and_out_of_range_indices():
    faces = [_face(0.0), _face(100.0)]
    selector = IdentitySelector(keep_faces=[1])
    decisions = selector(IMAGE, faces)
    assert [d.keep for d in decisions] == [False, True]
    assert "index" in decisions[1].reason
    with pytest.raises(ValueError, match="keep_faces"):
        IdentitySelector(keep_faces=[2])(IMAGE, faces)
    with pytest.raises(ValueError, match="keep_faces"):
        IdentitySelector(keep_faces=[-1])


def test_a_face_that_cannot_be_embedded_is_anonymized():
    faces = [_face(0.0), _face(100.0)]
    embedder = _BoxEmbedder({0.0: _at(0.1), 100.0: None})
    decisions = IdentitySelector(embedder=embedder, gallery=_gallery(ORIGIN), mode="only")(IMAGE, faces)
    assert [d.keep for d in decisions] == [False, False]
    assert "could not be embedded" in decisions[1].reason


def test_without_references_or_indices_every_face_is_replaced():
    decisions = IdentitySelector()(IMAGE, [_face(0.0), _face(100.0)])
    assert [d.keep for d in decisions] == [False, False]
