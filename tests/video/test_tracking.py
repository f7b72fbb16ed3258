"""Tracking: assignment, filters, ByteTrack association, gap filling and extension, on synthetic faces."""

import itertools

import numpy as np
import pytest

from face_anon.detection import Face
from face_anon.detection.tracking import (
    DETECTED,
    EXTENDED,
    INTERPOLATED,
    ByteTracker,
    KalmanBoxFilter,
    OneEuroFilter,
    TrackWindow,
    iou_matrix,
    linear_assignment,
)


# Five landmarks of a face whose box is the unit square, scaled into any box.
_UNIT_LANDMARKS = np.array([[0.33, 0.4], [0.67, 0.4], [0.5, 0.58], [0.36, 0.75], [0.64, 0.75]])


def face(cx, cy, size, score=0.9):
    box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    points = _UNIT_LANDMARKS * size + np.array(box[:2])
    return Face(box, score, tuple((float(x), float(y)) for x, y in points))


def test_iou_matrix_matches_hand_computed_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 4, 4]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    expected = np.array([[50 / 150, 0, 1], [0, 0, 16 / 100]])
    np.testing.assert_allclose(iou_matrix(a, b), expected)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 5), (5, 2), (4, 4)])
def test_linear_assignment_is_optimal_against_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        cost = rng.random(shape)
        pairs = linear_assignment(cost, max_cost=10.0)
        rows, cols = shape
        assert len(pairs) == min(rows, cols)
        assert len({r for r, _ in pairs}) == len({c for _, c in pairs}) == len(pairs)
        if rows <= cols:
            best = min(sum(cost[i, p[i]] for i in range(rows)) for p in itertools.permutations(range(cols), rows))
        else:
            best = min(sum(cost[p[j], j] for j in range(cols)) for p in itertools.permutations(range(rows), cols))
        assert sum(cost[p] for p in pairs) == pytest.approx(best)


def test_linear_assignment_drops_pairs_above_the_limit():
    cost = np.array([[0.1, 0.9], [0.95, 0.99]])
    assert linear_assignment(cost, max_cost=0.5) == [(0, 0)]  # row 1's best (0.99) is over the limit
    assert linear_assignment(np.zeros((0, 3)), max_cost=1.0) == []


def test_kalman_filter_learns_constant_velocity():
    kalman = KalmanBoxFilter((0, 0, 40, 40))
    for step in range(1, 30):
        kalman.predict()
        kalman.update((3 * step, 2 * step, 40 + 3 * step, 40 + 2 * step))
    kalman.predict()
    np.testing.assert_allclose(kalman.box, (90, 60, 130, 100), atol=0.5)


def test_one_euro_filter_removes_jitter_of_a_still_face():
    rng = np.random.default_rng(0)
    smoother = OneEuroFilter()
    truth = np.array([100.0, 50.0])
    raw = truth + rng.normal(0, 2.0, (300, 2))  # 2 px jitter on a 100 px face
    out = np.array([smoother(value, i / 30, scale=100.0) for i, value in enumerate(raw)])
    assert np.std(out[30:] - truth) < 0.5 * np.std(raw[30:] - truth)


def test_one_euro_filter_follows_fast_motion_with_little_lag():
    smoother = OneEuroFilter()
    speed = 300.0  # px per second: three face sizes per second for a 100 px face
    times = np.arange(60) / 30
    out = [smoother(np.array([speed * t]), t, scale=100.0)[0] for t in times]
    lag = speed * times[-1] - out[-1]
    assert 0 <= lag < 5.0  # under 5% of the face size
    # An uneven frame rate is handled by time, not by frame count: a still value stays where it is.
    still = OneEuroFilter()
    assert [still(np.array([7.0]), t)[0] for t in (0.0, 0.01, 0.5, 0.51, 2.0)] == [7.0] * 5


def test_one_euro_filter_rejects_bad_parameters():
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(min_cutoff=0)


def test_byte_tracker_keeps_ids_of_two_faces_crossing_paths():
    tracker = ByteTracker()
    ids = []
    for step in range(20):
        a = face(100 + 10 * step, 100, 60)
        b = face(290 - 10 * step, 110, 60)
        ids.append([t.track_id for t in tracker.update([a, b], step / 30)])
    assert all(frame_ids == ids[0] for frame_ids in ids) and len(set(ids[0])) == 2


def test_byte_tracker_finds_a_lost_face_again_and_forgets_it_after_max_lost():
    tracker = ByteTracker(max_lost=5)
    first = tracker.update([face(100, 100, 60)], 0.0)[0].track_id
    for step in range(1, 4):  # three frames without the face (occluded), the box keeps moving
        assert tracker.update([], step / 30) == []
    assert tracker.update([face(104, 100, 60)], 4 / 30)[0].track_id == first
    for step in range(5, 12):  # gone longer than max_lost
        tracker.update([], step / 30)
    assert tracker.update([face(104, 100, 60)], 12 / 30)[0].track_id != first


def test_byte_tracker_low_scores_continue_tracks_and_start_new_ones():
    tracker = ByteTracker(high_threshold=0.5)
    track = tracker.update([face(100, 100, 60, 0.9)], 0.0)[0].track_id
    # A blurred frame: the face scores 0.35, below high_threshold; the second stage keeps the track.
    assert tracker.update([face(102, 100, 60, 0.35)], 1 / 30)[0].track_id == track
    # A low-score face where no track is: it still gets a track of its own (and will be anonymized).
    results = tracker.update([face(103, 100, 60, 0.9), face(400, 300, 40, 0.31)], 2 / 30)
    assert results[0].track_id == track and results[1].track_id not in (track, None)


def test_byte_tracker_smooths_landmarks_of_a_jittering_face():
    rng = np.random.default_rng(1)
    tracker = ByteTracker()
    raw, smooth = [], []
    for step in range(90):
        detected = face(200 + rng.normal(0, 2), 150 + rng.normal(0, 2), 100)
        (result,) = tracker.update([detected], step / 30)
        raw.append(detected.landmark_array)
        smooth.append(result.face.landmark_array)
        assert result.detection == detected
    assert np.std(np.array(smooth)[20:], axis=0).mean() < 0.5 * np.std(np.array(raw)[20:], axis=0).mean()


def _run(window, tracker, detections_per_frame, times):
    out = []
    for index, (faces, time) in enumerate(zip(detections_per_frame, times)):
        out += window.push(index, time, tracker.update(faces, time))
    return out + window.finish()


def test_window_interpolates_a_gap_in_time_and_extends_both_ends():
    times = [0.0, 0.05, 0.1, 0.3, 0.35, 0.4, 0.45, 0.5, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0]  # uneven steps
    detections = [[] for _ in times]
    for index in (4, 5, 9, 10):  # detected at frames 4, 5, then missed 6-8, then 9, 10
        detections[index] = [face(100 + 50 * times[index], 100, 60)]
    window = TrackWindow(size=6, extend=2, max_gap=5)
    frames = _run(window, ByteTracker(max_lost=5, beta=0.0, min_cutoff=1e6), detections, times)
    assert [f.index for f in frames] == list(range(len(times)))
    kinds = {f.index: f.faces[0].kind for f in frames if f.faces}
    assert kinds == {
        2: EXTENDED,
        3: EXTENDED,
        4: DETECTED,
        5: DETECTED,
        6: INTERPOLATED,
        7: INTERPOLATED,
        8: INTERPOLATED,
        9: DETECTED,
        10: DETECTED,
        11: EXTENDED,
        12: EXTENDED,
    }
    for index in (6, 7, 8):  # linear in time between frames 5 and 9 (the filter is off: cutoff 1e6 Hz)
        centre = (frames[index].faces[0].face.box[0] + frames[index].faces[0].face.box[2]) / 2
        assert centre == pytest.approx(100 + 50 * times[index], abs=1e-4)
    held = frames[3].faces[0].face  # extended before: the first detection's place
    assert held.box == pytest.approx(face(100 + 50 * times[4], 100, 60).box, abs=1e-4)


def test_window_holds_at_most_size_frames_and_rejects_a_too_small_size():
    window = TrackWindow(size=4, extend=1, max_gap=3)
    released = [window.push(i, i / 30, []) for i in range(10)]
    assert [len(r) for r in released] == [0, 0, 0, 0] + [1] * 6 and len(window.frames) == 4
    with pytest.raises(ValueError, match="size"):
        TrackWindow(size=3, extend=1, max_gap=3)


def test_window_does_not_extend_over_a_face_already_detected_there():
    # Track A ends at frame 2; at frame 3 the same person is detected as a new track B at the same place.
    window = TrackWindow(size=5, extend=2, max_gap=0)
    tracker = ByteTracker(max_lost=0)
    detections = [[face(100, 100, 60)]] * 3 + [[]] + [[face(101, 100, 60)]] * 3
    frames = _run(window, tracker, detections, [i / 30 for i in range(7)])
    assert [len(f.faces) for f in frames] == [1, 1, 1, 2, 1, 1, 1]  # frame 3: A after, B before (both extended)
    assert {f.kind for f in frames[3].faces} == {EXTENDED}
    for frame in frames[4:]:  # B detected: A's extension is left out where B already covers it
        assert [f.kind for f in frame.faces] == [DETECTED]
