"""The fast paths compute the plain path's function: reference keys and values projected once per call, the UNet
under `torch.compile(fullgraph=True)`, float16, and the authors' attention as the benchmark models it."""

import copy
import warnings

import numpy as np
import pytest
import torch
from authors_model import install_concatenated_processors
from helpers import load_input

from modeling_referencenet import install_reference_processors, project_reference_states, reference_layer_name


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


def unet_output(unet, sample, timestep, tokens, **attention_kwargs):
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=tokens, cross_attention_kwargs=attention_kwargs).sample


# ------------------------------------------------------------------------ keys and values projected once per call


def test_keys_values_projected_once_equal_states_projected_in_the_forward(fresh_pipeline):
    """The three ways to hand a call's reference tokens to the UNet compute the same thing: projected ahead (the
    pipeline), raw states (training), and raw states with an empty dict the first step fills (CPU offload)."""
    unet = fresh_pipeline.unet
    sample, timestep, tokens, states = unet_inputs(fresh_pipeline)
    install_reference_processors(unet)
    from_states = unet_output(unet, sample, timestep, tokens, reference_states=states)
    with torch.no_grad():
        keys_values = project_reference_states(unet, states)
    assert sorted(keys_values) == sorted(
        name for name in (key.removesuffix(".processor") for key in unet.attn_processors) if reference_layer_name(name)
    )
    torch.testing.assert_close(
        unet_output(unet, sample, timestep, tokens, reference_keys_values=keys_values), from_states, rtol=0, atol=0
    )
    filled = {}
    first = unet_output(unet, sample, timestep, tokens, reference_states=states, reference_keys_values=filled)
    assert filled.keys() == keys_values.keys()  # the first step projected every layer into the call's dict
    second = unet_output(unet, sample, timestep, tokens, reference_keys_values=filled)
    torch.testing.assert_close(first, from_states, rtol=0, atol=0)
    torch.testing.assert_close(second, from_states, rtol=0, atol=0)


def test_projection_waits_while_the_weights_are_elsewhere(fresh_pipeline):
    """Under model CPU offload the UNet's weights reach the device only in its forward: the pipeline then hands the
    states and an empty dict instead of projecting (here the states sit on the meta device, the weights on the CPU)."""
    _, _, _, states = unet_inputs(fresh_pipeline)
    with torch.no_grad():
        install_reference_processors(fresh_pipeline.unet)
        here = fresh_pipeline.prepare_reference_attention(states)
        elsewhere = fresh_pipeline.prepare_reference_attention({k: v.to("meta") for k, v in states.items()})
    assert set(here) == {"reference_keys_values"} and len(here["reference_keys_values"]) > 0
    assert elsewhere["reference_keys_values"] == {} and elsewhere["reference_states"].keys() == states.keys()


def test_unet_is_differentiable_through_the_reference_states(fresh_pipeline):
    """Training's contract: gradients reach the states (and so the ReferenceNets) through the UNet's projection."""
    unet = fresh_pipeline.unet
    sample, timestep, tokens, states = unet_inputs(fresh_pipeline)
    install_reference_processors(unet)
    states = {layer: state.requires_grad_() for layer, state in states.items()}
    unet(
        sample, timestep, encoder_hidden_states=tokens, cross_attention_kwargs={"reference_states": states}
    ).sample.square().mean().backward()
    assert all(state.grad is not None and state.grad.abs().sum() > 0 for state in states.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_unet_with_our_attention_equals_the_authors_attention(fresh_pipeline, dtype):
    """The whole UNet: ours (queries for the own tokens, keys and values projected once) against the reference
    form (queries, keys and values for all 3N tokens), exactly in float32 and within float16's rounding."""
    sample, timestep, tokens, states = unet_inputs(fresh_pipeline)
    exact_unet = fresh_pipeline.unet
    install_concatenated_processors(exact_unet)
    exact = unet_output(exact_unet, sample, timestep, tokens, reference_states=states)
    unet = copy.deepcopy(exact_unet).to(dtype)
    low = {layer: state.to(dtype) for layer, state in states.items()}
    reference = unet_output(unet, sample.to(dtype), timestep, tokens.to(dtype), reference_states=low).float()
    install_reference_processors(unet)
    with torch.no_grad():
        keys_values = project_reference_states(unet, low)
    ours = unet_output(unet, sample.to(dtype), timestep, tokens.to(dtype), reference_keys_values=keys_values).float()
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
    scheduler = copy.deepcopy(fresh_pipeline.scheduler)
    scheduler.set_timesteps(4)
    np.testing.assert_array_equal(torch.stack(seen).numpy(), scheduler.timesteps.numpy())
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
        torch._dynamo.reset()
    for got, want in zip(compiled, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_dynamo_explains_the_unet_step_as_one_graph_without_breaks(fresh_pipeline):
    """What `torch._dynamo.explain` says of one UNet step with the call's keys and values (the pipeline's path)."""
    unet = fresh_pipeline.unet
    sample, timestep, tokens, states = unet_inputs(fresh_pipeline)
    install_reference_processors(unet)
    with torch.no_grad():
        attention_kwargs = {"reference_keys_values": project_reference_states(unet, states)}
        explanation = torch._dynamo.explain(unet)(
            sample, timestep, encoder_hidden_states=tokens, cross_attention_kwargs=attention_kwargs
        )
    torch._dynamo.reset()
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


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
