"""`train_face_anon.py` end to end on tiny models: a 30-step run from the command line (loss, frozen and trained
tensors, the output repository, validation, logs), exact resume, and argument and data errors."""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import default_collate

import train_face_anon
from face_anon_training import recipe
from face_anon_training.data import FaceTripletDataset, TrainingDataError, read_metadata

from .training_helpers import (
    RESOLUTION,
    ROOT,
    as_array,
    max_difference,
    sample_photos,
    state_dicts,
    train_arguments,
    write_triplets,
)


STEPS = 30
# Offline; one thread, as in the tests' own process: the models are tiny, and threads that wait on each other on a
# busy machine make a step many times slower.
SUBPROCESS_ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
VALIDATION_STEPS = 15
DESCRIPTION = "Four scikit-image sample photos in three triplets (a test run)."


@pytest.fixture(scope="module")
def trained(base_model, train_data_dir, tmp_path_factory):
    """`python train_face_anon.py ...` for 30 steps with validation and TensorBoard; returns the output folder."""
    sd, clip = base_model
    output_dir = tmp_path_factory.mktemp("trained") / "face-anon-tiny"
    images = train_data_dir / "img"
    argv = train_arguments(
        sd,
        clip,
        train_data_dir,
        output_dir,
        max_train_steps=STEPS,
        checkpointing_steps=STEPS,
        validation_steps=VALIDATION_STEPS,
        validation_image=[images / "0.png", images / "1.png", images / "3.png", images / "2.png"],
        validation_num_inference_steps=2,
        report_to="tensorboard",
        random_flip=True,
        data_description=DESCRIPTION,
    )
    completed = subprocess.run(
        [sys.executable, str(ROOT / "train_face_anon.py"), *argv],
        cwd=output_dir.parent,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "step/s" in completed.stderr and "loss=" in completed.stderr and "lr=" in completed.stderr  # progress bar
    return output_dir


def fixed_set_loss(components, train_data_dir) -> float:
    """The loss over every triplet for fixed draws (8 seeds, no dropout, no flip): comparable between models."""
    dataset = FaceTripletDataset(read_metadata(train_data_dir), RESOLUTION, components.feature_extractor)
    batch = default_collate([dataset[i] for i in range(len(dataset))])
    recipe.install_reference_processors(components.unet)
    losses = []
    with torch.no_grad():
        for seed in range(8):
            out = recipe.compute_loss(
                components,
                batch,
                noise_generator=torch.Generator().manual_seed(1000 + seed),
                dropout_generator=torch.Generator().manual_seed(seed),
                conditioning_dropout_prob=0.0,
            )
            losses.append(out.loss.item())
    return float(np.mean(losses))


def test_loss_goes_down(trained, base_model, train_data_dir):
    before = fixed_set_loss(recipe.load_components(str(base_model[0]), str(base_model[1])), train_data_dir)
    after = fixed_set_loss(recipe.load_components(str(trained)), train_data_dir)  # a face-anon repository
    assert after < 0.75 * before, (before, after)  # measured: 0.50 -> 0.29


def test_frozen_tensors_unchanged_and_trained_tensors_changed(trained, base_model):
    sd, clip = base_model
    base_unet = load_file(sd / "unet" / "diffusion_pytorch_model.safetensors")
    out = state_dicts(trained)
    assert all(not torch.equal(out["unet"][key], base_unet[key]) for key in base_unet)
    for name in recipe.REFERENCENETS:
        live = set(
            recipe.live_reference_parameter_names(recipe.ReferenceNetModel.from_pretrained(trained, subfolder=name))
        )
        assert len(live) == 162
        for key, value in out[name].items():
            assert torch.equal(value, base_unet[key]) != (key in live), key
    assert (
        max_difference(
            load_file(trained / "vae" / "diffusion_pytorch_model.safetensors"),
            load_file(sd / "vae" / "diffusion_pytorch_model.safetensors"),
        )
        == 0
    )
    assert (
        max_difference(
            load_file(trained / "image_encoder" / "model.safetensors"), load_file(clip / "model.safetensors")
        )
        == 0
    )


def test_output_is_a_complete_repository(trained, base_model):
    index = json.loads((trained / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_face_anon", "FaceAnonPipeline"]
    assert index["referencenet"] == ["modeling_referencenet", "ReferenceNetModel"]
    for path in ("pipeline_face_anon.py", "modeling_referencenet.py", "referencenet/modeling_referencenet.py"):
        assert (trained / path).is_file()
    for name in ("unet", *recipe.REFERENCENETS):  # the trained resolution, not the base's 8 latents
        assert json.loads((trained / name / "config.json").read_text())["sample_size"] == RESOLUTION // 2
    card = (trained / "README.md").read_text()
    assert DESCRIPTION in card and str(base_model[0]) in card and f"for {STEPS} optimizer steps" in card
    assert "| resolution | `32` |" in card and "license: openrail++" in card


def test_validation_images_and_logs(trained):
    for step in (VALIDATION_STEPS, STEPS):
        for pair in (0, 1):
            image = PIL.Image.open(trained / "validation" / f"step-{step:07d}_pair-{pair}.png")
            assert image.size == (4 * RESOLUTION, RESOLUTION)  # source | driving | swap | anonymized
    late, early = (as_array(PIL.Image.open(trained / "validation" / f"step-{s:07d}_pair-0.png")) for s in (30, 15))
    assert np.abs(late[:, 64:] - early[:, 64:]).max() > 0  # the weights changed between validations
    assert np.array_equal(late[:, :64], early[:, :64])  # the inputs did not

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained / "logs" / "face-anon"), size_guidance={"images": 0}).Reload()
    assert {"train_loss", "step_loss", "lr"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("train_loss")] == list(range(1, STEPS + 1))
    assert [event.step for event in events.Images("validation")] == [VALIDATION_STEPS, STEPS]


LOAD_AND_ANONYMIZE = """
import sys, numpy as np, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(pipe).__module__.startswith("diffusers_modules"), type(pipe).__module__  # the repository's own code
face = np.load(sys.argv[2])
out = pipe(face, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
np.save(sys.argv[3], out)
"""


def test_output_loads_in_a_fresh_process_and_anonymizes(trained, tmp_path):
    from face_anon_training import repository

    face = np.asarray(sample_photos(RESOLUTION)[0], dtype=np.uint8)  # the astronaut
    np.save(tmp_path / "face.npy", face)
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_AND_ANONYMIZE, str(trained), str(tmp_path / "face.npy"), str(tmp_path / "out.npy")],
        cwd=tmp_path,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    fresh = np.load(tmp_path / "out.npy")
    assert fresh.shape == (1, RESOLUTION, RESOLUTION, 3)  # the default size is the trained resolution
    assert np.isfinite(fresh).all() and np.abs(fresh - face / 255.0).mean() > 0.02  # the face was redrawn

    pipe = repository.build_pipeline(recipe.load_components(str(trained)))  # our classes, same weights
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(face, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_allclose(fresh, expected, atol=1e-5)


def test_resume_equals_an_uninterrupted_run(base_model, tmp_path):
    """10 steps, stop, resume to 20 == 20 straight. Seven triplets, batches of 1, 2 accumulation steps: an epoch is
    7 micro-batches and 4 steps (the last micro-batch forces one), so step 10 stops in the middle of an epoch."""
    sd, clip = base_model
    rows = [(0, 1, 2), (3, 2, 1), (1, 3, 0), (2, 0, 3), (0, 3, 1), (3, 1, 2), (2, 1, 0)]
    data_dir = write_triplets(tmp_path / "data", rows=rows)
    settings = dict(
        train_batch_size=1,
        gradient_accumulation_steps=2,
        random_flip=True,
        conditioning_dropout_prob=0.5,
        checkpointing_steps=10,
        seed=7,
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_face_anon.main(train_arguments(sd, clip, data_dir, straight, max_train_steps=20, **settings))
    train_face_anon.main(train_arguments(sd, clip, data_dir, resumed, max_train_steps=10, **settings))
    progress = torch.load(resumed / "checkpoint-10" / "custom_checkpoint_0.pkl", weights_only=True)
    assert (progress["epoch"], progress["batches_in_epoch"]) == (2, 4)  # in the middle of an epoch
    assert max_difference(state_dicts(resumed / "checkpoint-10"), state_dicts(straight / "checkpoint-10")) == 0
    train_face_anon.main(
        train_arguments(sd, clip, data_dir, resumed, max_train_steps=20, resume_from_checkpoint="latest", **settings)
    )
    assert max_difference(state_dicts(resumed), state_dicts(straight)) <= 1e-6
    assert max_difference(state_dicts(resumed), state_dicts(resumed / "checkpoint-10")) > 1e-4  # it did train on
    optimizer = [torch.load(run / "checkpoint-20" / "optimizer.bin", weights_only=True) for run in (straight, resumed)]
    for a, b in zip(optimizer[0]["state"].values(), optimizer[1]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_each_process_and_micro_batch_draws_its_own_noise_and_dropout():
    def draws(process_index, micro_step, seed=0):
        noise, dropout = torch.Generator(), torch.Generator()
        train_face_anon.seed_step(noise, dropout, seed, process_index, micro_step)
        return torch.randn(8, generator=noise), torch.rand(8, generator=dropout)

    first = draws(0, 5)
    assert all(torch.equal(a, b) for a, b in zip(first, draws(0, 5)))  # a function of (seed, process, micro-batch)
    for other in (draws(1, 5), draws(0, 6), draws(0, 5, seed=1)):
        assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    assert not torch.equal(first[0], torch.randn(8, generator=torch.Generator().manual_seed(0)))  # not the plain seed


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(dataset_name="some/dataset"), "exactly one of --train_data_dir and --dataset_name"),
        (dict(validation_image=["a.png"]), "--validation_image takes pairs SOURCE DRIVING"),
        (dict(conditioning_dropout_prob=1.5), "--conditioning_dropout_prob must be in [0, 1], got 1.5"),
        (dict(resolution=0), "--resolution must be >= 1, got 0"),
    ],
)
def test_bad_arguments_name_the_argument(base_model, train_data_dir, tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit):
        train_face_anon.parse_args(train_arguments(*base_model, train_data_dir, tmp_path, **overrides))
    assert message in capsys.readouterr().err


def test_resolution_the_model_cannot_take_is_refused(base_model, train_data_dir, tmp_path):
    with pytest.raises(ValueError, match="--resolution must be a multiple of 8 for this model, got 36"):
        train_face_anon.main(train_arguments(*base_model, train_data_dir, tmp_path, resolution=36))


def test_bad_data_stops_before_training(base_model, tmp_path):
    data_dir = write_triplets(tmp_path / "data", records=[{"source_image": "img/0.png", "ground_truth": "img/1.png"}])
    with pytest.raises(TrainingDataError, match=r"metadata.jsonl line 1: missing column\(s\) conditioning_image"):
        train_face_anon.main(train_arguments(*base_model, data_dir, tmp_path / "out"))
    assert not (tmp_path / "out" / "unet").exists()


def test_mixed_precision_keeps_float32_weights_and_saves_the_original_vae_and_clip(
    base_model, train_data_dir, tmp_path
):
    """bfloat16 autocast (the CPU's mixed precision; fp16 takes the same path on a GPU): VAE and CLIP run in it, the
    trained weights stay float32, and the repository gets the base's float32 VAE and CLIP, not the cast copies."""
    sd, clip = base_model
    out = tmp_path / "bf16"
    argv = train_arguments(sd, clip, train_data_dir, out, max_train_steps=1, mixed_precision="bf16")
    completed = subprocess.run(  # a process of its own: accelerate fixes the precision once per process
        [sys.executable, str(ROOT / "train_face_anon.py"), *argv],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    trained = state_dicts(out)
    assert {value.dtype for weights in trained.values() for value in weights.values()} == {torch.float32}
    assert max_difference(state_dicts(out)["unet"], load_file(sd / "unet" / "diffusion_pytorch_model.safetensors")) > 0
    vae = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert max_difference(vae, load_file(sd / "vae" / "diffusion_pytorch_model.safetensors")) == 0
    assert (
        max_difference(load_file(out / "image_encoder" / "model.safetensors"), load_file(clip / "model.safetensors"))
        == 0
    )


def test_dataset_name_reads_a_datasets_dataset(base_model, train_data_dir, tmp_path):
    """`--dataset_name` with renamed columns: a local parquet dataset (images embedded) gives the rows
    `--train_data_dir` gives."""
    import datasets

    columns = {"identity": "source_image", "driving": "conditioning_image", "target": "ground_truth"}
    records = read_metadata(train_data_dir)
    table = {name: [row.images[key] for row in records] for name, key in columns.items()}
    features = datasets.Features({name: datasets.Image() for name in columns})
    (tmp_path / "parquet").mkdir()
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(tmp_path / "parquet" / "train.parquet"))
    argv = train_arguments(*base_model, None, tmp_path / "out", dataset_name=tmp_path / "parquet")
    argv += ["--source_image_column", "identity", "--conditioning_image_column", "driving"]
    argv += ["--ground_truth_column", "target", "--max_train_samples", "2"]
    rows, source = train_face_anon.load_training_rows(train_face_anon.parse_args(argv))
    assert len(rows) == 2 and source == "a local dataset"
    from transformers import CLIPImageProcessorPil

    extractor = CLIPImageProcessorPil.from_pretrained(base_model[1])
    from_dataset = FaceTripletDataset(rows, RESOLUTION, extractor)[1]
    from_folder = FaceTripletDataset(records, RESOLUTION, extractor)[1]
    for key in from_folder:
        assert torch.equal(from_dataset[key], from_folder[key]), key
