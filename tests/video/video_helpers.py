"""Test clips built with PyAV: faces (the astronaut's, pasted), a sine audio track, tags, rotation, VFR.

Every clip is made in the test from ``skimage.data.astronaut()`` and generated sound, so the video
tests need no files outside the repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from photo.photo_helpers import Placement, compose


AUDIO_RATE = 16000
LOCATION = "+48.8584+002.2945/"
GPS_PAYLOAD = b"GPS 48.8584 2.2945"


@dataclass(frozen=True)
class Clip:
    """What a test clip holds: its upright frames, their pts (in ``time_base``) and its streams."""

    path: Path
    frames: list[np.ndarray]
    pts: list[int]
    time_base: Fraction
    rotation: int


def write_clip(
    path: Path,
    frames: Sequence[np.ndarray],
    *,
    pts: Sequence[int] | None = None,
    time_base: Fraction = Fraction(1, 30),
    rotation: int = 0,
    audio: bool = False,
    location: bool = False,
    data_stream: bool = False,
    codec: str = "libx264",
    options: dict | None = None,
    pixel_format: str = "yuv420p",
) -> Clip:
    """Encode upright ``frames`` (RGB uint8) into ``path``; stored turned back by ``rotation`` degrees.

    ``options`` default to lossless H.264 (qp 0), so the input itself adds no noise.
    """
    pts = list(range(len(frames))) if pts is None else list(pts)
    k = rotation // 90
    height, width = np.rot90(frames[0], -k).shape[:2]
    fmt = {".mkv": "matroska", ".webm": "webm", ".avi": "avi", ".mov": "mov"}.get(path.suffix, "mp4")
    container_options = {"movflags": "use_metadata_tags"} if fmt in ("mp4", "mov") else {}
    with av.open(str(path), "w", format=fmt, container_options=container_options) as out:
        if location:
            out.metadata["location"] = LOCATION
            out.metadata["creation_time"] = "2024-05-01T12:00:00Z"
            out.metadata["comment"] = "recorded by Jane Doe"
        video = out.add_stream(codec, rate=round(1 / time_base) if time_base.numerator == 1 else 30)
        video.width, video.height, video.pix_fmt = width, height, pixel_format
        video.time_base = time_base
        video.codec_context.time_base = time_base
        video.codec_context.options = options if options is not None else {"qp": "0"}
        if rotation:
            video.set_display_rotation(rotation)
        sound = None
        if audio:
            sound = out.add_stream("aac" if fmt != "webm" else "libopus", rate=AUDIO_RATE if fmt != "webm" else 48000)
            sound.layout = "mono"
        data = out.add_data_stream("bin_data") if data_stream else None
        for i, (image, stamp) in enumerate(zip(frames, pts)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(image, -k)), format="rgb24")
            frame.pts, frame.time_base = stamp, time_base
            out.mux(video.encode(frame))
            if data is not None:
                packet = av.Packet(GPS_PAYLOAD + b" %d" % i)
                packet.stream, packet.time_base = data, time_base
                packet.pts = packet.dts = stamp
                out.mux(packet)
        out.mux(video.encode(None))
        if sound is not None:
            rate = sound.codec_context.sample_rate
            seconds = float((pts[-1] + 1) * time_base)
            t = np.arange(int(rate * seconds)) / rate
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            chunk = 1024
            for start in range(0, samples.shape[1], chunk):
                piece = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, start : start + chunk]), format="fltp", layout="mono"
                )
                piece.sample_rate, piece.pts = rate, start
                out.mux(sound.encode(piece))
            out.mux(sound.encode(None))
    return Clip(path, [np.asarray(f) for f in frames], pts, time_base, rotation)


def decode_frames(path: Path, *, upright: bool = True) -> tuple[list[np.ndarray], list[Fraction], int]:
    """Every frame of ``path``'s video as RGB (turned upright by its display rotation), its time in
    seconds (exact fraction) and the rotation; an independent reading of the output for the tests."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        images, times, rotation = [], [], 0
        for frame in container.decode(stream):
            rotation = int(round(frame.rotation / 90)) * 90 % 360
            image = frame.to_ndarray(format="rgb24")
            images.append(np.rot90(image, rotation // 90) if upright else image)
            times.append(frame.pts * frame.time_base)
    return images, times, rotation


def audio_packets(path: Path) -> list[bytes]:
    """The bytes of every audio packet of ``path``, in order."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return []
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def moving_scene(count: int, size: tuple[int, int] = (320, 240)) -> tuple[list[np.ndarray], list[list[Placement]]]:
    """A face moving right and growing, and from frame ``count // 2`` a second face entering."""
    width, height = size
    frames, placements = [], []
    for i in range(count):
        t = i / max(count - 1, 1)
        scene = [Placement((90 + 70 * t, 120 + 10 * t), 0.55 + 0.25 * t)]
        if i >= count // 2:
            scene.append(Placement((width - 55, 80), 0.45))
        placements.append(scene)
        frames.append(compose(width, height, scene, seed=0))
    return frames, placements
