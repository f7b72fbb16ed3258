"""The pipeline computes what the paper's reference implementation computes: its golden outputs, to 1e-4."""

import numpy as np
import pytest
import torch
from helpers import ATOL, CASES, case_call_kwargs, case_latents, load_expected, load_input


CASE_A = next(case for case in CASES if case["name"] == "a_anonymize_cfg")


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_matches_reference_outputs(tiny_pipeline, case):
    images = tiny_pipeline(**case_call_kwargs(case), latents=case_latents(case)).images
    expected = load_expected(case["expected_output"]["file"])
    assert images.shape == expected.shape
    np.testing.assert_allclose(images, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_seed_reproduces_reference_initial_noise(tiny_pipeline, case):
    """The initial noise is the first draw from the generator, as in the reference: no `latents=` needed."""
    generator = torch.Generator().manual_seed(case["generator_seed"])
    images = tiny_pipeline(**case_call_kwargs(case), generator=generator).images
    np.testing.assert_allclose(images, load_expected(case["expected_output"]["file"]), rtol=0, atol=ATOL)


def test_reference_readme_call_runs_unchanged(tiny_pipeline):
    """The authors' spelling (`source_image=x, conditioning_image=x`) anonymizes, ignoring the source."""
    spec = CASE_A["case_spec"]
    with pytest.warns(FutureWarning, match="conditioning_image"):
        images = tiny_pipeline(
            source_image=load_input("B"),  # ignored when anonymizing, as in the reference
            conditioning_image=load_input(spec["conditioning"]),
            num_inference_steps=spec["num_inference_steps"],
            guidance_scale=spec["guidance_scale"],
            anonymization_degree=spec["anonymization_degree"],
            generator=torch.Generator().manual_seed(CASE_A["generator_seed"]),
            width=spec["size"],
            height=spec["size"],
            output_type="np",
        ).images
    np.testing.assert_allclose(images, load_expected(CASE_A["expected_output"]["file"]), rtol=0, atol=ATOL)


def test_reference_readme_swap_call(tiny_pipeline):
    case = next(case for case in CASES if case["name"] == "c_swap_cfg")
    spec = case["case_spec"]
    with pytest.warns(FutureWarning):
        images = tiny_pipeline(
            source_image=load_input(spec["source"]),
            conditioning_image=load_input(spec["conditioning"]),
            num_inference_steps=spec["num_inference_steps"],
            guidance_scale=spec["guidance_scale"],
            anonymization_degree=0.0,
            latents=case_latents(case),
            width=spec["size"],
            height=spec["size"],
            output_type="np",
        ).images
    np.testing.assert_allclose(images, load_expected(case["expected_output"]["file"]), rtol=0, atol=ATOL)


class TestCaseAIntermediates:
    """Case a step by step, so that a mismatch points at the stage that broke."""

    spec = CASE_A["case_spec"]
    files = {name: entry["file"] for name, entry in CASE_A["intermediates"].items()}

    @pytest.fixture(autouse=True)
    def no_grad(self):
        with torch.no_grad():
            yield

    def images(self, pipe):
        size = self.spec["size"]
        return pipe.preprocess_image(load_input(self.spec["conditioning"]), size, size, "image")

    def test_timesteps(self, tiny_pipeline):
        tiny_pipeline.scheduler.set_timesteps(self.spec["num_inference_steps"])
        np.testing.assert_array_equal(tiny_pipeline.scheduler.timesteps.numpy(), load_expected(self.files["timesteps"]))

    def test_clip_pixel_values(self, tiny_pipeline):
        pixel_values = tiny_pipeline.feature_extractor(
            images=self.images(tiny_pipeline), do_rescale=False, return_tensors="pt"
        ).pixel_values
        np.testing.assert_allclose(pixel_values.numpy(), load_expected(self.files["clip_pixel_values"]), atol=1e-6)

    def test_image_embeds(self, tiny_pipeline):
        embeds = tiny_pipeline.encode_image(self.images(tiny_pipeline), 1, torch.device("cpu"))
        np.testing.assert_allclose(embeds.numpy(), load_expected(self.files["image_embeds"]), atol=1e-5)

    def test_vae_latents(self, tiny_pipeline):
        generator = torch.Generator().manual_seed(0)
        latents = tiny_pipeline.prepare_image_latents(self.images(tiny_pipeline), 1, torch.device("cpu"), generator)
        np.testing.assert_allclose(latents.numpy(), load_expected(self.files["vae_latents_scaled"]), atol=1e-5)

    def test_unet_steps_and_final_latents(self, tiny_pipeline):
        unet_inputs, unet_outputs, trajectory = [], [], []

        def record_unet(module, args, kwargs, output):
            unet_inputs.append(args[0].clone())
            unet_outputs.append(output[0].clone())

        def record_step(pipe, step, timestep, callback_kwargs):
            trajectory.append(callback_kwargs["latents"].clone())
            return {}

        hook = tiny_pipeline.unet.register_forward_hook(record_unet, with_kwargs=True)
        try:
            kwargs = dict(case_call_kwargs(CASE_A), output_type="latent")
            final = tiny_pipeline(**kwargs, latents=case_latents(CASE_A), callback_on_step_end=record_step).images
        finally:
            hook.remove()

        assert len(unet_outputs) == CASE_A["unet_call_count"]
        np.testing.assert_allclose(unet_inputs[0].numpy(), load_expected(self.files["unet_first_input"]), atol=1e-6)
        np.testing.assert_allclose(
            unet_outputs[0].numpy(), load_expected(self.files["unet_first_noise_pred"]), atol=1e-4
        )
        np.testing.assert_allclose(
            torch.stack(trajectory).numpy(), load_expected(self.files["latents_trajectory"]), atol=1e-4
        )
        np.testing.assert_allclose(final.numpy(), load_expected(self.files["final_latents"]), atol=1e-4)

    def test_decode(self, tiny_pipeline):
        latents = torch.from_numpy(load_expected(self.files["final_latents"]))
        decoded = tiny_pipeline.decode_latents(latents, output_type="np")
        np.testing.assert_allclose(decoded, load_expected(CASE_A["expected_output"]["file"]), atol=1e-5)
