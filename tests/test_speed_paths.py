"""The fast paths compute the plain path's function: reference keys and values projected once per call, the UNet
under `torch.compile(fullgraph=True)`, float16, and the authors' attention as the benchmark models it."""

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_input
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from modeling_referencenet import ReferenceAttnProcessor, reference_layer_name


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from authors_model import install_concatenated_processors  # noqa: E402


SIZE = 64


def run(pipe, seed=0, **kwargs):
    kwargs = {"num_inference_steps": 3, "height": SIZE, "width": SIZE, "output_type": "np", **kwargs}
    return pipe(load_input("A"), generator=torch.Generator().manual_seed(seed), **kwargs).images


def unet_inputs(pipe, batch=2, seed=0, dtype=torch.float32):
    """A guided UNet step's inputs and `[source ; driving]` states per ReferenceNet layer, at 64 px."""
    generator = torch.Generator().manual_seed(seed)
    latent = SIZE // pipe.vae_scale_factor
    with torch.no_grad():
        shapes = pipe.referencenet(torch.zeros(1, 4, latent, latent), 0, torch.zeros(1, 1, 32)).states
    states = {
        layer: torch.randn(batch, 2 * state.shape[1], state.shape[2], generator=generator).to(dtype)
        for layer, state in shapes.items()
    }
    sample = torch.randn(batch, 4, latent, latent, generator=generator).to(dtype)
    tokens = torch.randn(batch, 2, 32, generator=generator).to(dtype)
    return sample, torch.tensor(501), tokens, states


def unet_output(unet, sample, timestep, tokens):
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=tokens, return_dict=False)[0]


def random_attention(seed=0):
    attn = Attention(query_dim=32, heads=2, dim_head=16)
    generator = torch.Generator().manual_seed(seed)
    for parameter in attn.parameters():
        parameter.data = torch.randn(parameter.shape, generator=generator) * 0.2
    return attn


# ------------------------------------------------------------------------ keys and values projected once per call


def test_projection_with_the_attention_happens_at_once_and_matches_the_lazy_path():
    attn, generator = random_attention(), torch.Generator().manual_seed(1)
    states, own = torch.randn(2, 20, 32, generator=generator), torch.randn(2, 10, 32, generator=generator)
    eager, lazy = ReferenceAttnProcessor("x"), ReferenceAttnProcessor("x")
    with torch.no_grad():
        eager.set_reference_states(states, attn)
        assert eager._reference_key is not None and eager.reference_states is None  # projected, states released
        lazy.set_reference_states(states)
        assert lazy._reference_key is None  # no attention given: projected on the first call
        expected = AttnProcessor2_0()(attn, torch.cat([own, states], dim=1))[:, :10]
        torch.testing.assert_close(eager(attn, own), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(lazy(attn, own), eager(attn, own), rtol=0, atol=0)
        assert lazy._reference_key is not None and lazy.reference_states is None


def test_projection_waits_while_the_weights_are_elsewhere():
    """Under model CPU offload the UNet's weights reach the device only in its forward: projecting must wait."""
    attn = random_attention().to("meta")
    processor = ReferenceAttnProcessor("x")
    states = torch.randn(1, 8, 32)
    processor.set_reference_states(states, attn)
    assert processor._reference_key is None and processor.reference_states is states


def test_pipeline_hands_every_attention_its_keys_and_values_and_releases_them(fresh_pipeline):
    _, _, _, states = unet_inputs(fresh_pipeline)
    with torch.no_grad():
        processors = fresh_pipeline.set_reference_states(states)
    assert len(processors) == 11
    for name, processor in processors.items():
        assert processor.reference_layer == reference_layer_name(name)
        assert processor._reference_key.shape[0] == 2 and processor.reference_states is None
    fresh_pipeline.set_reference_states(None)
    assert all(p._reference_key is None and p.reference_states is None for p in processors.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_unet_with_our_attention_equals_the_authors_attention(fresh_pipeline, dtype):
    """The whole UNet: ours (queries for the own tokens, keys and values projected once) against the reference
    form (queries, keys and values for all 3N tokens), exactly in float32 and within float16's rounding."""
    unet = fresh_pipeline.unet
    sample, timestep, tokens, states = unet_inputs(fresh_pipeline)
    install_concatenated_processors(unet, states)
    exact = unet_output(unet, sample, timestep, tokens)
    reference = ours = None
    try:
        unet.to(dtype)
        low = {layer: state.to(dtype) for layer, state in states.items()}
        install_concatenated_processors(unet, low)
        reference = unet_output(unet, sample.to(dtype), timestep, tokens.to(dtype)).float()
        fresh_pipeline.set_reference_states(low)
        ours = unet_output(unet, sample.to(dtype), timestep, tokens.to(dtype)).float()
    finally:
        fresh_pipeline.set_reference_states(None)
        unet.to(torch.float32)
    if dtype == torch.float32:
        torch.testing.assert_close(ours, exact, rtol=0, atol=1e-5)
    else:
        error, reference_error = (ours - exact).abs().max(), (reference - exact).abs().max()
        assert 0 < reference_error < 0.05 and error <= 2 * reference_error, (error, reference_error)


# ------------------------------------------------------------------------------------------------- loop


def test_unet_gets_the_schedulers_timesteps(fresh_pipeline):
    seen = []
    hook = fresh_pipeline.unet.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    try:
        run(fresh_pipeline, num_inference_steps=4)
    finally:
        hook.remove()
    np.testing.assert_array_equal(torch.stack(seen).numpy(), fresh_pipeline.scheduler.timesteps.numpy())
    assert all(t.ndim == 0 for t in seen)  # a tensor, never a Python number: a compiled UNet would recompile per step


def test_compiled_unet_runs_one_graph_for_every_step_and_call(fresh_pipeline):
    """`torch.compile(fullgraph=True)` traces our processors without graph breaks, and neither the next step nor a
    new call (new states, same shapes) recompiles. Dynamo's tracing only (backend "eager"): seconds on a CPU."""
    from torch._dynamo.utils import counters

    expected = [run(fresh_pipeline, seed) for seed in (0, 1)]
    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    fresh_pipeline.unet.compile(fullgraph=True, backend="eager")
    try:
        compiled = [run(fresh_pipeline, seed) for seed in (0, 1)]
        assert counters["stats"]["unique_graphs"] - graphs == 1
    finally:
        fresh_pipeline.unet._compiled_call_impl = None
        torch._dynamo.reset()
    for got, want in zip(compiled, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_denoising_loop_does_not_synchronize(fresh_pipeline):
    """From the second step on, the loop never waits for the device (a CUDA generator draws the step noise)."""
    from diffusers import DDPMScheduler

    pipe = fresh_pipeline.to("cuda", torch.float16)
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    steps = 4

    def watch(pipe, step, timestep, callback_kwargs):
        torch.cuda.set_sync_debug_mode("warn" if step < steps - 1 else 0)
        return callback_kwargs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pipe(
                load_input("A"),
                num_inference_steps=steps,
                height=SIZE,
                width=SIZE,
                output_type="latent",
                generator=torch.Generator("cuda").manual_seed(0),
                callback_on_step_end=watch,
            )
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert not [w for w in caught if "called a synchronizing" in str(w.message)]
