# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""What a training run writes: validation images, and the trained model as a complete repository with its card."""

import importlib.metadata
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import accelerate
import diffusers
import numpy as np
import PIL.Image
import torch
import transformers
from huggingface_hub import ModelCard, ModelCardData

from pipeline_face_anon import FaceAnonPipeline


MODEL_CARD_TEMPLATE = Path(__file__).with_name("model_card_template.md")
LICENSE = "openrail++"  # fine-tuned from Stable Diffusion 2.1, whose VAE ships in the repository as well


def build_pipeline(components: Any, models: dict[str, torch.nn.Module] | None = None) -> FaceAnonPipeline:
    """A `FaceAnonPipeline` on the given networks (the live, trained ones by default: `components`' own) with a
    fresh `DDPMScheduler` of the training schedule. The UNet keeps the processors training installed."""
    models = models or {}
    return FaceAnonPipeline(
        vae=components.vae,
        image_encoder=components.image_encoder,
        feature_extractor=components.feature_extractor,
        referencenet=models.get("referencenet", components.referencenet),
        conditioning_referencenet=models.get("conditioning_referencenet", components.conditioning_referencenet),
        unet=models.get("unet", components.unet),
        scheduler=type(components.noise_scheduler).from_config(components.noise_scheduler.config),
    )


# ------------------------------------------------------------------------------------------------- validation


@dataclass
class ValidationRow:
    """One validation pair: the source and driving images as given, the swap (the source's identity in the driving
    image, `anonymization_degree=0`) and the anonymized driving image."""

    source: PIL.Image.Image
    driving: PIL.Image.Image
    swap: PIL.Image.Image
    anonymized: PIL.Image.Image

    def side_by_side(self) -> PIL.Image.Image:
        """source | driving | swap | anonymized, each at the output size."""
        size = self.swap.size
        tiles = [image.resize(size, PIL.Image.Resampling.LANCZOS) for image in (self.source, self.driving)]
        tiles += [self.swap, self.anonymized]
        canvas = PIL.Image.new("RGB", (size[0] * len(tiles), size[1]))
        for i, tile in enumerate(tiles):
            canvas.paste(tile, (i * size[0], 0))
        return canvas


def run_validation(
    pipeline: FaceAnonPipeline,
    pairs: Sequence[tuple[PIL.Image.Image, PIL.Image.Image]],
    *,
    resolution: int,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float,
    anonymization_degree: float,
) -> list[ValidationRow]:
    """Swaps and anonymizes each `(source, driving)` pair at `resolution`, each call from a generator seeded with
    `seed`, so that validations at different steps differ only by the weights."""
    rows = []
    device = pipeline._execution_device
    for source, driving in pairs:
        common = dict(
            height=resolution,
            width=resolution,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
        )
        swap = pipeline(
            driving,
            source_image=source,
            anonymization_degree=0.0,
            generator=torch.Generator(device).manual_seed(seed),
            **common,
        ).images[0]
        anonymized = pipeline(
            driving,
            anonymization_degree=anonymization_degree,
            generator=torch.Generator(device).manual_seed(seed),
            **common,
        ).images[0]
        rows.append(ValidationRow(source, driving, swap, anonymized))
    return rows


def save_validation(rows: Sequence[ValidationRow], folder: str | os.PathLike, step: int) -> list[Path]:
    """Writes `step-<step>_pair-<i>.png` (source | driving | swap | anonymized) per row; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, row in enumerate(rows):
        path = folder / f"step-{step:07d}_pair-{i}.png"
        row.side_by_side().save(path)
        paths.append(path)
    return paths


def log_validation(trackers: Sequence[Any], rows: Sequence[ValidationRow], step: int) -> None:
    """Logs the side-by-side rows to TensorBoard and Weights & Biases trackers."""
    images = [row.side_by_side() for row in rows]
    for tracker in trackers:
        if tracker.name == "tensorboard":
            stacked = np.stack([np.asarray(image) for image in images])
            tracker.writer.add_images("validation", stacked, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            captions = [f"pair {i}: source | driving | swap | anonymized" for i in range(len(images))]
            tracker.log(
                {"validation": [wandb.Image(image, caption=c) for image, c in zip(images, captions)]}, step=step
            )


# ------------------------------------------------------------------------------------------------- repository


def save_trained_repository(output_dir: str | os.PathLike, pipeline: FaceAnonPipeline, resolution: int) -> None:
    """Saves `pipeline` as a repository that `DiffusionPipeline.from_pretrained(output_dir, trust_remote_code=True)`
    loads (the pipeline's own `save_pretrained` writes the code files), with `sample_size` set to the trained
    resolution in the UNet's and both ReferenceNets' configs, so that calls without `height`/`width` make
    `resolution`-pixel images."""
    sample_size = resolution // pipeline.vae_scale_factor
    for model in (pipeline.unet, pipeline.referencenet, pipeline.conditioning_referencenet):
        model.register_to_config(sample_size=sample_size)
    pipeline.save_pretrained(output_dir, safe_serialization=True)


def _is_hub_id(name: str) -> bool:
    return not os.path.exists(name) and name.count("/") == 1


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    repo_id: str,
    pretrained_model: str,
    clip_model: str,
    base: str,
    data_description: str,
    data_source: str,
    num_rows: int,
    resolution: int,
    sample_size: int,
    global_step: int,
    settings: Sequence[tuple[str, Any]],
    trainable: dict[str, int],
    prediction_type: str,
    conditioning_dropout_prob: float,
) -> ModelCard:
    """Renders `model_card_template.md` into `output_dir/README.md`: usage, base weights, the user's description of
    the data, the training settings and libraries, licence and citation. Base models given as local folders are
    named in the text only (the card's `base_model` metadata takes Hub ids)."""
    bases = [name for name in (pretrained_model, clip_model) if _is_hub_id(name)]
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="image-to-image",
        license=LICENSE,
        base_model=bases or None,
        tags=["face-anonymization", "face-swapping", "privacy", "referencenet", "stable-diffusion", "face-anon"],
    )
    versions = {
        "face_anon": _version("face-anon"),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    card = ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        title=repo_id.rstrip("/").rsplit("/", 1)[-1],
        repo_id=repo_id,
        pretrained_model=pretrained_model,
        clip_model=clip_model,
        base=base,
        data_description=data_description.strip() or "No description of the training data was given.",
        data_source=data_source,
        num_rows=f"{num_rows:,}",
        resolution=resolution,
        sample_size=sample_size,
        global_step=f"{global_step:,}",
        settings=[(name, f"`{value}`") for name, value in settings],
        trainable={name: f"{count:,}" for name, count in trainable.items()},
        prediction_type=prediction_type,
        conditioning_dropout_prob=conditioning_dropout_prob,
        versions=versions,
        license=LICENSE,
    )
    card.save(Path(output_dir) / "README.md")
    return card


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
