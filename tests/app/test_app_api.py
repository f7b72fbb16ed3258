"""The ``/anonymize`` API endpoint through ``gradio_client``: the command line's output as a lossless PNG, two
jobs at once on the one shared pipeline, bad uploads explained, and no upload or result left on disk."""

import time

import numpy as np
import pytest

from .app_helpers import KEEP_SECONDS, STEPS, TWO_FACES, decode, run_cli, save, two_faces, wait_for


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False, download_files=True)


def anonymize(client, path, mode="anonymize", degree=1.25, seed=0):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), mode, degree, seed, api_name="/anonymize")


def test_the_endpoint_is_named_and_takes_image_mode_degree_seed(client):
    info = client.view_api(print_info=False, return_format="dict")
    endpoint = info["named_endpoints"]["/anonymize"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == ["image", "mode", "anonymization_degree", "seed"]
    assert len(endpoint["returns"]) == 2
    assert set(info["named_endpoints"]) == {"/anonymize"}  # the page's own events are not an API


@pytest.mark.parametrize("mode", ["blur", "anonymize"])
def test_the_result_is_the_command_lines_png(client, tiny_model_dir, tmp_path, mode):
    photo = save(two_faces(seed=1), tmp_path / "photo.jpg", quality=90)
    result, report = anonymize(client, photo, mode, 1.25, 3)
    by_cli = tmp_path / "cli.png"
    model = ["--model", str(tiny_model_dir), "--steps", str(STEPS)] if mode == "anonymize" else []
    run_cli(str(photo), "-o", str(by_cli), "--mode", mode, "--degree", "1.25", "--seed", "3", *model)
    data = open(result, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"  # lossless, not Gradio's default WebP
    assert data == by_cli.read_bytes()
    assert report["status"] == "ok" and report["input"] == "photo.jpg" and report["output"] == "photo_anonymized.png"
    action = {"blur": "blurred", "anonymize": "anonymized"}[mode]
    assert [face["action"] for face in report["faces"]] == [action, action]
    # Each face's half changed near the face; far from both faces every pixel is the decoded input's.
    original, output = decode(photo), decode(result)
    changed = np.any(original != output, axis=2)
    for placement in TWO_FACES:
        x, y = map(int, placement.centre)
        assert changed[y - 30 : y + 30, x - 25 : x + 25].mean() > 0.3
    assert not changed[:, 235:245].any() and not changed[:15].any() and not changed[-10:].any()


def test_two_jobs_at_once_give_what_each_gives_alone(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.utils import Status

    photos = [
        save(two_faces(seed=2), tmp_path / "a.png"),
        save(two_faces(seed=3)[:, ::-1].copy(), tmp_path / "b.png"),
    ]
    seeds = [0, 7]
    alone = [open(anonymize(client, p, "anonymize", 1.25, s)[0], "rb").read() for p, s in zip(photos, seeds)]
    assert alone[0] != alone[1]

    jobs = [
        client.submit(handle_file(str(p)), "anonymize", 1.25, s, api_name="/anonymize") for p, s in zip(photos, seeds)
    ]
    both_running = False
    while not all(job.done() for job in jobs):
        codes = [job.status().code for job in jobs]
        both_running |= all(code == Status.PROCESSING for code in codes)
        time.sleep(0.02)
    together = [open(job.result()[0], "rb").read() for job in jobs]
    assert together == alone
    assert both_running, "the two jobs never ran at the same time"


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("notes.jpg", b"not a photo\n", "notes.jpg cannot be read as a photo: not an image file Pillow can read"),
        ("dot.png", "1x1", "dot.png is 1 x 1 pixels; a photo must be at least 32 pixels wide and high"),
        ("wide.png", "1100x1000", "wide.png is 1100 x 1000 pixels (1.1 megapixels); this app accepts photos up to 1"),
    ],
)
def test_a_bad_upload_raises_an_error_in_words(client, tmp_path, name, content, expected):
    from gradio_client.exceptions import AppError

    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        width, height = map(int, content.split("x"))
        save(np.full((height, width, 3), 200, np.uint8), path)
    with pytest.raises(AppError) as error:
        anonymize(client, path, "blur")
    assert expected in str(error.value)
    assert "Traceback" not in str(error.value)


def test_a_bad_option_raises_an_error_naming_it(client, tmp_path):
    from gradio_client.exceptions import AppError

    photo = save(two_faces(), tmp_path / "p.png")
    with pytest.raises(AppError, match="anonymization_degree"):
        anonymize(client, photo, "anonymize", 0.0, 0)  # 0 would give each face its own identity back


def test_the_same_file_sent_several_times_at_once_reaches_every_job(client, tmp_path):
    from gradio_client import handle_file

    photo = save(two_faces(seed=6), tmp_path / "same.png")  # Gradio stores all three uploads on one path
    jobs = [client.submit(handle_file(str(photo)), "blur", 1.25, s, api_name="/anonymize") for s in range(3)]
    results = [open(job.result()[0], "rb").read() for job in jobs]
    assert results[0] == results[1] == results[2]  # blur draws nothing at random


def test_no_upload_is_served_and_nothing_stays_after_the_keep_time(client, app_server, tmp_path):
    photo = save(two_faces(seed=5), tmp_path / "secret.png")
    uploaded = photo.read_bytes()
    result, _ = anonymize(client, photo, "blur")
    result = open(result, "rb").read()
    cache = app_server.root / "gradio"
    served = [p for p in cache.rglob("*.png") if p.read_bytes() == result]
    assert served  # the result, served to the client
    assert not any(p.read_bytes() == uploaded for p in cache.rglob("*") if p.is_file())  # nothing serves the upload
    kept = [p for p in (app_server.root / "private" / "api").rglob("*") if p.is_file() and p.read_bytes() == uploaded]
    assert len(kept) == 1  # kept unserved for a while (see the previous test)
    assert not list((app_server.root / "jobs").iterdir())  # every job's folder removed
    assert wait_for(lambda: not any(p.exists() for p in served + kept), timeout=KEEP_SECONDS + 30)
