"""Test photos of real, different people that ship with the test dependencies (no network, no files).

- the astronaut Eileen Collins: ``skimage.data.astronaut()`` (NASA, public domain);
- the cameraman: ``skimage.data.camera()`` (grey; upscaled 2x so his face is large enough to identify);
- Grace Hopper: ``grace_hopper.jpg`` in matplotlib's sample data (US Navy photo, public domain).
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import PIL.Image


def _frozen(image: np.ndarray) -> np.ndarray:
    image = np.ascontiguousarray(image)
    image.setflags(write=False)
    return image


@lru_cache(maxsize=1)
def astronaut() -> np.ndarray:
    import skimage.data

    return _frozen(skimage.data.astronaut())


@lru_cache(maxsize=1)
def cameraman() -> np.ndarray:
    """The cameraman's head and shoulders, 2x, as RGB: 512 x 512, his face near the centre."""
    import skimage.data

    grey = cv2.resize(skimage.data.camera(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    return _frozen(np.repeat(grey[100:612, 200:712, None], 3, axis=2))


@lru_cache(maxsize=1)
def hopper() -> np.ndarray:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return _frozen(np.asarray(PIL.Image.open(path).convert("RGB")))


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """Images (all 512 rows or cut to them) next to each other: one photo with several people."""
    height = min(image.shape[0] for image in images)
    return _frozen(np.concatenate([image[:height] for image in images], axis=1))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` after a round trip through JPEG at ``quality``."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(PIL.Image.open(buffer).convert("RGB"))


def resized(image: np.ndarray, scale: float) -> np.ndarray:
    height, width = image.shape[:2]
    size = (round(width * scale), round(height * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def background(width: int, height: int) -> np.ndarray:
    """A smooth gradient: a photo without a face."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([40 + 150 * x / width, 80 + 100 * y / height, np.full_like(x, 120)], axis=2).astype(np.uint8)


def save(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(image).save(path)
    return path


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """An H.264 clip of RGB frames (near-lossless, CRF 12)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "12"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
