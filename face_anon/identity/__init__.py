"""Face identity, offline: embeddings, reference people, and who is kept or anonymized.

- :mod:`.embedders`: the :class:`FaceEmbedder` protocol and dlib's ResNet model (``DlibFaceEmbedder``).
- :mod:`.matching`: pure functions from embeddings to verdicts (``same``, ``different``, ``uncertain``).
- :mod:`.selection`: reference photos in (``load_references``), one decision per face out
  (``IdentitySelector``, the photo stages' selection hook) or per video track (``decide_track``).

Needs the ``identity`` extra (``pip install 'face-anon[identity]'``): dlib from the ``dlib-bin``
wheels and the model files of ``face-recognition-models``.
"""

from .embedders import (
    EMBEDDER_NAMES,
    DlibFaceEmbedder,
    FaceEmbedder,
    IdentityModelsMissing,
    dlib_chip_alignment,
    embed_each,
    eye_distance,
    load_embedder,
)
from .matching import (
    DEFAULT_UNCERTAINTY_BAND,
    MIN_EYE_DISTANCE,
    SELECTION_MODES,
    IdentityMatch,
    Reference,
    ReferenceGallery,
    Verdict,
    keeps,
    match_embeddings,
    track_embedding,
    verdict_for,
)
from .selection import MAX_TRACK_SAMPLES, IdentitySelector, decide_track, decision_for, load_references, make_selector


__all__ = [
    "DEFAULT_UNCERTAINTY_BAND",
    "EMBEDDER_NAMES",
    "MAX_TRACK_SAMPLES",
    "MIN_EYE_DISTANCE",
    "SELECTION_MODES",
    "DlibFaceEmbedder",
    "FaceEmbedder",
    "IdentityMatch",
    "IdentityModelsMissing",
    "IdentitySelector",
    "Reference",
    "ReferenceGallery",
    "Verdict",
    "decide_track",
    "decision_for",
    "dlib_chip_alignment",
    "embed_each",
    "eye_distance",
    "keeps",
    "load_embedder",
    "load_references",
    "make_selector",
    "match_embeddings",
    "track_embedding",
    "verdict_for",
]
