"""The Ray engine on a local 2-CPU cluster against the single-process command line, on the same 12 photos.

Outputs must be the same bytes and the reports the same rows (output folders aside), in blur mode and with
the tiny diffusion model; a resumed run must do no model work and change no file; a model actor that
raises or exits on its first batch must be replaced without losing or duplicating an output.
"""

import functools
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from ray_helpers import count, load_counted, read_report, stamps, tree

from face_anon import AnonymizeOptions, find_faces, load_detector, plan_crops
from face_anon.apps.cli import main
from face_anon.io.files import JOURNAL_NAME
from face_anon.orchestration.ray_runner import FAULT_ENV, RayConfig, anonymize_with_ray
from face_anon.orchestration.report import report_json
from face_anon.orchestration.stages import crop_layers


PHOTOS = 12
WRITTEN = 11  # all but the corrupt one
# The tiny model as test_photo_cli runs it. Batches of one face make the fault tests' call counts exact;
# test_diffusion_matches_the_command_line uses other batch sizes in each engine.
DIFFUSION = ["--size", "32", "--steps", "2", "--seed", "5", "--device", "cpu", "--batch-size", "1"]
DIFFUSION_BATCHED = DIFFUSION[:-1]


def _run(photos: Path, out: Path, *args) -> tuple[int, list[dict]]:
    report = out.parent / f"{out.name}.json"
    status = main([str(photos), "-o", str(out), "--json", str(report), "-q", *map(str, args)])
    return status, read_report(report, out)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {name: data for name, data in tree(folder).items() if name != JOURNAL_NAME}


def _journal(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / JOURNAL_NAME).read_text().splitlines()]


def _assert_same_run(ray_out: Path, ray_rows: list[dict], cli_out: Path, cli_rows: list[dict]) -> None:
    assert ray_rows == cli_rows
    assert _outputs(ray_out) == _outputs(cli_out)
    assert len(_outputs(ray_out)) == WRITTEN and not list(ray_out.rglob("*.part"))
    # Each output journaled once, with the bytes on disk.
    journal = _journal(ray_out)
    assert sorted(row["output"] for row in journal) == sorted(_outputs(ray_out))
    assert [row["output_sha256"] for row in sorted(journal, key=lambda r: r["output"])] == [
        row["output_sha256"] for row in sorted(_journal(cli_out), key=lambda r: r["output"])
    ]


def _statuses(rows: list[dict], photos: Path) -> dict[str, str]:
    return {Path(row["input"]).relative_to(photos).as_posix(): row["status"] for row in rows}


@pytest.fixture(scope="module")
def blur_cli(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("blur") / "cli"
    status, rows = _run(photos, out, "--mode", "blur")
    assert status == 1  # the corrupt photo
    return out, rows


@pytest.fixture(scope="module")
def diffusion_cli(photos, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusion") / "cli"
    status, rows = _run(photos, out, "--model", tiny_model_dir, *DIFFUSION_BATCHED, "3")
    assert status == 1
    return out, rows


@pytest.fixture(scope="module")
def diffusion_ray(ray_cluster, photos, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusion") / "ray"
    status, rows = _run(photos, out, "--model", tiny_model_dir, *DIFFUSION_BATCHED, "4", "--engine", "ray")
    assert status == 1
    return out, rows


def test_the_photos_cover_each_path(photos, blur_cli):
    """Control: faces, no faces, a photo whose faces overlap (two layers), a corrupt one, skipped files."""
    _, rows = blur_cli
    assert _statuses(rows, photos) == {
        **dict.fromkeys(["two.png", "one.jpg", "overlap.png", "tilted.png", "small.jpg", "three.png"], "ok"),
        **{
            "grey.png": "ok",
            "more/nested.png": "ok",
            "corrupt.jpg": "error",
            ".hidden.png": "skipped",
            ".cache": "skipped",
        },
        **{"empty.png": "no_faces", "empty.jpg": "no_faces", "more/empty.png": "no_faces", "notes.txt": "skipped"},
    }
    assert sum(len(row["faces"]) for row in rows) >= 13
    image = np.asarray(PIL.Image.open(photos / "overlap.png").convert("RGB"))
    options = AnonymizeOptions(mode="blur")
    detector = load_detector()
    faces = find_faces(image, detector, options)
    assert len(crop_layers(plan_crops(image, faces, options, crop_size=256, eye_scale=detector.eye_scale))) == 2


def test_blur_matches_the_command_line(ray_cluster, photos, blur_cli, tmp_path):
    cli_out, cli_rows = blur_cli
    out = tmp_path / "ray"
    status, rows = _run(photos, out, "--mode", "blur", "--engine", "ray", "--anonymize-workers", 2)
    assert status == 1
    _assert_same_run(out, rows, cli_out, cli_rows)
    statuses = _statuses(rows, photos)
    changed = [name for name, data in _outputs(out).items() if data != (photos / name).read_bytes()]
    assert sorted(changed) == sorted(name for name, status in statuses.items() if status == "ok")  # control


def test_diffusion_matches_the_command_line(diffusion_cli, diffusion_ray, blur_cli):
    """Batches of 3 faces here, 4 there, grouped differently by each engine: the same bytes, because on
    the CPU the model runs one face per call (its float rounding depends on the faces in a call) and
    both engines use the same number of torch threads here."""
    _assert_same_run(*diffusion_ray, *diffusion_cli)
    actions = {face["action"] for row in diffusion_ray[1] for face in row["faces"]}
    assert actions == {"anonymized"}
    blurred = _outputs(blur_cli[0])
    assert all(data != blurred[name] for name, data in _outputs(diffusion_ray[0]).items() if "empty" not in name)


def test_keep_sends_the_reference_people_to_the_workers(ray_cluster, photos, blur_cli, tmp_path):
    """--keep on Ray (the embedder is sent as its arguments and loads dlib's model on each worker): the
    same faces kept, with the same distances, as the single-process run. Every test face is the
    astronaut, so the reference keeps each face large enough to identify; the rest are blurred."""
    pytest.importorskip("dlib")
    reference = tmp_path / "reference.png"
    reference.write_bytes((photos / "tilted.png").read_bytes())
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        status, rows = _run(photos, out, "--mode", "blur", "--engine", engine, "--keep", reference)
        assert status == 1  # the corrupt photo
        runs[engine] = out, rows
    _assert_same_run(*runs["ray"], *runs["local"])
    faces = [face for row in runs["ray"][1] for face in row["faces"]]
    kept = [face for face in faces if face["action"] == "kept"]
    assert len(kept) >= 5 and all(face["matched_reference"] == str(reference) for face in kept)
    assert all(face["distance"] < 0.55 for face in kept)
    # Control: without --keep every one of these faces was blurred.
    assert len(faces) == sum(len(row["faces"]) for row in blur_cli[1])
    assert {face["action"] for face in faces} <= {"kept", "blurred"}


def test_a_second_run_does_no_model_work_and_changes_no_file(
    ray_cluster, photos, tiny_model_dir, diffusion_ray, tmp_path
):
    out, first = diffusion_ray
    before, counter = stamps(out), tmp_path / "counter"
    options = AnonymizeOptions(num_inference_steps=2, seed=5, crop_size=32, batch_size=1)
    rows = anonymize_with_ray(
        [photos],
        out,
        options=options,
        model=str(tiny_model_dir),
        load_pipeline=functools.partial(load_counted, str(tiny_model_dir), str(counter)),
    )
    assert count(counter, "load") == count(counter, "call") == 0
    assert stamps(out) == before
    statuses = _statuses([row.to_json() for row in rows], photos)
    written = [name for name, status in _statuses(first, photos).items() if status in ("ok", "no_faces")]
    assert len(written) == WRITTEN and statuses == {
        **_statuses(first, photos),
        **dict.fromkeys(written, "skipped"),
    }
    assert all(row.journal["output_sha256"] for row in rows if row.output)  # the earlier run's record
    # And across engines: the command line skips them too.
    status, again = _run(photos, out, "--model", tiny_model_dir, *DIFFUSION)
    assert status == 1 and stamps(out) == before
    assert _statuses(again, photos) == statuses


def test_a_model_actor_that_exits_is_replaced(
    ray_cluster, photos, tiny_model_dir, diffusion_cli, tmp_path, monkeypatch
):
    flag, counter, out = tmp_path / "fault", tmp_path / "counter", tmp_path / "ray"
    flag.touch()
    monkeypatch.setenv(FAULT_ENV, f"exit:{flag}")
    rows = anonymize_with_ray(
        [photos],
        out,
        options=AnonymizeOptions(num_inference_steps=2, seed=5, crop_size=32, batch_size=1),
        model=str(tiny_model_dir),
        load_pipeline=functools.partial(load_counted, str(tiny_model_dir), str(counter)),
    )
    assert not flag.exists()  # the fault happened
    (tmp_path / "ray.json").write_text(report_json(rows))
    _assert_same_run(out, read_report(tmp_path / "ray.json", out), *diffusion_cli)
    # The lost batch was done again, no other: one model call per anonymized face (batch size 1).
    faces = sum(face.action == "anonymized" for row in rows for face in row.outcomes)
    assert count(counter, "call") == faces > 0 and count(counter, "load") == 1


def test_a_model_actor_that_raises_is_replaced_reading_a_uri(ray_cluster, photos, blur_cli, tmp_path, monkeypatch):
    """The photos read through a file system URI (as s3:// would be), with the first batch raising."""
    flag, out = tmp_path / "fault", tmp_path / "ray"
    flag.touch()
    monkeypatch.setenv(FAULT_ENV, f"raise:{flag}")
    uri = photos.as_uri()
    rows = anonymize_with_ray(
        [uri], out, options=AnonymizeOptions(mode="blur"), config=RayConfig(anonymize_workers=2, detect_workers=2)
    )
    assert not flag.exists()
    (tmp_path / "ray.json").write_text(report_json(rows))
    ray_rows = read_report(tmp_path / "ray.json", out)
    cli_out, cli_rows = blur_cli
    for row in cli_rows:  # the same rows, naming the URIs
        row["input"] = f"{uri}/{Path(row['input']).relative_to(photos).as_posix()}"
    _assert_same_run(out, ray_rows, cli_out, cli_rows)
    assert sorted(row["input"] for row in _journal(out)) == sorted(  # the journal names the URIs too
        row["input"] for row in cli_rows if row["status"] in ("ok", "no_faces")
    )


def test_a_video_is_anonymized_whole_on_a_model_actor(ray_cluster, tmp_path):
    from video.video_helpers import moving_scene, write_clip

    clip = tmp_path / "clip.mp4"
    write_clip(clip, moving_scene(6)[0])
    assert _run(clip, tmp_path / "cli", "--mode", "blur")[0] == 0
    status, rows = _run(clip, tmp_path / "ray", "--mode", "blur", "--engine", "ray")
    assert status == 0
    assert rows == read_report(tmp_path / "cli.json", tmp_path / "cli")
    assert rows[0]["kind"] == "video" and rows[0]["frames"] == 6 and rows[0]["tracks"]
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "cli") != {"clip.mp4": clip.read_bytes()}


def test_a_model_that_cannot_load_stops_the_run_with_every_row(ray_cluster, photos, tmp_path):
    from ray_helpers import load_broken

    out = tmp_path / "ray"
    options = AnonymizeOptions(num_inference_steps=2, crop_size=32)
    rows = [row.to_json() for row in anonymize_with_ray([photos], out, options=options, load_pipeline=load_broken)]
    assert len(rows) == PHOTOS + 3
    by_name = {Path(row["input"]).relative_to(photos).as_posix(): row for row in rows}
    for name in ("empty.png", "empty.jpg", "more/empty.png"):  # written: no face needs the model
        assert by_name[name]["output"] and (out / name).is_file(), by_name[name]
        assert (by_name[name].get("journal") or by_name[name])["status"] == "no_faces"
    stopped = [row for row in rows if row["error"] and row["error"].startswith("not processed: cannot load the model")]
    assert stopped and "OSError: no model files here" in stopped[0]["error"], [row["error"] for row in rows]
    assert {Path(row["input"]).name for row in stopped} >= {"two.png", "one.jpg", "overlap.png", "grey.png"}
    assert sorted(_outputs(out)) == ["empty.jpg", "empty.png", "more/empty.png"]
