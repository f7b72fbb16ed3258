# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""The authors' training recipe: the components it starts from, what trains, and the loss of one micro-batch.

- All three networks start from one UNet: Stable Diffusion 2.1's (or a face-anon repository's own three, to
  fine-tune). The denoising UNet trains fully; each ReferenceNet trains the transformer blocks whose output reaches
  a state the UNet attends to (the blocks after the last such state never affect any output and stay frozen).
  The VAE and CLIP are frozen.
- One step: VAE latents (posterior samples) of the ground truth, source and driving images; noise and a uniform
  timestep; CLIP embeddings of source and driving; source dropout to the null identity (zero latents and zero
  embedding, exactly the pipeline's null identity); both ReferenceNets at timestep 0 on clean latents; the UNet on
  the noisy ground truth with `[source ; driving]` states and tokens; MSE to the v-prediction target, in float32.

Every random draw of a step comes from the generators the caller passes, so a step is a function of its seeds.
"""

import importlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPImageProcessorPil, CLIPVisionModel

from original_checkpoint import DEFAULT_CLIP_MODEL


_referencenet = importlib.import_module("modeling_referencenet")
ReferenceNetModel = _referencenet.ReferenceNetModel
install_reference_processors = _referencenet.install_reference_processors

REFERENCENETS = ("referencenet", "conditioning_referencenet")
TRAINED_MODELS = ("unet", *REFERENCENETS)


# ---------------------------------------------------------------------------------------------------- loading


@dataclass
class TrainingComponents:
    """What training starts from. `base` is `"stable-diffusion"` (all three networks copied from `unet/`) or
    `"face-anon"` (a face-anon repository's own `unet/`, `referencenet/` and `conditioning_referencenet/`)."""

    unet: UNet2DConditionModel | None  # None for `load_components(networks=False)`
    referencenet: Any  # ReferenceNetModel
    conditioning_referencenet: Any  # ReferenceNetModel
    vae: AutoencoderKL
    image_encoder: CLIPVisionModel
    feature_extractor: CLIPImageProcessorPil
    noise_scheduler: DDPMScheduler
    base: str


def _has_subfolder(model: str, subfolder: str, **hub_kwargs: Any) -> bool:
    try:
        UNet2DConditionModel.load_config(model, subfolder=subfolder, **hub_kwargs)
    except OSError:
        return False
    return True


def load_components(
    pretrained_model_name_or_path: str,
    clip_model_name_or_path: str | None = None,
    *,
    revision: str | None = None,
    variant: str | None = None,
    networks: bool = True,
    **hub_kwargs: Any,
) -> TrainingComponents:
    """Loads the starting point of training, in float32.

    Args:
        pretrained_model_name_or_path: Stable Diffusion 2.1 weights (`unet/`, `vae/`, `scheduler/`), or a face-anon
            repository (which also has `referencenet/` and `conditioning_referencenet/`) to fine-tune.
        clip_model_name_or_path: the CLIP checkpoint (vision tower and image processor). `None`: a face-anon
            repository's own `image_encoder/` and `feature_extractor/`, else `openai/clip-vit-large-patch14`.
        revision, variant: of `pretrained_model_name_or_path`'s weights.
        networks: `False` loads only the frozen parts (VAE, CLIP, scheduler); the three networks are then `None`.
        hub_kwargs: passed to every `from_pretrained` (`cache_dir`, `token`, ...).

    Raises:
        OSError: a component is missing, naming the argument and the folder.
    """
    source = dict(hub_kwargs, revision=revision)
    base = (
        "face-anon" if _has_subfolder(pretrained_model_name_or_path, "referencenet", **source) else "stable-diffusion"
    )

    def load(what: str, loader: Any) -> Any:
        try:
            return loader()
        except OSError as error:
            raise OSError(
                f"--pretrained_model_name_or_path {pretrained_model_name_or_path!r}: cannot load {what} ({error})."
            ) from error

    weights = dict(source, variant=variant, use_safetensors=True)
    unet, references = None, dict.fromkeys(REFERENCENETS)
    if networks:
        unet = load(
            "`unet/`",
            lambda: UNet2DConditionModel.from_pretrained(pretrained_model_name_or_path, subfolder="unet", **weights),
        )
        references = {
            name: load(
                f"`{name if base == 'face-anon' else 'unet'}/` as {name}",
                lambda name=name: ReferenceNetModel.from_pretrained(
                    pretrained_model_name_or_path, subfolder=name if base == "face-anon" else "unet", **weights
                ),
            )
            for name in REFERENCENETS
        }
    vae = load(
        "`vae/`", lambda: AutoencoderKL.from_pretrained(pretrained_model_name_or_path, subfolder="vae", **weights)
    )
    noise_scheduler = load(
        "`scheduler/`",
        lambda: DDPMScheduler.from_pretrained(pretrained_model_name_or_path, subfolder="scheduler", **source),
    )

    if clip_model_name_or_path is None and base == "face-anon":
        clip_source, clip_kwargs = pretrained_model_name_or_path, dict(source)
        encoder_folder, processor_folder = {"subfolder": "image_encoder"}, {"subfolder": "feature_extractor"}
    else:
        clip_source, clip_kwargs = clip_model_name_or_path or DEFAULT_CLIP_MODEL, dict(hub_kwargs)
        encoder_folder = processor_folder = {}
    try:
        image_encoder = CLIPVisionModel.from_pretrained(
            clip_source, use_safetensors=True, **encoder_folder, **clip_kwargs
        )
        feature_extractor = CLIPImageProcessorPil.from_pretrained(clip_source, **processor_folder, **clip_kwargs)
    except OSError as error:
        raise OSError(
            f"--clip_model_name_or_path {clip_source!r}: cannot load CLIP's vision tower and image processor ({error})."
        ) from error

    return TrainingComponents(
        unet=unet,
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        noise_scheduler=noise_scheduler,
        base=base,
        **references,
    )


# ---------------------------------------------------------------------------------------------- what trains


_BLOCK = r"(down_blocks\.\d+|mid_block|up_blocks\.\d+)"


def _block_order(name: str, num_down: int) -> int:
    """Position of a UNet block in the forward pass (down blocks, the mid block, up blocks)."""
    if name == "mid_block":
        return num_down
    kind, index = name.split(".")
    return int(index) if kind == "down_blocks" else num_down + 1 + int(index)


def live_reference_parameter_names(referencenet: Any) -> list[str]:
    """The transformer-block parameters of a ReferenceNet that can change a state the UNet attends to.

    The UNet attends to the states of each block's first attention (`reference_layer_name`). Everything in the
    forward pass before the last of them reaches it; in the block holding it, what follows its `norm1` (the rest of
    that transformer block and the block's other attentions) reaches no state and no output. In SD 2.1 that is
    7.5 M parameters of each ReferenceNet's 248.8 M in transformer blocks.
    """
    states = referencenet.state_layer_names
    num_down = len(referencenet.down_blocks)
    last_block = max((layer.split(".attentions.")[0] for layer in states), key=lambda b: _block_order(b, num_down))
    last_layer = max(int(layer.rsplit(".", 1)[1]) for layer in states if layer.startswith(f"{last_block}.attentions."))
    live = []
    for name, _ in referencenet.named_parameters():
        block, separator, rest = name.partition(".attentions.")
        if not separator or ".transformer_blocks." not in rest:
            continue
        attention, _, inner = rest.partition(".transformer_blocks.")
        layer, _, parameter = inner.partition(".")
        if block != last_block:
            live.append(name)
        elif attention == "0" and (
            int(layer) < last_layer or (int(layer) == last_layer and parameter.startswith("norm1."))
        ):
            live.append(name)
    return live


def configure_trainable(components: TrainingComponents) -> dict[str, list[torch.nn.Parameter]]:
    """Sets `requires_grad` as the recipe trains: the whole UNet, each ReferenceNet's live transformer-block
    parameters (`live_reference_parameter_names`), nothing of the VAE and CLIP. Returns the trained parameters per
    model name (`unet`, `referencenet`, `conditioning_referencenet`), in `named_parameters` order."""
    components.vae.requires_grad_(False)
    components.image_encoder.requires_grad_(False)
    components.unet.requires_grad_(True)
    trainable = {"unet": list(components.unet.parameters())}
    for name in REFERENCENETS:
        model = getattr(components, name)
        live = set(live_reference_parameter_names(model))
        for parameter_name, parameter in model.named_parameters():
            parameter.requires_grad_(parameter_name in live)
        trainable[name] = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return trainable


# --------------------------------------------------------------------------------------------------- a step


def predict(
    unet: UNet2DConditionModel,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    reference_states: dict[str, torch.Tensor],
) -> torch.Tensor:
    """The UNet's prediction with `[source ; driving]` reference states per ReferenceNet layer, differentiable in
    the states (and so in both ReferenceNets). The UNet needs `install_reference_processors(unet)`; its attentions
    project the states inside the forward, which keeps gradient checkpointing's recomputation identical."""
    return unet(
        noisy_latents,
        timesteps,
        encoder_hidden_states=encoder_hidden_states,
        cross_attention_kwargs={"reference_states": reference_states},
        return_dict=False,
    )[0]


def encode_latents(vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scaled VAE latents of `images` in [-1, 1], a posterior sample drawn from `generator`, in float32 whatever the
    VAE's dtype (the target is computed from them)."""
    posterior = vae.encode(images.to(vae.dtype)).latent_dist
    mean, std = posterior.mean.float(), posterior.std.float()
    noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
    return (mean + std * noise) * vae.config.scaling_factor


def encode_images(image_encoder: CLIPVisionModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP embeddings `[B, 1, dim]` (the pooled output), float32."""
    dtype = next(image_encoder.parameters()).dtype
    return image_encoder(pixel_values.to(dtype)).pooler_output.float().unsqueeze(1)


def drop_source(
    source_latents: torch.Tensor, source_embeds: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The null identity where `keep` is False: exact zeros for the latents and the embedding, the only null the
    model is trained with and the one the pipeline uses at inference."""
    latents = torch.where(keep.view(-1, 1, 1, 1), source_latents, torch.zeros_like(source_latents))
    embeds = torch.where(keep.view(-1, 1, 1), source_embeds, torch.zeros_like(source_embeds))
    return latents, embeds


def encode_references(
    referencenet: Any,
    conditioning_referencenet: Any,
    source_latents: torch.Tensor,
    source_embeds: torch.Tensor,
    driving_latents: torch.Tensor,
    driving_embeds: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Both ReferenceNets at timestep 0 on clean latents, each with its own embedding as its one cross-attention
    token, as in the pipeline. Returns the `[source ; driving]` states per layer (token axis) and the UNet's
    cross-attention tokens `[source embedding ; driving embedding]`."""
    source = referencenet(source_latents, 0, source_embeds).states
    driving = conditioning_referencenet(driving_latents, 0, driving_embeds).states
    states = {layer: torch.cat([source[layer], driving[layer]], dim=1) for layer in driving}
    return states, torch.cat([source_embeds, driving_embeds], dim=1)


@dataclass
class StepOutput:
    """One micro-batch: the float32 loss and what it was computed from (for logging and tests)."""

    loss: torch.Tensor
    prediction: torch.Tensor
    target: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    noisy_latents: torch.Tensor
    source_kept: torch.Tensor


def compute_loss(
    components: TrainingComponents,
    batch: dict[str, torch.Tensor],
    *,
    noise_generator: torch.Generator,
    dropout_generator: torch.Generator,
    conditioning_dropout_prob: float,
    pure_noise_at_final_timestep: bool = True,
    prediction_type: str | None = None,
    models: dict[str, torch.nn.Module] | None = None,
) -> StepOutput:
    """The loss of one micro-batch (see the module docstring), differentiable in the trained parameters.

    Args:
        batch: a collated `FaceTripletDataset` batch.
        noise_generator: draws, in this order, the VAE posterior noise, the timesteps and the noise.
        dropout_generator: draws one uniform number per sample; the source is dropped where it is below
            `conditioning_dropout_prob`.
        pure_noise_at_final_timestep: the authors' quirk: at the last training timestep the noisy latents are the
            noise itself (the zero-SNR input) while the target stays SD 2.1's (inference never queries that step).
        prediction_type: `"v_prediction"` or `"epsilon"`; `None` takes the scheduler's.
        models: the trained networks as the caller runs them (accelerate-wrapped, say) by name; defaults to
            `components`' own.
    """
    models = models or {name: getattr(components, name) for name in TRAINED_MODELS}
    scheduler = components.noise_scheduler
    device = batch["ground_truth"].device
    batch_size = batch["ground_truth"].shape[0]

    # 1. Latents of ground truth, source and driving images (one VAE call), and CLIP embeddings
    images = torch.cat([batch["ground_truth"], batch["source_image"], batch["conditioning_image"]])
    with torch.no_grad():
        truth_latents, source_latents, driving_latents = encode_latents(components.vae, images, noise_generator).chunk(
            3
        )
        source_embeds, driving_embeds = encode_images(
            components.image_encoder, torch.cat([batch["source_clip"], batch["conditioning_clip"]])
        ).chunk(2)

    # 2. Timesteps and noise; the noisy ground truth and the target
    num_train_timesteps = scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=noise_generator, device=device)
    noise = randn_tensor(truth_latents.shape, generator=noise_generator, device=device, dtype=torch.float32)
    noisy_latents = scheduler.add_noise(truth_latents, noise, timesteps)
    if pure_noise_at_final_timestep:
        final = (timesteps == num_train_timesteps - 1).view(-1, 1, 1, 1)
        noisy_latents = torch.where(final, noise, noisy_latents)
    prediction_type = prediction_type or scheduler.config.prediction_type
    if prediction_type == "v_prediction":
        target = scheduler.get_velocity(truth_latents, noise, timesteps)
    elif prediction_type == "epsilon":
        target = noise
    else:
        raise ValueError(f"prediction_type must be 'v_prediction' or 'epsilon', got {prediction_type!r}.")

    # 3. Source dropout: the null identity for some samples
    draws = torch.rand(batch_size, generator=dropout_generator, device=device)
    source_kept = draws >= conditioning_dropout_prob
    source_latents, source_embeds = drop_source(source_latents, source_embeds, source_kept)

    # 4. ReferenceNets, then the UNet; MSE in float32
    reference_states, encoder_hidden_states = encode_references(
        models["referencenet"],
        models["conditioning_referencenet"],
        source_latents,
        source_embeds,
        driving_latents,
        driving_embeds,
    )
    prediction = predict(models["unet"], noisy_latents, timesteps, encoder_hidden_states, reference_states)
    loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
    return StepOutput(loss, prediction, target, truth_latents, noise, timesteps, noisy_latents, source_kept)
