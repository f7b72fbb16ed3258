"""The Ray engine's planning, without a cluster: inputs (lists, URIs), workers, crop size, the missing extra."""

import sys
from pathlib import Path

import pytest

from face_anon import AnonymizeOptions, InputError, ModelLoadError
from face_anon.apps.cli import main
from face_anon.io.files import plan_files
from face_anon.orchestration.ray_runner import (
    RAY_INSTALL,
    RayConfig,
    is_uri,
    plan_inputs,
    plan_workers,
    resolve_crop_size,
)


def test_a_folder_is_planned_as_the_command_line_plans_it(photos, tmp_path):
    ray_plan, plan = plan_inputs([photos], tmp_path / "out"), plan_files([photos], tmp_path / "out")
    assert ray_plan.jobs == plan.jobs and ray_plan.skipped == plan.skipped and ray_plan.journal == plan.journal
    assert ray_plan.sources == tuple(str(job.input) for job in plan.jobs)
    assert len(plan.jobs) == 12


def test_a_text_file_lists_inputs(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(photos)
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# photos to do\n\none.jpg\n  {photos / 'two.png'}  \n{photos / 'more'}\n")
    plan = plan_inputs([listing], tmp_path / "out")
    assert [job.output.relative_to(tmp_path / "out").as_posix() for job in plan.jobs] == [
        "one.jpg",
        "two.png",
        "empty.png",  # the folder is mirrored: more/empty.png and more/nested.png land in out/
        "nested.png",
    ]
    assert plan.sources[:2] == ("one.jpg", str(photos / "two.png"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(InputError, match="lists no input"):
        plan_inputs([empty], tmp_path / "out")


def test_a_uri_folder_is_listed_and_mirrored(photos, tmp_path):
    uri = photos.as_uri()
    assert is_uri(uri) and is_uri("s3://bucket/key") and not is_uri(str(photos)) and not is_uri("C:/photos")
    plan = plan_inputs([uri], tmp_path / "out")
    local = plan_files([photos], tmp_path / "out")
    assert [job.output for job in plan.jobs] == [job.output for job in local.jobs]
    assert plan.sources == tuple(f"{uri}/{job.input.relative_to(photos).as_posix()}" for job in local.jobs)
    assert all(plan.is_remote(number) for number in range(len(plan.jobs)))
    # Passed over as a folder scan passes them over, named by URI (a Path would fold the "//").
    assert [(entry.path, entry.reason) for entry in plan.skipped] == [
        (f"{uri}/{entry.path.relative_to(photos).as_posix()}", entry.reason) for entry in local.skipped
    ]
    assert len(plan.skipped) == 3  # .cache/, .hidden.png, notes.txt
    single = plan_inputs([f"{uri}/one.jpg"], tmp_path / "out")
    assert [job.output for job in single.jobs] == [tmp_path / "out" / "one.jpg"]


def test_bad_inputs_are_named(photos, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        plan_inputs([(photos / "missing").as_uri()], tmp_path / "out")
    with pytest.raises(InputError, match="must be a folder when an input is a URI"):
        plan_inputs([photos.as_uri()], tmp_path / "out.png")
    with pytest.raises(InputError, match="would both be written there"):
        plan_inputs([photos / "more" / "empty.png", (photos / "empty.png").as_uri()], tmp_path / "out")


def test_workers_fit_the_cluster():
    two_cpus = plan_workers(RayConfig(), {"CPU": 2.0})
    assert (two_cpus.detect, two_cpus.anonymize, two_cpus.write, two_cpus.gpus_per_model) == (1, 1, 1, 0.0)
    assert two_cpus.cpus_each == 0.66 and two_cpus.torch_threads == 1  # 3 actors share 2 CPUs
    more = plan_workers(RayConfig(anonymize_workers=2, detect_workers=3), {"CPU": 2.0})
    assert (more.detect, more.anonymize, more.write, more.cpus_each) == (3, 2, 1, 0.33)
    gpus = plan_workers(RayConfig(), {"CPU": 64.0, "GPU": 8.0})
    assert (gpus.anonymize, gpus.gpus_per_model, gpus.cpus_each) == (8, 1.0, 1.0)
    assert gpus.detect + gpus.write == 56
    halves = plan_workers(RayConfig(num_gpus_per_worker=0.5), {"CPU": 64.0, "GPU": 2.0})
    assert halves.anonymize == 4
    with pytest.raises(InputError, match="--num-gpus-per-worker"):
        plan_workers(RayConfig(num_gpus_per_worker=1), {"CPU": 8.0})
    with pytest.raises(InputError, match="--anonymize-workers"):
        plan_workers(RayConfig(anonymize_workers=3), {"CPU": 8.0, "GPU": 2.0})
    for bad in ({"detect_workers": 0}, {"num_gpus_per_worker": -1}, {"anonymize_workers": 1.5}):
        with pytest.raises(InputError, match=next(iter(bad))):
            RayConfig(**bad)


def test_crop_size_is_known_before_any_model_loads(tiny_pipeline, tiny_model_dir, tmp_path):
    assert resolve_crop_size(AnonymizeOptions(mode="blur"), None) == 256
    assert resolve_crop_size(AnonymizeOptions(mode="pixelate", crop_size=64), None) == 64
    assert resolve_crop_size(AnonymizeOptions(crop_size=48), "ignored") == 48
    # From the model's configs, without loading it: what the loaded pipeline says.
    assert resolve_crop_size(AnonymizeOptions(), str(tiny_model_dir)) == tiny_pipeline.default_image_size == 16
    with pytest.raises(ModelLoadError, match="no-such-model"):
        resolve_crop_size(AnonymizeOptions(), str(tmp_path / "no-such-model"))


def test_without_ray_the_flag_says_how_to_get_it(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(SystemExit) as exit_:
        main([str(photos), "-o", str(tmp_path / "out"), "--mode", "blur", "--engine", "ray"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--engine: 'ray' needs Ray Data" in err and RAY_INSTALL in err
    assert not Path(tmp_path / "out").exists()
