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

Interface (the pipeline, the training script and the benchmarks use exactly this):

- `ReferenceNetModel(...)(sample, timestep, encoder_hidden_states, return_dict=True)` returns
  `ReferenceNetOutput(states={reference_layer: Tensor[B, N, C]})`, keyed by the names `reference_layer_name`
  returns (`"down_blocks.1.attentions.0.transformer_blocks.0"`). Differentiable; re-entrant.
- `install_reference_processors(unet)` makes a plain `UNet2DConditionModel` attend to reference states: a
  `ReferenceAttnProcessor` on every self-attention paired with a ReferenceNet layer, an `UnpairedAttnProcessor`
  (diffusers' attention, accepting and ignoring the reference arguments) on every other attention.
- That UNet then takes the call's reference tokens through `cross_attention_kwargs`, in either form:

  - `{"reference_states": {reference_layer: torch.cat([source_state, driving_state], dim=1)}}`: each
    attention projects its layer's `[B, 2N, C]` tokens to keys and values inside the forward. Differentiable
    and safe under gradient checkpointing (training).
  - `{"reference_keys_values": project_reference_states(unet, reference_states)}`: keys and values
    projected once, before the denoising loop, and reused by every step (inference). With
    `reference_states` given as well, an attention missing from the dict projects its states on first use
    and stores the result in that dict (the call's own dict), for the steps after.

- `reference_attention(unet)` installs the processors for the duration of a `with` block and puts back the
  ones it found when the last overlapping block ends, so that outside a pipeline call the UNet is a plain
  diffusers UNet (`set_default_attn_processor()`, xformers, slicing behave as usual).

No per-call tensor is ever stored on a processor or a model: two calls may run at the same time.
"""

import contextlib
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.utils import BaseOutput


_SELF_ATTENTION = re.compile(
    r"^(?P<block>(?:down_blocks\.\d+|mid_block|up_blocks\.\d+))"
    r"\.attentions\.(?P<attention>\d+)"
    r"\.transformer_blocks\.(?P<layer>\d+)\.attn1(?:\.processor)?$"
)
_PROCESSOR_SUFFIX = ".processor"


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


def replace_attn_processors(model: torch.nn.Module, replacement: Callable[[str], object | None]) -> dict[str, object]:
    """Replaces, by attention name (`"...attn1"`), each processor for which `replacement(name)` returns one.

    Returns every processor found before, keyed as `model.attn_processors` keys them, so that
    `model.set_attn_processor(returned)` puts them back. Leaves the model untouched when nothing changes.
    """
    previous = model.attn_processors
    processors = {}
    for key, processor in previous.items():
        new = replacement(key.removesuffix(_PROCESSOR_SUFFIX))
        processors[key] = processor if new is None else new
    if any(processors[key] is not previous[key] for key in previous):
        model.set_attn_processor(processors)  # (it consumes the dict it is given)
    return previous


class UnpairedAttnProcessor(AttnProcessor2_0):
    """diffusers' scaled-dot-product attention for layers that take no reference tokens (cross-attention, and the
    ReferenceNets' layers), naming the reference arguments so that `Attention.forward` passes them without a
    warning; it ignores them."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reference_states: dict[str, torch.Tensor] | None = None,
        reference_keys_values: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        recorded_states: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if recorded_states is not None:
            self.record(hidden_states, recorded_states)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def record(self, hidden_states: torch.Tensor, recorded_states: dict[str, torch.Tensor]) -> None:
        """What a ReferenceNet forward (which passes `recorded_states`) keeps of this layer's input: nothing here."""


class ReferenceStateRecorder(UnpairedAttnProcessor):
    """Self-attention of a ReferenceNet layer whose input is a reference state: computes the ordinary attention
    and writes its input, the transformer block's `norm1` output, into the call's `recorded_states` dict.

    Args:
        layer (`str`): the layer's name, the key of its state (`"mid_block.attentions.0.transformer_blocks.0"`).
    """

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer

    def record(self, hidden_states: torch.Tensor, recorded_states: dict[str, torch.Tensor]) -> None:
        recorded_states[self.layer] = hidden_states


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

    def install_state_recorders(self) -> list[str]:
        """Puts a `ReferenceStateRecorder` on each state layer's self-attention and an `UnpairedAttnProcessor` on
        every other attention, unless they are there; returns the state layers. `forward` calls it, so the
        recorders come back after `set_attn_processor` or `set_default_attn_processor` replaced them. (The config
        machinery builds the model through `UNet2DConditionModel.__init__`: no constructor of our own to do it in.)
        """
        layers = self.state_layer_names

        def replacement(name: str) -> UnpairedAttnProcessor | None:
            processor = self.get_submodule(name).processor
            layer = name.removesuffix(".attn1") if name.endswith(".attn1") else None
            if layer in layers:
                return None if getattr(processor, "layer", None) == layer else ReferenceStateRecorder(layer)
            return None if type(processor) is UnpairedAttnProcessor else UnpairedAttnProcessor()

        replace_attn_processors(self, replacement)
        return layers

    def set_default_attn_processor(self) -> None:
        """diffusers' default attention on every layer; `forward` puts the state recorders back, which compute the
        same attention."""
        self.set_attn_processor(AttnProcessor())

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
        layers = self.install_state_recorders()
        recorded: dict[str, torch.Tensor] = {}  # this call's own: the recorders write into it
        super().forward(
            sample,
            timestep,
            encoder_hidden_states,
            cross_attention_kwargs={"recorded_states": recorded},
            return_dict=False,
        )
        missing = [layer for layer in layers if layer not in recorded]
        if missing:
            raise RuntimeError(f"The ReferenceNet's forward pass recorded no state for the layers {missing}.")
        states = {layer: recorded[layer] for layer in layers}
        if not return_dict:
            return (states,)
        return ReferenceNetOutput(states=states)


class ReferenceAttnProcessor:
    r"""
    Self-attention of the denoising UNet over its own tokens followed by the reference tokens.

    Equal to attending with queries, keys and values over `[own ; source ; driving]` and keeping the first N
    outputs, as the reference implementation does, but computes queries for the N own tokens only. The reference
    tokens come with each call (see the module docstring): as states, projected here, or as keys and values
    projected once per call by `project_reference_states`. The processor holds no per-call data.

    Args:
        reference_layer (`str`): the ReferenceNet layer whose states this attention receives.
        attention_name (`str`): the name of the attention it serves in the UNet (`"...attn1"`), its key in
            `reference_keys_values`.
    """

    def __init__(self, reference_layer: str, attention_name: str) -> None:
        self.reference_layer = reference_layer
        self.attention_name = attention_name

    @staticmethod
    def _split_heads(attn: Attention, tensor: torch.Tensor) -> torch.Tensor:
        batch_size = tensor.shape[0]
        return tensor.view(batch_size, -1, attn.heads, tensor.shape[-1] // attn.heads).transpose(1, 2)

    def project(self, attn: Attention, reference_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values `[batch, heads, 2N, head_dim]` of this layer's `[batch, 2N, channels]` reference tokens."""
        key = self._split_heads(attn, attn.to_k(reference_states))
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        return key, self._split_heads(attn, attn.to_v(reference_states))

    def _reference_keys_values(
        self,
        attn: Attention,
        reference_states: dict[str, torch.Tensor] | None,
        reference_keys_values: dict[str, tuple[torch.Tensor, torch.Tensor]] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if reference_keys_values is not None and self.attention_name in reference_keys_values:
            return reference_keys_values[self.attention_name]
        states = None if reference_states is None else reference_states.get(self.reference_layer)
        if states is None:
            raise ValueError(
                f"The self-attention `{self.attention_name}` got no reference tokens: pass "
                f"`cross_attention_kwargs={{'reference_states': {{'{self.reference_layer}': ...}}}}` (or "
                "`reference_keys_values` from `project_reference_states`) to the UNet."
            )
        key_value = self.project(attn, states)
        if reference_keys_values is not None:  # the call's own dict: the following steps reuse the projection
            reference_keys_values[self.attention_name] = key_value
        return key_value

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reference_states: dict[str, torch.Tensor] | None = None,
        reference_keys_values: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError(
                "ReferenceAttnProcessor only handles unmasked self-attention on [batch, tokens, channels]."
            )
        reference_key, reference_value = self._reference_keys_values(attn, reference_states, reference_keys_values)

        residual = hidden_states
        query = self._split_heads(attn, attn.to_q(hidden_states))
        own_key = self._split_heads(attn, attn.to_k(hidden_states))
        own_value = self._split_heads(attn, attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            own_key = attn.norm_k(own_key)

        key = torch.cat([own_key, reference_key], dim=2)
        value = torch.cat([own_value, reference_value], dim=2)

        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).flatten(2).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _reference_processor(name: str) -> ReferenceAttnProcessor | UnpairedAttnProcessor:
    """The processor `install_reference_processors` puts on the UNet attention `name`."""
    layer = reference_layer_name(name)
    return UnpairedAttnProcessor() if layer is None else ReferenceAttnProcessor(layer, name)


def _is_reference_processor(name: str, processor: object) -> bool:
    """Whether `processor` is what `install_reference_processors` puts on the UNet attention `name`."""
    layer = reference_layer_name(name)
    if layer is None:
        return type(processor) is UnpairedAttnProcessor
    return (
        isinstance(processor, ReferenceAttnProcessor)
        and processor.reference_layer == layer
        and processor.attention_name == name
    )


def install_reference_processors(unet: UNet2DConditionModel) -> dict[str, object]:
    """Makes `unet` attend to reference tokens: a `ReferenceAttnProcessor` on every self-attention paired with a
    ReferenceNet layer, an `UnpairedAttnProcessor` on every other attention. Idempotent.

    Returns the processors found before, by `unet.attn_processors` key (`unet.set_attn_processor(returned)` puts
    them back). A pipeline call installs them by itself (`reference_attention`); a training script calls this once.
    """
    return replace_attn_processors(
        unet,
        lambda name: (
            None if _is_reference_processor(name, unet.get_submodule(name).processor) else _reference_processor(name)
        ),
    )


def project_reference_states(
    unet: UNet2DConditionModel, reference_states: dict[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of every paired UNet self-attention, for `cross_attention_kwargs={"reference_keys_values":
    ...}`: the reference tokens do not change during a call, so they are projected once, not at every step, and
    every step (a compiled one too) runs the same code.

    Args:
        unet: a UNet with the reference processors installed; its weights must be on the states' device.
        reference_states: `[batch, 2N, channels]` tokens (`[source ; driving]`) per ReferenceNet layer.

    Returns:
        `(key, value)`, each `[batch, heads, 2N, head_dim]`, by UNet attention name.
    """
    keys_values = {}
    for key, processor in unet.attn_processors.items():
        if isinstance(processor, ReferenceAttnProcessor):
            attn = unet.get_submodule(key.removesuffix(_PROCESSOR_SUFFIX))
            keys_values[processor.attention_name] = processor.project(attn, reference_states[processor.reference_layer])
    if not keys_values:
        raise ValueError("The UNet has no ReferenceAttnProcessor: call `install_reference_processors(unet)` first.")
    return keys_values


@dataclass
class _Installation:
    processors: dict[str, object]  # ours; the same objects every time, so a compiled UNet does not recompile
    calls: int = 0
    previous: dict[str, object] | None = None  # what to put back when the last call ends


_installations: "weakref.WeakKeyDictionary[torch.nn.Module, _Installation]" = weakref.WeakKeyDictionary()
_installations_lock = threading.Lock()


@contextlib.contextmanager
def reference_attention(unet: UNet2DConditionModel) -> Iterator[None]:
    """The reference processors on `unet` for the duration of the block.

    Overlapping blocks on one UNet (calls from several threads) share one installation; when the last one ends,
    the processors found at the start of the first are put back, unless someone replaced ours meanwhile. A UNet
    that already carries them (`install_reference_processors`) keeps them.
    """
    with _installations_lock:
        installation = _installations.get(unet)
        names = [key.removesuffix(_PROCESSOR_SUFFIX) for key in unet.attn_processors]
        if installation is None or list(installation.processors) != names:
            installation = _installations[unet] = _Installation({name: _reference_processor(name) for name in names})
        current = unet.attn_processors
        if not all(_is_reference_processor(key.removesuffix(_PROCESSOR_SUFFIX), p) for key, p in current.items()):
            previous = replace_attn_processors(unet, installation.processors.get)
            if installation.calls == 0:  # (during a call, ours were replaced: they are back, `previous` stays)
                installation.previous = previous
        installation.calls += 1
    try:
        yield
    finally:
        with _installations_lock:
            installation.calls -= 1
            if installation.calls == 0 and installation.previous is not None:
                current = unet.attn_processors
                if all(current[f"{name}{_PROCESSOR_SUFFIX}"] is p for name, p in installation.processors.items()):
                    unet.set_attn_processor(installation.previous)
                installation.previous = None
