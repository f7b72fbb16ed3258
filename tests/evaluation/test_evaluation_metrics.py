"""The evaluation's measures against independent computations."""

import math

import numpy as np
import pytest

from face_anon.evaluation import metrics


def test_box_iou():
    assert metrics.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert metrics.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert metrics.box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0


def test_boxes_match_one_to_one_best_overlap_first():
    originals = [(0, 0, 10, 10), (4, 0, 14, 10), (100, 100, 110, 110)]
    candidates = [(3, 0, 13, 10), (0, 0, 10, 10)]
    # Original 1 overlaps candidate 0 most (IoU 0.82); original 0 then takes candidate 1 (IoU 1).
    assert metrics.match_boxes(originals, candidates) == [1, 0, None]
    assert metrics.match_boxes(originals, [(8, 0, 18, 10)], min_iou=0.5) == [None, None, None]


# A frontal face model: eyes 1 apart at depth 0, nose tip 0.5 in front, mouth corners 0.8 below the eyes.
FACE_3D = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0, 0.45, -0.5], [-0.4, 0.8, 0], [0.4, 0.8, 0]])


def _project(yaw_degrees=0.0, roll_degrees=0.0, scale=60.0, centre=(200.0, 150.0)):
    """Orthographic image of FACE_3D turned by ``yaw`` (about the vertical axis) and ``roll`` (in the image)."""
    yaw, roll = math.radians(yaw_degrees), math.radians(roll_degrees)
    x = FACE_3D[:, 0] * math.cos(yaw) - FACE_3D[:, 2] * math.sin(yaw)
    y = FACE_3D[:, 1]
    points = np.stack([x, y], axis=1)
    turn = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
    return points @ turn.T * scale + np.array(centre)


@pytest.mark.parametrize("yaw", [-40.0, -15.0, 0.0, 20.0, 35.0])
@pytest.mark.parametrize("roll", [0.0, 25.0])
def test_yaw_and_roll_are_recovered_from_projected_landmarks(yaw, roll):
    points = _project(yaw, roll)
    assert metrics.roll_angle(points) == pytest.approx(roll, abs=1e-6)
    assert metrics.yaw_angle(points) == pytest.approx(yaw, abs=1e-6)


def test_a_mirrored_face_has_the_opposite_yaw():
    points = _project(25.0)
    mirrored = points[[1, 0, 2, 4, 3]].copy()
    mirrored[:, 0] = 400 - mirrored[:, 0]
    assert metrics.yaw_angle(mirrored) == pytest.approx(-metrics.yaw_angle(points))


def test_angle_difference_wraps():
    assert metrics.angle_difference(170.0, -170.0) == pytest.approx(20.0)
    assert metrics.angle_difference(-5.0, 5.0) == pytest.approx(10.0)


def test_landmark_error_is_relative_to_the_eye_distance():
    points = _project(scale=50.0)  # eyes 50 px apart
    moved = points + np.array([3.0, 4.0])  # every point 5 px away
    assert metrics.landmark_error(points, moved) == pytest.approx(0.1)
    assert metrics.landmark_error(points * 2, moved * 2 - points) == pytest.approx(
        np.mean(np.hypot(*(moved * 2 - points - points * 2).T)) / 100.0
    )


def test_rank1_hits():
    gallery = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    probes = np.array([[0.1, 0.0], [0.1, 0.0], [0.0, 0.8]])
    assert metrics.rank1_hits(probes, gallery, [0, 1, 2]) == [True, False, True]


def test_pairwise_cosine():
    assert metrics.pairwise_cosine(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])) == pytest.approx((1 + 0 + 0) / 3)
    assert math.isnan(metrics.pairwise_cosine(np.ones((1, 3))))


def test_mean_abs_change_inside_a_mask():
    before = np.zeros((4, 4, 3), np.uint8)
    after = before.copy()
    after[:2] = 10
    after[2:] = 200
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    assert metrics.mean_abs_change(before, after, mask) == pytest.approx(10.0)
    assert math.isnan(metrics.mean_abs_change(before, after, np.zeros((4, 4), bool)))


def test_rates_of_nothing_are_undefined():
    assert metrics.rate([]) is None and metrics.rate([True, False, False, True]) == 0.5
    assert metrics.mean_or_none([None, math.nan]) is None and metrics.mean_or_none([1.0, None, 3.0]) == 2.0
