"""Whole photos: every face replaced, nothing else touched, seeded, batched, fail closed."""

import numpy as np
import PIL.Image
import pytest

from face_anon import (
    AnonymizeOptions,
    anonymize_photo,
    anonymize_photos,
    crop_face,
    face_mask,
    ffhq_alignment,
    paste_face,
)
from face_anon.geometry.blending import face_region

from .photo_helpers import SCENE, FakePipeline, Placement, background, changed, compose, mask_union, match_faces, window


CROP = 64  # small crops keep the fake and tiny models fast; the mechanics do not depend on size


def _union(faces, detector, shape, size=CROP):
    """Where anonymizing these faces may change pixels at all."""
    return mask_union([face.landmarks for face in faces], size, shape, detector.eye_scale)


def _assert_faces_replaced(before, after, faces, min_difference=25.0):
    before, after = np.asarray(before, np.float32), np.asarray(after, np.float32)
    for face in faces:
        radius = max(1, int(face.size * 0.06))
        for point in face.landmarks:  # eyes, nose and mouth corners all changed
            x, y = point
            if not (0 <= x < before.shape[1] and 0 <= y < before.shape[0]):
                continue
            difference = np.abs(window(after, point, radius) - window(before, point, radius)).mean()
            assert difference > min_difference, (face.box, point, difference)


# ------------------------------------------------------------------------------------------------
# Landmarks and masks


def test_refined_landmarks_match_the_pasted_faces(scene_faces):
    assert len(scene_faces) == len(SCENE)
    for placement, face in match_faces(scene_faces, SCENE):
        error = np.abs(face.landmark_array - placement.landmarks()).max() / placement.face_size
        assert error < 0.06, (placement, error)


def test_face_mask_is_soft_and_exactly_zero_outside():
    mask = face_mask(256)
    assert mask.dtype == np.float32 and mask.min() == 0.0 and mask.max() == 1.0
    assert mask[138, 128] == 1.0  # centre of the face
    assert mask[0, 0] == mask[0, 255] == mask[255, 0] == 0.0
    steepest = max(float(np.abs(np.diff(mask, axis=0)).max()), float(np.abs(np.diff(mask, axis=1)).max()))
    assert steepest < 0.1  # a ramp over 10+ pixels, no edge
    assert 0.25 < (mask > 0).mean() < 0.7


def test_paste_changes_only_pixels_under_the_mask():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    original = image.copy()
    landmarks = np.array([[180, 140], [220, 140], [200, 165], [185, 185], [215, 185]], dtype=float)
    alignment = ffhq_alignment(landmarks, 128)
    region = face_region(alignment, face_mask(128), (400, 300))
    paste_face(image, np.full((128, 128, 3), 255, np.uint8), alignment, region)
    inside = np.zeros((300, 400), bool)
    inside[region.y0 : region.y1, region.x0 : region.x1] = region.alpha > 0
    np.testing.assert_array_equal(image[~inside], original[~inside])
    full = np.zeros((300, 400), bool)
    full[region.y0 : region.y1, region.x0 : region.x1] = region.alpha == 1.0
    assert full.sum() > 1000 and (image[full] == 255).all()


# ------------------------------------------------------------------------------------------------
# The photo pipeline with a fake model (mechanics only)


def test_every_face_replaced_and_nothing_else(detector, scene, scene_faces):
    result = anonymize_photo(
        scene, detector=detector, pipeline=FakePipeline(), options=AnonymizeOptions(crop_size=CROP)
    )
    assert result.status == "ok" and result.error is None
    assert [o.action for o in result.outcomes] == ["anonymized"] * len(SCENE)
    assert [o.face for o in result.outcomes] == scene_faces
    assert result.image.mode == "RGB" and result.image.size == (scene.shape[1], scene.shape[0])
    _assert_faces_replaced(scene, result.image, scene_faces)
    union = _union(scene_faces, detector, scene.shape)
    differs = changed(scene, result.image)
    assert not (differs & ~union).any()  # outside every face's mask: byte-identical
    assert differs.sum() > 0.8 * union.sum() * 0.5


def test_seeded_and_independent_of_batch_size(detector, scene, scene_faces):
    outputs = {}
    for batch_size in (1, 3, 8):
        pipe = FakePipeline()
        options = AnonymizeOptions(crop_size=CROP, batch_size=batch_size, seed=7)
        outputs[batch_size] = np.asarray(
            anonymize_photos([scene], detector=detector, pipeline=pipe, options=options, faces=[scene_faces])[0].image
        )
        assert max(pipe.calls) <= batch_size and sum(pipe.calls) == len(SCENE)
    assert np.array_equal(outputs[1], outputs[3]) and np.array_equal(outputs[1], outputs[8])
    other_seed = anonymize_photos(
        [scene],
        detector=detector,
        pipeline=FakePipeline(),
        options=AnonymizeOptions(crop_size=CROP, seed=8),
        faces=[scene_faces],
    )[0]
    assert not np.array_equal(outputs[1], np.asarray(other_seed.image))


def test_faces_of_several_photos_share_batches(detector, scene, scene_faces):
    small = compose(640, 480, [Placement((320, 240), 1.2)])
    pipe = FakePipeline()
    options = AnonymizeOptions(crop_size=CROP, batch_size=8)
    together = anonymize_photos([scene, small], detector=detector, pipeline=pipe, options=options)
    assert pipe.calls == [8]  # 7 + 1 faces in one call
    alone = anonymize_photo(small, detector=detector, pipeline=FakePipeline(), options=options)
    assert np.array_equal(np.asarray(together[1].image), np.asarray(alone.image))  # same seeds per photo


def test_overlapping_faces_are_done_in_layers(detector):
    image = compose(640, 480, [Placement((250, 240), 1.3), Placement((390, 250), 1.0)])
    crops_seen = []

    class Recorder:
        action, crop_size = "anonymized", CROP

        def __call__(self, crops, seeds):
            crops_seen.append([c.copy() for c in crops])
            return [np.full_like(c, 255) for c in crops]

    result = anonymize_photos([image], detector=detector, options=AnonymizeOptions(batch_size=8), replacer=Recorder())[
        0
    ]
    assert len(result.faces) == 2
    assert [len(batch) for batch in crops_seen] == [1, 1]  # two layers although the batch had room
    # The second (smaller) face was cropped after the first was pasted: where the masks overlap its
    # crop shows the first face's white replacement, not the original pixels.
    second = min(result.faces, key=lambda f: f.size)
    original = crop_face(image, ffhq_alignment(second.landmark_array, CROP, eye_scale=detector.eye_scale))
    seen = crops_seen[1][0]
    differs = changed(original, seen)
    assert differs.mean() > 0.005
    assert seen[differs].mean() > original[differs].mean() + 20
    union = _union(result.faces, detector, image.shape)
    assert not (changed(image, result.image) & ~union).any()


def test_a_face_that_fails_makes_the_photo_fail(detector, scene, scene_faces):
    target = scene_faces[2]
    bad_crop = lambda crop: abs(float(crop.mean()) - _crop_mean(scene, target, detector)) < 0.01  # noqa: E731
    pipe = FakePipeline(fail_when=bad_crop)
    options = AnonymizeOptions(crop_size=CROP, batch_size=4)
    result = anonymize_photos([scene], detector=detector, pipeline=pipe, options=options, faces=[scene_faces])[0]
    assert result.status == "error" and result.image is None
    assert "face 2 could not be anonymized" in result.error and "simulated model failure" in result.error
    failed = [o for o in result.outcomes if o.error]
    assert [o.face for o in failed] == [target] and failed[0].action == "failed"

    redacted = anonymize_photos(
        [scene],
        detector=detector,
        pipeline=FakePipeline(fail_when=bad_crop),
        options=AnonymizeOptions(crop_size=CROP, batch_size=4, on_error="redact"),
        faces=[scene_faces],
    )[0]
    assert redacted.status == "ok"
    assert [o.action for o in redacted.outcomes].count("blacked_out_on_error") == 1
    out = np.asarray(redacted.image)
    nose = target.landmarks[2]
    assert window(out, nose, 3).max() == 0  # blacked out, not left as it was
    # The other faces of the failed batch were retried alone and anonymized.
    assert [o.action for o in redacted.outcomes].count("anonymized") == len(SCENE) - 1


def _crop_mean(scene, face, detector):
    alignment = ffhq_alignment(face.landmark_array, CROP, eye_scale=detector.eye_scale)
    return float(crop_face(np.asarray(scene), alignment).mean())


def test_a_blank_model_output_fails_closed(detector, scene, scene_faces):
    result = anonymize_photos(
        [scene],
        detector=detector,
        pipeline=FakePipeline(blank=True),
        options=AnonymizeOptions(crop_size=CROP),
        faces=[scene_faces],
    )[0]
    assert result.status == "error" and result.image is None and "blank image" in result.error


@pytest.mark.parametrize("mode", ["blur", "pixelate", "black"])
def test_redaction_modes_need_no_model(detector, scene, scene_faces, mode):
    result = anonymize_photos([scene], detector=detector, options=AnonymizeOptions(mode=mode), faces=[scene_faces])[0]
    assert result.status == "ok"
    assert {o.action for o in result.outcomes} == {
        {"blur": "blurred", "pixelate": "pixelated", "black": "blacked_out"}[mode]
    }
    out = np.asarray(result.image)
    union = _union(scene_faces, detector, scene.shape, size=256)
    assert not (changed(scene, out) & ~union).any()
    big = max(scene_faces, key=lambda f: f.size)
    (x0, y0, x1, y1) = [int(v) for v in big.box]
    core_before = scene[y0 + 20 : y1 - 20, x0 + 20 : x1 - 20].astype(np.float32)
    core_after = out[y0 + 20 : y1 - 20, x0 + 20 : x1 - 20].astype(np.float32)
    if mode == "black":
        assert window(out, big.landmarks[2], 10).max() == 0
    else:
        # Fine detail gone: far less high-frequency energy than the original face.
        def detail(a):
            return np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()

        assert detail(core_after) < 0.5 * detail(core_before)


def test_small_faces_can_be_left_alone(detector, scene, scene_faces):
    smallest = min(scene_faces, key=lambda f: f.size)
    options = AnonymizeOptions(mode="black", min_face_size=smallest.size + 1)
    result = anonymize_photos([scene], detector=detector, options=options, faces=[scene_faces])[0]
    actions = {o.face: o.action for o in result.outcomes}
    assert actions[smallest] == "ignored_too_small"
    assert list(actions.values()).count("blacked_out") == len(SCENE) - 1
    out = np.asarray(result.image)
    np.testing.assert_array_equal(window(out, smallest.landmarks[2], 3), window(scene, smallest.landmarks[2], 3))


def test_a_photo_without_faces_comes_back_unchanged(detector):
    image = background(320, 240)
    result = anonymize_photo(PIL.Image.fromarray(image), detector=detector, pipeline=FakePipeline())
    assert result.status == "no_faces" and result.faces == []
    assert np.array_equal(np.asarray(result.image), image)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("mode", "swap", "mode: got 'swap', expected one of anonymize, blur, pixelate, black"),
        ("batch_size", 0, "batch_size: got 0"),
        ("num_inference_steps", 0, "num_inference_steps: got 0"),
        ("anonymization_degree", -1.0, "anonymization_degree: got -1.0"),
        ("anonymization_degree", 10.5, "anonymization_degree: got 10.5, expected a number from 0 to 10"),
        ("guidance_scale", float("inf"), "guidance_scale: got inf"),
        ("min_face_size", float("nan"), "min_face_size: got nan"),
        ("seed", -3, "seed: got -3"),
        ("crop_size", 8, "crop_size: got 8"),
        ("min_face_size", -1, "min_face_size: got -1"),
        ("on_error", "ignore", "on_error: got 'ignore', expected one of fail, redact"),
    ],
)
def test_bad_options_are_named(option, value, message):
    with pytest.raises(ValueError, match=message):
        AnonymizeOptions(**{option: value})


def test_anonymize_mode_needs_a_pipeline(detector, scene):
    with pytest.raises(ValueError, match="pipeline: got None"):
        anonymize_photo(scene, detector=detector)


# ------------------------------------------------------------------------------------------------
# The real pipeline class with the tiny random model


def test_tiny_model_end_to_end(tiny_pipeline, detector, scene, scene_faces):
    options = dict(crop_size=32, num_inference_steps=2, seed=3)
    runs = [
        anonymize_photos(
            [scene],
            detector=detector,
            pipeline=tiny_pipeline,
            options=AnonymizeOptions(batch_size=b, **options),
            faces=[scene_faces],
        )[0]
        for b in (1, 4, 4)
    ]
    assert all(r.status == "ok" for r in runs)
    one, four, again = (np.asarray(r.image).astype(int) for r in runs)
    assert np.array_equal(four, again)  # same photo, same seed: same output
    assert np.array_equal(one, four)  # on the CPU the model runs one face per call: batching changes nothing
    _assert_faces_replaced(scene, runs[1].image, scene_faces, min_difference=10.0)
    union = _union(scene_faces, detector, scene.shape, size=32)
    assert not (changed(scene, runs[1].image) & ~union).any()


def test_the_model_runs_one_face_per_call_on_the_cpu(tiny_pipeline):
    """CPU kernels round differently with more images in a call, so on the CPU the replacer calls the
    pipeline once per face: any batch gives each face the bytes it gets alone. ``one_face_per_call=False``
    (a GPU's default) batches, and is the control: each call then holds the whole batch."""
    from face_anon.replacers.diffusion import DiffusionAnonymizer

    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    seeds = [11, 12, 13, 14, 15]
    calls = []
    original = type(tiny_pipeline).__call__

    def counting(pipe, *args, **kwargs):
        calls.append(len(kwargs["image"]))
        return original(pipe, *args, **kwargs)

    def run(crops, seeds, **kwargs):
        calls.clear()
        replacer = DiffusionAnonymizer(tiny_pipeline, num_inference_steps=2, crop_size=32, **kwargs)
        outputs = replacer(crops, seeds)
        return outputs, list(calls)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(tiny_pipeline), "__call__", counting)
        batched, batched_calls = run(crops, seeds)
        alone = [run([crop], [seed])[0][0] for crop, seed in zip(crops, seeds)]
        control, control_calls = run(crops, seeds, one_face_per_call=False)
    assert batched_calls == [1] * 5 and control_calls == [5]
    assert all(np.array_equal(a, b) for a, b in zip(batched, alone))
    assert all(np.abs(a.astype(int) - b).max() <= 2 for a, b in zip(control, alone))  # the same faces, rounding aside
    assert not np.array_equal(batched[0], batched[1])  # and not one face five times
