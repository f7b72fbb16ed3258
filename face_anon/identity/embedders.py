"""Face identity embeddings, behind a small interface like the detector's.

An embedder turns each face of an image (a :class:`~face_anon.detection.Face` with its five
landmarks) into a vector; two faces are the same person when the Euclidean distance between their
vectors is below the embedder's ``threshold``. The default is dlib's ResNet face recognition model
(``dlib_face_recognition_resnet_model_v1.dat``, public domain, 128-d, 99.38% on LFW, same person
below 0.6), read from the ``face-recognition-models`` package and run with ``dlib`` (the ``dlib-bin``
wheels). Both are the ``identity`` extra: ``pip install 'face-anon[identity]'``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..detection import Face
from ..errors import FaceAnonError, InputError
from ..geometry.alignment import Alignment, crop_face


INSTALL_HINT = "pip install 'face-anon[identity]'"

# dlib's model files used here, both public domain. The package's 68-point landmark model is never
# loaded: its training data (iBUG 300-W) forbids commercial use.
RESNET_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_MODEL_5 = "shape_predictor_5_face_landmarks.dat"

# The chip the ResNet was trained on: dlib's ``get_face_chip(image, shape, size=150, padding=0.25)``.
DLIB_CHIP_SIZE = 150
DLIB_CHIP_PADDING = 0.25
# Where our detector's five landmarks (LANDMARK_NAMES order) sit in that chip, in chip pixels: the
# mean over 17 faces of CenterFace's refined landmarks mapped through dlib's own chip transform (its
# 5-point model on the same faces), averaged with its mirror image so the template is symmetric about
# the chip's centre line. ``benchmarks/benchmark_identity.py --calibrate`` measures it.
DLIB_CHIP_TEMPLATE = np.array(
    [[47.14, 46.28], [101.86, 46.28], [74.50, 79.43], [51.87, 103.89], [97.13, 103.89]], dtype=np.float64
)
CHIP_ALIGNMENTS = ("landmarks", "dlib5")


class IdentityModelsMissing(FaceAnonError, ImportError):
    """dlib or the ``face-recognition-models`` files are not installed; the message says what to install."""


class FaceEmbedder(Protocol):
    """What the rest of the package needs from a face embedder.

    ``threshold`` is the Euclidean distance between two embeddings below which they are taken for the
    same person; ``name`` identifies the model in reports.
    """

    name: str
    threshold: float

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """One embedding per face of an RGB ``uint8`` array of shape (H, W, 3): float64, shape (N, D)."""
        ...


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity (rotation, uniform scale, shift; no reflection) that maps ``source`` points
    onto ``target`` points with the least squared error; both of shape (N, 2), N >= 2.

    In complex numbers the transform is ``w = a z + b``; the least-squares ``a`` is the ratio of the
    centred cross- and auto-covariances, ``b`` then matches the means.
    """
    z = np.asarray(source, dtype=np.float64) @ np.array([1.0, 1.0j])
    w = np.asarray(target, dtype=np.float64) @ np.array([1.0, 1.0j])
    z_mean, w_mean = z.mean(), w.mean()
    spread = np.sum(np.abs(z - z_mean) ** 2)
    if spread < 1e-12:
        raise InputError("landmarks", detail="all points coincide; cannot align this face")
    a = np.sum((w - w_mean) * np.conj(z - z_mean)) / spread
    b = w_mean - a * z_mean
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def dlib_chip_alignment(landmarks: np.ndarray) -> Alignment:
    """The :class:`Alignment` that cuts a face out as dlib's 150-pixel chip, from our five landmarks.

    Fits our landmarks to :data:`DLIB_CHIP_TEMPLATE` by a least-squares similarity, so no second
    detector or landmark model is needed.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.all(np.isfinite(points)):
        raise InputError("landmarks", f"an array of shape {points.shape}", "five finite (x, y) points")
    return Alignment(matrix=similarity_transform(points, DLIB_CHIP_TEMPLATE), size=DLIB_CHIP_SIZE)


def dlib_model_dir() -> Path:
    """The ``models`` folder of the installed ``face-recognition-models`` package.

    Found with ``importlib.util.find_spec``, without importing the package (its ``__init__`` needs
    ``pkg_resources``, which current setuptools no longer has). Raises :class:`IdentityModelsMissing`.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise IdentityModelsMissing(f"face identity needs the face-recognition-models package ({INSTALL_HINT})")
    for location in spec.submodule_search_locations:
        folder = Path(location) / "models"
        if (folder / RESNET_MODEL).is_file():
            return folder
    raise IdentityModelsMissing(
        f"face-recognition-models is installed but has no models/{RESNET_MODEL}; reinstall it ({INSTALL_HINT})"
    )


def _import_dlib():
    try:
        import dlib
    except ImportError as error:
        raise IdentityModelsMissing(f"face identity needs dlib, from the dlib-bin wheels ({INSTALL_HINT})") from error
    return dlib


class DlibFaceEmbedder:
    """dlib's ResNet face recognition model (128-d; same person below distance 0.6).

    Args:
        alignment: how each face is cut into the model's 150-pixel chip. ``landmarks`` (default) fits
            the detector's five landmarks to dlib's chip layout (:func:`dlib_chip_alignment`);
            ``dlib5`` runs dlib's 5-point landmark model inside the detector's box and lets dlib cut
            the chip itself, exactly as the model was trained (a fallback, for landmarks of another
            detector). A face's two embeddings differ by 0.17 on average, up to 0.37 for a turned face
            (benchmarks/README.md): compare faces embedded with the same alignment.
        model_dir: a folder with the two ``.dat`` files; default: the ``face-recognition-models`` package.

    Raises :class:`IdentityModelsMissing` when dlib or the model files are not installed.
    """

    name = "dlib_resnet_v1"
    threshold = 0.6
    dimension = 128

    def __init__(self, *, alignment: str = "landmarks", model_dir: str | Path | None = None) -> None:
        if alignment not in CHIP_ALIGNMENTS:
            raise InputError("alignment", alignment, f"one of {', '.join(CHIP_ALIGNMENTS)}")
        dlib = _import_dlib()
        folder = Path(model_dir) if model_dir is not None else dlib_model_dir()
        for file in (RESNET_MODEL, SHAPE_MODEL_5) if alignment == "dlib5" else (RESNET_MODEL,):
            if not (folder / file).is_file():
                raise IdentityModelsMissing(f"model_dir: {str(folder)!r} has no {file} ({INSTALL_HINT})")
        self.alignment = alignment
        self.model_dir = model_dir
        self._dlib = dlib
        self._model = dlib.face_recognition_model_v1(str(folder / RESNET_MODEL))
        self._shapes = dlib.shape_predictor(str(folder / SHAPE_MODEL_5)) if alignment == "dlib5" else None

    def __getstate__(self) -> dict:
        """Pickled as its arguments (dlib's models do not pickle): a copy sent to another process, such
        as a Ray worker, loads the models there, from the same ``model_dir`` (default: that process's
        ``face-recognition-models``)."""
        return {"alignment": self.alignment, "model_dir": self.model_dir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def chips(self, image: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """Each face cut out as the model's 150 x 150 RGB chip (parts outside the image reflected)."""
        _check_image(image)
        if self._shapes is None:
            return [np.ascontiguousarray(crop_face(image, dlib_chip_alignment(face.landmark_array))) for face in faces]
        dlib = self._dlib
        chips = []
        for face in faces:
            x0, y0, x1, y1 = (int(round(v)) for v in face.box)
            shape = self._shapes(image, dlib.rectangle(x0, y0, x1, y1))
            chips.append(np.asarray(dlib.get_face_chip(image, shape, DLIB_CHIP_SIZE, DLIB_CHIP_PADDING)))
        return chips

    def embed_chips(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings of aligned 150 x 150 RGB uint8 chips: float64, shape (N, 128)."""
        for number, chip in enumerate(chips):
            if chip.shape != (DLIB_CHIP_SIZE, DLIB_CHIP_SIZE, 3) or chip.dtype != np.uint8:
                raise InputError(
                    f"chips[{number}]", f"shape {chip.shape}, dtype {chip.dtype}", "150 x 150 x 3 uint8 chips"
                )
        if not chips:
            return np.zeros((0, self.dimension), dtype=np.float64)
        vectors = self._model.compute_face_descriptor([np.ascontiguousarray(chip) for chip in chips])
        return np.asarray([np.asarray(vector) for vector in vectors], dtype=np.float64)

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """One 128-d embedding per face of an RGB ``uint8`` array of shape (H, W, 3)."""
        return self.embed_chips(self.chips(image, faces))


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise InputError("image", f"an array of shape {shape}", "an RGB uint8 array of shape (H, W, 3)")


EMBEDDER_NAMES = ("dlib",)


def load_embedder(name: str = "dlib", **kwargs) -> FaceEmbedder:
    """A face embedder by name (``dlib``: :class:`DlibFaceEmbedder`, keyword arguments passed on)."""
    if name == "dlib":
        return DlibFaceEmbedder(**kwargs)
    raise InputError("embedder", name, f"one of {', '.join(EMBEDDER_NAMES)}")


def embed_each(embedder: FaceEmbedder, image: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray | None]:
    """One embedding per face, or None for a face the embedder cannot handle (degenerate landmarks, say).

    All faces go to the embedder at once; only if that fails, face by face, so one bad face costs its
    own embedding and never the others'. Callers treat None as "identity unknown".
    """
    if not faces:
        return []
    try:
        return list(embedder.embed(image, faces))
    except Exception:  # noqa: BLE001 - an unknown identity is a result here, not a failure
        out: list[np.ndarray | None] = []
        for face in faces:
            try:
                out.append(embedder.embed(image, [face])[0])
            except Exception:  # noqa: BLE001
                out.append(None)
        return out


def eye_distance(face: Face) -> float:
    """Distance in pixels between the face's two eye landmarks (how much identity detail it holds)."""
    points = face.landmark_array
    return float(np.hypot(*(points[1] - points[0])))
