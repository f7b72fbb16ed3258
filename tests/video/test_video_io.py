"""Video files in and out: timeline, audio, rotation, colour and metadata kept or dropped as promised."""

from fractions import Fraction

import av
import numpy as np
import pytest

from face_anon.io.video import DecodedFrame, VideoLoadError, VideoReader, VideoWriter

from .video_helpers import GPS_PAYLOAD, LOCATION, audio_packets, decode_frames, moving_scene, write_clip


VFR_PTS = [0, 20, 40, 70, 90, 130, 150, 170, 200, 260]  # uneven steps in 1/600 s
RECT = (slice(30, 90), slice(40, 120))  # rows, columns of the upright frame changed in the tests


def _copy(source, target, *, change=None, **writer_options):
    """Read ``source`` and write ``target``; ``change(index, rgb)`` edits a frame's upright RGB in place."""
    with VideoReader(source, keep_data_streams=writer_options.get("keep_metadata", False)) as reader:
        with VideoWriter(target, reader, **writer_options) as writer:
            for item in reader:
                if isinstance(item, DecodedFrame):
                    rgb = None
                    if change is not None:
                        rgb = item.rgb.copy()
                        change(item.index, rgb)
                    writer.write(item, rgb)
                else:
                    writer.copy(item)
            writer.commit()
        return reader


def _invert(index, rgb):
    if index % 2 == 0:
        rgb[RECT] = 255 - rgb[RECT]


@pytest.fixture(scope="module")
def composite(tmp_path_factory):
    frames, _ = moving_scene(len(VFR_PTS))
    path = tmp_path_factory.mktemp("io") / "phone.mp4"
    return write_clip(
        path,
        frames,
        pts=VFR_PTS,
        time_base=Fraction(1, 600),
        rotation=90,
        audio=True,
        location=True,
        data_stream=True,
    )


def test_timeline_audio_and_rotation_are_kept_and_metadata_dropped(composite, tmp_path):
    output = tmp_path / "out.mp4"
    reader = _copy(composite.path, output, change=_invert)
    assert reader.info.rotation == 90 and reader.info.upright_size == (320, 240)
    assert any("data" in note for note in reader.notes)

    before, times_in, rotation_in = decode_frames(composite.path)
    after, times_out, rotation_out = decode_frames(output)
    assert rotation_in == rotation_out == 90
    assert times_out == times_in == [Fraction(p, 600) for p in VFR_PTS]  # every timestamp, exactly
    assert audio_packets(output) == audio_packets(composite.path) != []  # bit-exact remux
    with av.open(str(composite.path)) as src, av.open(str(output)) as out:
        assert out.duration == src.duration  # microseconds
        assert [s.type for s in out.streams] == ["video", "audio"]  # the GPS data stream is gone
        assert not {"location", "location-eng", "creation_time", "comment", "encoder"} & set(out.metadata)
        for stream in out.streams:
            assert "creation_time" not in stream.metadata
    data = output.read_bytes()
    for secret in (GPS_PAYLOAD, LOCATION.encode(), b"Jane Doe", b"Lavf"):
        assert secret not in data

    outside = np.ones(before[0].shape[:2], bool)
    outside[RECT[0].start - 8 : RECT[0].stop + 8, RECT[1].start - 8 : RECT[1].stop + 8] = False
    for index, (a, b) in enumerate(zip(before, after)):
        a, b = a.astype(np.float32), b.astype(np.float32)
        assert np.abs(a - b)[outside].mean() < 3.0  # codec noise only
        expected = 255 - a[RECT] if index % 2 == 0 else a[RECT]
        assert np.abs(b[RECT] - expected).mean() < 6.0, index


def test_lossless_output_keeps_every_decoded_sample_the_frame_did_not_change(composite, tmp_path):
    output = tmp_path / "lossless.mp4"
    _copy(composite.path, output, change=_invert, crf=0)
    before, _, _ = decode_frames(composite.path, upright=False)
    after, _, _ = decode_frames(output, upright=False)
    rows, cols = RECT
    # The same rectangle in the stored (turned) frame, a little wider: 2x2 chroma blocks, and the
    # chroma upsampling of the RGB conversion reaches a pixel further.
    width, margin = before[0].shape[1], 4
    stored = np.zeros(before[0].shape[:2], bool)
    stored[cols.start - margin : cols.stop + margin, width - rows.stop - margin : width - rows.start + margin] = True
    for index, (a, b) in enumerate(zip(before, after)):
        assert np.array_equal(a[~stored], b[~stored]), index
        if index % 2:
            assert np.array_equal(a, b)


def test_keep_metadata_keeps_tags_and_data_streams(composite, tmp_path):
    output = tmp_path / "kept.mp4"
    _copy(composite.path, output, keep_metadata=True)
    with av.open(str(output)) as out:
        assert out.metadata.get("location") == LOCATION
        assert [s.type for s in out.streams] == ["video", "audio", "data"]
        assert GPS_PAYLOAD in b"".join(bytes(p) for p in out.demux(out.streams.data[0]))


@pytest.mark.parametrize("suffix", [".mkv", ".webm", ".avi", ".mov"])
def test_other_containers_keep_frames_and_audio(suffix, tmp_path):
    frames, _ = moving_scene(6, size=(96, 64))
    codec, options = ("libvpx-vp9", {"lossless": "1"}) if suffix == ".webm" else ("libx264", {"qp": "0", "bf": "0"})
    clip = write_clip(tmp_path / f"in{suffix}", frames, audio=suffix != ".avi", codec=codec, options=options)
    output = tmp_path / f"out{suffix}"
    _copy(clip.path, output, change=_invert)
    _, times_in, _ = decode_frames(clip.path)
    after, times_out, _ = decode_frames(output)
    assert times_out == times_in and len(after) == 6
    assert audio_packets(output) == audio_packets(clip.path)
    with av.open(str(output)) as out:
        assert out.streams.video[0].codec_context.name == ("vp9" if suffix == ".webm" else "h264")


def test_odd_frame_size_is_kept(tmp_path):
    frames = [np.full((45, 63, 3), 90 + 10 * i, np.uint8) for i in range(3)]
    clip = write_clip(tmp_path / "odd.mkv", frames, codec="libx264rgb", options={"qp": "0"}, pixel_format="rgb24")
    output = tmp_path / "odd_out.mkv"
    reader = _copy(clip.path, output, change=lambda i, rgb: rgb.__setitem__((slice(0, 9), slice(0, 9)), 0))
    assert reader.pixel_format == "yuv444p" and any("odd" in note for note in reader.notes)
    after, _, _ = decode_frames(output)
    assert after[0].shape == (45, 63, 3)
    assert after[2][20:, 20:].mean() == pytest.approx(110, abs=2) and after[2][:9, :9].mean() < 5


def test_ten_bit_hdr_input_becomes_8_bit_with_its_colour_tags(tmp_path):
    path = tmp_path / "hdr.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p10le"
        context = stream.codec_context
        context.color_primaries, context.color_trc, context.colorspace, context.color_range = 9, 16, 9, 1
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 100, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p10le")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    output = tmp_path / "hdr_out.mkv"
    reader = _copy(path, output)
    assert any("8-bit" in note for note in reader.notes)
    with av.open(str(output)) as out:
        frame = next(out.decode(video=0))
        assert frame.format.name == "yuv420p"
        assert (frame.color_primaries, frame.color_trc, frame.colorspace, frame.color_range) == (9, 16, 9, 1)


def test_unreadable_inputs_fail_with_clear_errors(composite, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(composite.path.read_bytes()[: composite.path.stat().st_size // 2])
    sound_only = tmp_path / "sound.m4a"
    with av.open(str(sound_only), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    cases = {
        empty: "empty",
        tmp_path: "folder",
        noise: "cannot be read as a video",
        cut: "truncated",
        sound_only: "no video stream",
        tmp_path / "missing.mp4": "does not exist",
    }
    for path, message in cases.items():
        with pytest.raises(VideoLoadError, match=message):
            with VideoReader(path) as reader:
                for _ in reader:
                    pass


def test_truncated_file_with_its_index_up_front_fails_while_reading(composite, tmp_path):
    # Our own outputs put the index first (faststart), so a cut copy opens and stops early.
    full = tmp_path / "full.mp4"
    _copy(composite.path, full)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.7)])
    with VideoReader(cut) as reader, pytest.raises(VideoLoadError, match="truncated|corrupt"):
        for _ in reader:
            pass


def test_nothing_is_written_unless_committed_and_nothing_overwritten(composite, tmp_path):
    output = tmp_path / "out.mp4"
    with VideoReader(composite.path) as reader:
        with pytest.raises(RuntimeError, match="stop"):
            with VideoWriter(output, reader) as writer:
                for item in reader:
                    if isinstance(item, DecodedFrame):
                        writer.write(item)
                        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file

    output.write_bytes(b"someone else's file")
    with pytest.raises(FileExistsError):
        _copy(composite.path, output)
    assert output.read_bytes() == b"someone else's file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    with pytest.raises(ValueError, match="crf"):
        _copy(composite.path, tmp_path / "x.mp4", crf=60)
    with pytest.raises(ValueError, match="extension"):
        _copy(composite.path, tmp_path / "x.gif")


def test_frames_an_edit_list_hides_are_not_taken_for_truncation(tmp_path):
    # A trimmed phone video: the first frames are stored but the edit list hides them (pts < 0).
    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)]
    clip = write_clip(tmp_path / "trimmed.mp4", frames, pts=range(-3, 7), options={"bf": "0"})
    output = tmp_path / "out.mp4"
    _copy(clip.path, output)
    shown, times, _ = decode_frames(output)
    assert len(shown) == 7 and times == decode_frames(clip.path)[1]
    assert abs(float(shown[0].mean()) - 60) < 3  # the first frame shown is the input's fourth
