"""The recipe on tiny models: what trains, the target, source dropout against the pipeline's null identity, training
against inference, and gradient checkpointing."""

import dataclasses
import re

import pytest
import torch
from diffusers import DDPMScheduler
from torch.utils.data import default_collate

from face_anon_training import recipe, repository
from face_anon_training.data import FaceTripletDataset, read_metadata

from .training_helpers import (
    NUM_DEAD_TENSORS,
    NUM_REFERENCENET_TENSORS,
    NUM_TRANSFORMER_TENSORS,
    RESOLUTION,
    SCHEDULER_CONFIG,
)


TRANSFORMER_BLOCK = re.compile(r"\.attentions\.\d+\.transformer_blocks\.")
# The tiny ReferenceNet's last state is `up_blocks.2.attentions.0.transformer_blocks.0`'s norm1 output.
DEAD = re.compile(r"^up_blocks\.2\.attentions\.(?:[12]\.|0\.transformer_blocks\.0\.(?!norm1\.))")


@pytest.fixture
def components(base_model):
    sd, clip = base_model
    components = recipe.load_components(str(sd), str(clip))
    recipe.configure_trainable(components)
    recipe.install_reference_processors(components.unet)
    return components


@pytest.fixture(scope="module")
def batch(base_model, train_data_dir):
    from transformers import CLIPImageProcessorPil

    dataset = FaceTripletDataset(
        read_metadata(train_data_dir), RESOLUTION, CLIPImageProcessorPil.from_pretrained(base_model[1])
    )
    return default_collate([dataset[i] for i in range(len(dataset))])


def step(components, batch, *, dropout=0.0, seed=0, **kwargs):
    return recipe.compute_loss(
        components,
        batch,
        noise_generator=torch.Generator().manual_seed(seed),
        dropout_generator=torch.Generator().manual_seed(seed + 1),
        conditioning_dropout_prob=dropout,
        **kwargs,
    )


def test_trainable_set_is_the_documented_one(components):
    """The whole UNet; each ReferenceNet's transformer blocks except the dead ones; nothing of VAE and CLIP."""
    unet = dict(components.unet.named_parameters())
    assert len(unet) == NUM_REFERENCENET_TENSORS and all(p.requires_grad for p in unet.values())
    for name in recipe.REFERENCENETS:
        parameters = dict(getattr(components, name).named_parameters())
        transformer = {key for key in parameters if TRANSFORMER_BLOCK.search(key)}
        dead = {key for key in transformer if DEAD.match(key)}
        assert (len(parameters), len(transformer), len(dead)) == (
            NUM_REFERENCENET_TENSORS,
            NUM_TRANSFORMER_TENSORS,
            NUM_DEAD_TENSORS,
        )
        assert {key for key, p in parameters.items() if p.requires_grad} == transformer - dead
    assert not any(p.requires_grad for p in components.vae.parameters())
    assert not any(p.requires_grad for p in components.image_encoder.parameters())


def test_trained_referencenet_parameters_are_exactly_those_the_loss_reaches(components, batch):
    """With every ReferenceNet tensor trainable, the transformer-block tensors with a nonzero gradient are exactly
    the ones `configure_trainable` trains: the pairing rule decides which blocks are dead."""
    trained = {
        name: {key for key, p in getattr(components, name).named_parameters() if p.requires_grad}
        for name in recipe.REFERENCENETS
    }
    for name in recipe.REFERENCENETS:
        getattr(components, name).requires_grad_(True)
    step(components, batch).loss.backward()
    for name in recipe.REFERENCENETS:
        reached = {
            key
            for key, p in getattr(components, name).named_parameters()
            if TRANSFORMER_BLOCK.search(key) and p.grad is not None and p.grad.abs().sum() > 0
        }
        assert reached == trained[name]
        grads = dict(getattr(components, name).named_parameters())
        assert grads["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"].grad.abs().sum() > 0
        assert grads["up_blocks.2.attentions.1.transformer_blocks.0.attn1.to_q.weight"].grad is None


def test_target_noisy_latents_and_loss(components, batch):
    """Target = sqrt(abar) eps - sqrt(1 - abar) z; at the final timestep the input is the noise itself (the
    authors' quirk, on by default) and otherwise the forward process; the loss is the float32 MSE."""
    two_steps = DDPMScheduler(**dict(SCHEDULER_CONFIG, num_train_timesteps=2))  # t in {0, 1}: both occur
    components = dataclasses.replace(components, noise_scheduler=two_steps)
    big = {key: value.repeat(3, *[1] * (value.ndim - 1)) for key, value in batch.items()}  # 9 samples
    for pure_noise in (True, False):
        out = step(components, big, pure_noise_at_final_timestep=pure_noise)
        abar = two_steps.alphas_cumprod[out.timesteps].view(-1, 1, 1, 1)
        expected_target = abar.sqrt() * out.noise - (1 - abar).sqrt() * out.latents
        forward = abar.sqrt() * out.latents + (1 - abar).sqrt() * out.noise
        final = out.timesteps == 1
        assert 0 < final.sum() < len(final)
        assert torch.allclose(out.target, expected_target, atol=1e-6)
        assert torch.allclose(out.noisy_latents[~final], forward[~final], atol=1e-6)
        if pure_noise:
            assert torch.equal(out.noisy_latents[final], out.noise[final])
        else:
            assert torch.allclose(out.noisy_latents[final], forward[final], atol=1e-6)
        assert out.loss.dtype == torch.float32
        assert torch.allclose(out.loss, ((out.prediction - expected_target) ** 2).mean(), atol=1e-7)


def _capture_unet_inputs(unet):
    captured = {}

    def hook(module, args, kwargs):
        captured["tokens"] = kwargs["encoder_hidden_states"]
        captured["states"] = kwargs["cross_attention_kwargs"]["reference_states"]

    return captured, unet.register_forward_pre_hook(hook, with_kwargs=True)


def _capture_calls(model):
    calls = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append((args, output)))
    return calls, handle


def test_source_dropout_feeds_the_pipelines_null_identity(components, batch):
    """With p = 1 every sample's source tokens and UNet token are those of the pipeline's null identity (its
    `encode_reference_states` with guidance, first half); with p = 0 they are the source's own. The dropout draws
    do not move the other draws."""
    captured, handle = _capture_unet_inputs(components.unet)
    sources, source_handle = _capture_calls(components.referencenet)
    drivings, driving_handle = _capture_calls(components.conditioning_referencenet)
    with torch.no_grad():
        dropped = step(components, batch, dropout=1.0)
        dropped_states, dropped_tokens = captured["states"], captured["tokens"]
        kept = step(components, batch, dropout=0.0)
        kept_states, kept_tokens = captured["states"], captured["tokens"]
    for h in (handle, source_handle, driving_handle):
        h.remove()
    assert not dropped.source_kept.any() and kept.source_kept.all()
    assert torch.equal(dropped.noise, kept.noise) and torch.equal(dropped.timesteps, kept.timesteps)

    (source_latents, _, source_embeds), _ = sources[1]  # the kept run's source inputs
    (driving_latents, _, driving_embeds), _ = drivings[1]
    pipe = repository.build_pipeline(components)
    with torch.no_grad():
        states, tokens = pipe.encode_reference_states(
            driving_latents,
            driving_embeds,
            source_latents,
            source_embeds,
            anonymization_degree=0.0,
            do_classifier_free_guidance=True,
        )
    batch_size = len(source_latents)
    assert set(states) == set(dropped_states)
    for layer, state in states.items():  # (float32 rounding: the pipeline runs the null identity at batch 1)
        null_half, source_half = state[:batch_size], state[batch_size:]
        torch.testing.assert_close(dropped_states[layer], null_half, rtol=1e-5, atol=1e-5, msg=layer)
        torch.testing.assert_close(kept_states[layer], source_half, rtol=1e-5, atol=1e-5, msg=layer)
        assert (null_half - source_half).abs().max() > 1e-2  # control: the null identity is not the source
    assert torch.equal(dropped_tokens[:, 0], torch.zeros_like(dropped_tokens[:, 0]))
    assert torch.allclose(dropped_tokens, tokens[:batch_size], atol=1e-6)
    assert torch.allclose(kept_tokens, tokens[batch_size:], atol=1e-6)


def test_training_prediction_equals_the_pipelines(components, base_model, train_data_dir):
    """The trainer's UNet prediction for the pipeline's own inputs equals the pipeline's (which projects the
    reference keys and values once per call, where training projects them in the forward)."""
    import PIL.Image

    pipe = repository.build_pipeline(components)
    pipe.set_progress_bar_config(disable=True)
    unet_calls, unet_handle = (
        [],
        components.unet.register_forward_hook(
            lambda module, args, kwargs, output: unet_calls.append((args, kwargs, output[0])), with_kwargs=True
        ),
    )
    sources, source_handle = _capture_calls(components.referencenet)
    drivings, driving_handle = _capture_calls(components.conditioning_referencenet)
    driving = PIL.Image.open(train_data_dir / "img" / "1.png")
    source = PIL.Image.open(train_data_dir / "img" / "0.png")
    pipe(
        driving,
        source_image=source,
        anonymization_degree=0.0,
        guidance_scale=1.0,
        num_inference_steps=2,
        height=RESOLUTION,
        width=RESOLUTION,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    for h in (unet_handle, source_handle, driving_handle):
        h.remove()

    (source_latents, _, source_embeds), _ = sources[0]
    (driving_latents, _, driving_embeds), _ = drivings[0]
    (noisy, timestep), kwargs, pipeline_prediction = unet_calls[-1]
    with torch.no_grad():
        states, tokens = recipe.encode_references(
            components.referencenet,
            components.conditioning_referencenet,
            source_latents,
            source_embeds,
            driving_latents,
            driving_embeds,
        )
        prediction = recipe.predict(components.unet, noisy, timestep, tokens, states)
    assert torch.equal(tokens, kwargs["encoder_hidden_states"])
    assert torch.allclose(prediction, pipeline_prediction, atol=1e-5)
    assert pipeline_prediction.abs().max() > 1e-2  # a real prediction, not a degenerate zero


def test_gradient_checkpointing_gives_the_same_gradients(components, batch):
    def gradients():
        components.unet.zero_grad(set_to_none=True)
        for name in recipe.REFERENCENETS:
            getattr(components, name).zero_grad(set_to_none=True)
        step(components, batch, dropout=0.5).loss.backward()
        return {
            f"{name}.{key}": p.grad.clone()
            for name in recipe.TRAINED_MODELS
            for key, p in getattr(components, name).named_parameters()
            if p.grad is not None
        }

    components.unet.train()
    plain = gradients()
    components.unet.enable_gradient_checkpointing()
    checkpointed = gradients()
    assert components.unet.is_gradient_checkpointing
    assert plain.keys() == checkpointed.keys() and len(plain) > NUM_REFERENCENET_TENSORS
    for key in plain:
        assert torch.allclose(plain[key], checkpointed[key], atol=1e-6), key
