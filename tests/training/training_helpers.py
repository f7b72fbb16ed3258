"""Builders shared by the training tests: tiny models laid out like the Hub repositories the training script
starts from, and tiny triplet datasets made of scikit-image's sample photos."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from skimage import data as skimage_data
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel


ROOT = Path(__file__).resolve().parents[2]

# SD 2.1's UNet, shrunk: same block types, linear projections, upcast attention; 3 blocks, 16/32/32 channels.
UNET_CONFIG = dict(
    sample_size=8,
    block_out_channels=(16, 32, 32),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=(1, 2, 2),
    norm_num_groups=8,
    use_linear_projection=True,
    upcast_attention=True,
)
VAE_CONFIG = dict(
    block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=32,
    scaling_factor=0.18215,
)
# SD 2.1's schedule.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    clip_sample=False,
    steps_offset=1,
)
CLIP_CONFIG = dict(
    hidden_size=32, image_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, patch_size=4
)
RESOLUTION = 32  # 16 x 16 latents (the tiny VAE halves once)
# Tensors per tiny ReferenceNet: 494 in all, 220 in transformer blocks (11 blocks of 20), 58 of them dead (the
# last up block's first block after norm1, 18, and its other two attentions, 40).
NUM_REFERENCENET_TENSORS, NUM_TRANSFORMER_TENSORS, NUM_DEAD_TENSORS = 494, 220, 58


def build_base_model(folder: Path) -> tuple[Path, Path]:
    """A tiny "Stable Diffusion 2.1" (`unet/`, `vae/`, `scheduler/`) and a tiny CLIP (vision tower + image processor)
    under `folder`, with fixed random weights; returns both folders."""
    sd, clip = folder / "sd", folder / "clip"
    torch.manual_seed(0)
    UNet2DConditionModel(**UNET_CONFIG).save_pretrained(sd / "unet")
    AutoencoderKL(**VAE_CONFIG).save_pretrained(sd / "vae")
    DDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(sd / "scheduler")
    CLIPVisionModel(CLIPVisionConfig(**CLIP_CONFIG)).save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip)
    return sd, clip


def sample_photos(size: int = 40) -> list[PIL.Image.Image]:
    """Four different, asymmetric RGB photos of `size` x `size`."""
    photos = (skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket())
    return [PIL.Image.fromarray(photo).resize((size, size), PIL.Image.Resampling.BICUBIC) for photo in photos]


# Each row: (source, conditioning, ground truth) as indices into `sample_photos`.
ROWS = ((0, 1, 2), (3, 2, 1), (1, 3, 0))


def write_triplets(folder: Path, rows=ROWS, size: int = 40, records: list | None = None) -> Path:
    """A `--train_data_dir`: `img/<i>.png` and `metadata.jsonl` with one row per triplet (or the given records)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(sample_photos(size)):
        photo.save(folder / "img" / f"{i}.png")
    if records is None:
        records = [
            {"source_image": f"img/{s}.png", "conditioning_image": f"img/{c}.png", "ground_truth": f"img/{g}.png"}
            for s, c, g in rows
        ]
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    (folder / "metadata.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


def train_arguments(sd: Path, clip: Path, train_data_dir: Path, output_dir: Path, **overrides) -> list[str]:
    """The training script's command line for the tiny models (plain float32 AdamW, no trackers by default)."""
    settings = {
        "pretrained_model_name_or_path": sd,
        "clip_model_name_or_path": clip,
        "train_data_dir": train_data_dir,
        "output_dir": output_dir,
        "resolution": RESOLUTION,
        "train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "max_train_steps": 10,
        "checkpointing_steps": 1000,
        "validation_steps": 1000,
        "report_to": "none",
        "seed": 0,
    }
    settings.update(overrides)
    argv = []
    for key, value in settings.items():
        if value is True:
            argv.append(f"--{key}")
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif value is not None and value is not False:
            argv += [f"--{key}", str(value)]
    return argv


def state_dicts(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The trained networks' tensors saved in a repository or checkpoint folder, by network."""
    from safetensors.torch import load_file

    return {
        name: load_file(folder / name / "diffusion_pytorch_model.safetensors")
        for name in ("unet", "referencenet", "conditioning_referencenet")
    }


def max_difference(a: dict, b: dict) -> float:
    """The largest absolute difference between two (nested) dicts of tensors with the same keys."""
    assert a.keys() == b.keys()
    return max(
        max_difference(a[k], b[k]) if isinstance(a[k], dict) else float((a[k].double() - b[k].double()).abs().max())
        for k in a
    )


def as_array(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255.0
