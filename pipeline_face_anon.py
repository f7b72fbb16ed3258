# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""`FaceAnonPipeline`: face anonymization and face swapping with Stable Diffusion 2.1 and two ReferenceNets,
the model of "Face Anonymization Made Simple" (Kung et al., WACV 2025, arXiv 2411.00762).

Inference only: this file and `modeling_referencenet.py` are what a converted repository carries and what
`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` runs. Reading and checking the authors'
checkpoint layout lives in `original_checkpoint.py`, installed with face-anon.
"""

import copy
import importlib
import inspect
import json
import math
import os
import shutil
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessorPil, CLIPVisionModel


if __package__:  # loaded by diffusers as remote code: the module sits beside this file
    from .modeling_referencenet import (
        ReferenceAttnProcessor,
        ReferenceNetModel,
        project_reference_states,
        reference_attention,
    )
else:  # installed with `pip install`: a top-level module. (A plain absolute import here would make diffusers'
    # remote-code import scanner warn every Hub user that a package "modeling_referencenet" is missing.)
    _referencenet = importlib.import_module("modeling_referencenet")
    ReferenceAttnProcessor = _referencenet.ReferenceAttnProcessor
    ReferenceNetModel = _referencenet.ReferenceNetModel
    project_reference_states = _referencenet.project_reference_states
    reference_attention = _referencenet.reference_attention


logger = logging.get_logger(__name__)

# The folder the example loads; the converter's model card shows the same example with its repository id.
EXAMPLE_REPOSITORY = "./face-anon-simple-diffusers"
EXAMPLE_DOC_STRING = f"""
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline
        >>> from diffusers.utils import load_image

        >>> pipe = DiffusionPipeline.from_pretrained(
        ...     "{EXAMPLE_REPOSITORY}", trust_remote_code=True, torch_dtype=torch.float16
        ... ).to("cuda")
        >>> face = load_image("aligned_face.png")  # an FFHQ-style aligned face crop, 512 x 512

        >>> # anonymize: a new identity; pose, expression, gaze, lighting and background stay
        >>> anonymized = pipe(face, anonymization_degree=1.25, generator=torch.manual_seed(0)).images[0]

        >>> # swap: the identity of `source` on the pose and expression of `face`
        >>> source = load_image("other_face.png")
        >>> swapped = pipe(face, source_image=source, anonymization_degree=0.0).images[0]
        ```
"""

MODELING_FILE = "modeling_referencenet.py"
PIPELINE_FILE = "pipeline_face_anon.py"
REFERENCENETS = ("referencenet", "conditioning_referencenet")
_OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class _CallState:
    """What one call decided; read by the properties (`guidance_scale`, ...) that callbacks use."""

    guidance_scale: float
    anonymization_degree: float
    num_timesteps: int = 0
    interrupt: bool = False


def _to_rgb(image: Any, argument: str) -> PIL.Image.Image | torch.Tensor:
    """One input image as an RGB PIL image or a float `[C=3, H, W]` / `[B, 3, H, W]` tensor in [0, 1].

    Grayscale and RGBA become RGB (alpha dropped, as `PIL.Image.convert("RGB")` does); uint8 arrays are
    read as 0..255, float arrays and tensors as 0..1.
    """
    if isinstance(image, PIL.Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and image.ndim in (2, 3):
            return _to_rgb(PIL.Image.fromarray(image), argument)
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255.0
        if not np.issubdtype(image.dtype, np.floating):
            raise TypeError(f"`{argument}` arrays must be uint8 or float in [0, 1], got dtype {image.dtype}.")
        image = torch.from_numpy(np.ascontiguousarray(image))
        image = image.unsqueeze(-1) if image.ndim == 2 else image
        image = image.movedim(-1, -3)  # channels last -> channels first
    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"`{argument}` must be a PIL.Image.Image, numpy.ndarray or torch.Tensor (or a list of them), "
            f"got {type(image).__name__}."
        )
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim not in (3, 4) or image.shape[-3] not in (1, 3, 4):
        raise ValueError(
            f"`{argument}` tensors must be [C, H, W] or [B, C, H, W] with C in (1, 3, 4), got shape {tuple(image.shape)}."
        )
    if not image.is_floating_point():
        raise TypeError(f"`{argument}` tensors must be floating point in [0, 1], got dtype {image.dtype}.")
    channels = image.shape[-3]
    if channels == 1:
        image = image.repeat_interleave(3, dim=-3)
    elif channels == 4:
        image = image.narrow(-3, 0, 3)
    return image.float()


def _batch_size(image: PipelineImageInput, argument: str) -> int:
    """How many images `image` holds; raises for empty input."""
    if isinstance(image, (list, tuple)):
        if len(image) == 0:
            raise ValueError(f"`{argument}` is an empty list; pass at least one image.")
        return sum(_batch_size(item, argument) for item in image)
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
        if image.shape[0] == 0:
            raise ValueError(f"`{argument}` holds no image (batch dimension 0).")
        return image.shape[0]
    return 1


class FaceAnonPipeline(DiffusionPipeline):
    r"""
    Face anonymization (and face swapping) with Stable Diffusion 2.1 conditioned on two ReferenceNets.

    The face image plays two roles. Its CLIP image embedding and its ReferenceNet states make the *driving*
    condition: pose, expression, gaze, lighting and background to keep. An identity *source* is encoded by a
    second ReferenceNet; to anonymize, the source is the face itself, pushed `anonymization_degree` of the way
    (and beyond, for degrees above 1) towards the null identity. With `anonymization_degree=0` and a second
    face as `source_image`, the pipeline swaps that face's identity in.

    One pipeline object may serve several calls at the same time (threads): a call keeps its reference tokens,
    scheduler state and settings to itself. (Model CPU offload moves shared weights around: do not overlap calls
    with it enabled.)

    Args:
        vae ([`AutoencoderKL`] or [`AutoencoderTiny`]): auto-encoder between images and latents.
        image_encoder ([`~transformers.CLIPVisionModel`]): CLIP vision tower; its pooled output replaces the text
            embedding (no text encoder, no prompt).
        feature_extractor ([`~transformers.CLIPImageProcessorPil`]): prepares images for `image_encoder`, with
            PIL's resize as the reference implementation did.
        referencenet ([`ReferenceNetModel`]): encodes the identity source.
        conditioning_referencenet ([`ReferenceNetModel`]): encodes the driving image.
        unet ([`UNet2DConditionModel`]): the denoising UNet. During a call its self-attentions carry
            `ReferenceAttnProcessor`s (`modeling_referencenet.reference_attention`); between calls it is left with
            the processors it had, so `pipe.unet.set_default_attn_processor()` and the like work as usual.
        scheduler ([`SchedulerMixin`]): any diffusers scheduler (the model was trained with SD 2.1's
            v-prediction DDPM schedule). Each call steps a copy of it.
    """

    model_cpu_offload_seq = "image_encoder->vae->referencenet->conditioning_referencenet->unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: AutoencoderKL | AutoencoderTiny,
        image_encoder: CLIPVisionModel,
        feature_extractor: CLIPImageProcessorPil,
        # ReferenceNetModels, annotated by their base class: diffusers executes a custom component's file apart
        # from the pipeline's, so the two `ReferenceNetModel` classes differ and its type check would warn.
        referencenet: UNet2DConditionModel,
        conditioning_referencenet: UNet2DConditionModel,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            referencenet=referencenet,
            conditioning_referencenet=conditioning_referencenet,
            unet=unet,
            scheduler=scheduler,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        # Images stay in [0, 1]: CLIP reads them so, and `prepare_image_latents` maps them to [-1, 1].
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )
        self._calls = threading.local()  # each thread's current call (`_CallState`), for the properties below

    def __getstate__(self) -> dict[str, Any]:  # pickle and deepcopy: a copy starts with no call
        return {key: value for key, value in self.__dict__.items() if key != "_calls"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._calls = threading.local()

    # ------------------------------------------------------------------------------------------- properties

    @property
    def default_image_size(self) -> int:
        """Height and width used when the call names none: the size the UNet was configured (trained) for."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def _call_state(self) -> _CallState:
        state = getattr(self._calls, "state", None)
        if state is None:
            raise AttributeError("This property describes a call: read it during one (in a callback) or after it.")
        return state

    @property
    def guidance_scale(self) -> float:
        return self._call_state.guidance_scale

    @property
    def _guidance_scale(self) -> float:
        return self._call_state.guidance_scale

    @_guidance_scale.setter
    def _guidance_scale(self, value: float) -> None:
        """diffusers' way for a callback to change the guidance of the following steps (`pipe._guidance_scale = g`);
        whether the UNet batch is doubled stays as the call began."""
        self._call_state.guidance_scale = value

    @property
    def anonymization_degree(self) -> float:
        return self._call_state.anonymization_degree

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance doubles the UNet batch: the first half sees the null identity, the second the source."""
        return self.guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._call_state.num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._call_state.interrupt

    @property
    def _interrupt(self) -> bool:
        return self._call_state.interrupt

    @_interrupt.setter
    def _interrupt(self, value: bool) -> None:
        """diffusers' way to stop a call from its callback (`pipe._interrupt = True`): stops the calling thread's."""
        self._call_state.interrupt = bool(value)

    # ------------------------------------------------------------------------------------------- validation

    def check_inputs(
        self,
        image: PipelineImageInput,
        source_image: PipelineImageInput | None,
        anonymization_degree: float,
        guidance_scale: float,
        num_inference_steps: int,
        height: int,
        width: int,
        num_images_per_prompt: int,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str] | None,
    ) -> None:
        if image is None:
            raise ValueError("`image` is required: pass the face to anonymize (or, to swap, the driving face).")
        batch_size = _batch_size(image, "image")

        for name, value in (("anonymization_degree", anonymization_degree), ("guidance_scale", guidance_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"`{name}` must be a number, got {type(value).__name__}.")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value}.")

        if source_image is not None:
            if anonymization_degree > 0:
                raise ValueError(
                    f"`source_image` swaps an identity in and needs `anonymization_degree=0`, got "
                    f"anonymization_degree={anonymization_degree}. To anonymize, pass the face as `image` only."
                )
            source_batch_size = _batch_size(source_image, "source_image")
            if source_batch_size != batch_size:
                raise ValueError(
                    f"`source_image` holds {source_batch_size} image(s) but `image` holds {batch_size}; "
                    "pass one source per driving image."
                )
        elif anonymization_degree == 0:
            logger.warning(
                "anonymization_degree=0 without a `source_image` keeps the face's own identity: the output is a "
                "reconstruction, not an anonymization."
            )

        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        if (
            isinstance(num_images_per_prompt, bool)
            or not isinstance(num_images_per_prompt, int)
            or num_images_per_prompt < 1
        ):
            raise ValueError(f"`num_images_per_prompt` must be an integer >= 1, got {num_images_per_prompt!r}.")

        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % self.vae_scale_factor:
                raise ValueError(
                    f"`{name}` must be a positive integer divisible by the VAE scale factor {self.vae_scale_factor}, "
                    f"got {value!r}."
                )

        total = batch_size * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but the call makes {total} image(s) "
                f"({batch_size} input(s) x num_images_per_prompt={num_images_per_prompt}); pass one per image or a "
                "single generator."
            )
        if generator is not None and not isinstance(generator, (torch.Generator, list)):
            raise TypeError(f"`generator` must be a torch.Generator or a list of them, got {type(generator).__name__}.")

        if latents is not None:
            expected = (
                total,
                self.unet.config.in_channels,
                height // self.vae_scale_factor,
                width // self.vae_scale_factor,
            )
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != expected:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"`latents` must be a tensor of shape {expected}, got {got}.")

        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {_OUTPUT_TYPES}, got {output_type!r}.")
        if callback_on_step_end_tensor_inputs is not None:
            unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if unknown:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {unknown}."
                )

    # -------------------------------------------------------------------------------------- preparation

    def preprocess_image(self, image: PipelineImageInput, height: int, width: int, argument: str) -> torch.Tensor:
        """Images as one float32 `[B, 3, height, width]` tensor in [0, 1] (PIL inputs resized with Lanczos)."""
        items = [_to_rgb(item, argument) for item in (image if isinstance(image, (list, tuple)) else [image])]
        if all(isinstance(item, PIL.Image.Image) for item in items):
            return self.image_processor.preprocess(items, height=height, width=width)
        if any(isinstance(item, PIL.Image.Image) for item in items):
            raise TypeError(f"`{argument}` mixes PIL images with arrays or tensors; pass one kind per list.")
        tensors = [item if item.ndim == 4 else item.unsqueeze(0) for item in items]
        sizes = {tuple(item.shape[-2:]) for item in tensors}
        if len(sizes) > 1:
            raise ValueError(f"`{argument}` arrays/tensors must all have one size, got sizes {sorted(sizes)}.")
        return self.image_processor.preprocess(torch.cat(tensors), height=height, width=width)

    def prepare_latents(
        self,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
        scheduler: SchedulerMixin | None = None,
    ) -> torch.Tensor:
        """Initial noise: `latents` if given, else drawn from `generator`, scaled by the initial sigma of `scheduler`
        (default `self.scheduler`; a call passes its own copy, whose timesteps are set)."""
        shape = (
            batch_size,
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * (scheduler or self.scheduler).init_noise_sigma

    def encode_image(self, images: torch.Tensor, num_images_per_prompt: int, device: torch.device) -> torch.Tensor:
        """CLIP image embeddings `[B * num_images_per_prompt, 1, dim]`: the pooled (post-layernorm CLS) output,
        which takes the place of a text embedding."""
        dtype = next(self.image_encoder.parameters()).dtype
        pixel_values = self.feature_extractor(images=images, do_rescale=False, return_tensors="pt").pixel_values
        embeds = self.image_encoder(pixel_values.to(device=device, dtype=dtype)).pooler_output
        return embeds.unsqueeze(1).repeat_interleave(num_images_per_prompt, dim=0)

    def prepare_image_latents(
        self,
        images: torch.Tensor,
        num_images_per_prompt: int,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """VAE latents of `images`, scaled by the VAE's `scaling_factor` for the UNet.

        An `AutoencoderKL`'s posterior is sampled with `generator`: each input is encoded once and its posterior
        sampled once per output image, so a generator list (one per output image) draws exactly what it would draw
        for that image alone. An auto-encoder without a posterior (`AutoencoderTiny`) gives its latents as they are.
        """
        images = images.to(device=device, dtype=self.vae.dtype)
        encoded = self.vae.encode(2 * images - 1)
        if hasattr(encoded, "latent_dist"):
            mean = encoded.latent_dist.mean.repeat_interleave(num_images_per_prompt, dim=0)
            std = encoded.latent_dist.std.repeat_interleave(num_images_per_prompt, dim=0)
            noise = randn_tensor(mean.shape, generator=generator, device=device, dtype=mean.dtype)
            latents = mean + std * noise
        else:
            latents = encoded.latents.repeat_interleave(num_images_per_prompt, dim=0)
        return latents * self.vae.config.scaling_factor

    def encode_reference_states(
        self,
        driving_latents: torch.Tensor,
        driving_embeds: torch.Tensor,
        source_latents: torch.Tensor | None,
        source_embeds: torch.Tensor | None,
        anonymization_degree: float,
        do_classifier_free_guidance: bool,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Runs both ReferenceNets once and returns what every denoising step reuses.

        With `anonymization_degree > 0` the driving face is its own source (`source_*` are ignored); otherwise
        `source_latents` and `source_embeds` give the identity.

        Returns:
            The `[source ; driving]` tokens per ReferenceNet layer, `[unet_batch, 2N, C]`, and the UNet's
            cross-attention tokens `[source embedding ; driving embedding]`, `[unet_batch, 2, dim]`. With guidance
            the batch is doubled; its first half sees the null identity (zero latents, zero embedding).
        """
        degree, anonymize = anonymization_degree, anonymization_degree > 0
        driving = self.conditioning_referencenet(driving_latents, 0, driving_embeds).states

        if anonymize:  # the face is its own source, its embedding scaled before the ReferenceNet runs
            source_latents, source_embeds = driving_latents, (1 - degree) * driving_embeds
        source = self.referencenet(source_latents, 0, source_embeds).states

        if anonymize or do_classifier_free_guidance:
            null_embeds = torch.zeros_like(source_embeds[:1])
            null = self.referencenet(torch.zeros_like(source_latents[:1]), 0, null_embeds).states
        if anonymize:  # move the identity towards (past, for degree > 1) the null identity
            source = {layer: (1 - degree) * state + degree * null[layer] for layer, state in source.items()}

        tokens = torch.cat([source_embeds, driving_embeds], dim=1)
        if do_classifier_free_guidance:
            source = {layer: torch.cat([null[layer].expand_as(state), state]) for layer, state in source.items()}
            driving = {layer: torch.cat([state, state]) for layer, state in driving.items()}
            null_tokens = torch.cat([null_embeds.expand_as(source_embeds), driving_embeds], dim=1)
            tokens = torch.cat([null_tokens, tokens])

        reference_states = {layer: torch.cat([source[layer], driving[layer]], dim=1) for layer in driving}
        return reference_states, tokens

    def prepare_reference_attention(self, reference_states: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The UNet's `cross_attention_kwargs` for every step of a call (see `modeling_referencenet`); call it with
        the reference processors installed.

        The reference tokens' keys and values are projected here, once per call instead of once per step, so the
        steps (compiled ones too) all run the same code. Under model CPU offload the UNet's weights reach the
        device only when its forward starts: then the first step projects them into this call's dict, and the
        following steps reuse them.
        """
        states_device = next(iter(reference_states.values())).device
        if self.unet.device == states_device:
            return {"reference_keys_values": project_reference_states(self.unet, reference_states)}
        return {"reference_states": reference_states, "reference_keys_values": {}}

    def prepare_extra_step_kwargs(
        self, generator: torch.Generator | list[torch.Generator] | None, scheduler: SchedulerMixin | None = None
    ) -> dict[str, Any]:
        """Stochastic schedulers draw their step noise from `generator`; not every scheduler takes one."""
        if "generator" in inspect.signature((scheduler or self.scheduler).step).parameters:
            return {"generator": generator}
        return {}

    def decode_latents(
        self, latents: torch.Tensor, output_type: str
    ) -> torch.Tensor | np.ndarray | list[PIL.Image.Image]:
        if output_type == "latent":
            return latents
        image = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        return self.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * len(image))

    # ------------------------------------------------------------------------------------------------- call

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: PipelineImageInput = None,
        source_image: PipelineImageInput | None = None,
        anonymization_degree: float = 1.25,
        guidance_scale: float = 4.0,
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        conditioning_image: PipelineImageInput | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Anonymizes `image`, or swaps the identity of `source_image` into it.

        Args:
            image (`PipelineImageInput`):
                The face(s) to anonymize: PIL images, numpy arrays (uint8, or float in [0, 1]), torch tensors in
                [0, 1], or lists of them. Best results on FFHQ-style aligned crops at 512 x 512. In a swap, the
                driving face(s), whose pose, expression, gaze, lighting and background are kept.
            source_image (`PipelineImageInput`, *optional*):
                Face swapping: the identity to put into `image`, one per image. Needs `anonymization_degree=0`.
            anonymization_degree (`float`, defaults to 1.25):
                How far the identity moves from the input face towards the null identity; 0 keeps it (or swaps in
                `source_image`), 1 reaches the null identity, above 1 extrapolates past it (the paper uses 1.25).
            guidance_scale (`float`, defaults to 4.0):
                Classifier-free guidance against the null identity; off (and the UNet batch halved) at <= 1.
            num_inference_steps (`int`, defaults to 50):
                Denoising steps. The paper's tables use 200 DDPM steps; 25-50 work well.
            height (`int`, *optional*, defaults to `self.default_image_size`):
                Output height in pixels, divisible by the VAE scale factor. Inputs are resized to it.
            width (`int`, *optional*, defaults to `self.default_image_size`):
                Output width in pixels, divisible by the VAE scale factor.
            num_images_per_prompt (`int`, defaults to 1):
                Outputs per input image, each from its own noise.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                The source of every random draw: initial noise, VAE posterior samples and the step noise of
                stochastic schedulers. A list gives one generator per output image, and then each output equals
                what that image run alone with its generator gives.
            latents (`torch.Tensor`, *optional*):
                Initial noise `[B * num_images_per_prompt, 4, height / 8, width / 8]` instead of drawing it.
            output_type (`str`, defaults to `"pil"`):
                `"pil"`, `"np"` (float NHWC in [0, 1]), `"pt"` (float NCHW in [0, 1]) or `"latent"`.
            return_dict (`bool`, defaults to `True`):
                Return an [`~pipelines.ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called after each step as `callback_on_step_end(self, step, timestep, callback_kwargs)`, where
                `callback_kwargs` holds the tensors named in `callback_on_step_end_tensor_inputs`; tensors in the
                returned dict replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["latents"]`):
                Tensors handed to `callback_on_step_end`.
            conditioning_image (`PipelineImageInput`, *optional*):
                Deprecated name of `image`, kept so the reference implementation's calls run unchanged.

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the images, as a list of PIL images, an array or a
            tensor depending on `output_type`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        elif callback_on_step_end_tensor_inputs is None:
            callback_on_step_end_tensor_inputs = list(self._callback_tensor_inputs)

        # 0. The reference implementation's spelling: `conditioning_image=` is the face, and when anonymizing it
        #    ignores the `source_image` it nonetheless requires.
        if conditioning_image is not None:
            if image is not None:
                raise ValueError("Pass the face as `image` only; `conditioning_image` is its deprecated name.")
            # A plain FutureWarning: diffusers' `deprecate` ties removal to diffusers' own version, not ours.
            warnings.warn("`conditioning_image` is deprecated; pass the face as `image`.", FutureWarning, stacklevel=2)
            image = conditioning_image
            if source_image is not None and anonymization_degree > 0:
                logger.warning(
                    "`source_image` is ignored when anonymization_degree > 0, as in the reference implementation."
                )
                source_image = None

        # 1. Check inputs
        height = self.default_image_size if height is None else height
        width = self.default_image_size if width is None else width
        self.check_inputs(
            image,
            source_image,
            anonymization_degree,
            guidance_scale,
            num_inference_steps,
            height,
            width,
            num_images_per_prompt,
            generator,
            latents,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        # This call's settings, for the properties callbacks read; per thread, so overlapping calls keep their own.
        self._calls.state = _CallState(guidance_scale=guidance_scale, anonymization_degree=anonymization_degree)
        do_classifier_free_guidance = self.do_classifier_free_guidance

        # 2. Define call parameters
        device = self._execution_device
        dtype = self.unet.dtype
        images = self.preprocess_image(image, height, width, "image")
        batch_size = len(images) * num_images_per_prompt

        # 3. Prepare timesteps, on this call's copy of the scheduler (schedulers keep step state). It keeps its
        #    timesteps on the CPU, so that its per-step indexing and comparisons never wait for the device; the UNet
        #    reads them from one copy on the device.
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(num_inference_steps, device="cpu")
        timesteps = scheduler.timesteps
        unet_timesteps = timesteps.to(device)
        self._calls.state.num_timesteps = len(timesteps)

        # 4. Prepare the initial noise. It is drawn first, so a seed gives the reference implementation's noise.
        latents = self.prepare_latents(batch_size, height, width, dtype, device, generator, latents, scheduler)

        # 5. Encode the driving face and, in a swap, the source face: CLIP embeddings and VAE latents
        driving_embeds = self.encode_image(images, num_images_per_prompt, device).to(dtype)
        driving_latents = self.prepare_image_latents(images, num_images_per_prompt, device, generator).to(dtype)
        source_embeds = source_latents = None
        if source_image is not None:
            source_images = self.preprocess_image(source_image, height, width, "source_image")
            source_embeds = self.encode_image(source_images, num_images_per_prompt, device).to(dtype)
            source_latents = self.prepare_image_latents(source_images, num_images_per_prompt, device, generator).to(
                dtype
            )
        elif anonymization_degree == 0:  # degree 0 without a source: the face keeps its own identity
            source_embeds, source_latents = driving_embeds, driving_latents

        # 6. Run both ReferenceNets once
        reference_states, encoder_hidden_states = self.encode_reference_states(
            driving_latents,
            driving_embeds,
            source_latents,
            source_embeds,
            anonymization_degree,
            do_classifier_free_guidance,
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, scheduler)

        # 7. Denoising loop. The UNet's self-attentions read this call's reference keys and values from
        #    `cross_attention_kwargs`; the processors are installed for the call and hold nothing of it.
        num_warmup_steps = len(timesteps) - num_inference_steps * scheduler.order
        with reference_attention(self.unet):
            attention_kwargs = self.prepare_reference_attention(reference_states)
            del reference_states  # the keys and values are what the steps need
            with self.progress_bar(total=num_inference_steps) as progress_bar:
                for i, t in enumerate(timesteps):
                    if self.interrupt:
                        continue
                    latent_model_input = torch.cat([latents] * 2) if do_classifier_free_guidance else latents
                    latent_model_input = scheduler.scale_model_input(latent_model_input, t)
                    noise_pred = self.unet(
                        latent_model_input,
                        unet_timesteps[i],
                        encoder_hidden_states=encoder_hidden_states,
                        cross_attention_kwargs=attention_kwargs,
                        return_dict=False,
                    )[0]
                    if do_classifier_free_guidance:
                        noise_pred_null, noise_pred_source = noise_pred.chunk(2)
                        noise_pred = noise_pred_null + self.guidance_scale * (noise_pred_source - noise_pred_null)
                    latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                    if callback_on_step_end is not None:
                        step_tensors = {"latents": latents}
                        callback_kwargs = {k: step_tensors[k] for k in callback_on_step_end_tensor_inputs}
                        callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                        latents = callback_outputs.pop("latents", latents)
                    # counted as diffusers counts: higher-order schedulers take several UNet calls per step
                    if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % scheduler.order == 0):
                        progress_bar.update()
            del attention_kwargs

        # 8. Decode
        images = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ---------------------------------------------------------------------------------------- load & save

    @classmethod
    def from_original(cls, *args: Any, **kwargs: Any) -> "FaceAnonPipeline":
        """The pipeline assembled from the repositories the authors published (or local folders in their layout);
        nothing is converted or written.

        `FaceAnonPipeline.from_original(face_model=..., sd_model=..., clip_model=..., face_model_revision=...,
        torch_dtype=torch.float16, sample_size=None, cache_dir=...)`: the arguments of
        `original_checkpoint.load_original_pipeline` (without any, the published repositories). Reading and checking
        the authors' layout is not inference code: it lives in `original_checkpoint.py`, which `pip install` of
        face-anon installs and a converted repository does not carry.

        Raises:
            ImportError: `original_checkpoint` is not installed (this file was loaded from a converted repository).
        """
        try:
            original_checkpoint = importlib.import_module("original_checkpoint")
        except ModuleNotFoundError as error:
            raise ImportError(
                "FaceAnonPipeline.from_original needs face-anon installed (`pip install .` in its repository), which "
                "provides `original_checkpoint`; a converted repository loads with DiffusionPipeline.from_pretrained."
            ) from error
        return original_checkpoint.load_original_pipeline(*args, pipeline_class=cls, **kwargs)

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs: Any) -> "FaceAnonPipeline":
        """`DiffusionPipeline.from_pipe`: a new pipeline on `pipeline`'s components, no memory copied.

        diffusers moves a model over only when its exact class is the annotated one, and the ReferenceNets are
        annotated by their base class (see `__init__`): they are handed over by name here instead.
        """
        for name in ("referencenet", "conditioning_referencenet"):
            if name not in kwargs and getattr(pipeline, name, None) is not None:
                kwargs[name] = getattr(pipeline, name)
        return super().from_pipe(pipeline, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, push_to_hub: bool = False, **kwargs: Any):
        """Saves a folder that `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads back.

        On top of diffusers' own saving, this writes the code (`pipeline_face_anon.py` and
        `modeling_referencenet.py` at the root, and the modeling file in each ReferenceNet's folder, where
        diffusers looks for it) and names the classes by those files in `model_index.json`.
        `push_to_hub=True` uploads the completed folder.
        """
        hub_kwargs = {
            k: kwargs.pop(k) for k in ("commit_message", "private", "create_pr", "token", "repo_id") if k in kwargs
        }
        super().save_pretrained(save_directory, *args, push_to_hub=False, **kwargs)
        write_hub_code(save_directory)
        if push_to_hub:
            from huggingface_hub import create_repo

            repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            repo_id = create_repo(
                repo_id, exist_ok=True, private=hub_kwargs.pop("private", None), token=hub_kwargs.get("token")
            ).repo_id
            self._upload_folder(save_directory, repo_id, **hub_kwargs)


def write_hub_code(save_directory: str | os.PathLike) -> None:
    """Makes a saved pipeline folder load as remote code with `DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)`: copies `pipeline_face_anon.py` and `modeling_referencenet.py` to the root and the
    modeling file into each ReferenceNet's folder (where diffusers looks for a custom component's code), and names
    the classes by those files in the folder's `model_index.json`."""
    modeling_file = inspect.getfile(ReferenceAttnProcessor)
    shutil.copyfile(os.path.abspath(__file__), os.path.join(save_directory, PIPELINE_FILE))
    shutil.copyfile(modeling_file, os.path.join(save_directory, MODELING_FILE))
    for name in REFERENCENETS:
        shutil.copyfile(modeling_file, os.path.join(save_directory, name, MODELING_FILE))

    index_path = os.path.join(save_directory, "model_index.json")
    with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    index["_class_name"] = [PIPELINE_FILE.removesuffix(".py"), FaceAnonPipeline.__name__]
    index.pop("_name_or_path", None)  # where it was loaded from: meaningless in a Hub repo, and a local path
    for name in REFERENCENETS:
        index[name] = [MODELING_FILE.removesuffix(".py"), ReferenceNetModel.__name__]
    with open(index_path, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
