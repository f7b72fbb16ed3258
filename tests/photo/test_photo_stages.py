"""The stage API: run one by one it gives what the whole-photo call gives; the selection hook; identity sources."""

import numpy as np
import PIL.Image
import pytest
import torch

from face_anon import (
    AnonymizeOptions,
    DiffusionAnonymizer,
    FaceAction,
    FaceDecision,
    Redactor,
    anonymize_photo,
    anonymize_photos,
    apply_on_error,
    crop_layers,
    cut_crops,
    face_outcomes,
    find_faces,
    paste_faces,
    plan_crops,
    replace_crops,
    select_faces,
)

from .photo_helpers import FakePipeline, Placement, changed, compose, mask_union, window


CROP = 64


def _run_stages(image, detector, replacer, options, selector=None):
    """The stage sequence as the stages module documents it, written out by hand."""
    faces = find_faces(image, detector, options)
    decisions = select_faces(image, faces, selector)
    plans = plan_crops(
        image, faces, options, crop_size=replacer.crop_size, eye_scale=detector.eye_scale, decisions=decisions
    )
    results = {}
    for layer in crop_layers(plans):
        crops = cut_crops(image, layer)
        replaced = apply_on_error(
            replace_crops(replacer, crops, batch_size=options.batch_size), options.on_error, replacer.crop_size
        )
        image = paste_faces(image, crops, replaced)
        results.update(zip((crop.plan.index for crop in crops), replaced))
    return image, face_outcomes(plans, results)


@pytest.mark.parametrize("overlapping", [False, True])
def test_stages_one_by_one_give_what_anonymize_photo_gives(detector, scene, overlapping):
    image = compose(640, 480, [Placement((250, 240), 1.3), Placement((390, 250), 1.0)]) if overlapping else scene
    options = AnonymizeOptions(crop_size=CROP, batch_size=3, seed=11)
    replacer = DiffusionAnonymizer(FakePipeline(), crop_size=CROP)
    by_hand, outcomes = _run_stages(np.array(image), detector, replacer, options)
    whole = anonymize_photo(image, detector=detector, pipeline=FakePipeline(), options=options)
    np.testing.assert_array_equal(by_hand, np.asarray(whole.image))
    assert outcomes == list(whole.outcomes)
    assert all(outcome.action is FaceAction.ANONYMIZED for outcome in outcomes)
    if overlapping:
        assert len(crop_layers(plan_crops(image, whole.faces, options, crop_size=CROP))) == 2


def test_paste_faces_leaves_its_input_alone(detector, scene, scene_faces):
    options = AnonymizeOptions(mode="black", crop_size=CROP)
    plans = plan_crops(scene, scene_faces, options, crop_size=CROP, eye_scale=detector.eye_scale)
    crops = cut_crops(scene, [plan for plan in plans if plan.replace])
    replaced = replace_crops(Redactor("black", crop_size=CROP), crops, batch_size=8)
    before = scene.copy()
    out = paste_faces(scene, crops, replaced)
    np.testing.assert_array_equal(scene, before)
    assert changed(scene, out).any()
    assert [plan.seed for plan in plans] == list(range(len(scene_faces)))  # seed + index, in face order


def test_the_selection_hook_keeps_chosen_faces(detector, scene, scene_faces):
    largest = max(range(len(scene_faces)), key=lambda i: scene_faces[i].size)

    def keep_the_largest(image, faces):
        assert faces == scene_faces  # the hook sees the faces in find_faces order
        return [
            FaceDecision(keep=True, reason="matches reference ref.jpg", matched_reference="ref.jpg", distance=0.31)
            if i == largest
            else FaceDecision(reason=None, distance=0.9)
            for i in range(len(faces))
        ]

    options = AnonymizeOptions(mode="black")
    result = anonymize_photo(scene, detector=detector, options=options, selector=keep_the_largest)
    kept = result.outcomes[largest]
    assert kept.action is FaceAction.KEPT and kept.reason == "matches reference ref.jpg"
    assert kept.to_json()["matched_reference"] == "ref.jpg" and kept.to_json()["distance"] == 0.31
    others = [o for i, o in enumerate(result.outcomes) if i != largest]
    assert all(o.action is FaceAction.BLACKED_OUT and o.distance == 0.9 for o in others)
    out = np.asarray(result.image)
    face = scene_faces[largest]
    np.testing.assert_array_equal(window(out, face.landmarks[2], 5), window(scene, face.landmarks[2], 5))
    # Nothing outside the other faces' masks changed: the kept face is not touched, except where
    # a neighbour's mask reaches over it.
    reach = mask_union([o.face.landmarks for o in others], 256, scene.shape, detector.eye_scale)
    assert not (changed(scene, out) & ~reach).any()


def test_a_selector_must_decide_for_every_face(detector, scene, scene_faces):
    with pytest.raises(ValueError, match=r"selector: got '1 decisions', expected one FaceDecision per face \(7\)"):
        select_faces(scene, scene_faces, lambda image, faces: [FaceDecision()])


def _direct(pipe, crop, seed, source=None):
    """What the pipeline gives for one face called directly (the independent computation)."""
    kwargs = {"source_image": PIL.Image.fromarray(source), "anonymization_degree": 0.0} if source is not None else {}
    output = pipe(
        image=PIL.Image.fromarray(crop),
        guidance_scale=4.0,
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(seed),
        output_type="pil",
        **({"anonymization_degree": 1.25} | kwargs),
    )
    return np.asarray(output.images[0].convert("RGB"))


def test_identity_sources_reach_the_pipeline(tiny_pipeline, scene, scene_faces, detector):
    options = AnonymizeOptions(crop_size=32)
    plans = plan_crops(scene, scene_faces, options, crop_size=32, eye_scale=detector.eye_scale)[:3]
    crops = cut_crops(scene, plans)
    source = np.array(crops[2].pixels[::-1])  # some other face: the third crop upside down
    replacer = DiffusionAnonymizer(tiny_pipeline, num_inference_steps=2, crop_size=32)
    replaced = replace_crops(replacer, crops, batch_size=3, sources=[None, source, None])
    assert [r.action for r in replaced] == [FaceAction.ANONYMIZED] * 3
    np.testing.assert_array_equal(replaced[0].pixels, _direct(tiny_pipeline, crops[0].pixels, crops[0].seed))
    np.testing.assert_array_equal(replaced[1].pixels, _direct(tiny_pipeline, crops[1].pixels, crops[1].seed, source))
    assert not np.array_equal(replaced[1].pixels, _direct(tiny_pipeline, crops[1].pixels, crops[1].seed))

    # Degree 0 without a source would hand the face its own identity back: that face fails, closed.
    keeper = DiffusionAnonymizer(tiny_pipeline, anonymization_degree=0.0, num_inference_steps=2, crop_size=32)
    replaced = replace_crops(keeper, crops[:2], batch_size=2, sources=[None, source])
    assert replaced[0].action is FaceAction.FAILED and "anonymization_degree: got 0.0" in replaced[0].error
    np.testing.assert_array_equal(replaced[1].pixels, _direct(tiny_pipeline, crops[1].pixels, crops[1].seed, source))


def test_redaction_ignores_sources_and_sources_must_match_crops(scene, scene_faces, detector):
    options = AnonymizeOptions(mode="blur", crop_size=CROP)
    crops = cut_crops(scene, plan_crops(scene, scene_faces, options, crop_size=CROP)[:2])
    blur = Redactor("blur", crop_size=CROP)
    with_sources = replace_crops(blur, crops, batch_size=2, sources=[crops[1].pixels, None])
    without = replace_crops(blur, crops, batch_size=2)
    for a, b in zip(with_sources, without):
        np.testing.assert_array_equal(a.pixels, b.pixels)
    with pytest.raises(ValueError, match=r"sources: got '1 sources', expected one per crop \(2\) or None"):
        replace_crops(blur, crops, batch_size=2, sources=[None])


def test_photos_batched_together_match_each_alone_with_a_selector(detector, scene):
    small = compose(480, 360, [Placement((240, 180), 1.1)], seed=4)
    options = AnonymizeOptions(crop_size=CROP, batch_size=16)

    def keep_first(image, faces):
        return [FaceDecision(keep=i == 0, reason="first" if i == 0 else None) for i in range(len(faces))]

    together = anonymize_photos(
        [scene, small], detector=detector, pipeline=FakePipeline(), options=options, selector=keep_first
    )
    for image, result in zip([scene, small], together):
        alone = anonymize_photo(image, detector=detector, pipeline=FakePipeline(), options=options, selector=keep_first)
        np.testing.assert_array_equal(np.asarray(result.image), np.asarray(alone.image))
        assert result.outcomes[0].action is FaceAction.KEPT
    assert together[1].status == "ok" and np.array_equal(np.asarray(together[1].image), small)  # its only face kept
