"""The attention processors, the UNet <-> ReferenceNet layer pairing, and how the processors come and go."""

import copy
import logging

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from helpers import load_input

from modeling_referencenet import (
    ReferenceAttnProcessor,
    UnpairedAttnProcessor,
    install_reference_processors,
    reference_layer_name,
)


LAYER = "down_blocks.0.attentions.0.transformer_blocks.0"


def concatenated_attention(attn: Attention, own: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The reference implementation's form: queries, keys and values for all 3N tokens, first N outputs kept."""
    tokens = torch.cat([own, reference], dim=1)
    return AttnProcessor2_0()(attn, tokens)[:, : own.shape[1]]


def random_attention(generator: torch.Generator) -> Attention:
    attn = Attention(query_dim=64, heads=4, dim_head=16, upcast_attention=True)
    for parameter in attn.parameters():
        parameter.data = torch.randn(parameter.shape, generator=generator) * 0.2
    return attn


def self_attention_names(model: torch.nn.Module) -> list[str]:
    """The self-attention modules of a UNet, found by walking its modules (not through its processors)."""
    return [name for name, module in model.named_modules() if isinstance(module, Attention) and name.endswith("attn1")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_query_only_attention_equals_concatenated_attention(dtype):
    """Same function as the reference form, for both ways of passing the reference tokens, and in float16 no less
    accurate than the reference form (against float32)."""
    generator = torch.Generator().manual_seed(0)
    attn = random_attention(generator)
    attn_in_dtype = random_attention(torch.Generator().manual_seed(0)).to(dtype)
    batch, tokens = 3, 40
    processor = ReferenceAttnProcessor(LAYER, f"{LAYER}.attn1")

    with torch.no_grad():
        for _ in range(2):
            own = torch.randn(batch, tokens, 64, generator=generator)
            reference = torch.randn(batch, 2 * tokens, 64, generator=generator)  # [source ; driving]
            exact = concatenated_attention(attn, own, reference)
            reference_form = concatenated_attention(attn_in_dtype, own.to(dtype), reference.to(dtype))
            keys_values = {f"{LAYER}.attn1": processor.project(attn_in_dtype, reference.to(dtype))}
            from_states = processor(attn_in_dtype, own.to(dtype), reference_states={LAYER: reference.to(dtype)})
            from_keys_values = processor(attn_in_dtype, own.to(dtype), reference_keys_values=keys_values)
            torch.testing.assert_close(from_keys_values, from_states, rtol=0, atol=0)
            assert from_states.dtype == dtype
            error, reference_error = (
                (from_states.float() - exact).abs().max(),
                (reference_form.float() - exact).abs().max(),
            )
            assert error <= 2 * reference_error + 1e-5, (error, reference_error)


def test_processor_without_reference_tokens_fails_naming_the_layer():
    attn = Attention(query_dim=8, heads=1, dim_head=8)
    processor = ReferenceAttnProcessor("mid_block.attentions.0.transformer_blocks.0", "mid_block.attentions.0.x.attn1")
    with pytest.raises(ValueError, match=r"mid_block\.attentions\.0\.x\.attn1.*mid_block\.attentions\.0\."):
        processor(attn, torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match="mid_block.attentions.0.transformer_blocks.0"):  # states of other layers
        processor(attn, torch.zeros(1, 4, 8), reference_states={LAYER: torch.zeros(1, 8, 8)})


@pytest.mark.parametrize(
    ("unet_layer", "reference_layer"),
    [
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn1", "down_blocks.0.attentions.0.transformer_blocks.0"),
        # every attention of a block uses the block's first attention: not the one of the same name
        ("down_blocks.1.attentions.1.transformer_blocks.0.attn1", "down_blocks.1.attentions.0.transformer_blocks.0"),
        (
            "up_blocks.3.attentions.2.transformer_blocks.0.attn1.processor",
            "up_blocks.3.attentions.0.transformer_blocks.0",
        ),
        ("up_blocks.1.attentions.2.transformer_blocks.1.attn1", "up_blocks.1.attentions.0.transformer_blocks.1"),
        ("mid_block.attentions.0.transformer_blocks.0.attn1", "mid_block.attentions.0.transformer_blocks.0"),
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn2", None),  # cross-attention takes no state
        ("down_blocks.0.attentions.0.transformer_blocks.0", None),
    ],
)
def test_reference_layer_pairing(unet_layer, reference_layer):
    assert reference_layer_name(unet_layer) == reference_layer


def test_install_pairs_every_unet_self_attention_and_can_be_undone(fresh_pipeline):
    unet = fresh_pipeline.unet
    before = unet.attn_processors
    previous = install_reference_processors(unet)
    processors = unet.attn_processors
    assert previous.keys() == before.keys() and all(previous[k] is before[k] for k in before)
    self_attentions = self_attention_names(unet)
    paired = {name: p for name, p in processors.items() if isinstance(p, ReferenceAttnProcessor)}
    assert sorted(p.attention_name for p in paired.values()) == sorted(self_attentions)
    assert all(p.reference_layer == reference_layer_name(p.attention_name) for p in paired.values())
    # every other attention (cross-attention) runs diffusers' attention, naming the reference arguments
    assert all(type(p) is UnpairedAttnProcessor for name, p in processors.items() if name not in paired)
    # the ReferenceNets provide exactly the states the UNet asks for
    assert set(fresh_pipeline.referencenet.state_layer_names) == {p.reference_layer for p in paired.values()}
    assert install_reference_processors(unet).keys() == processors.keys()  # idempotent: nothing replaced
    assert all(unet.attn_processors[k] is processors[k] for k in processors)
    unet.set_attn_processor(previous)
    assert all(unet.attn_processors[k] is before[k] for k in before)


def test_referencenet_states_are_the_self_attention_inputs(tiny_pipeline):
    """A state is the hidden states entering the block's self-attention (its norm1 output)."""
    net = tiny_pipeline.conditioning_referencenet
    block = net.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0")
    seen = {}
    hook = block.norm1.register_forward_hook(lambda module, args, output: seen.setdefault("norm1", output.clone()))
    try:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            states = net(
                torch.randn(2, 4, 8, 8, generator=generator), 0, torch.randn(2, 1, 32, generator=generator)
            ).states
    finally:
        hook.remove()
    torch.testing.assert_close(states["down_blocks.1.attentions.0.transformer_blocks.0"], seen["norm1"], rtol=0, atol=0)
    assert all(state.shape[0] == 2 for state in states.values())


def test_referencenet_is_differentiable(tiny_pipeline):
    """Training backpropagates through the states (the contract `face_anon_training` relies on)."""
    net = copy.deepcopy(tiny_pipeline.referencenet)
    generator = torch.Generator().manual_seed(0)
    states = net(torch.randn(1, 4, 8, 8, generator=generator), 0, torch.randn(1, 1, 32, generator=generator)).states
    sum(state.square().mean() for state in states.values()).backward()
    block = net.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0")
    assert block.norm1.weight.grad is not None and block.norm1.weight.grad.abs().sum() > 0


def run(pipe, **kwargs):
    kwargs = {"num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np", **kwargs}
    return pipe(load_input("A"), generator=torch.Generator().manual_seed(0), **kwargs).images


def test_set_default_attn_processor_works_before_and_after_calls(fresh_pipeline):
    """Outside a call the UNet carries the processors it had (the pipeline installs its own per call), so diffusers'
    `set_default_attn_processor` works on every component, and the next call gives the same images."""
    pipe = fresh_pipeline
    before = pipe.unet.attn_processors
    expected = run(pipe)
    assert all(pipe.unet.attn_processors[k] is before[k] for k in before)
    for component in pipe.components.values():
        if hasattr(component, "set_default_attn_processor"):
            component.set_default_attn_processor()
    assert all(type(p) is AttnProcessor for p in pipe.unet.attn_processors.values())
    np.testing.assert_allclose(run(pipe), expected, rtol=0, atol=1e-5)  # the VAE's default attention rounds otherwise
    assert all(type(p) is AttnProcessor for p in pipe.unet.attn_processors.values())  # put back after the call
    pipe.unet.set_default_attn_processor()  # and works again after it
    pipe.referencenet.set_default_attn_processor()


def test_a_call_logs_no_warning_about_unexpected_attention_arguments(fresh_pipeline):
    """`Attention.forward` warns for every layer whose processor does not name a passed argument (it would once per
    layer and step); our processors name them all."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    diffusers_logger = logging.getLogger("diffusers")
    diffusers_logger.addHandler(handler)
    try:
        run(fresh_pipeline)
    finally:
        diffusers_logger.removeHandler(handler)
    assert not [r for r in records if "are not expected by" in r.getMessage()]
