"""Whole videos: every face of every frame replaced, the file's timeline and sound kept, nothing leaked."""

from fractions import Fraction

import av
import numpy as np
import pytest

from face_anon import AnonymizeOptions
from face_anon.orchestration.stages import FaceDecision
from face_anon.orchestration.video import VideoOptions, anonymize_video, frontal_score, identity_crop
from face_anon.replacers.base import FaceAction

from .video_helpers import (
    GPS_PAYLOAD,
    LOCATION,
    audio_packets,
    decode_frames,
    moving_scene,
    write_clip,
)


VFR_PTS = [0, 20, 40, 70, 90, 130, 150, 170, 200, 220, 250, 260]
BLUR = AnonymizeOptions(mode="blur")


def _face_difference(before, after, placement):
    """Mean absolute difference around the eyes and mouth of a pasted face."""
    radius = max(2, int(placement.face_size * 0.08))
    out = []
    for x, y in placement.landmarks()[[0, 1, 3, 4]]:
        x, y = int(round(x)), int(round(y))
        a = before[y - radius : y + radius + 1, x - radius : x + radius + 1].astype(np.float32)
        b = after[y - radius : y + radius + 1, x - radius : x + radius + 1].astype(np.float32)
        out.append(float(np.abs(a - b).mean()))
    return min(out)


def _far_from_faces(shape, placements, factor=1.3):
    """Pixels farther than ``factor`` face sizes from every face centre."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    far = np.ones(shape[:2], bool)
    for placement in placements:
        cx, cy = placement.centre
        far &= np.hypot(x - cx, y - cy) > factor * placement.face_size
    return far


@pytest.fixture(scope="module")
def composite(tmp_path_factory):
    """A phone-like clip: a face moving and growing, a second entering, sound, GPS, VFR, turned 90 degrees."""
    frames, placements = moving_scene(len(VFR_PTS))
    path = tmp_path_factory.mktemp("video") / "phone.mp4"
    clip = write_clip(
        path,
        frames,
        pts=VFR_PTS,
        time_base=Fraction(1, 600),
        rotation=90,
        audio=True,
        location=True,
        data_stream=True,
    )
    return clip, placements


def test_every_face_of_every_frame_is_replaced_and_the_file_kept(composite, detector, tmp_path):
    clip, placements = composite
    output = tmp_path / "phone_anon.mp4"
    progress = []
    report = anonymize_video(clip.path, output, detector=detector, options=BLUR, progress=progress.append)
    assert report.status == "ok" and report.error is None and report.frames == len(VFR_PTS)
    assert [p.frame for p in progress] == list(range(len(VFR_PTS) + 1)) and progress[-1].frames == len(VFR_PTS)
    assert output.exists() and [p.name for p in tmp_path.iterdir()] == ["phone_anon.mp4"]

    before, times_in, _ = decode_frames(clip.path)
    after, times_out, rotation = decode_frames(output)
    assert len(after) == len(VFR_PTS) and rotation == 90
    assert times_out == times_in == [Fraction(p, 600) for p in VFR_PTS]
    assert audio_packets(output) == audio_packets(clip.path) != []
    with av.open(str(output)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        assert not {"location", "location-eng", "creation_time", "comment", "encoder"} & set(container.metadata)
    data = output.read_bytes()
    assert GPS_PAYLOAD not in data and LOCATION.encode() not in data and b"Jane Doe" not in data

    for index, (a, b, scene) in enumerate(zip(before, after, placements)):
        for placement in scene:
            assert _face_difference(a, b, placement) > 8.0, (index, placement)
        far = _far_from_faces(a.shape, scene)
        assert np.abs(a.astype(np.float32) - b)[far].mean() < 3.0, index

    tracks = {track.id: track for track in report.tracks}
    assert len(tracks) == 2
    first, second = tracks[0], tracks[1]
    assert (first.first, first.last, first.detected) == (0, len(VFR_PTS) - 1, len(VFR_PTS))
    entering = len(VFR_PTS) // 2
    assert second.detected == len(VFR_PTS) - entering and second.last == len(VFR_PTS) - 1
    assert second.first == entering - VideoOptions().extend and second.extended == VideoOptions().extend
    assert first.action == second.action == FaceAction.BLURRED and first.redacted == second.redacted == 0
    assert progress[-1].faces == sum(t.detected + t.interpolated + t.extended for t in report.tracks)
    row = report.to_json()
    assert row["kind"] == "video" and row["frames"] == len(VFR_PTS) and row["status"] == "ok"
    assert set(row["tracks"][0]) >= {"id", "first", "last", "detected", "interpolated", "extended", "redacted"}


class MissingDetector:
    """The real detector, blind on some frames (by call number): a face that slips through detection."""

    def __init__(self, detector, blind):
        self.detector, self.blind, self.calls = detector, set(blind), 0
        self.eye_scale = detector.eye_scale

    def detect(self, image):
        self.calls += 1
        return [] if self.calls - 1 in self.blind else self.detector.detect(image)


def test_frames_the_detector_missed_inside_a_track_are_still_treated(detector, tmp_path):
    frames, placements = moving_scene(10)
    frames, placements = frames[:5], [scene[:1] for scene in placements[:5]]  # one face
    frames = frames + frames[::-1]
    placements = placements + placements[::-1]
    clip = write_clip(tmp_path / "in.mkv", frames)
    blind = [3, 4, 5]

    report = anonymize_video(clip.path, tmp_path / "out.mkv", detector=MissingDetector(detector, blind), options=BLUR)
    (track,) = report.tracks
    assert (track.detected, track.interpolated, track.first, track.last) == (7, 3, 0, 9)
    before, _, _ = decode_frames(clip.path)
    after, _, _ = decode_frames(tmp_path / "out.mkv")
    for index in range(10):
        assert _face_difference(before[index], after[index], placements[index][0]) > 8.0, index

    # Control: without look-ahead nothing fills the gap, and the missed frames leave unchanged.
    control = anonymize_video(
        clip.path,
        tmp_path / "control.mkv",
        detector=MissingDetector(detector, blind),
        options=BLUR,
        video=VideoOptions(window=1, max_gap=0, extend=0, crf=0),
    )
    assert sum(track.detected for track in control.tracks) == 7
    unfilled, _, _ = decode_frames(tmp_path / "control.mkv")
    for index in blind:  # lossless: exactly the decoded pixels
        assert _face_difference(before[index], unfilled[index], placements[index][0]) == 0.0, index


class RecordingReplacer:
    """A replacer that records its calls; a swap returns its source, an anonymization a flat colour per seed."""

    action = FaceAction.ANONYMIZED
    crop_size = 64

    def __init__(self):
        self.calls = []

    def __call__(self, crops, seeds, sources=None):
        self.calls.append((len(crops), list(seeds), None if sources is None else [np.array(s) for s in sources]))
        if sources is not None:
            return [np.array(source) for source in sources]
        return [np.full((64, 64, 3), 40 + 10 * seed, np.uint8) for seed in seeds]


def test_each_track_gets_one_identity_made_once_from_its_best_frame(composite, detector, tmp_path):
    clip, _ = composite
    replacer = RecordingReplacer()
    options = AnonymizeOptions(seed=5, batch_size=4)
    report = anonymize_video(clip.path, tmp_path / "out.mp4", detector=detector, options=options, replacer=replacer)
    assert report.status == "ok" and len(report.tracks) == 2
    made = [call for call in replacer.calls if call[2] is None]
    swaps = [call for call in replacer.calls if call[2] is not None]
    # One identity per track, made once (seed = options.seed + track id), then only swaps.
    assert sorted(seed for call in made for seed in call[1]) == [5, 6]
    faces_treated = sum(t.detected + t.interpolated + t.extended for t in report.tracks)
    assert sum(call[0] for call in swaps) == faces_treated
    for _count, seeds, sources in swaps:
        assert len(seeds) <= 4  # batch_size
        for seed, source in zip(seeds, sources):
            assert np.all(source == 40 + 10 * seed)  # the track's own identity, with the track's seed


def test_a_given_identity_is_used_for_every_track(composite, detector, tmp_path):
    clip, _ = composite
    from photo.photo_helpers import astronaut

    replacer = RecordingReplacer()
    expected = identity_crop(astronaut(), detector=detector, crop_size=64)
    report = anonymize_video(
        clip.path, tmp_path / "out.mp4", detector=detector, replacer=replacer, identity=astronaut()
    )
    assert report.status == "ok"
    assert all(call[2] is not None for call in replacer.calls)  # no identity was made
    assert all(np.array_equal(source, expected) for call in replacer.calls for source in call[2])
    with pytest.raises(ValueError, match="identity"):
        anonymize_video(
            clip.path,
            tmp_path / "x.mp4",
            detector=detector,
            replacer=replacer,
            identity=np.zeros((64, 64, 3), np.uint8),
        )


def test_identical_frames_give_identical_faces_with_the_tiny_model(tiny_pipeline, detector, tmp_path):
    from photo.photo_helpers import Placement, compose

    frame = compose(160, 128, [Placement((80, 64), 0.6)])
    clip = write_clip(tmp_path / "still.mkv", [frame] * 5)
    options = AnonymizeOptions(crop_size=32, num_inference_steps=2, batch_size=5, seed=1)
    outputs = {}
    for identity in ("track", "frame"):
        output = tmp_path / f"{identity}.mkv"
        report = anonymize_video(
            clip.path,
            output,
            detector=detector,
            pipeline=tiny_pipeline,
            options=options,
            video=VideoOptions(crf=0, identity=identity),
        )
        assert report.status == "ok" and report.tracks[0].action == FaceAction.ANONYMIZED
        outputs[identity], _, _ = decode_frames(output)
    track, per_frame = outputs["track"], outputs["frame"]
    assert not np.array_equal(track[0], frame)
    assert all(np.array_equal(image, track[0]) for image in track)  # one identity: the same face every frame
    assert not all(np.array_equal(image, per_frame[0]) for image in per_frame)  # per-frame seeds flicker


def test_a_selector_keeps_a_whole_track(composite, detector, tmp_path):
    clip, placements = composite
    seen = []

    def keep_the_first(track_id, samples):
        seen.append((track_id, len(samples)))
        return FaceDecision(keep=track_id == 0, reason="consented" if track_id == 0 else None)

    report = anonymize_video(
        clip.path,
        tmp_path / "out.mp4",
        detector=detector,
        options=BLUR,
        selector=keep_the_first,
        video=VideoOptions(crf=0),
    )
    assert [track_id for track_id, _ in seen] == [0, 1] and all(count >= 1 for _, count in seen)
    kept, other = report.tracks
    assert kept.action == FaceAction.KEPT and kept.reason == "consented" and other.action == FaceAction.BLURRED
    before, _, _ = decode_frames(clip.path)
    after, _, _ = decode_frames(tmp_path / "out.mp4")
    blurred = []
    for a, b, scene in zip(before, after, placements):
        # Kept: exactly the decoded pixels (lossless encode; only changed pixels are converted back to YUV).
        assert _face_difference(a, b, scene[0]) == 0.0
        blurred += [_face_difference(a, b, placement) for placement in scene[1:]]
    assert blurred and min(blurred) > 4.0  # control: the other person's face changed in every frame


class FailingReplacer(RecordingReplacer):
    """Fails every face whose seed is odd (track 1 with seed 0)."""

    def __call__(self, crops, seeds, sources=None):
        if any(seed % 2 for seed in seeds):
            raise RuntimeError("simulated model failure")
        return super().__call__(crops, seeds, sources)


def test_a_face_that_cannot_be_replaced_is_blacked_out(composite, detector, tmp_path):
    clip, placements = composite
    report = anonymize_video(
        clip.path, tmp_path / "out.mp4", detector=detector, replacer=FailingReplacer(), options=AnonymizeOptions()
    )
    assert report.status == "ok"
    good, bad = report.tracks
    assert good.redacted == 0 and good.action == FaceAction.ANONYMIZED
    assert bad.redacted == bad.detected + bad.extended and "simulated model failure" in bad.error
    assert bad.action == FaceAction.BLACKED_OUT_ON_ERROR
    after, _, _ = decode_frames(tmp_path / "out.mp4")
    for image, scene in zip(after, placements):
        if len(scene) == 2:
            x, y = scene[1].landmarks()[2]  # the nose of the entering face: black
            assert image[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3].mean() < 20


def test_bad_inputs_give_an_error_row_and_no_output(composite, detector, tmp_path):
    clip, _ = composite
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.mov"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 30_000, dtype=np.uint8).tobytes())
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.path.read_bytes()[:-4000])
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    cases = {empty: "empty", noise: "cannot be read", cut: "truncated|cannot be read", folder: "folder"}
    out = tmp_path / "out"
    out.mkdir()
    for path, message in cases.items():
        report = anonymize_video(path, out / "x.mp4", detector=detector, options=BLUR)
        assert report.status == "error" and report.output is None, path
        assert __import__("re").search(message, report.error), (path, report.error)
        assert list(out.iterdir()) == []  # nothing, not even a temporary file
    report = anonymize_video(clip.path, clip.path, detector=detector, options=BLUR)
    assert report.status == "error" and "is the input" in report.error


def test_a_video_without_faces_is_written_without_metadata(detector, tmp_path):
    from photo.photo_helpers import background

    clip = write_clip(tmp_path / "empty_room.mp4", [background(96, 64, seed=i) for i in range(4)], location=True)
    report = anonymize_video(clip.path, tmp_path / "out.mp4", detector=detector, options=BLUR)
    assert report.status == "no_faces" and report.tracks == () and report.frames == 4
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert "location" not in container.metadata


def test_frontal_faces_score_higher():
    from face_anon.detection import Face

    frontal = Face((0, 0, 100, 100), 0.9, ((35, 40), (65, 40), (50, 60), (38, 75), (62, 75)))
    turned = Face((0, 0, 100, 100), 0.9, ((35, 40), (65, 40), (62, 60), (38, 75), (62, 75)))
    assert frontal_score(frontal) == 100 and frontal_score(turned) < 40
