"""Choosing who is anonymized: reference photos in, one keep-or-replace decision per face out.

:class:`IdentitySelector` is a selection hook for the photo stages (``FaceSelector``): given an
image and its faces it returns one ``FaceDecision`` per face. :func:`decide_track` makes the same
decision once for a whole video track, from the median of its embeddings, so a person does not
flicker between kept and anonymized.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from ..detection import Face, FaceDetector
from ..errors import ImageLoadError, InputError
from ..io.images import DEFAULT_MAX_PIXELS, load_image
from ..orchestration.options import AnonymizeOptions
from ..orchestration.stages import REPLACE, FaceDecision, find_faces
from .embedders import FaceEmbedder, embed_each, eye_distance
from .matching import (
    DEFAULT_UNCERTAINTY_BAND,
    MIN_EYE_DISTANCE,
    SELECTION_MODES,
    IdentityMatch,
    Reference,
    ReferenceGallery,
    check_matching,
    keeps,
    match_embeddings,
    track_embedding,
)


# Frames of a video track embedded for its decision (evenly spaced): the median settles well before.
MAX_TRACK_SAMPLES = 16


def load_references(
    paths: Sequence[str | os.PathLike],
    *,
    detector: FaceDetector,
    embedder: FaceEmbedder,
    options: AnonymizeOptions = AnonymizeOptions(),
    argument: str = "references",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_eye_distance: float = MIN_EYE_DISTANCE,
) -> ReferenceGallery:
    """One reference person per photo: each photo must show exactly one face, large enough to identify.

    Faces are found as for anonymizing (``find_faces`` with ``options``). Raises :class:`InputError`
    naming ``argument`` and the photo when it cannot be read, shows no face, several faces, or a face
    too small to identify, so a run stops before any work instead of keeping the wrong person.
    """
    if not paths:
        raise InputError(argument, detail="no reference photo given")
    references = []
    for path in paths:
        try:
            loaded = load_image(path, max_pixels=max_pixels)
        except ImageLoadError as error:
            raise InputError(argument, detail=f"{str(path)!r}: {error}") from error
        faces = find_faces(loaded.rgb, detector, options)
        if not faces:
            raise InputError(argument, detail=f"{str(path)!r}: no face found; a reference photo shows one person")
        if len(faces) > 1:
            boxes = "; ".join(f"box {[round(v) for v in face.box]} score {face.score:.2f}" for face in faces)
            raise InputError(
                argument,
                detail=f"{str(path)!r}: {len(faces)} faces found ({boxes}); a reference photo shows one person, "
                "crop it to that face",
            )
        if eye_distance(faces[0]) < min_eye_distance:
            raise InputError(
                argument,
                detail=f"{str(path)!r}: the face is too small to identify (eye distance "
                f"{eye_distance(faces[0]):.0f} px, at least {min_eye_distance:g} needed)",
            )
        embedding = embedder.embed(loaded.rgb, faces)[0]
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        references.append(Reference(name=str(path), embedding=embedding, sha256=digest))
    return ReferenceGallery(tuple(references))


def decision_for(match: IdentityMatch, mode: str) -> FaceDecision:
    """The ``FaceDecision`` a match gives in ``mode`` (``keep`` or ``only``), with its reason for the report."""
    return FaceDecision(
        keep=keeps(match, mode),
        reason=match.note,
        matched_reference=match.matched_reference,
        distance=match.distance,
    )


class IdentitySelector:
    """A selection hook: keep faces by identity (reference people) and by index.

    Args:
        embedder: the face embedder (needed only with ``gallery``).
        gallery: the reference people; None selects by index alone.
        mode: ``keep`` (the reference people stay, everyone else is anonymized) or ``only`` (only the
            reference people are anonymized).
        threshold: same-person distance; default the embedder's.
        band: faces within this distance of the threshold are ``uncertain`` and anonymized.
        keep_faces: face indices (``find_faces`` order, as in the report) kept whatever their identity.
        min_eye_distance: smaller faces are ``uncertain`` (anonymized), see ``match_embeddings``.

    A face whose embedding fails is anonymized (its reason says why); an index in ``keep_faces``
    beyond the image's faces raises :class:`InputError`, which fails that image.
    """

    def __init__(
        self,
        *,
        embedder: FaceEmbedder | None = None,
        gallery: ReferenceGallery | None = None,
        mode: str = "keep",
        threshold: float | None = None,
        band: float = DEFAULT_UNCERTAINTY_BAND,
        keep_faces: Collection[int] = (),
        min_eye_distance: float = MIN_EYE_DISTANCE,
    ) -> None:
        if mode not in SELECTION_MODES:
            raise InputError("mode", mode, f"one of {', '.join(SELECTION_MODES)}")
        if gallery is not None and embedder is None:
            raise InputError("embedder", None, "a face embedder when a reference gallery is given")
        if threshold is None:
            threshold = embedder.threshold if embedder is not None else 0.6
        check_matching(threshold, band)
        indices = sorted(set(keep_faces))
        if any(not isinstance(i, (int, np.integer)) or isinstance(i, bool) or i < 0 for i in indices):
            raise InputError("keep_faces", list(keep_faces), "face indices >= 0")
        self.embedder = embedder
        self.gallery = gallery
        self.mode = mode
        self.threshold = float(threshold)
        self.band = float(band)
        self.keep_faces = tuple(int(i) for i in indices)
        self.min_eye_distance = float(min_eye_distance)

    def matches(self, image: np.ndarray, faces: Sequence[Face]) -> list[IdentityMatch | None]:
        """Each face compared with the gallery (None without a gallery)."""
        if self.gallery is None:
            return [None] * len(faces)
        embeddings = embed_each(self.embedder, image, faces)
        found = [i for i, e in enumerate(embeddings) if e is not None]
        matches: list[IdentityMatch | None] = [None] * len(faces)
        if found:
            computed = match_embeddings(
                np.stack([embeddings[i] for i in found]),
                self.gallery,
                threshold=self.threshold,
                band=self.band,
                eye_distances=[eye_distance(faces[i]) for i in found],
                min_eye_distance=self.min_eye_distance,
            )
            for i, match in zip(found, computed):
                matches[i] = match
        return matches

    @property
    def settings(self) -> dict:
        """What decides which faces are kept, as plain JSON for the run's journal: a resumed run
        redoes outputs made with other references, mode, threshold, band or indices."""
        references = None if self.gallery is None else [r.sha256 or r.name for r in self.gallery.references]
        return {
            "selection": {
                "mode": self.mode if self.gallery is not None else None,
                "references": references,
                "embedder": None if self.embedder is None else self.embedder.name,
                "threshold": self.threshold,
                "band": self.band,
                "min_eye_distance": self.min_eye_distance,
                "keep_faces": list(self.keep_faces),
            }
        }

    def track(self, track_id: int, samples: Sequence[tuple[np.ndarray, Face]]) -> FaceDecision:
        """The video hook (``TrackSelector``): one decision for a whole track, from the median embedding
        of up to ``MAX_TRACK_SAMPLES`` of its ``(frame, face)`` samples (see :func:`decide_track`).

        ``keep_faces`` does not apply to videos (face indices change from frame to frame).
        """
        if self.gallery is None:
            return REPLACE
        step = max(1, -(-len(samples) // MAX_TRACK_SAMPLES))
        embedded = [(image, face, embed_each(self.embedder, image, [face])[0]) for image, face in samples[::step]]
        embedded = [(face, vector) for _, face, vector in embedded if vector is not None]
        if not embedded:
            return FaceDecision(keep=False, reason=f"uncertain: no face of track {track_id} could be embedded")
        return decide_track(
            np.stack([vector for _, vector in embedded]),
            self.gallery,
            mode=self.mode,
            threshold=self.threshold,
            band=self.band,
            eye_distances=[eye_distance(face) for face, _ in embedded],
            min_eye_distance=self.min_eye_distance,
        )

    def __call__(self, image: np.ndarray, faces: Sequence[Face]) -> list[FaceDecision]:
        beyond = [i for i in self.keep_faces if i >= len(faces)]
        if beyond:
            raise InputError(
                "keep_faces", beyond, f"indices of this image's faces (it has {len(faces)}: 0..{len(faces) - 1})"
            )
        decisions = []
        for index, match in enumerate(self.matches(image, faces)):
            if index in self.keep_faces:
                decision = FaceDecision(keep=True, reason=f"face {index} chosen by index (keep_faces)")
                if match is not None:
                    decision = FaceDecision(
                        keep=True,
                        reason=decision.reason,
                        matched_reference=match.matched_reference,
                        distance=match.distance,
                    )
            elif self.gallery is None:
                decision = REPLACE
            elif match is None:
                decision = FaceDecision(keep=False, reason="uncertain: the face could not be embedded")
            else:
                decision = decision_for(match, self.mode)
            decisions.append(decision)
        return decisions


def make_selector(
    *,
    keep: Sequence[str | os.PathLike] = (),
    only: Sequence[str | os.PathLike] = (),
    keep_faces: Collection[int] = (),
    detector: FaceDetector,
    options: AnonymizeOptions = AnonymizeOptions(),
    embedder: FaceEmbedder | None = None,
    threshold: float | None = None,
    band: float = DEFAULT_UNCERTAINTY_BAND,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> IdentitySelector | None:
    """The selector for "keep these people" (``keep``) or "only these people" (``only``) reference
    photos, and/or face indices to keep; None when nothing is selected (every face is anonymized).

    Loads the embedder (dlib, unless one is given) only when there are reference photos, and the
    references themselves before any work: a bad reference photo raises :class:`InputError` naming
    ``--keep`` or ``--only`` and the photo; a missing dlib raises ``IdentityModelsMissing``.
    """
    if keep and only:
        raise InputError("--only", detail="--keep and --only cannot be combined; give one of them")
    paths, mode, argument = (keep, "keep", "--keep") if keep else (only, "only", "--only")
    if not paths and not keep_faces:
        return None
    gallery = None
    if paths:
        if embedder is None:
            from .embedders import IdentityModelsMissing, load_embedder

            try:
                embedder = load_embedder()
            except IdentityModelsMissing as error:
                raise IdentityModelsMissing(f"{argument}: {error}") from error
        gallery = load_references(
            paths, detector=detector, embedder=embedder, options=options, argument=argument, max_pixels=max_pixels
        )
    return IdentitySelector(
        embedder=embedder, gallery=gallery, mode=mode, threshold=threshold, band=band, keep_faces=keep_faces
    )


def decide_track(
    embeddings: np.ndarray,
    gallery: ReferenceGallery,
    *,
    mode: str = "keep",
    threshold: float = 0.6,
    band: float = DEFAULT_UNCERTAINTY_BAND,
    eye_distances: Sequence[float] | None = None,
    min_eye_distance: float = MIN_EYE_DISTANCE,
) -> FaceDecision:
    """One decision for a whole video track, from the median of its frames' embeddings (T, D).

    Frames whose face is smaller than ``min_eye_distance`` (``eye_distances``, one per frame) are
    left out of the median; a track with no frame large enough is ``uncertain`` and anonymized.
    Apply the decision to every frame of the track, so its person is kept or anonymized throughout.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if eye_distances is not None:
        if len(eye_distances) != len(embeddings):
            raise InputError("eye_distances", len(eye_distances), f"one per frame ({len(embeddings)})")
        embeddings = embeddings[np.asarray(eye_distances, dtype=np.float64) >= min_eye_distance]
        if len(embeddings) == 0:
            note = f"uncertain: no frame of the track is large enough to identify (eye distance < {min_eye_distance:g})"
            return FaceDecision(keep=False, reason=note)
    (match,) = match_embeddings(track_embedding(embeddings)[None, :], gallery, threshold=threshold, band=band)
    return decision_for(match, mode)


__all__ = [
    "MAX_TRACK_SAMPLES",
    "IdentitySelector",
    "decide_track",
    "decision_for",
    "load_references",
    "make_selector",
]
