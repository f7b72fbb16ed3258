"""The web app's parts without a server: the selection hook, the step progress, the speed estimate, the file
store's deletions, the numbered boxes and the command line's checks."""

import os
import time

import numpy as np
import pytest

from face_anon import AnonymizeOptions, FaceAction, find_faces, load_detector
from face_anon.apps.web import AppConfig, FileStore, JobError, Limits, SpeedMeter
from face_anon.apps.web.app import build_parser, config_from_args
from face_anon.apps.web.jobs import (
    KeepUnticked,
    StepReporter,
    check_photo,
    draw_faces,
    duration_text,
    kept_indices,
    run_file,
)
from face_anon.detection import Face

from .app_helpers import save, two_faces


def face(x0, y0, size=40):
    return Face((x0, y0, x0 + size, y0 + size), 0.9, ((x0 + 10, y0 + 15),) * 5)


def test_unticked_faces_are_kept_with_their_page_number():
    faces = [face(10, 10), face(100, 10), face(200, 10)]
    selector = KeepUnticked(keep=kept_indices(3, [0, 2]), shown=tuple(f.box for f in faces))
    decisions = selector(np.zeros((60, 260, 3), np.uint8), faces)
    assert [d.keep for d in decisions] == [False, True, False]
    assert decisions[1].reason == "unticked in the app (face 2)"
    assert kept_indices(3, None) == frozenset() and kept_indices(2, []) == {0, 1}


def test_the_hook_refuses_when_the_faces_differ_from_those_shown():
    shown = (face(10, 10).box, face(100, 10).box)
    with pytest.raises(JobError, match="differ from the faces shown"):
        KeepUnticked(keep=frozenset({1}), shown=shown)(np.zeros((60, 260, 3), np.uint8), [face(10, 10)])
    with pytest.raises(JobError):
        KeepUnticked(keep=frozenset({1}), shown=shown)(np.zeros((60, 260, 3), np.uint8), [face(10, 10), face(105, 10)])


def test_a_job_keeps_the_unticked_face_and_reports_it(tmp_path):
    detector = load_detector(threshold=0.3)
    photo = save(two_faces(), tmp_path / "p.png")
    loaded = check_photo(photo, "p.png", Limits())
    faces = find_faces(loaded.rgb, detector, AnonymizeOptions())
    keep = kept_indices(len(faces), [0])
    result = run_file(
        photo,
        output_suffix=".png",
        options=AnonymizeOptions(mode="black"),
        detector=detector,
        model=None,
        work_dir=tmp_path / "jobs",
        limits=Limits(),
        selector=KeepUnticked(keep=keep, shown=tuple(f.box for f in faces)),
        previews=True,
    )
    assert [o.action for o in result.report.outcomes] == [FaceAction.BLACKED_OUT, FaceAction.KEPT]
    assert result.report.outcomes[1].reason == "unticked in the app (face 2)"
    half = result.before.shape[1] // 2
    assert np.array_equal(result.after[:, half:], result.before[:, half:])
    assert (result.after[100:150, 100:140] == 0).all()  # face 1's centre blacked out
    assert list((tmp_path / "jobs").iterdir()) == []  # the job's private folder is gone


def test_a_diffusion_job_without_a_model_says_so(tmp_path):
    photo = save(two_faces(), tmp_path / "p.png")
    with pytest.raises(JobError, match="Blur, pixelate and black still work"):
        run_file(
            photo,
            output_suffix=".png",
            options=AnonymizeOptions(),
            detector=load_detector(threshold=0.3),
            model=None,
            work_dir=tmp_path / "jobs",
            limits=Limits(),
        )
    assert list((tmp_path / "jobs").iterdir()) == []


def test_step_progress_travels_with_the_call_and_changes_nothing(tiny_pipeline):
    import PIL.Image
    import torch

    faces = [PIL.Image.fromarray(two_faces()[80:144, 90:154]), PIL.Image.fromarray(two_faces()[80:144, 330:394])]

    def call(pipe):
        generators = [torch.Generator().manual_seed(i) for i in range(2)]
        return pipe(image=faces, num_inference_steps=3, height=16, width=16, generator=generators, output_type="np")

    seen = []
    reporter = StepReporter(tiny_pipeline, total_faces=4, on_progress=lambda done, total: seen.append((done, total)))
    first, second = call(reporter), call(reporter)
    assert [total for _, total in seen] == [4] * 6
    assert [done for done, _ in seen] == pytest.approx([2 / 3, 4 / 3, 2, 2 + 2 / 3, 2 + 4 / 3, 4])
    assert np.array_equal(first.images, call(tiny_pipeline).images) and np.array_equal(first.images, second.images)
    assert reporter.default_image_size == tiny_pipeline.default_image_size


class FakeClockPipeline:
    """Advances a fake clock by 2 s per face plus 0.5 s per face and step, like a model would take."""

    default_image_size = 16

    def __init__(self):
        self.now = 0.0

    def __call__(self, *, image, num_inference_steps, **kwargs):
        import PIL.Image

        self.now += len(image) * (2.0 + 0.5 * num_inference_steps)

        class Output:
            images = [PIL.Image.new("RGB", (16, 16), (i * 40, 90, 200 - i)) for i in range(len(image))]

        return Output()


def test_the_speed_estimate_is_measured_then_follows_real_jobs():
    pipeline = FakeClockPipeline()
    meter = SpeedMeter(clock=lambda: pipeline.now)
    assert meter.estimate(3, 25) is None  # not measured yet
    meter.calibrate(pipeline)
    assert meter.fixed == pytest.approx(2.0) and meter.per_step == pytest.approx(0.5)
    assert meter.estimate(3, 25) == pytest.approx(3 * (2.0 + 0.5 * 25))
    meter.observe(3, 25, 2 * 3 * 14.5)  # the machine got twice as slow
    assert meter.estimate(1, 25) == pytest.approx(14.5 * 1.3)
    assert duration_text(43.5) == "about 44 s" and duration_text(130) == "about 3 min"
    assert duration_text(3700) == "about 1 h 2 min"


def test_the_store_deletes_old_files_and_a_closed_pages_files(tmp_path):
    store = FileStore(tmp_path / "root", keep_seconds=60)
    with store.session("visitor") as session:
        shown = session.folder("result") / "result.png"
        shown.write_bytes(b"face")
        private = session.private_folder() / "upload.png"
        private.write_bytes(b"face")
    stray = store.cache_dir / "abc123" / "upload.jpg"  # an upload Gradio received for an event that failed
    stray.parent.mkdir()
    stray.write_bytes(b"face")
    served = store.one_off("api_anonymized.png", b"result")
    fresh = store.cache_dir / "new" / "upload.jpg"
    fresh.parent.mkdir()
    fresh.write_bytes(b"new")
    old = time.time() - 120
    for path in (shown, private, stray, served, stray.parent, served.parent):
        os.utime(path, (old, old))

    store.sweep()
    assert not stray.exists() and not stray.parent.exists() and not served.exists()
    assert shown.exists() and private.exists() and fresh.exists()  # in use by a page; too recent

    store.drop("visitor")
    assert not shown.exists() and not private.exists() and store.sessions == 0
    store.close()
    assert (tmp_path / "root").exists()  # given by the caller: emptied of sessions, not removed

    owned = FileStore(keep_seconds=60)
    assert oct(owned.root.stat().st_mode & 0o777) == "0o700"
    owned.close()
    assert not owned.root.exists()


def test_an_upload_sent_twice_is_claimed_by_both_requests_then_swept(tmp_path):
    store = FileStore(tmp_path / "root", keep_seconds=60)
    upload = store.cache_dir / "0f1e2d" / "photo.png"  # where Gradio puts it, by content
    upload.parent.mkdir()
    upload.write_bytes(b"face")
    first = store.claim(upload)
    assert not upload.exists() and not upload.parent.exists() and first.read_bytes() == b"face"
    assert store.claim(upload) == first  # the second request for the same upload finds it
    with pytest.raises(FileNotFoundError):
        store.claim(store.cache_dir / "other" / "photo.png")
    old = time.time() - 120
    os.utime(first, (old, old))
    store.sweep()
    assert not first.exists()


def test_an_idle_session_is_dropped_but_not_while_its_event_runs(tmp_path):
    store = FileStore(tmp_path / "root", keep_seconds=0.05)
    with store.session("a") as session:
        (session.folder("photo") / "faces.jpg").write_bytes(b"x")
        time.sleep(0.1)
        store.sweep()  # idle by its start time, but its event is still running: only checked after
    assert store.sessions == 1
    time.sleep(0.1)
    store.sweep()
    assert store.sessions == 0 and not session.served.exists()


def test_faces_are_boxed_and_numbered():
    image = np.full((200, 300, 3), 40, np.uint8)
    drawn = np.asarray(draw_faces(image, [face(30, 60, 50), face(200, 60, 50)]))
    yellow = np.all(drawn == (255, 214, 0), axis=2)
    assert yellow[60:110, 30].all() and yellow[60:110, 200].all()  # the boxes' left sides
    labels = [yellow[40:60, x0 : x0 + 20] for x0 in (30, 200)]
    assert all(label.mean() > 0.4 for label in labels)
    assert not np.array_equal(*[drawn[40:60, x0 : x0 + 20] for x0 in (30, 200)])  # "1" and "2" differ
    big = np.asarray(draw_faces(np.zeros((3000, 1000, 3), np.uint8), []))
    assert big.shape == (1280, 427, 3)


def test_photo_limits_are_said_in_words(tmp_path):
    small = save(np.zeros((20, 400, 3), np.uint8), tmp_path / "strip.png")
    with pytest.raises(JobError, match="strip.png is 400 x 20 pixels; a photo must be at least 32"):
        check_photo(small, "strip.png", Limits())
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(JobError, match=r"empty.jpg is empty \(0 bytes\)"):
        check_photo(empty, "empty.jpg", Limits())
    big = save(np.zeros((100, 100, 3), np.uint8), tmp_path / "big.bmp")
    with pytest.raises(JobError, match="big.bmp is 29 KB; this app accepts files up to 1 KB"):
        check_photo(big, "big.bmp", Limits(max_upload_bytes=1000))
    truncated = tmp_path / "cut.jpg"
    save(two_faces(), tmp_path / "whole.jpg", quality=90)
    truncated.write_bytes((tmp_path / "whole.jpg").read_bytes()[:3000])
    with pytest.raises(JobError, match="cut.jpg cannot be read as a photo: file is truncated"):
        check_photo(truncated, "cut.jpg", Limits())


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--keep-results", "-1"], "--keep-results"),
        (["--max-upload-mb", "0"], "--max-upload-mb"),
    ],
)
def test_bad_command_line_values_name_the_flag(flags, expected, capsys):
    from face_anon.apps.web import main

    with pytest.raises(SystemExit) as exit_:
        main(flags)
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err


def test_the_command_line_sets_the_config():
    args = build_parser().parse_args(["--model", "m", "--steps", "8", "--max-megapixels", "2", "--concurrency", "3"])
    config = config_from_args(args)
    assert config == AppConfig(
        model="m",
        concurrency=3,
        num_inference_steps=8,
        limits=Limits(max_pixels=2_000_000),
    )
