# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""Converts the published checkpoints of "Face Anonymization Made Simple" (WACV 2025) into one self-contained,
verified diffusers repository.

The authors' model needs three Hub repositories: the fine-tuned UNet and ReferenceNets (`hkung/face-anon-simple`),
Stable Diffusion 2.1's VAE and scheduler, and CLIP's vision tower. This script reads them with
`original_checkpoint`, one component at a time, into a folder that

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

loads with nothing else, and proves it before reporting success: every source tensor is written unchanged (cast to
the asked dtype), and a fresh Python process that loads the folder computes what the sources compute.

    python convert_weights.py --output-dir ./face-anon-simple-diffusers [--dtype float16 --variant fp16]
        [--push-to-hub USER/REPO]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import DiffusionPipeline, UNet2DConditionModel
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError
from safetensors import safe_open

from original_checkpoint import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_FACE_MODEL,
    DEFAULT_SD_MODEL,
    PICKLE_SUFFIXES,
    OriginalSources,
    Source,
    component_loaders,
    load_original_pipeline,
    shard_names,
)
from pipeline_face_anon import EXAMPLE_DOC_STRING, EXAMPLE_REPOSITORY, FaceAnonPipeline, write_hub_code


logger = logging.getLogger("convert_weights")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
VARIANT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Both sides of the fresh-process check run the same code on the same weights, so they agree to rounding noise.
DEFAULT_ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
LICENSE = "openrail++"  # the UNet and ReferenceNets are fine-tuned from SD 2.1, whose VAE ships here as well
# The model card's template: beside this file in a checkout, under the environment's `share/face-anon/` once installed.
MODEL_CARD_TEMPLATE = "model_card.md"
_TEMPLATE_FOLDERS = (Path(__file__).parent / "templates", Path(sysconfig.get_path("data"), "share", "face-anon"))


class ConversionError(Exception):
    """A source, or the written repository, is not what it should be; the message says what and where."""


@dataclass(frozen=True)
class Component:
    """A component of the repository: where it comes from and, for one with weights, which tensors it keeps."""

    name: str
    role: str  # the source: "face_model", "sd_model" or "clip_model"
    subfolder: str | None  # in the source
    weights: str | None = None  # weight file stem, in the source and written; None: no weights
    key_prefix: str = ""  # only source tensors under this prefix belong to the component
    note: str = ""  # for the model card


COMPONENTS = (
    Component("unet", "face_model", "unet", "diffusion_pytorch_model"),
    Component("referencenet", "face_model", "referencenet", "diffusion_pytorch_model"),
    Component("conditioning_referencenet", "face_model", "conditioning_referencenet", "diffusion_pytorch_model"),
    Component("vae", "sd_model", "vae", "diffusion_pytorch_model"),
    Component("scheduler", "sd_model", "scheduler", note="v-prediction, as the authors load it"),
    # CLIP's repository holds the whole CLIPModel; the pipeline uses the vision tower only.
    Component("image_encoder", "clip_model", None, "model", key_prefix="vision_model.", note="vision tower only"),
    Component("feature_extractor", "clip_model", None),
)
WEIGHT_COMPONENTS = tuple(component for component in COMPONENTS if component.weights)


@dataclass
class ConversionResult:
    """What `convert` wrote and what it checked."""

    output_dir: Path
    files: dict[str, str]  # every file of the repository, relative path -> sha256
    dtype: torch.dtype
    variant: str | None
    sample_size: int | None
    source_sample_size: int | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ conversion


def convert(
    output_dir: str | os.PathLike,
    sources: OriginalSources | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    variant: str | None = None,
    sample_size: int | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
    device: str | None = None,
    verify_steps: int = 2,
    verify_size: int | None = None,
    verify_atol: float | None = None,
    examples: Sequence[str | os.PathLike] = (),
    examples_steps: int = 25,
    **hub_kwargs: Any,
) -> ConversionResult:
    """Writes the three source repositories as one verified diffusers repository at `output_dir`.

    Components are loaded, written and freed one at a time into a temporary folder beside `output_dir`, which
    replaces `output_dir` only once everything is verified; on any failure it is removed.

    Args:
        output_dir: the repository folder to create; an existing one is refused unless `overwrite=True`.
        sources: the source repositories (`OriginalSources.of(...)`; default: the published ones).
        dtype: dtype of every written weight.
        variant: diffusers variant name of the weight files (`"fp16"` writes `*.fp16.safetensors`).
        sample_size: `sample_size` written into the UNet and ReferenceNet configs; `None`:
            `original_checkpoint.trained_sample_size` (64, i.e. 512 px, for SD 2.1's architecture).
        repo_id: the Hub id the model card's usage snippet names (defaults to the folder's name).
        device, verify_steps, verify_size, verify_atol: the fresh-process check (see `verify_repository`).
        examples, examples_steps: photos for the model card's gallery (see `render_examples`), and its steps.
        hub_kwargs: `cache_dir`, `token`, `local_files_only`, passed to every download.

    Raises:
        ConversionError: a source is missing something or does not fit, or the written repository does not match
            the sources. `output_dir` is untouched then.
    """
    output_dir = Path(output_dir).absolute()
    sources = sources or OriginalSources.of()
    _check_output_dir(output_dir, overwrite)
    work_dir = output_dir.parent / f".{output_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    work_dir.mkdir(parents=True)
    try:
        index, written_sample_size = _write_components(work_dir, sources, dtype, variant, sample_size, hub_kwargs)
        _write_code_and_index(work_dir, index)
        source_files = source_weight_files(sources, **hub_kwargs)
        logger.info("checking every tensor against its source")
        check_tensors(work_dir, sources, source_files, dtype, variant)
        logger.info("checking, in a fresh process, that the written repository computes what the sources compute")
        verification = verify_in_fresh_process(
            work_dir,
            sources,
            dtype=dtype,
            variant=variant,
            sample_size=written_sample_size,
            device=device,
            steps=verify_steps,
            size=verify_size,
            atol=verify_atol,
            hub_kwargs=hub_kwargs,
        )
        face = sources.face_model
        source_unet = UNet2DConditionModel.load_config(face.name, subfolder="unet", **face.hub_kwargs(**hub_kwargs))
        result = ConversionResult(
            output_dir=work_dir,
            files={path: sha256(work_dir / path) for path in relative_files(work_dir)},
            dtype=dtype,
            variant=variant,
            sample_size=written_sample_size,
            source_sample_size=source_unet.get("sample_size"),
            sources=_provenance(sources, source_files),
            verification=verification,
        )
        widget = None
        if examples:
            logger.info("rendering the model card's gallery from %d photos", len(examples))
            widget = render_examples(
                work_dir, examples, dtype=dtype, variant=variant, device=device, steps=examples_steps
            )
            result.files.update({path: sha256(work_dir / path) for path in relative_files(work_dir)})
        write_model_card(work_dir, sources, result, repo_id=repo_id or output_dir.name, widget=widget)
        result.files["README.md"] = sha256(work_dir / "README.md")
        _move_into_place(work_dir, output_dir)
        result.output_dir = output_dir
        logger.info("wrote and verified %s (%d files)", output_dir, len(result.files))
        return result
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise


def source_weight_files(sources: OriginalSources, **hub_kwargs: Any) -> dict[str, list[Path]]:
    """Per weight component, the source file(s) its tensors come from (local, or in the Hub cache): what
    `check_tensors` compares against."""
    files = {}
    roles = sources.by_role()
    for component in WEIGHT_COMPONENTS:
        source = roles[component.role]
        try:
            files[component.name] = source.weight_files(component.subfolder, component.weights, **hub_kwargs)
        except (OSError, EntryNotFoundError) as error:
            where = f"{component.subfolder}/" if component.subfolder else "its root"
            raise ConversionError(
                f"{source.role} {source.name!r}: no {component.weights} weights in {where} ({error})."
            ) from error
    return files


def _provenance(sources: OriginalSources, source_files: dict[str, list[Path]]) -> list[dict[str, Any]]:
    """Per source: where it is, the revision it was read at, and the sha256 of each weight file read."""
    provenance = []
    for role, source in sources.by_role().items():
        files = [path for c in WEIGHT_COMPONENTS if c.role == role for path in source_files[c.name]]
        provenance.append(
            {
                "role": role,
                "source": source.name,
                "revision": source.describe_revision(files),
                "files": {_display_path(path, source): sha256(path) for path in files},
            }
        )
    return provenance


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ConversionError(f"--output-dir {str(output_dir)!r} exists and is not a folder.")
    if not overwrite:
        raise ConversionError(f"--output-dir {str(output_dir)!r} already exists; pass --overwrite to replace it.")
    if any(output_dir.iterdir()) and not (output_dir / "model_index.json").is_file():
        raise ConversionError(
            f"--output-dir {str(output_dir)!r} is not empty and holds no model_index.json: refusing to replace a "
            "folder that is not a pipeline repository, even with --overwrite."
        )


def _write_components(
    work_dir: Path,
    sources: OriginalSources,
    dtype: torch.dtype,
    variant: str | None,
    sample_size: int | None,
    hub_kwargs: dict,
) -> tuple[dict[str, list[str]], int | None]:
    """Loads, writes and frees each component in turn: peak memory is one component plus its serialized copy."""
    try:
        loaders = component_loaders(sources, torch_dtype=dtype, sample_size=sample_size, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise ConversionError(str(error)) from error

    index, written_sample_size = {}, None
    for name, load in loaders.items():
        started = time.monotonic()
        try:
            component = load()
        except (OSError, ValueError) as error:
            raise ConversionError(str(error)) from error
        folder = work_dir / name
        if isinstance(component, torch.nn.Module):
            component.save_pretrained(folder, variant=variant)
        else:
            component.save_pretrained(folder)
        if name == "unet":
            written_sample_size = component.config.sample_size
        index[name] = [type(component).__module__.split(".")[0], type(component).__name__]
        del component
        gc.collect()
        logger.info("%s: written in %.1f s", name, time.monotonic() - started)
    return index, written_sample_size


def _write_code_and_index(work_dir: Path, index: dict[str, list[str]]) -> None:
    """`model_index.json` naming the components, and the pipeline's code where diffusers looks for it (the custom
    classes are named by `write_hub_code`)."""
    model_index = {"_diffusers_version": diffusers.__version__, **index}
    (work_dir / "model_index.json").write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")
    write_hub_code(work_dir)


def _move_into_place(work_dir: Path, output_dir: Path) -> None:
    """Renames the verified folder to `output_dir`; a previous `output_dir` goes only after that succeeded."""
    previous = None
    if output_dir.exists():
        previous = output_dir.parent / f".{output_dir.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.replace(output_dir, previous)
    try:
        os.replace(work_dir, output_dir)
    except BaseException:
        if previous is not None:
            os.replace(previous, output_dir)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- verification


def check_tensors(
    repo_dir: str | os.PathLike,
    sources: OriginalSources,
    source_files: dict[str, list[Path]],
    dtype: torch.dtype,
    variant: str | None,
) -> None:
    """Every source tensor is written, with its shape and values, cast to `dtype` (floating point tensors); nothing
    else is written, and nothing is pickled. Reads one tensor at a time.

    Args:
        repo_dir: the written repository.
        sources: the source repositories.
        source_files: per weight component (`COMPONENTS` with weights), its source weight file(s).
        dtype, variant: what the repository was written with.

    Raises:
        ConversionError: naming the component and the first tensor that differs.
    """
    repo_dir = Path(repo_dir)
    pickles = [path for path in relative_files(repo_dir) if path.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ConversionError(f"the written repository holds pickled files: {pickles}")
    roles = sources.by_role()
    for component in WEIGHT_COMPONENTS:
        source = roles[component.role]
        expected = _tensor_locations(source_files[component.name], component.key_prefix)
        written_files = _written_weight_files(repo_dir / component.name, component.weights, variant)
        written = _tensor_locations(written_files, "")
        where = f"{component.name}/ (from {source.role} {source.name!r})"
        missing, extra = sorted(expected.keys() - written.keys()), sorted(written.keys() - expected.keys())
        if missing or extra:
            raise ConversionError(
                f"{where}: the written tensors differ from the source's: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, extra {extra[:5]}{' ...' if len(extra) > 5 else ''}."
            )
        with contextlib.ExitStack() as stack:  # memory-mapped files; one tensor pair in memory at a time
            paths = {*expected.values(), *written.values()}
            files = {path: stack.enter_context(safe_open(path, framework="pt")) for path in paths}
            for key in sorted(expected):
                original, copy = files[expected[key]].get_tensor(key), files[written[key]].get_tensor(key)
                wanted = dtype if original.is_floating_point() else original.dtype
                if copy.shape != original.shape or copy.dtype != wanted:
                    raise ConversionError(
                        f"{where}: tensor {key!r} is {copy.dtype} {tuple(copy.shape)}, "
                        f"expected {wanted} {tuple(original.shape)}."
                    )
                if not torch.equal(copy, original.to(wanted)):
                    raise ConversionError(
                        f"{where}: tensor {key!r} does not hold the source's values (cast to {wanted})."
                    )


def _tensor_locations(files: list[Path], prefix: str) -> dict[str, Path]:
    locations = {}
    for file in files:
        if not file.is_file():
            raise ConversionError(f"weight file {str(file)!r} is missing.")
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    if key in locations:
                        raise ConversionError(f"tensor {key!r} is stored twice ({locations[key]} and {file}).")
                    locations[key] = file
    return locations


def _written_weight_files(folder: Path, stem: str, variant: str | None) -> list[Path]:
    """The component's weight files under the names diffusers and transformers load for `variant` (one file, or
    the shards its index names), and no other."""
    index = folder / (f"{stem}.safetensors.index.{variant}.json" if variant else f"{stem}.safetensors.index.json")
    if index.is_file():
        expected = shard_names(index)
    else:
        expected = [f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"]
    present = sorted(file.name for file in folder.glob("*.safetensors"))
    if present != expected:
        raise ConversionError(f"{folder.name}/: expected the weight files {expected}, found {present}.")
    return [folder / name for name in expected]


def verify_in_fresh_process(
    repo_dir: str | os.PathLike,
    sources: OriginalSources,
    *,
    dtype: torch.dtype,
    variant: str | None = None,
    sample_size: int | None = None,
    device: str | None = None,
    steps: int = 2,
    size: int | None = None,
    atol: float | None = None,
    hub_kwargs: dict | None = None,
) -> dict[str, Any]:
    """Runs `python -m convert_weights --verify-only repo_dir ...` offline and returns its report.

    A fresh interpreter loads the repository as a user would (remote code included) and compares a short run
    against the sources loaded directly; the sources are read from the Hub cache the conversion just filled.

    Raises:
        ConversionError: the run failed or found a difference; the message carries the child's error.
    """
    hub_kwargs = hub_kwargs or {}
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(scratch, "report.json")
        command = [sys.executable, "-m", "convert_weights", "--verify-only", str(repo_dir)]
        for role, source in sources.by_role().items():
            command += [f"--{role.replace('_', '-')}", source.name]
            if source.revision:
                command += [f"--{role.replace('_', '-')}-revision", source.revision]
        command += ["--dtype", dtype_name(dtype), "--verify-steps", str(steps), "--verify-report", str(report_path)]
        options = {
            "--variant": variant,
            "--sample-size": sample_size,
            "--device": device,
            "--verify-size": size,
            "--verify-atol": atol,
            "--cache-dir": hub_kwargs.get("cache_dir"),
        }
        for flag, value in options.items():
            if value is not None:
                command += [flag, str(value)]
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        here = str(Path(__file__).absolute().parent)
        env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
        completed = subprocess.run(command, env=env)
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
    if report is None or completed.returncode != 0:
        problem = report["error"] if report and report.get("error") else f"exit status {completed.returncode}"
        raise ConversionError(
            f"verification failed: the written repository, loaded in a fresh process, does not compute what the "
            f"sources compute ({problem})."
        )
    return report


def verify_repository(
    repo_dir: str | os.PathLike,
    sources: OriginalSources,
    *,
    dtype: torch.dtype = torch.float32,
    variant: str | None = None,
    sample_size: int | None = None,
    device: str | None = None,
    steps: int = 2,
    size: int | None = None,
    atol: float | None = None,
    **hub_kwargs: Any,
) -> dict[str, Any]:
    """Loads `repo_dir` with `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` and checks that a
    short anonymization run (`steps` DDPM steps with guidance, `size` px, fixed seed) gives what the same run
    gives on the sources loaded directly (`original_checkpoint.load_original_pipeline`). The two pipelines are
    loaded one after the other.

    Returns a report (`max_abs_diff`, `atol`, ...). Raises `ConversionError` on any mismatch.
    """
    from diffusers import DiffusionPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    atol = DEFAULT_ATOL[dtype] if atol is None else atol
    pipe = DiffusionPipeline.from_pretrained(repo_dir, trust_remote_code=True, dtype=dtype, variant=variant)
    if type(pipe).__name__ != FaceAnonPipeline.__name__:
        raise ConversionError(f"{repo_dir} loads as {type(pipe).__name__}, not {FaceAnonPipeline.__name__}.")
    for name, component in pipe.components.items():
        dtypes = {p.dtype for p in component.parameters()} if isinstance(component, torch.nn.Module) else {dtype}
        if dtypes != {dtype}:
            raise ConversionError(f"{repo_dir}: {name} loads as {sorted(map(str, dtypes))}, not {dtype}.")
    for name in ("unet", "referencenet", "conditioning_referencenet"):
        got = getattr(pipe, name).config.sample_size
        if sample_size is not None and got != sample_size:
            raise ConversionError(f"{repo_dir}: {name} has sample_size {got}, expected {sample_size}.")
    size = size or min(pipe.default_image_size, 128)
    converted = _short_run(pipe, device, steps, size)
    del pipe
    gc.collect()

    original = load_original_pipeline(sources, torch_dtype=dtype, sample_size=sample_size, **hub_kwargs)
    expected = _short_run(original, device, steps, size)
    max_abs_diff = float((converted - expected).abs().max())
    report = {
        "steps": steps,
        "size": size,
        "device": device,
        "dtype": dtype_name(dtype),
        "atol": atol,
        "max_abs_diff": max_abs_diff,
    }
    if not max_abs_diff <= atol:  # also catches NaN
        raise ConversionError(
            f"a {steps}-step run at {size} px differs from the sources' by up to {max_abs_diff:.3g} "
            f"(tolerance {atol:g})."
        )
    return report


def _short_run(pipe: Any, device: str, steps: int, size: int) -> torch.Tensor:
    """A seeded anonymization of a fixed pseudo-random image, as float32 NCHW in [0, 1]."""
    pipe.set_progress_bar_config(disable=True)
    if device != "cpu":  # loaded on the CPU
        pipe.to(device)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    output = pipe(
        image,
        anonymization_degree=1.25,
        guidance_scale=4.0,
        num_inference_steps=steps,
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    return output.float().cpu()


# ------------------------------------------------------------------------------------------------ model card


def usage_example(repo_id: str, load_kwargs: str = ", torch_dtype=torch.float16") -> str:
    """The pipeline's docstring example (`EXAMPLE_DOC_STRING`) as plain code, loading `repo_id` with `load_kwargs`
    (the text after `trust_remote_code=True`)."""
    lines = []
    for line in EXAMPLE_DOC_STRING.splitlines():
        line = line.strip()
        if line.startswith((">>>", "...")):  # doctest prompts; continuation lines keep their indentation
            lines.append(line[4:])
        elif not line and lines:
            lines.append("")
    code = "\n".join(lines).strip()
    loaded = f'"{EXAMPLE_REPOSITORY}", trust_remote_code=True, torch_dtype=torch.float16'
    if loaded not in code:
        raise ConversionError("the pipeline's example no longer loads EXAMPLE_REPOSITORY as the model card expects.")
    return code.replace(loaded, f'"{repo_id}", trust_remote_code=True{load_kwargs}')


def render_examples(
    repo_dir: Path,
    photos: Sequence[str | os.PathLike],
    *,
    dtype: torch.dtype,
    variant: str | None,
    device: str | None,
    steps: int,
) -> list[dict[str, Any]]:
    """The model card's gallery: each photo anonymized whole by the written repository, loaded as users load it,
    and the before/after pair written into `repo_dir/examples/`; the card's `widget` entries
    (`face_anon.apps.gallery.render_gallery`)."""
    from face_anon import AnonymizeOptions
    from face_anon.apps.gallery import render_gallery

    pipe = DiffusionPipeline.from_pretrained(repo_dir, trust_remote_code=True, dtype=dtype, variant=variant)
    pipe = pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.set_progress_bar_config(disable=True)
    return render_gallery(pipe, photos, repo_dir, options=AnonymizeOptions(num_inference_steps=steps))


def model_card_template() -> Path:
    """The model card's template file (`templates/model_card.md`)."""
    for folder in _TEMPLATE_FOLDERS:
        if (folder / MODEL_CARD_TEMPLATE).is_file():
            return folder / MODEL_CARD_TEMPLATE
    raise ConversionError(f"the model card template {MODEL_CARD_TEMPLATE} is in none of {list(_TEMPLATE_FOLDERS)}.")


def write_model_card(
    repo_dir: str | os.PathLike,
    sources: OriginalSources,
    result: ConversionResult,
    *,
    repo_id: str,
    widget: list[dict[str, Any]] | None = None,
) -> ModelCard:
    """`README.md` from `templates/model_card.md`, rendered with `huggingface_hub.ModelCard`: metadata, usage,
    resolution, components (as `model_index.json` names them), provenance with checksums, licence and citation.
    The card is read back to check that its metadata parses."""
    repo_dir = Path(repo_dir)
    roles = sources.by_role()
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="image-to-image",
        license=LICENSE,
        base_model=[source.hub_id for source in roles.values()],
        tags=["face-anonymization", "face-swapping", "privacy", "referencenet", "stable-diffusion", "arxiv:2411.00762"],
        widget=widget,  # the gallery: before/after pairs (`--examples`)
    )
    index = json.loads((repo_dir / "model_index.json").read_text())
    components = [
        {
            "folder": c.name,
            "library": index[c.name][0],
            "class_name": index[c.name][1],
            "note": c.note,
            "source": roles[c.role].hub_id,
            "subfolder": c.subfolder,
        }
        for c in COMPONENTS
    ]
    written_sample_size = json.loads((repo_dir / "unet" / "config.json").read_text()).get("sample_size")
    vae_blocks = json.loads((repo_dir / "vae" / "config.json").read_text())["block_out_channels"]
    load_kwargs = f", torch_dtype=torch.{dtype_name(result.dtype)}" + (
        f', variant="{result.variant}"' if result.variant else ""
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(model_card_template()),
        dtype=dtype_name(result.dtype),
        variant=result.variant,
        usage=usage_example(repo_id, load_kwargs),
        source_sample_size=result.source_sample_size,
        sample_size=written_sample_size,
        image_size=written_sample_size * 2 ** (len(vae_blocks) - 1) if written_sample_size else "?",
        components=components,
        versions={
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__.split("+")[0],
        },
        source_files=[
            {"role": item["role"], "source": item["source"], "revision": item["revision"], "path": path, "sha256": s}
            for item in result.sources
            for path, s in sorted(item["files"].items())
        ],
        check=result.verification,
        weight_files=[
            {"path": path, "bytes": (repo_dir / path).stat().st_size, "sha256": digest}
            for path, digest in sorted(result.files.items())
            if path.endswith(".safetensors")
        ],
        face_model=roles["face_model"].hub_id,
    )
    path = repo_dir / "README.md"
    card.save(path)
    parsed = ModelCard.load(path)
    for key in ("library_name", "pipeline_tag", "license", "base_model", "tags") + (("widget",) if widget else ()):
        if getattr(parsed.data, key) != getattr(card_data, key):
            raise ConversionError(
                f"the model card's metadata does not parse back: {key}={getattr(parsed.data, key)!r}."
            )
    return parsed


# ---------------------------------------------------------------------------------------------- Hub upload


def push_to_hub(
    repo_dir: str | os.PathLike,
    repo_id: str,
    files: dict[str, str] | list[str],
    *,
    private: bool | None = None,
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> Any:
    """Uploads exactly `files` (the verified files, relative to `repo_dir`) to the Hub model repository `repo_id`,
    creating it if needed, in one commit. The token comes from the usual places (`HF_TOKEN`, `hf auth login`)."""
    repo_dir = Path(repo_dir)
    files = sorted(files)
    present = relative_files(repo_dir)
    if present != files:
        raise ConversionError(
            f"{repo_dir} changed since it was verified: {sorted(set(present) ^ set(files))} differ; convert again."
        )
    if not hub_constants.is_offline_mode():
        try:  # the Hub's own check of the card's metadata (needs the network)
            ModelCard.load(repo_dir / "README.md").validate()
        except ValueError as error:
            raise ConversionError(f"the Hub rejects the model card: {error}") from error
    api = api or HfApi()
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(repo_dir / path)) for path in files]
    return api.create_commit(
        repo_id=repo_id,
        operations=operations,
        commit_message=commit_message or "Add Face Anonymization Made Simple (converted and verified)",
        repo_type="model",
    )


# --------------------------------------------------------------------------------------------------- helpers


def relative_files(folder: str | os.PathLike) -> list[str]:
    """Every file below `folder`, as sorted POSIX paths relative to it."""
    folder = Path(folder)
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _display_path(path: Path, source: Source) -> str:
    """A source file's path inside its repository."""
    parts = path.parts
    if not source.is_local and "snapshots" in parts:
        return "/".join(parts[parts.index("snapshots") + 2 :])
    return path.relative_to(source.name).as_posix() if source.is_local else path.name


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float16` -> `"float16"` (the names of `DTYPES`)."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(dtype: str | None, variant: str | None) -> torch.dtype:
    """The dtype to write: `dtype` (a `DTYPES` name), else the one `variant` implies (`fp16`, `bf16`), else float32.

    Raises:
        ValueError: `dtype` is unknown, or contradicts `variant`.
    """
    implied = VARIANT_DTYPES.get(variant)
    if dtype is None:
        return implied or torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    if implied is not None and DTYPES[dtype] != implied:
        raise ValueError(f"--variant {variant} names {dtype_name(implied)} weights, but --dtype is {dtype}.")
    return DTYPES[dtype]


# ------------------------------------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_weights",
        description=(
            "Convert the published checkpoints of 'Face Anonymization Made Simple' (the authors' face model, Stable "
            "Diffusion 2.1's VAE and scheduler, CLIP's vision tower) into one self-contained diffusers repository "
            "that DiffusionPipeline.from_pretrained(folder, trust_remote_code=True) loads, and verify it: every "
            "tensor against its source, then a short run in a fresh process against the sources loaded directly. "
            "Without a conversion, FaceAnonPipeline.from_original() loads the same pipeline from the sources."
        ),
        epilog=(
            "example: python convert_weights.py --output-dir ./face-anon-simple-diffusers --dtype float16 "
            "--variant fp16 --push-to-hub USER/face-anon-simple-diffusers"
        ),
    )
    sources = parser.add_argument_group("sources (a Hub repository id or a local folder in the same layout)")
    sources.add_argument(
        "--face-model",
        default=DEFAULT_FACE_MODEL,
        help="the authors' weights: unet/, referencenet/, conditioning_referencenet/ (default: %(default)s)",
    )
    sources.add_argument("--face-model-revision", help="branch, tag or commit of --face-model (Hub only)")
    sources.add_argument(
        "--sd-model", default=DEFAULT_SD_MODEL, help="Stable Diffusion 2.1: vae/ and scheduler/ (default: %(default)s)"
    )
    sources.add_argument("--sd-model-revision", help="branch, tag or commit of --sd-model (Hub only)")
    sources.add_argument(
        "--clip-model",
        default=DEFAULT_CLIP_MODEL,
        help="CLIP checkpoint (full CLIPModel or vision tower) with its image processor; only the vision "
        "tower is written (default: %(default)s)",
    )
    sources.add_argument("--clip-model-revision", help="branch, tag or commit of --clip-model (Hub only)")
    sources.add_argument("--cache-dir", help="Hugging Face cache folder for downloads (default: the usual one)")

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output-dir",
        type=Path,
        help="folder to create (required unless --verify-only); written to a temporary folder beside "
        "it and renamed only once verified",
    )
    output.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="dtype of the written weights (default: float16 with --variant fp16, bfloat16 with "
        "--variant bf16, else float32)",
    )
    output.add_argument(
        "--variant",
        help="diffusers variant name of the weight files, e.g. fp16 writes "
        "diffusion_pytorch_model.fp16.safetensors; load with variant='fp16'",
    )
    output.add_argument(
        "--sample-size",
        type=int,
        help="sample_size (in latents; x8 = default image size) written into the UNet and "
        "ReferenceNet configs (default: 64, i.e. 512 px, the trained resolution, for SD 2.1's "
        "architecture; the source's value for others)",
    )
    output.add_argument(
        "--examples",
        metavar="DIR",
        help="photos for the model card's gallery: each is anonymized by the converted model and the "
        "before/after pair is written into examples/, listed as widget entries in the card",
    )
    output.add_argument(
        "--examples-steps", type=int, default=25, help="denoising steps of the gallery's photos (default: 25)"
    )
    output.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output-dir (a previous conversion), once the new one is verified",
    )

    verify = parser.add_argument_group("verification")
    verify.add_argument("--device", help="device of the verification run (default: cuda if available, else cpu)")
    verify.add_argument(
        "--verify-steps", type=int, default=2, help="DDPM steps of the verification run (default: %(default)s)"
    )
    verify.add_argument(
        "--verify-size",
        type=int,
        help="image size in pixels of the verification run (default: the model's, at most 128)",
    )
    verify.add_argument(
        "--verify-atol",
        type=float,
        help="largest allowed difference of the verification outputs in [0, 1] (default: 1e-5 for "
        "float32, 1e-3 for float16, 1e-2 for bfloat16)",
    )
    verify.add_argument(
        "--verify-only",
        type=Path,
        metavar="DIR",
        help="convert nothing: check the converted repository DIR against the sources, in this "
        "process (what the conversion runs in a fresh process)",
    )
    verify.add_argument(
        "--verify-report", type=Path, metavar="FILE", help="with --verify-only: write the result as JSON"
    )

    hub = parser.add_argument_group("upload (after a successful verification)")
    hub.add_argument(
        "--push-to-hub",
        metavar="USER/REPO",
        help="upload the verified folder to this Hub model repository (created if missing; token from "
        "HF_TOKEN or `hf auth login`)",
    )
    hub.add_argument("--private", action="store_true", help="create the Hub repository as private")
    hub.add_argument("--commit-message", help="commit message of the upload")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.output_dir is None) == (args.verify_only is None):
        parser.error("pass --output-dir to convert, or --verify-only DIR to check a converted repository.")
    if args.verify_only is not None and args.push_to_hub:
        parser.error("--push-to-hub uploads a conversion; it does not combine with --verify-only.")
    for flag in ("sample_size", "verify_steps", "verify_size", "examples_steps"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}.")
    try:
        dtype = resolve_dtype(args.dtype, args.variant)
    except ValueError as error:
        parser.error(str(error))
    hub_kwargs = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    examples = []
    if args.examples is not None:
        from face_anon.apps.gallery import gallery_photos

        try:
            examples = gallery_photos(args.examples)
        except ValueError as error:
            parser.error(str(error))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        sources = OriginalSources.of(
            args.face_model,
            args.sd_model,
            args.clip_model,
            face_model_revision=args.face_model_revision,
            sd_model_revision=args.sd_model_revision,
            clip_model_revision=args.clip_model_revision,
        )
    except ValueError as error:
        print(f"convert_weights: error: {error}", file=sys.stderr)
        return 1
    written = dict(dtype=dtype, variant=args.variant, sample_size=args.sample_size, device=args.device, **hub_kwargs)

    if args.verify_only is not None:
        try:
            report = verify_repository(
                args.verify_only,
                sources,
                steps=args.verify_steps,
                size=args.verify_size,
                atol=args.verify_atol,
                **written,
            )
            status = 0
        except (ConversionError, OSError, ValueError) as error:
            report, status = {"error": str(error)}, 1
            print(f"convert_weights: error: {error}", file=sys.stderr)
        if args.verify_report is not None:
            args.verify_report.write_text(json.dumps(report, indent=2))
        if status == 0:
            logger.info(
                "verified %s: max abs difference %.3g (tolerance %g)",
                args.verify_only,
                report["max_abs_diff"],
                report["atol"],
            )
        return status

    try:
        result = convert(
            args.output_dir,
            sources,
            overwrite=args.overwrite,
            repo_id=args.push_to_hub,
            verify_steps=args.verify_steps,
            verify_size=args.verify_size,
            verify_atol=args.verify_atol,
            examples=examples,
            examples_steps=args.examples_steps,
            **written,
        )
    except ConversionError as error:
        print(f"convert_weights: error: {error}", file=sys.stderr)
        return 1
    if args.push_to_hub:
        try:
            commit = push_to_hub(
                result.output_dir,
                args.push_to_hub,
                result.files,
                private=args.private or None,
                commit_message=args.commit_message,
            )
        except Exception as error:  # network, authentication, permissions: the verified folder stays for a retry
            print(
                f"convert_weights: error: uploading {result.output_dir} to {args.push_to_hub} failed: {error}",
                file=sys.stderr,
            )
            return 1
        url = getattr(commit, "commit_url", commit)
        logger.info("uploaded %d files to %s: %s", len(result.files), args.push_to_hub, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
