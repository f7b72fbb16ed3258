# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""ReferenceNet and the attention processors of "Face Anonymization Made Simple" (Kung et al., WACV 2025).

A ReferenceNet is a copy of the denoising UNet's architecture that encodes an image once per call. The
hidden states entering the self-attention of its transformer blocks (the blocks' `norm1` outputs) are
its *states*. The denoising UNet's self-attention then attends over `[own tokens ; source state ;
driving state]`, where the source ReferenceNet encodes the identity and the conditioning ReferenceNet
the driving image (pose, expression, gaze, lighting, background).

Which state each UNet attention uses is fixed by how the published weights were trained: every attention
of a UNet block uses the states of the *first* attention (`attentions.0`) of the same block in each
ReferenceNet, layer by layer. `reference_layer_name` spells that pairing out.
"""

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.utils import BaseOutput


_SELF_ATTENTION = re.compile(
    r"^(?P<block>(?:down_blocks\.\d+|mid_block|up_blocks\.\d+))"
    r"\.attentions\.(?P<attention>\d+)"
    r"\.transformer_blocks\.(?P<layer>\d+)\.attn1(?:\.processor)?$"
)


def reference_layer_name(attention_name: str) -> str | None:
    """The ReferenceNet layer whose state the UNet self-attention `attention_name` attends to.

    `down_blocks.1.attentions.1.transformer_blocks.0.attn1` -> `down_blocks.1.attentions.0.transformer_blocks.0`:
    every attention of a block pairs with the block's first attention, at the same transformer layer. (The
    reference hands each block one list of states, flattened by attention then layer, and indexes it with
    the layer index only.) Returns `None` for attention layers that take no reference state.
    """
    match = _SELF_ATTENTION.match(attention_name)
    if match is None:
        return None
    return f"{match['block']}.attentions.0.transformer_blocks.{match['layer']}"


class ReferenceStateRecorder:
    """Self-attention processor of a ReferenceNet layer whose input is a reference state.

    It computes the ordinary self-attention and keeps its input, the transformer block's `norm1` output,
    until `pop_state` hands it over.
    """

    def __init__(self) -> None:
        self.attention = AttnProcessor2_0()
        self.state: torch.Tensor | None = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.state = hidden_states
        return self.attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def pop_state(self) -> torch.Tensor:
        if self.state is None:
            raise RuntimeError("This ReferenceNet layer recorded no state: its forward pass did not reach it.")
        state, self.state = self.state, None
        return state


@dataclass
class ReferenceNetOutput(BaseOutput):
    """
    Args:
        states (`dict[str, torch.Tensor]`):
            Per recorded layer (`"down_blocks.0.attentions.0.transformer_blocks.0"`, ...), the hidden states that
            entered its self-attention, shaped `[batch, tokens, channels]`.
    """

    states: dict[str, torch.Tensor]


class ReferenceNetModel(UNet2DConditionModel):
    r"""
    A UNet that encodes a reference image into self-attention states for the denoising UNet.

    Same architecture and parameter names as [`UNet2DConditionModel`], so the published `referencenet/` and
    `conditioning_referencenet/` checkpoints load unchanged. Its forward pass returns the states of the layers
    the denoising UNet attends to (see `reference_layer_name`); the UNet's own output is not used.
    """

    @property
    def state_layer_names(self) -> list[str]:
        """The layers whose states `forward` returns: the first attention's layers of each block."""
        layers = (reference_layer_name(name) for name in self.attn_processors)
        return list(dict.fromkeys(layer for layer in layers if layer is not None))

    def _state_recorders(self) -> dict[str, ReferenceStateRecorder]:
        """The recorder of each state layer, installed on first use (the config machinery builds the model
        through `UNet2DConditionModel.__init__`, so there is no constructor of our own to do it in)."""
        processors = self.attn_processors
        wanted = {f"{layer}.attn1.processor": layer for layer in self.state_layer_names}
        if not all(isinstance(processors[name], ReferenceStateRecorder) for name in wanted):
            processors = {
                name: ReferenceStateRecorder() if name in wanted else processor
                for name, processor in processors.items()
            }
            self.set_attn_processor(processors)
            processors = self.attn_processors
        return {layer: processors[name] for name, layer in wanted.items()}

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = True,
    ) -> ReferenceNetOutput | tuple[dict[str, torch.Tensor]]:
        """
        Args:
            sample (`torch.Tensor`): clean latents of the reference image, `[batch, 4, h, w]`.
            timestep: the diffusion timestep; the paper's model always encodes references at timestep 0.
            encoder_hidden_states (`torch.Tensor`): the reference image's CLIP embedding, `[batch, 1, dim]`.
        """
        recorders = self._state_recorders()
        super().forward(sample, timestep, encoder_hidden_states, return_dict=False)
        states = {layer: recorder.pop_state() for layer, recorder in recorders.items()}
        if not return_dict:
            return (states,)
        return ReferenceNetOutput(states=states)


class ReferenceAttnProcessor:
    r"""
    Self-attention of the denoising UNet over its own tokens followed by the reference tokens.

    Equal to attending with queries, keys and values over `[own ; source ; driving]` and keeping the first N
    outputs, as the reference implementation does, but computes queries for the N own tokens only, and projects
    the reference tokens (which do not change during a call) to keys and values once per call instead of at every
    step.

    Args:
        reference_layer (`str`): the ReferenceNet layer whose states this attention receives.
    """

    def __init__(self, reference_layer: str) -> None:
        self.reference_layer = reference_layer
        self.reference_states: torch.Tensor | None = None
        self._reference_key: torch.Tensor | None = None
        self._reference_value: torch.Tensor | None = None

    def set_reference_states(self, reference_states: torch.Tensor | None, attn: Attention | None = None) -> None:
        """Sets `[source ; driving]` tokens, `[batch, 2N, channels]`, for the following UNet calls (`None` clears).

        Their keys and values are projected once for all those calls: here, if `attn` (the attention this
        processor serves) is given and its weights are on the states' device, so that every step, a compiled one
        too, runs the same code; otherwise on the next call (under `enable_model_cpu_offload()` the UNet's weights
        reach the device only when its forward starts). Only the keys and values are kept once projected.
        """
        self.reference_states = reference_states
        self._reference_key = None
        self._reference_value = None
        if reference_states is not None and attn is not None:
            weight = getattr(attn.to_k, "weight", None)
            if weight is not None and weight.device == reference_states.device:
                self._project_reference_states(attn)

    def _split_heads(self, attn: Attention, tensor: torch.Tensor) -> torch.Tensor:
        batch_size = tensor.shape[0]
        return tensor.view(batch_size, -1, attn.heads, tensor.shape[-1] // attn.heads).transpose(1, 2)

    def _project_reference_states(self, attn: Attention) -> None:
        key = self._split_heads(attn, attn.to_k(self.reference_states))
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        self._reference_key = key
        self._reference_value = self._split_heads(attn, attn.to_v(self.reference_states))
        self.reference_states = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self._reference_key is None:
            if self.reference_states is None:
                raise RuntimeError(
                    f"No reference states were set for the self-attention paired with `{self.reference_layer}`; "
                    "run the UNet through `FaceAnonPipeline`, which sets them."
                )
            self._project_reference_states(attn)
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError(
                "ReferenceAttnProcessor only handles unmasked self-attention on [batch, tokens, channels]."
            )

        residual = hidden_states
        query = self._split_heads(attn, attn.to_q(hidden_states))
        own_key = self._split_heads(attn, attn.to_k(hidden_states))
        own_value = self._split_heads(attn, attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            own_key = attn.norm_k(own_key)

        key = torch.cat([own_key, self._reference_key], dim=2)
        value = torch.cat([own_value, self._reference_value], dim=2)

        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).flatten(2).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
