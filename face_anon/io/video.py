"""Reading and writing videos with PyAV: upright frames in, the same timeline out, nothing else leaked.

What a video loop needs from a file, and what it must keep:

- :class:`VideoReader` decodes the first real video stream (cover art is not one) and yields, in file
  order, :class:`DecodedFrame` objects (an upright 8-bit RGB array plus the frame in the output's pixel
  format, in its stored orientation) and the audio packets to copy (:class:`PassthroughPacket`).
  Anything it cannot read completely (empty, truncated, undecodable) raises :class:`VideoLoadError`.
- :class:`VideoWriter` writes H.264 (VP9 for ``.webm``) with every frame's timestamp and duration,
  the display rotation (the exact display matrix) and the colour primaries, transfer and matrix of
  the input; audio packets are copied bit-exact. Only the video and the audio streams are written:
  data and timed-metadata streams (GPS tracks), cover art, subtitles and every container or stream
  tag (location, creation time, device) are dropped unless ``keep_metadata`` (cover art never: it can
  show a face). The file appears only when :meth:`VideoWriter.commit` succeeds (temporary file, fsync,
  rename), so a failed or interrupted run leaves no partial output.

Pixels a frame did not change keep the decoded samples exactly (only changed pixels are converted
back from RGB), so the output differs from the input outside faces by the encoder's noise alone.
Input with more than 8 bits per sample (10-bit, HDR) is converted to 8 bits; its colour tags are kept.
"""

from __future__ import annotations

import os
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import FaceAnonError


# Container format (FFmpeg's muxer name) for each video extension we read and write.
VIDEO_FORMATS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
}
VIDEO_EXTENSIONS = frozenset(VIDEO_FORMATS)
DEFAULT_CRF = 18  # x264's "visually lossless" end of the scale; lower is larger and closer to the input
_CONTAINER_OPTIONS = {"fflags": "+bitexact"}  # no muxer version tag ("encoder") in the output
_FASTSTART = {"mp4", "mov"}  # index at the front: plays while downloading


class VideoLoadError(FaceAnonError, ValueError):
    """A file that cannot be read as a video completely; the message says why in words a user can act on."""


def video_format_for(path: str | os.PathLike) -> str:
    """FFmpeg's muxer name for ``path``'s extension; raises ValueError naming the extension otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_FORMATS:
        allowed = ", ".join(sorted(VIDEO_FORMATS))
        raise ValueError(f"output: extension {suffix or '(none)'!r} of {str(path)!r} is not one of {allowed}")
    return VIDEO_FORMATS[suffix]


def is_video_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoInfo:
    """What the reader found: the stored frame size, the display rotation and the streams kept.

    ``rotation`` is the display rotation in degrees counter-clockwise, as FFmpeg reports it, rounded
    to a quarter turn; the upright frame is ``np.rot90(stored, rotation // 90)``. ``frames`` is the
    count the container announces (None if it does not say). ``time_base`` is the video stream's.
    """

    path: Path
    width: int
    height: int
    rotation: int
    codec: str
    pixel_format: str
    time_base: Fraction
    average_rate: Fraction | None
    frames: int | None
    duration: float | None
    audio_streams: int
    dropped_streams: tuple[str, ...]

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) of the frames as displayed."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)


@dataclass
class DecodedFrame:
    """One decoded frame: ``rgb`` (upright, 8-bit, what detection and replacement work on) and ``planes``.

    ``planes`` is the frame converted to the writer's pixel format (8-bit YUV, stored orientation);
    the writer keeps its samples wherever ``rgb`` was not changed. ``time`` is the presentation time
    in seconds (``pts * time_base``); ``pts`` and ``duration`` are in ``time_base`` units as decoded.
    """

    index: int
    pts: int | None
    duration: int
    time_base: Fraction
    time: float
    rgb: np.ndarray
    planes: object  # av.VideoFrame


@dataclass
class PassthroughPacket:
    """An encoded packet copied to the output unchanged (audio; data streams with ``keep_metadata``)."""

    packet: object  # av.Packet
    stream_index: int

    @property
    def time(self) -> float:
        packet = self.packet
        stamp = packet.dts if packet.dts is not None else packet.pts
        return float(stamp * packet.time_base) if stamp is not None else float("-inf")


def _display_matrix(frame) -> tuple[int, ...] | None:
    """The frame's display matrix (9 int32 in FFmpeg's layout), or None when it has none."""
    from av.sidedata.sidedata import Type

    side = frame.side_data.get(Type.DISPLAYMATRIX) if frame.side_data is not None else None
    if side is None:
        return None
    values = np.frombuffer(bytes(side), dtype="<i4")
    return tuple(int(v) for v in values[:9]) if values.size >= 9 else None


def _stream_duration(stream) -> float | None:
    """The video stream's announced duration in seconds: its own field, else Matroska's DURATION tag."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            return None
    return None


def _attached_picture(stream) -> bool:
    from av.stream import Disposition

    return bool(stream.disposition & Disposition.attached_pic)


def _describe(stream) -> str:
    name = stream.codec_context.name if stream.codec_context is not None else "unknown codec"
    kind = "cover art" if stream.type == "video" and _attached_picture(stream) else stream.type
    return f"stream {stream.index} ({kind}, {name})"


class VideoReader:
    """Decode a video file's frames (upright RGB) and its audio packets, streaming, in file order.

    Use as a context manager; iterate for :class:`DecodedFrame` and :class:`PassthroughPacket` items.
    Opening decodes the first frame, so a file that cannot be opened or decoded fails here with a
    :class:`VideoLoadError`. Iteration raises :class:`VideoLoadError` for a decoding error and, at
    the end, for a file that stops before the frame count or duration its container announces.

    Args:
        path: the video file.
        keep_data_streams: also yield the packets of data streams (timed metadata such as GPS), for
            ``keep_metadata``; by default they are dropped.
    """

    def __init__(self, path: str | os.PathLike, *, keep_data_streams: bool = False) -> None:
        import av

        self.path = Path(path)
        if self.path.is_dir():
            raise VideoLoadError(f"{str(self.path)!r} is a folder, expected a video file")
        if not self.path.exists():
            raise VideoLoadError(f"{str(self.path)!r} does not exist")
        if self.path.stat().st_size == 0:
            raise VideoLoadError("the file is empty (0 bytes)")
        try:
            self._container = av.open(str(self.path), "r")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise VideoLoadError(f"cannot be read as a video: damaged, truncated or not a video ({error})") from error
        try:
            self._open_streams(keep_data_streams)
            self._items = self._decode()
            self._prefetched: deque = deque()
            first = None
            for item in self._items:
                self._prefetched.append(item)
                if isinstance(item, DecodedFrame):
                    first = item
                    break
            if first is None:
                raise VideoLoadError(f"the video stream ({self._stream.codec_context.name}) has no decodable frame")
        except BaseException:
            self._container.close()
            raise

    def _open_streams(self, keep_data_streams: bool) -> None:
        container = self._container
        videos = [s for s in container.streams.video if not _attached_picture(s)]
        if not videos:
            raise VideoLoadError("the file has no video stream")
        stream = videos[0]
        if stream.codec_context is None:
            raise VideoLoadError(f"the video stream's codec is not one FFmpeg can decode ({_describe(stream)})")
        stream.thread_type = "AUTO"
        self._stream = stream
        self.passthrough = list(container.streams.audio)
        if keep_data_streams:
            self.passthrough += list(container.streams.data)
        kept = {stream.index, *(s.index for s in self.passthrough)}
        self._dropped = tuple(_describe(s) for s in container.streams if s.index not in kept)
        self._frames_announced = int(stream.frames) if stream.frames else None
        self._duration = _stream_duration(stream)
        self._start = float(stream.start_time * stream.time_base) if stream.start_time is not None else None

    def _decode(self) -> Iterator[DecodedFrame | PassthroughPacket]:
        """Demux the kept streams; decode video packets into frames as they come."""
        import av

        stream = self._stream
        index, packets, end = 0, 0, None
        demuxed = self._container.demux(stream, *self.passthrough)
        while True:
            try:
                packet = next(demuxed)
            except StopIteration:
                break
            except av.FFmpegError as error:
                raise VideoLoadError(f"reading failed after {index} frames: {error}") from error
            if packet.stream.index != stream.index:
                if packet.size:  # the demuxer ends each stream with an empty packet
                    yield PassthroughPacket(packet, packet.stream.index)
                continue
            packets += 1 if packet.size else 0
            try:
                frames = packet.decode()
            except av.FFmpegError as error:
                raise VideoLoadError(f"decoding failed at frame {index}: {error}") from error
            for frame in frames:
                if frame.is_corrupt:
                    raise VideoLoadError(f"frame {index} is corrupt (damaged or truncated data)")
                decoded = self._frame(frame, index)
                end = decoded.time + float(decoded.duration * decoded.time_base)
                yield decoded
                index += 1
        self._check_complete(packets, end)

    def _check_complete(self, packets: int, end: float | None) -> None:
        """Fail on a file that stops before the frame count or the duration its container announces.

        Frames are counted as the demuxer reads them (packets): an edit list may hide some of them from
        the decoder on purpose (trimmed phone videos), which is not damage.
        """
        announced = self._frames_announced
        if end is None:
            raise VideoLoadError("the video stream has no decodable frame")
        if announced is not None and packets < announced:
            raise VideoLoadError(f"the file is truncated: it holds {packets} of the {announced} frames it announces")
        if announced is None and self._duration is not None:
            start = self._start if self._start is not None else 0.0
            rate = self._stream.average_rate
            frame_time = float(1 / rate) if rate else self._duration / max(packets, 1)
            if end - start < self._duration - 2 * frame_time - 1e-3:
                raise VideoLoadError(
                    f"the file is truncated: its video ends at {end - start:.3f} s of the "
                    f"{self._duration:.3f} s it announces"
                )

    def _frame(self, frame, index: int) -> DecodedFrame:
        if index == 0:
            self._first(frame)
        planes = frame.reformat(
            format=self.pixel_format,
            src_colorspace=self.colorspace,
            dst_colorspace=self.colorspace,
            src_color_range=self.color_range,
            dst_color_range=self.color_range,
        )
        stored = planes.to_ndarray(
            format="rgb24", src_colorspace=self.colorspace, src_color_range=self.color_range, dst_color_range=2
        )
        rgb = np.ascontiguousarray(np.rot90(stored, self.info.rotation // 90)) if self.info.rotation else stored
        time_base = frame.time_base or self._stream.time_base
        pts = frame.pts
        if pts is None:
            raise VideoLoadError(f"frame {index} has no timestamp; its timeline cannot be kept")
        time = float(pts * time_base)
        return DecodedFrame(
            index=index,
            pts=pts,
            duration=int(frame.duration or 0),
            time_base=time_base,
            time=time,
            rgb=rgb,
            planes=planes,
        )

    def _first(self, frame) -> None:
        """Facts known once the first frame is decoded: rotation, colour, the pixel format to write."""
        rotation = int(round((frame.rotation or 0) / 90.0)) * 90 % 360
        self.display_matrix = _display_matrix(frame)
        # yuvj* formats are full range by definition, whatever the frame's tag says.
        self.color_range = 2 if frame.format.name.startswith("yuvj") or frame.color_range == 2 else 1
        self.color_primaries = int(frame.color_primaries)
        self.color_trc = int(frame.color_trc)
        # The YUV matrix of the output: the input's, or BT.709 for RGB input (whose "matrix" is none).
        self.colorspace = int(frame.colorspace) or 1
        even = frame.width % 2 == 0 and frame.height % 2 == 0
        self.pixel_format = "yuv420p" if even else "yuv444p"  # H.264 4:2:0 needs even sides
        stream = self._stream
        self.info = VideoInfo(
            path=self.path,
            width=frame.width,
            height=frame.height,
            rotation=rotation,
            codec=stream.codec_context.name,
            pixel_format=frame.format.name,
            time_base=stream.time_base,
            average_rate=stream.average_rate,
            frames=self._frames_announced,
            duration=self._duration,
            audio_streams=len(self._container.streams.audio),
            dropped_streams=self._dropped,
        )

    @property
    def notes(self) -> list[str]:
        """Plain-language remarks for the report: conversions made and streams left out."""
        notes = []
        fmt = self.info.pixel_format
        if any(depth in fmt for depth in ("10", "12", "16")):
            notes.append(f"{fmt} input written as 8-bit {self.pixel_format}")
        if self.pixel_format == "yuv444p":
            notes.append("odd frame size: written as 4:4:4 (H.264 4:2:0 needs even sides)")
        if self.info.dropped_streams:
            notes.append("dropped " + ", ".join(self.info.dropped_streams))
        return notes

    @property
    def container_metadata(self) -> dict:
        return dict(self._container.metadata)

    @property
    def video_stream(self):
        return self._stream

    def __iter__(self) -> Iterator[DecodedFrame | PassthroughPacket]:
        while self._prefetched:
            yield self._prefetched.popleft()
        yield from self._items

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _planes(frame) -> list[np.ndarray]:
    """Copies of a planar 8-bit frame's planes without the row padding."""
    out = []
    for plane in frame.planes:
        rows = plane.height
        data = np.frombuffer(plane, dtype=np.uint8, count=rows * plane.line_size).reshape(rows, plane.line_size)
        out.append(data[:, : plane.width].copy())
    return out


def _frame_from_planes(planes: list[np.ndarray], fmt: str, width: int, height: int):
    import av

    frame = av.VideoFrame(width, height, fmt)
    for plane, array in zip(frame.planes, planes):
        rows = plane.height
        buffer = np.frombuffer(plane, dtype=np.uint8, count=rows * plane.line_size).reshape(rows, plane.line_size)
        buffer[:, : plane.width] = array
    return frame


class VideoWriter:
    """Encode frames and copy passthrough packets into a new file, written atomically.

    Args:
        path: the output file; its extension picks the container (:data:`VIDEO_FORMATS`). ``.webm``
            gets VP9, every other container H.264 (libx264).
        reader: the open :class:`VideoReader` of the input: time base, rotation, colour and the
            streams to copy come from it.
        crf: constant rate factor (quality; 0 is lossless for H.264, 18 visually lossless).
        keep_metadata: copy the container's and the streams' tags (location, creation time, device).

    Frames must be written in presentation order with :meth:`write`; passthrough packets with
    :meth:`copy`. Nothing appears at ``path`` until :meth:`commit`; leaving the ``with`` block
    without it (an exception) removes the temporary file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        reader: VideoReader,
        *,
        crf: int = DEFAULT_CRF,
        keep_metadata: bool = False,
    ) -> None:
        import av

        if int(crf) != crf or not 0 <= crf <= 51:
            raise ValueError(f"crf: got {crf!r}, expected an integer from 0 to 51 (18 is visually lossless)")
        self.path = Path(path)
        self._format = video_format_for(self.path)
        self.reader = reader
        self._keep_metadata = keep_metadata
        self._pending: deque[PassthroughPacket] = deque()
        self._committed = False
        self._pts_offset: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Hidden and short (any output name fits), so folder scans skip it; same folder: an atomic rename.
        self._temporary = self.path.parent / f".fa-{secrets.token_hex(6)}.part"
        options = dict(_CONTAINER_OPTIONS)
        if self._format in _FASTSTART:
            options["movflags"] = "+faststart"
        try:
            self._container = av.open(str(self._temporary), "w", format=self._format, container_options=options)
        except (av.FFmpegError, OSError) as error:
            self._temporary.unlink(missing_ok=True)
            raise OSError(f"cannot create {str(self.path)!r}: {error}") from error
        try:
            self._add_streams(int(crf))
        except BaseException:
            self.abort()
            raise

    def _add_streams(self, crf: int) -> None:
        from av.codec.context import Flags

        reader, container = self.reader, self._container
        info = reader.info
        source = reader.video_stream
        if self._format == "webm":
            stream = container.add_stream("libvpx-vp9", rate=info.average_rate)
            stream.codec_context.options = {"crf": str(crf), "b": "0", "row-mt": "1", "deadline": "good"}
        else:
            stream = container.add_stream("libx264", rate=info.average_rate)
            options = {"crf": str(crf)}
            if self._format == "avi":
                options["bf"] = "0"  # AVI keeps no presentation timestamps: frames must be coded in order
            stream.codec_context.options = options
        stream.width, stream.height = info.width, info.height
        stream.pix_fmt = reader.pixel_format
        stream.time_base = info.time_base
        context = stream.codec_context
        context.time_base = info.time_base
        # No encoder version tag; packet durations follow the frames' (keeps the last frame's duration).
        context.flags |= Flags.bitexact | Flags.frame_duration
        context.color_range = reader.color_range
        context.color_primaries = reader.color_primaries
        context.color_trc = reader.color_trc
        context.colorspace = reader.colorspace
        if source.sample_aspect_ratio:
            stream.sample_aspect_ratio = source.sample_aspect_ratio
        if reader.display_matrix is not None:
            stream.set_display_matrix(list(reader.display_matrix))
        self._video = stream
        self._copies = {}
        for template in reader.passthrough:
            try:
                copy = container.add_stream_from_template(template)
            except (ValueError, Exception) as error:  # noqa: BLE001 - the container cannot hold this codec
                name = template.codec_context.name if template.codec_context is not None else "data"
                raise ValueError(
                    f"output: a {self._format} file cannot hold the input's {template.type} stream ({name}); "
                    f"write to a container that can (for example .mkv) ({error})"
                ) from error
            copy.metadata.clear()
            self._copies[template.index] = copy
        if self._keep_metadata:
            container.metadata.update(reader.container_metadata)
            stream.metadata.update(dict(source.metadata))
            for template in reader.passthrough:
                self._copies[template.index].metadata.update(dict(template.metadata))
        else:
            for template in reader.passthrough:
                if "language" in template.metadata:  # which audio track is which; says nothing about anyone
                    self._copies[template.index].metadata["language"] = template.metadata["language"]

    def copy(self, item: PassthroughPacket) -> None:
        """Queue a passthrough packet; it is muxed beside the video frames of the same time."""
        self._pending.append(item)

    def _flush_pending(self, until: float) -> None:
        while self._pending and self._pending[0].time <= until:
            item = self._pending.popleft()
            item.packet.stream = self._copies[item.stream_index]
            self._container.mux(item.packet)

    def write(self, frame: DecodedFrame, rgb: np.ndarray | None = None) -> None:
        """Encode ``frame``; ``rgb`` is its new upright image, or None when nothing changed.

        Only the pixels where ``rgb`` differs from ``frame.rgb`` are converted back to YUV; every
        other sample is the decoded one.
        """
        planes = _planes(frame.planes)
        if rgb is not None:
            if rgb.shape != frame.rgb.shape or rgb.dtype != np.uint8:
                raise ValueError(f"rgb: got {rgb.shape} {rgb.dtype}, expected {frame.rgb.shape} uint8")
            changed = np.any(rgb != frame.rgb, axis=2)
            if changed.any():
                self._merge(planes, rgb, changed)
        # A new frame: nothing of the decoded frame's side data (captions, SEI) reaches the encoder.
        reader = self.reader
        out = _frame_from_planes(planes, reader.pixel_format, frame.planes.width, frame.planes.height)
        if self._pts_offset is None:
            # AVI stores no timestamps, only the frame order: its demuxer reads the first frame as
            # pts 1, so count from 0 again, and a re-read gives the same times as the input's.
            self._pts_offset = frame.pts if self._format == "avi" else 0
        out.pts = frame.pts - self._pts_offset
        out.time_base = frame.time_base
        out.duration = frame.duration
        out.color_range = reader.color_range
        out.colorspace = reader.colorspace
        out.color_primaries = reader.color_primaries
        out.color_trc = reader.color_trc
        self._flush_pending(frame.time)
        for packet in self._video.encode(out):
            self._container.mux(packet)

    def _merge(self, planes: list[np.ndarray], rgb: np.ndarray, changed: np.ndarray) -> None:
        """Put the changed pixels' new values into ``planes`` (chroma: every block with a changed pixel)."""
        import av

        k = self.reader.info.rotation // 90
        if k:
            rgb = np.rot90(rgb, -k)
            changed = np.rot90(changed, -k)
        fmt = self.reader.pixel_format
        new = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
            format=fmt,
            src_colorspace=self.reader.colorspace,
            dst_colorspace=self.reader.colorspace,
            src_color_range=2,
            dst_color_range=self.reader.color_range,
        )
        height, width = changed.shape
        for old, replacement in zip(planes, _planes(new)):
            rows, cols = old.shape
            if (rows, cols) == (height, width):
                mask = changed
            else:  # subsampled chroma: a sample changes when any pixel of its block did
                fy, fx = height // rows, width // cols
                mask = changed.reshape(rows, fy, cols, fx).any(axis=(1, 3))
            old[mask] = replacement[mask]

    def commit(self, *, overwrite: bool = False, before_rename: Callable[[Path], None] | None = None) -> None:
        """Flush the encoder and the queued packets, close the file and move it to ``path``.

        ``before_rename(temporary)`` is called with the complete, fsynced file just before the rename
        (to journal its hash, for example); if it raises, nothing is written. An existing ``path`` is
        replaced only with ``overwrite`` (FileExistsError otherwise, and nothing is written).
        """
        try:
            for packet in self._video.encode(None):
                self._container.mux(packet)
            self._flush_pending(float("inf"))
            self._container.close()
            with open(self._temporary, "rb+") as file:
                os.fsync(file.fileno())
            if not overwrite and os.path.lexists(self.path):
                raise FileExistsError(f"output: {str(self.path)!r} exists (appeared while writing); not overwritten")
            if before_rename is not None:
                before_rename(self._temporary)
            os.replace(self._temporary, self.path)
        except BaseException:
            self.abort()
            raise
        self._committed = True

    def abort(self) -> None:
        """Drop everything written so far (the temporary file); ``path`` is not touched."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the file is deleted anyway
            pass
        self._temporary.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        if not self._committed:
            self.abort()


__all__ = [
    "DEFAULT_CRF",
    "VIDEO_EXTENSIONS",
    "VIDEO_FORMATS",
    "DecodedFrame",
    "PassthroughPacket",
    "VideoInfo",
    "VideoLoadError",
    "VideoReader",
    "VideoWriter",
    "is_video_path",
    "video_format_for",
]
