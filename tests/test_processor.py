"""The attention processors and the UNet <-> ReferenceNet layer pairing."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from modeling_referencenet import ReferenceAttnProcessor, reference_layer_name


def concatenated_attention(attn: Attention, own: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The reference implementation's form: queries, keys and values for all 3N tokens, first N outputs kept."""
    tokens = torch.cat([own, reference], dim=1)
    return AttnProcessor2_0()(attn, tokens)[:, : own.shape[1]]


def random_attention(generator: torch.Generator) -> Attention:
    attn = Attention(query_dim=64, heads=4, dim_head=16, upcast_attention=True)
    for parameter in attn.parameters():
        parameter.data = torch.randn(parameter.shape, generator=generator) * 0.2
    return attn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_query_only_cached_attention_equals_concatenated_attention(dtype):
    """Same function as the reference form, and in float16 no less accurate than it (against float32)."""
    generator = torch.Generator().manual_seed(0)
    attn = random_attention(generator)
    attn_in_dtype = random_attention(torch.Generator().manual_seed(0)).to(dtype)
    batch, tokens = 3, 40
    processor = ReferenceAttnProcessor("down_blocks.0.attentions.0.transformer_blocks.0")

    def check(own, reference):
        exact = concatenated_attention(attn, own, reference)
        reference_form = concatenated_attention(attn_in_dtype, own.to(dtype), reference.to(dtype))
        ours = processor(attn_in_dtype, own.to(dtype))
        assert ours.dtype == dtype
        error, reference_error = (ours.float() - exact).abs().max(), (reference_form.float() - exact).abs().max()
        assert error <= 2 * reference_error + 1e-5, (error, reference_error)

    with torch.no_grad():
        reference = torch.randn(batch, 2 * tokens, 64, generator=generator)  # [source ; driving]
        processor.set_reference_states(reference.to(dtype))
        for _ in range(2):  # the second call reuses the cached reference keys and values
            check(torch.randn(batch, tokens, 64, generator=generator), reference)
        new_reference = torch.randn(batch, 2 * tokens, 64, generator=generator)
        processor.set_reference_states(new_reference.to(dtype))  # must drop the previous states' cache
        check(torch.randn(batch, tokens, 64, generator=generator), new_reference)


def test_processor_without_states_fails_loudly():
    attn = Attention(query_dim=8, heads=1, dim_head=8)
    processor = ReferenceAttnProcessor("mid_block.attentions.0.transformer_blocks.0")
    with pytest.raises(RuntimeError, match="mid_block.attentions.0.transformer_blocks.0"):
        processor(attn, torch.zeros(1, 4, 8))


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


def test_pipeline_pairs_every_unet_self_attention(tiny_pipeline):
    processors = tiny_pipeline.unet.attn_processors
    self_attentions = [name for name in processors if name.endswith("attn1.processor")]
    assert self_attentions and all(isinstance(processors[name], ReferenceAttnProcessor) for name in self_attentions)
    # cross-attention keeps diffusers' processor
    assert not any(isinstance(p, ReferenceAttnProcessor) for name, p in processors.items() if "attn2" in name)
    # the ReferenceNets provide exactly the states the UNet asks for: one per block with attentions
    wanted = {processors[name].reference_layer for name in self_attentions}
    assert set(tiny_pipeline.referencenet.state_layer_names) == wanted
    assert len(wanted) == 5  # tiny UNet: 2 down blocks, mid, 2 up blocks with attentions


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


def test_pipeline_reinstalls_processors_replaced_since(fresh_pipeline):
    fresh_pipeline.unet.set_attn_processor(AttnProcessor2_0())
    processors = fresh_pipeline.install_reference_processors()
    assert len(processors) == 11  # tiny UNet self-attentions: 2 x 2 down, 1 mid, 2 x 3 up
    assert all(isinstance(p, ReferenceAttnProcessor) for p in processors.values())
