# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""A *cost model* of the authors' pipeline, for speed comparisons on the same weights in the same run.

Not for use: it exists so that `benchmark_speed.py` can time the reference implementation's per-call structure
without the reference code (and its vendored diffusers) installed. Written by us from the paper's description of
the model (README, "How this implementation differs"); it computes the same function as `FaceAnonPipeline`
(anonymization with guidance), the way the reference implementation spends its time:

- every image is preprocessed, CLIP-encoded and VAE-encoded twice: once as the source, once as the driving image;
- both ReferenceNets run at the doubled (guidance) batch: the source one on `[null ; source]`, the driving one on
  `[driving ; driving]`;
- the UNet's self-attentions compute queries, keys and values for all 3N tokens of `[own ; source ; driving]` at
  every step and keep the first N outputs (`ConcatenatedReferenceAttnProcessor`);
- the scheduler's timesteps live on the device, as in diffusers' Stable Diffusion pipelines of the time.
"""

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.utils.torch_utils import randn_tensor

from modeling_referencenet import UnpairedAttnProcessor, reference_layer_name, replace_attn_processors


class ConcatenatedReferenceAttnProcessor:
    r"""The reference implementation's self-attention: full attention over `[own ; source ; driving]`, first N kept.

    Queries, keys and values for all 3N tokens at every call; the same function as `ReferenceAttnProcessor`, taking
    the reference states the same way (`cross_attention_kwargs={"reference_states": {layer: [B, 2N, C]}}`).
    """

    def __init__(self, layer: str) -> None:
        self.layer = layer

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reference_states: dict[str, torch.Tensor] | None = None,
        reference_keys_values: dict | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        own_tokens = hidden_states.shape[1]
        tokens = torch.cat([hidden_states, reference_states[self.layer]], dim=1)
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


def install_concatenated_processors(unet) -> dict:
    """Puts a `ConcatenatedReferenceAttnProcessor` on every UNet self-attention that pairs with a ReferenceNet layer
    (`UnpairedAttnProcessor` on the others); returns the processors it replaced, by `unet.attn_processors` key."""

    def concatenated(name: str):
        layer = reference_layer_name(name)
        return UnpairedAttnProcessor() if layer is None else ConcatenatedReferenceAttnProcessor(layer)

    return replace_attn_processors(unet, concatenated)


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
    denoising step.
    """
    device, dtype = pipe._execution_device, pipe.unet.dtype
    # The reference takes the face twice: as `source_image` (ignored in the math, but still encoded) and as
    # `conditioning_image`; each goes through the image processor, CLIP and the VAE on its own.
    source = pipe.preprocess_image(image, height, width, "source_image")
    driving = pipe.preprocess_image(image, height, width, "conditioning_image")
    pipe.encode_image(source, 1, device)
    driving_embeds = pipe.encode_image(driving, 1, device).to(dtype)
    shape = (
        len(driving),
        pipe.unet.config.in_channels,
        height // pipe.vae_scale_factor,
        width // pipe.vae_scale_factor,
    )
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(num_inference_steps, device=device)
    latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * scheduler.init_noise_sigma
    pipe.prepare_image_latents(source, 1, device, generator)
    driving_latents = pipe.prepare_image_latents(driving, 1, device, generator).to(dtype)
    latents = authors_denoising(
        pipe,
        latents,
        driving_latents,
        driving_embeds,
        scheduler,
        anonymization_degree=anonymization_degree,
        guidance_scale=guidance_scale,
        generator=generator,
        step_callback=step_callback,
    )
    images = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(images, output_type=output_type, do_denormalize=[True] * len(images))


@torch.no_grad()
def authors_denoising(
    pipe,
    latents: torch.Tensor,
    face_latents: torch.Tensor,
    face_embeds: torch.Tensor,
    scheduler,
    *,
    anonymization_degree: float,
    guidance_scale: float,
    generator: torch.Generator | None = None,
    step_callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The reference's ReferenceNets and denoising loop for anonymization with guidance, on `pipe`'s networks.

    Args:
        latents: the initial noise, scaled by the scheduler's initial sigma.
        face_latents, face_embeds: the faces' scaled VAE latents `[B, 4, h, w]` and CLIP embeddings `[B, 1, dim]`.
        scheduler: a scheduler of the call's own, its timesteps set.

    Returns the final latents. The UNet's processors are put back afterwards.
    """
    degree, guidance = anonymization_degree, guidance_scale
    # Anonymization: the face is its own source; its embedding is scaled before the source ReferenceNet runs.
    source_embeds = (1 - degree) * face_embeds
    null_latents, null_embeds = torch.zeros_like(face_latents), torch.zeros_like(source_embeds)
    # Both ReferenceNets at the doubled batch.
    source_states = pipe.referencenet(
        torch.cat([null_latents, face_latents]), 0, torch.cat([null_embeds, source_embeds])
    ).states
    source_states = {
        layer: torch.cat([null, (1 - degree) * state + degree * null])
        for layer, (null, state) in ((layer, s.chunk(2)) for layer, s in source_states.items())
    }
    driving_states = pipe.conditioning_referencenet(
        torch.cat([face_latents, face_latents]), 0, torch.cat([face_embeds, face_embeds])
    ).states
    tokens = torch.cat([torch.cat([null_embeds, source_embeds]), torch.cat([face_embeds, face_embeds])], dim=1)
    attention_kwargs = {
        "reference_states": {
            layer: torch.cat([source_states[layer], driving_states[layer]], dim=1) for layer in driving_states
        }
    }

    timesteps = scheduler.timesteps
    extra_step_kwargs = pipe.prepare_extra_step_kwargs(generator, scheduler)
    previous = install_concatenated_processors(pipe.unet)
    try:
        for i, t in enumerate(timesteps):
            latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise_pred = pipe.unet(
                latent_model_input, t, encoder_hidden_states=tokens, cross_attention_kwargs=attention_kwargs
            ).sample
            noise_pred_null, noise_pred_source = noise_pred.chunk(2)
            noise_pred = (1 - guidance) * noise_pred_null + guidance * noise_pred_source
            latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
            if step_callback is not None:
                step_callback(i, len(timesteps))
    finally:
        pipe.unet.set_attn_processor(previous)
    return latents
