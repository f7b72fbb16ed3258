"""Pipeline behaviour: inputs, reproducibility, batching, schedulers, dtypes, callbacks, validation."""

import math

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import load_input
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)


SIZE = 64


def run(pipe, image=None, **kwargs):
    """A short anonymization of the fixture's face A at 64 px, as float NHWC."""
    kwargs = {"num_inference_steps": 2, "height": SIZE, "width": SIZE, "output_type": "np", **kwargs}
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(load_input("A") if image is None else image, **kwargs).images


def generators(*seeds):
    return [torch.Generator().manual_seed(seed) for seed in seeds]


# ------------------------------------------------------------------------------------------ reproducibility


def test_same_seed_same_output_different_seed_different_output(tiny_pipeline):
    first = run(tiny_pipeline, generator=torch.Generator().manual_seed(7))
    again = run(tiny_pipeline, generator=torch.Generator().manual_seed(7))
    other = run(tiny_pipeline, generator=torch.Generator().manual_seed(8))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-2


@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
def test_batch_equals_images_run_one_by_one(tiny_pipeline, guidance_scale):
    faces = [load_input("A"), load_input("B")]
    batch = run(tiny_pipeline, faces, generator=generators(1, 2), guidance_scale=guidance_scale)
    alone = [
        run(tiny_pipeline, face, generator=generators(seed), guidance_scale=guidance_scale)
        for face, seed in zip(faces, (1, 2))
    ]
    np.testing.assert_allclose(batch, np.concatenate(alone), atol=1e-5, rtol=0)


def test_swap_batch_equals_swaps_run_one_by_one(tiny_pipeline):
    driving, source = [load_input("A"), load_input("B")], [load_input("B"), load_input("A")]
    batch = run(tiny_pipeline, driving, source_image=source, anonymization_degree=0.0, generator=generators(3, 4))
    alone = [
        run(tiny_pipeline, d, source_image=s, anonymization_degree=0.0, generator=generators(seed))
        for d, s, seed in zip(driving, source, (3, 4))
    ]
    np.testing.assert_allclose(batch, np.concatenate(alone), atol=1e-5, rtol=0)


def test_num_images_per_prompt(tiny_pipeline):
    images = run(
        tiny_pipeline, [load_input("A"), load_input("B")], num_images_per_prompt=2, generator=generators(1, 2, 3, 4)
    )
    assert images.shape == (4, SIZE, SIZE, 3)
    # outputs are grouped per input, each from its own generator
    np.testing.assert_allclose(images[2], run(tiny_pipeline, load_input("B"), generator=generators(3))[0], atol=1e-5)
    assert np.abs(images[0] - images[1]).max() > 1e-2


def test_stochastic_scheduler_draws_from_the_generator(fresh_pipeline):
    """DDPM adds noise at every step: with the caller's generator, a seed still fixes the output."""
    fresh_pipeline.scheduler = DDPMScheduler.from_config(fresh_pipeline.scheduler.config)
    torch.manual_seed(0)
    first = run(fresh_pipeline, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)  # the global RNG must not matter
    again = run(fresh_pipeline, generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(first, again)


def test_latents_argument_is_used(tiny_pipeline):
    latents = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(3))
    from_latents = run(tiny_pipeline, latents=latents)
    np.testing.assert_array_equal(from_latents, run(tiny_pipeline, latents=latents.clone()))
    assert np.abs(from_latents - run(tiny_pipeline, latents=-latents)).max() > 1e-2


# ------------------------------------------------------------------------------------------ what it computes


def test_anonymization_degree_changes_the_face(tiny_pipeline):
    reconstruction = run(tiny_pipeline, anonymization_degree=0.0)
    anonymized = run(tiny_pipeline, anonymization_degree=1.25)
    assert np.abs(reconstruction - anonymized).mean() > 1e-3


def test_degree_zero_without_source_is_a_swap_with_itself(tiny_pipeline):
    face = load_input("A")
    alone = run(tiny_pipeline, face, anonymization_degree=0.0)
    np.testing.assert_allclose(alone, run(tiny_pipeline, face, source_image=face, anonymization_degree=0.0), atol=1e-5)


def test_guidance_one_runs_the_unet_on_the_unpaired_batch(tiny_pipeline):
    batches = []
    hook = tiny_pipeline.unet.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    try:
        run(tiny_pipeline, guidance_scale=1.0)
        run(tiny_pipeline, guidance_scale=4.0)
    finally:
        hook.remove()
    assert batches == [1, 1, 2, 2]


def test_reference_states_are_released_after_the_call(tiny_pipeline):
    run(tiny_pipeline)
    processors = tiny_pipeline.install_reference_processors().values()
    assert all(p.reference_states is None and p._reference_key is None for p in processors)


# ------------------------------------------------------------------------------------------ inputs and outputs


def test_input_kinds_give_the_same_result(tiny_pipeline):
    face = load_input("A")
    array = np.array(face)  # a writable copy
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    expected = run(tiny_pipeline, face)
    for image in (array, array.astype(np.float32) / 255, tensor, tensor[None], [face], [array], [tensor]):
        np.testing.assert_allclose(run(tiny_pipeline, image), expected, atol=1e-5, rtol=0)


def test_grayscale_and_rgba_are_converted_to_rgb(tiny_pipeline):
    face = load_input("A")
    gray, rgba = face.convert("L"), face.convert("RGBA")
    np.testing.assert_allclose(run(tiny_pipeline, gray), run(tiny_pipeline, gray.convert("RGB")), atol=1e-6)
    np.testing.assert_allclose(run(tiny_pipeline, rgba), run(tiny_pipeline, face), atol=1e-6)
    gray_array = np.asarray(gray)
    np.testing.assert_allclose(run(tiny_pipeline, gray_array), run(tiny_pipeline, gray.convert("RGB")), atol=1e-6)


def test_inputs_are_resized_and_default_size_is_the_unets(tiny_pipeline):
    big = load_input("A").resize((128, 96))
    assert run(tiny_pipeline, big).shape == (1, SIZE, SIZE, 3)
    default = tiny_pipeline(load_input("A"), num_inference_steps=1, output_type="np").images
    size = tiny_pipeline.unet.config.sample_size * tiny_pipeline.vae_scale_factor
    assert tiny_pipeline.default_image_size == size
    assert default.shape == (1, size, size, 3)


def test_output_types_agree(tiny_pipeline):
    array = run(tiny_pipeline)
    tensor = run(tiny_pipeline, output_type="pt")
    pil = run(tiny_pipeline, output_type="pil")
    latents = run(tiny_pipeline, output_type="latent")
    np.testing.assert_allclose(tensor.permute(0, 2, 3, 1).numpy(), array, atol=1e-6)
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (SIZE, SIZE)
    np.testing.assert_allclose(np.asarray(pil[0]) / 255, array[0], atol=1 / 255 + 1e-6)
    assert latents.shape == (1, 4, SIZE // 2, SIZE // 2)
    as_tuple = tiny_pipeline(
        load_input("A"),
        num_inference_steps=2,
        height=SIZE,
        width=SIZE,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        return_dict=False,
    )
    np.testing.assert_array_equal(as_tuple[0], array)


# ------------------------------------------------------------------------------------------ schedulers, dtypes


@pytest.mark.parametrize(
    "scheduler_class",
    [DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler],
)
def test_schedulers_swapped_in_from_config(fresh_pipeline, scheduler_class):
    fresh_pipeline.scheduler = scheduler_class.from_config(fresh_pipeline.scheduler.config)
    images = run(fresh_pipeline, num_inference_steps=3)
    assert np.isfinite(images).all() and images.std() > 1e-3
    np.testing.assert_array_equal(images, run(fresh_pipeline, num_inference_steps=3))


def test_float16_matches_float32(fresh_pipeline):
    expected = run(fresh_pipeline)
    half = run(fresh_pipeline.to(torch.float16))
    assert half.dtype == np.float32 and np.isfinite(half).all()
    assert np.abs(half - expected).mean() < 5e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_model_cpu_offload_match_the_cpu(fresh_pipeline):
    expected = run(fresh_pipeline)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32 here
    try:
        on_gpu = run(fresh_pipeline.to("cuda"))
        np.testing.assert_allclose(on_gpu, expected, atol=1e-5)  # measured on an H200: 3e-7 (mean)
        fresh_pipeline.to("cpu")
        fresh_pipeline.enable_model_cpu_offload()
        np.testing.assert_allclose(run(fresh_pipeline), on_gpu, atol=1e-5)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.xfail(
    reason="open: on an H200 the tiny model in float16 differed from float32 by 0.16 (mean), on the "
    "CPU by < 5e-3; float32 on CUDA matches the CPU to 3e-7. Not yet isolated.",
    strict=False,
)
def test_cuda_float16_matches_float32(fresh_pipeline):
    expected = run(fresh_pipeline)
    assert np.abs(run(fresh_pipeline.to("cuda", torch.float16)) - expected).mean() < 5e-3


# ------------------------------------------------------------------------------------------ progress, callbacks


def test_progress_bar_counts_the_steps(fresh_pipeline, capsys):
    fresh_pipeline.set_progress_bar_config(disable=False)
    run(fresh_pipeline, num_inference_steps=3)
    assert "3/3" in capsys.readouterr().err


def test_callback_on_step_end_sees_and_replaces_latents(tiny_pipeline):
    calls = []

    def callback(pipe, step, timestep, callback_kwargs):
        calls.append((step, int(timestep), callback_kwargs["latents"].shape))
        return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    images = run(tiny_pipeline, num_inference_steps=3, callback_on_step_end=callback, output_type="latent")
    assert [c[0] for c in calls] == [0, 1, 2] and calls[0][2] == (1, 4, SIZE // 2, SIZE // 2)
    assert calls[0][1] > calls[1][1] > calls[2][1]
    assert torch.count_nonzero(images) == 0


# ------------------------------------------------------------------------------------------ bad input


A = "A"  # placeholder replaced by the face image in the test below

BAD_INPUTS = [
    ({"source_image": A, "anonymization_degree": 1.0}, ValueError, "anonymization_degree=0"),
    ({"anonymization_degree": -0.5}, ValueError, "anonymization_degree"),
    ({"anonymization_degree": math.nan}, ValueError, "anonymization_degree"),
    ({"anonymization_degree": math.inf}, ValueError, "anonymization_degree"),
    ({"anonymization_degree": "high"}, TypeError, "anonymization_degree"),
    ({"guidance_scale": -1.0}, ValueError, "guidance_scale"),
    ({"guidance_scale": math.nan}, ValueError, "guidance_scale"),
    ({"source_image": [A, A], "anonymization_degree": 0.0}, ValueError, "source_image"),
    ({"image": []}, ValueError, "image"),
    ({"image": None}, ValueError, "image"),
    ({"image": "face.png"}, TypeError, "image"),
    ({"image": [A, "face.png"]}, TypeError, "image"),
    ({"image": np.zeros((8, 8, 3), dtype=np.int64)}, TypeError, "image"),
    ({"image": torch.zeros(2, 8, 8)}, ValueError, "image"),
    ({"source_image": 3, "anonymization_degree": 0.0}, TypeError, "source_image"),
    ({"height": 63}, ValueError, "height"),
    ({"width": 65}, ValueError, "width"),
    ({"height": 0}, ValueError, "height"),
    ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
    ({"num_inference_steps": 2.5}, ValueError, "num_inference_steps"),
    ({"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt"),
    ({"generator": "seed"}, TypeError, "generator"),
    ({"latents": torch.zeros(1, 4, 8, 8)}, ValueError, "latents"),
    ({"output_type": "jpeg"}, ValueError, "output_type"),
    ({"callback_on_step_end_tensor_inputs": ["noise_pred"]}, ValueError, "callback_on_step_end_tensor_inputs"),
    ({"conditioning_image": A}, ValueError, "conditioning_image"),
]


@pytest.mark.parametrize(("kwargs", "error", "argument"), BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))])
def test_bad_inputs_raise_naming_the_argument(tiny_pipeline, kwargs, error, argument):
    face = load_input("A")

    def resolve(value):
        if isinstance(value, list):
            return [resolve(item) for item in value]
        return face if isinstance(value, str) and value == A else value

    kwargs = {name: resolve(value) for name, value in kwargs.items()}
    image = kwargs.pop("image", face)
    with pytest.raises(error, match=argument):
        tiny_pipeline(
            image, num_inference_steps=kwargs.pop("num_inference_steps", 1), height=kwargs.pop("height", SIZE), **kwargs
        )


def test_generator_list_of_wrong_length(tiny_pipeline):
    with pytest.raises(ValueError, match="generator"):
        tiny_pipeline([load_input("A"), load_input("B")], generator=generators(1, 2, 3), num_inference_steps=1)
