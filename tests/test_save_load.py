"""`save_pretrained` writes a Hub-style folder that diffusers loads back as remote code, in a fresh process."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CASES, case_call_kwargs, case_latents, env_without_this_checkout, relative_files

from pipeline_face_anon import FaceAnonPipeline


CASE = CASES[0]
LOADER = """
import sys
import numpy as np
import torch
from diffusers import DiffusionPipeline

torch.set_num_threads(1)  # as the test process: the same reduction order, so bit-identical results
folder, mode, out = sys.argv[1:4]
kwargs = {"trust_remote_code": True}
if mode == "custom_pipeline":
    kwargs["custom_pipeline"] = folder + "/pipeline_face_anon.py"
pipe = DiffusionPipeline.from_pretrained(folder, **kwargs)
assert type(pipe).__name__ == "FaceAnonPipeline", type(pipe)
assert type(pipe).__module__.startswith("diffusers_modules."), type(pipe).__module__
assert type(pipe.referencenet).__name__ == "ReferenceNetModel", type(pipe.referencenet)
# from_pipe shares every component (the ReferenceNets included), and the shared pipeline gives the outputs.
shared = type(pipe).from_pipe(pipe)
assert all(shared.components[name] is module for name, module in pipe.components.items()), shared.components
pipe = shared
pipe.set_progress_bar_config(disable=True)
images = [__import__("PIL.Image").Image.open(path).convert("RGB") for path in sys.argv[5:]]
latents = torch.from_numpy(np.load(sys.argv[4]))
generator = torch.Generator().manual_seed(0)
result = pipe(images if len(images) > 1 else images[0], **KWARGS, latents=latents, generator=generator).images
np.save(out, result)
"""


def run_fresh_process(folder: Path, mode: str, tmp_path: Path, case: dict) -> np.ndarray:
    kwargs = case_call_kwargs(case)
    image = kwargs.pop("image")
    kwargs.pop("source_image", None)
    assert case["case_spec"]["anonymization_degree"] > 0, "the loader script passes no source image"
    np.save(tmp_path / "latents.npy", case_latents(case).numpy())
    paths = []
    for index, face in enumerate(image if isinstance(image, list) else [image]):
        paths.append(str(tmp_path / f"face{index}.png"))
        face.save(paths[-1])
    out = tmp_path / f"{mode}.npy"
    env = env_without_this_checkout(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    script = LOADER.replace("KWARGS", repr(kwargs))
    completed = subprocess.run(
        [sys.executable, "-c", script, str(folder), mode, str(out), str(tmp_path / "latents.npy"), *paths],
        cwd=tmp_path,  # not the repository: the code must come from the saved folder
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return np.load(out)


def test_saved_folder_layout(tiny_model_dir):
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_face_anon", "FaceAnonPipeline"]
    assert index["referencenet"] == ["modeling_referencenet", "ReferenceNetModel"]
    assert index["conditioning_referencenet"] == ["modeling_referencenet", "ReferenceNetModel"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["image_encoder"] == ["transformers", "CLIPVisionModel"]
    # the code diffusers runs, where it looks for it, and nothing else: no reader of the authors' layout
    code = [path for path in relative_files(tiny_model_dir) if path.endswith(".py")]
    assert code == [
        "conditioning_referencenet/modeling_referencenet.py",
        "modeling_referencenet.py",
        "pipeline_face_anon.py",
        "referencenet/modeling_referencenet.py",
    ]
    root = Path(__file__).parents[1]
    assert (tiny_model_dir / "pipeline_face_anon.py").read_text() == (root / "pipeline_face_anon.py").read_text()
    weights = sorted(
        p.relative_to(tiny_model_dir).as_posix()
        for p in tiny_model_dir.rglob("*")
        if p.suffix in (".bin", ".safetensors")
    )
    assert weights and all(w.endswith(".safetensors") for w in weights)


@pytest.mark.parametrize("mode", ["trust_remote_code", "custom_pipeline"])
def test_saved_folder_loads_in_a_fresh_process_with_identical_outputs(tiny_pipeline, tiny_model_dir, tmp_path, mode):
    generator = torch.Generator().manual_seed(0)
    expected = tiny_pipeline(**case_call_kwargs(CASE), latents=case_latents(CASE), generator=generator).images
    np.testing.assert_array_equal(run_fresh_process(tiny_model_dir, mode, tmp_path, CASE), expected)


def test_save_load_save_round_trip(tiny_model_dir, tmp_path):
    """A pipeline loaded as remote code saves a folder that loads again (the Hub round trip of push_to_hub)."""
    script = (
        "import sys\nfrom diffusers import DiffusionPipeline\n"
        "DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True).save_pretrained(sys.argv[2])\n"
    )
    env = env_without_this_checkout(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    again = tmp_path / "again"
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tiny_model_dir), str(again)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert json.loads((again / "model_index.json").read_text()) == json.loads(
        (tiny_model_dir / "model_index.json").read_text()
    )
    assert (again / "referencenet" / "modeling_referencenet.py").read_text() == (
        tiny_model_dir / "modeling_referencenet.py"
    ).read_text()


def test_installed_modules_import_without_the_repository(tmp_path):
    """`pip install .` makes the Hub files and the converter's modules importable as top-level modules (notebooks,
    the CLI, `FaceAnonPipeline.from_original`)."""
    env = env_without_this_checkout()
    code = (
        "from pipeline_face_anon import FaceAnonPipeline; import modeling_referencenet, original_checkpoint, "
        "convert_weights; convert_weights.model_card_template(); print(FaceAnonPipeline.__module__)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "pipeline_face_anon"


def test_repository_model_index_is_what_save_pretrained_writes(tiny_model_dir):
    """The root `model_index.json` (the published repository's) names the components the pipeline saves."""
    root = json.loads((Path(__file__).parents[1] / "model_index.json").read_text())
    saved = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert set(root) == set(saved)
    for key in set(root) - {"_diffusers_version", "scheduler"}:  # the tests run DDIM; the model ships DDPM
        assert root[key] == saved[key], key
    assert root["scheduler"] == ["diffusers", "DDPMScheduler"]


def test_from_original_without_the_converter_module_says_what_is_missing(monkeypatch):
    """The Hub files do not carry the authors'-layout reader: without face-anon installed, a clear ImportError."""
    monkeypatch.setitem(sys.modules, "original_checkpoint", None)  # as in an environment without face-anon
    with pytest.raises(ImportError, match="original_checkpoint"):
        FaceAnonPipeline.from_original()
