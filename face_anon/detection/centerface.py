"""Face detection with five landmarks, behind a small interface.

The default detector is CenterFace (Star-Clouds, MIT licence), shipped in this package as
``weights/centerface.onnx`` and run with onnxruntime, so detection works offline right after
``pip install``. Any object with a matching ``detect`` method can stand in for it.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Sequence

import cv2
import numpy as np

from .base import LANDMARK_NAMES, Face, FaceDetector


def default_centerface_path():
    """The CenterFace model file shipped inside this package (a Traversable, usable with ``as_file``)."""
    return importlib.resources.files("face_anon").joinpath("weights", "centerface.onnx")


class CenterFaceDetector:
    """CenterFace run with onnxruntime.

    The network sees the image at most ``max_side`` pixels on its long side (larger images are
    downscaled for detection only; coordinates are mapped back), padded at the bottom and right to a
    multiple of 32 as its stride requires. At every cell of its stride-4 output grid it predicts a face
    centre probability (``heatmap``), log box height and width (``scale``), the sub-cell centre offset
    (``offset``) and five landmarks as fractions of the box (``landmarks``, y then x per point).

    Args:
        model_path: an ONNX file with that layout; default: the one shipped with the package.
        threshold: minimum heatmap score for a face. Low (0.3) because misses cost more than false
            alarms in privacy work; the scores behind it are in ``benchmarks/README.md``, "Detection limits".
        nms_threshold: boxes overlapping a better one by more than this IoU are dropped.
        max_side: long side, in pixels, of the image the network sees.
        providers: onnxruntime execution providers; default CPU (detection is cheap next to diffusion).
        num_threads: onnxruntime intra-op threads; 0 lets onnxruntime choose.

    ``eye_scale``: FFHQ's eye distance over CenterFace's for the same face (CenterFace marks the
    pupils, FFHQ averaged eyelid points, which sit closer together); the alignment multiplies the
    detected eye distance by it. How 0.92 was measured: ``benchmarks/README.md``, "Detection limits".
    """

    eye_scale = 0.92

    def __init__(
        self,
        model_path: str | None = None,
        *,
        threshold: float = 0.3,
        nms_threshold: float = 0.3,
        max_side: int = 1920,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        num_threads: int = 0,
    ) -> None:
        import onnxruntime

        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold: got {threshold!r}, expected a number between 0 and 1 (exclusive)")
        if not 0.0 < nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold: got {nms_threshold!r}, expected a number in (0, 1]")
        if int(max_side) < 32:
            raise ValueError(f"max_side: got {max_side!r}, expected an integer of at least 32")
        self.threshold = float(threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_side = int(max_side)

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only; the session itself is quiet
        options.intra_op_num_threads = int(num_threads)
        if model_path is None:
            with importlib.resources.as_file(default_centerface_path()) as path:
                self._session = onnxruntime.InferenceSession(str(path), options, providers=list(providers))
        else:
            self._session = onnxruntime.InferenceSession(str(model_path), options, providers=list(providers))
        self._input_name = self._session.get_inputs()[0].name

    def detect(self, image: np.ndarray) -> list[Face]:
        """Find faces in an RGB ``uint8`` array of shape (H, W, 3); best score first."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image: got an array of shape {image.shape} and dtype {image.dtype}, "
                "expected an RGB uint8 array of shape (H, W, 3)"
            )
        height, width = image.shape[:2]
        batch, scale = self._prepare(image)
        heatmap, log_size, offset, landmarks = self._session.run(None, {self._input_name: batch})
        return self._decode(heatmap[0, 0], log_size[0], offset[0], landmarks[0], scale, width, height)

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Downscale to ``max_side`` if needed, pad to a multiple of 32, return NCHW float32 and the scale."""
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        net_h = math.ceil(image.shape[0] / 32) * 32
        net_w = math.ceil(image.shape[1] / 32) * 32
        batch = np.zeros((1, 3, net_h, net_w), dtype=np.float32)
        batch[0, :, : image.shape[0], : image.shape[1]] = image.transpose(2, 0, 1)
        return batch, scale

    def _decode(
        self,
        heatmap: np.ndarray,
        log_size: np.ndarray,
        offset: np.ndarray,
        landmarks: np.ndarray,
        scale: float,
        width: int,
        height: int,
    ) -> list[Face]:
        """Turn the network's output maps into faces in the original image's pixel coordinates."""
        rows, cols = np.nonzero(heatmap > self.threshold)
        if rows.size == 0:
            return []
        scores = heatmap[rows, cols]
        box_h = np.exp(log_size[0, rows, cols]) * 4.0
        box_w = np.exp(log_size[1, rows, cols]) * 4.0
        centre_y = (rows + offset[0, rows, cols] + 0.5) * 4.0
        centre_x = (cols + offset[1, rows, cols] + 0.5) * 4.0
        top = centre_y - box_h / 2
        left = centre_x - box_w / 2
        # Landmarks are fractions of the (unclipped) box: channel 2k is y of point k, 2k + 1 is x.
        points_y = landmarks[0::2, rows, cols].T * box_h[:, None] + top[:, None]
        points_x = landmarks[1::2, rows, cols].T * box_w[:, None] + left[:, None]

        keep = cv2.dnn.NMSBoxes(
            np.stack([left, top, box_w, box_h], axis=1).astype(np.float32).tolist(),
            scores.astype(np.float32).tolist(),
            self.threshold,
            self.nms_threshold,
        )
        keep = sorted(np.asarray(keep, dtype=np.int64).reshape(-1).tolist(), key=lambda i: -scores[i])
        faces = []
        for i in keep:
            x0 = min(max(left[i] / scale, 0.0), width)
            y0 = min(max(top[i] / scale, 0.0), height)
            x1 = min(max((left[i] + box_w[i]) / scale, 0.0), width)
            y1 = min(max((top[i] + box_h[i]) / scale, 0.0), height)
            points = tuple((float(x / scale), float(y / scale)) for x, y in zip(points_x[i], points_y[i]))
            faces.append(Face((float(x0), float(y0), float(x1), float(y1)), float(scores[i]), points))
        return faces


__all__ = ["LANDMARK_NAMES", "CenterFaceDetector", "Face", "FaceDetector", "default_centerface_path"]
