# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""A *cost model* of the authors' pipeline, for speed comparisons on the same weights in the same run.

Not for use: it exists so that `benchmark_speed.py` can time the reference implementation's per-call structure
without the reference code (and its vendored diffusers) installed. Written by us from the description in
`shared/docs/reference-model.md`; it computes the same function as `FaceAnonPipeline` (anonymization with
guidance), the way the reference implementation spends its time:

- every image is preprocessed, CLIP-encoded and VAE-encoded twice: once as the source, once as the driving image;
- both ReferenceNets run at the doubled (guidance) batch: the source one on `[null ; source]`, the driving one on
  `[driving ; driving]`;
- the UNet's self-attentions compute queries, keys and values for all 3N tokens of `[own ; source ; driving]` at
  every step and keep the first N outputs (`ConcatenatedReferenceAttnProcessor`);
- the scheduler's timesteps live on the device, as in diffusers' Stable Diffusion pipelines of the time.
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.utils.torch_utils import randn_tensor


class ConcatenatedReferenceAttnProcessor:
    r"""The reference implementation's self-attention: full attention over `[own ; source ; driving]`, first N kept.

    Queries, keys and values for all 3N tokens at every call; the same function as `ReferenceAttnProcessor`.
    (Deliberately has no `reference_layer` attribute: `FaceAnonPipeline.install_reference_processors` then sees it
    as foreign and puts its own processors back on the next pipeline call.)
    """

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.reference_states: torch.Tensor | None = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        own_tokens = hidden_states.shape[1]
        tokens = torch.cat([hidden_states, self.reference_states], dim=1)
        batch_size = tokens.shape[0]

        def heads(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.view(batch_size, -1, attn.heads, tensor.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = heads(attn.to_q(tokens)), heads(attn.to_k(tokens)), heads(attn.to_v(tokens))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states[:, :, :own_tokens]  # keep the outputs of the UNet's own tokens
        hidden_states = hidden_states.transpose(1, 2).flatten(2).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_concatenated_processors(unet, reference_states: dict[str, torch.Tensor]) -> None:
    """Puts a `ConcatenatedReferenceAttnProcessor` holding its layer's `[source ; driving]` tokens on every UNet
    self-attention that pairs with a ReferenceNet layer (`reference_states` is keyed by ReferenceNet layer)."""
    from modeling_referencenet import reference_layer_name

    processors = {}
    for name, processor in unet.attn_processors.items():
        layer = reference_layer_name(name)
        if layer is not None:
            processor = ConcatenatedReferenceAttnProcessor(layer)
            processor.reference_states = reference_states[layer]
        processors[name] = processor
    unet.set_attn_processor(processors)


@torch.no_grad()
def authors_pipeline(
    pipe,
    image: Any,
    *,
    anonymization_degree: float = 1.25,
    guidance_scale: float = 4.0,
    num_inference_steps: int = 25,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    output_type: str = "pil",
    step_callback: Callable[[int, int], None] | None = None,
):
    """Anonymizes `image` (a list of faces, batched) with the reference implementation's per-call structure.

    A cost model on `pipe`'s components (see the module docstring); `step_callback(step, num_steps)` runs after each
    denoising step. Leaves the UNet with `ConcatenatedReferenceAttnProcessor`s; `pipe` puts its own back on its next
    call (or call `pipe.install_reference_processors()`).
    """
    device, dtype = pipe._execution_device, pipe.unet.dtype
    degree, guidance = anonymization_degree, guidance_scale
    # The reference takes the face twice: as `source_image` (ignored in the math, but still encoded) and as
    # `conditioning_image`; each goes through the image processor, CLIP and the VAE on its own.
    source = pipe.preprocess_image(image, height, width, "source_image")
    driving = pipe.preprocess_image(image, height, width, "conditioning_image")
    batch_size = len(driving)
    source_embeds = pipe.encode_image(source, 1, device).to(dtype)
    driving_embeds = pipe.encode_image(driving, 1, device).to(dtype)
    shape = (batch_size, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * pipe.scheduler.init_noise_sigma
    source_latents = pipe.prepare_image_latents(source, 1, device, generator).to(dtype)
    driving_latents = pipe.prepare_image_latents(driving, 1, device, generator).to(dtype)

    # Anonymization: the face is its own source; its embedding is scaled before the source ReferenceNet runs.
    source_latents, source_embeds = driving_latents, (1 - degree) * driving_embeds
    # Both ReferenceNets at the doubled batch.
    source_states = pipe.referencenet(
        torch.cat([torch.zeros_like(source_latents), source_latents]),
        0,
        torch.cat([torch.zeros_like(source_embeds), source_embeds]),
    ).states
    source_states = {
        layer: torch.cat([null, (1 - degree) * state + degree * null])
        for layer, (null, state) in ((layer, s.chunk(2)) for layer, s in source_states.items())
    }
    driving_states = pipe.conditioning_referencenet(
        torch.cat([driving_latents, driving_latents]), 0, torch.cat([driving_embeds, driving_embeds])
    ).states
    tokens = torch.cat(
        [torch.cat([torch.zeros_like(source_embeds), source_embeds]), torch.cat([driving_embeds, driving_embeds])],
        dim=1,
    )
    install_concatenated_processors(
        pipe.unet, {layer: torch.cat([source_states[layer], driving_states[layer]], dim=1) for layer in driving_states}
    )

    pipe.scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = pipe.scheduler.timesteps
    extra_step_kwargs = pipe.prepare_extra_step_kwargs(generator)
    for i, t in enumerate(timesteps):
        latent_model_input = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise_pred = pipe.unet(latent_model_input, t, encoder_hidden_states=tokens, return_dict=False)[0]
        noise_pred_null, noise_pred_source = noise_pred.chunk(2)
        noise_pred = (1 - guidance) * noise_pred_null + guidance * noise_pred_source
        latents = pipe.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
        if step_callback is not None:
            step_callback(i, len(timesteps))

    for processor in pipe.unet.attn_processors.values():  # release the states
        if isinstance(processor, ConcatenatedReferenceAttnProcessor):
            processor.reference_states = None
    images = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(images, output_type=output_type, do_denormalize=[True] * len(images))
