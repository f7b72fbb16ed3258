"""The photo tab end to end in a real browser (Chromium, driven by Playwright): upload a photo with two faces,
untick one, blur, download; the download is what ``face-anon`` writes; the page shows errors in words."""

import numpy as np
import pytest

from .app_helpers import CHROMIUM, MAX_UPLOAD_MB, decode, run_cli, save, two_faces, wait_for


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(app_server.url)
    yield page
    context.close()


def upload(page, path):
    page.locator("#photo-upload input[type=file]").set_input_files(str(path))


def test_untick_a_face_blur_and_download_gives_the_command_lines_file(page, app_server, tmp_path):
    photo = save(two_faces(), tmp_path / "two people.png")
    upload(page, photo)
    page.get_by_label("Face 2").wait_for()
    assert "2 faces found" in page.inner_text("#photo-status")
    assert "2 faces to anonymize" in page.inner_text("#photo-estimate")  # the time a diffusion job would take

    page.get_by_label("Blur").check()
    page.get_by_label("Face 2").uncheck()
    page.locator("#photo-estimate", has_text="1 face to blur").wait_for()
    page.click("#photo-run")
    page.locator("#photo-status", has_text="Done").wait_for()
    assert "Face 1 blurred; face 2 kept as it is" in page.inner_text("#photo-status")
    assert '"kept"' in page.inner_text("#photo-report")
    with page.expect_download() as download:
        page.click("#photo-download")
    downloaded = tmp_path / download.value.suggested_filename
    download.value.save_as(downloaded)
    screenshot = tmp_path / "app-photo-finished.png"
    page.screenshot(path=screenshot, full_page=True)
    print(f"screenshot of the finished page: {screenshot}")

    # Byte for byte what the command line writes with the same options (face 2 kept by its index).
    by_cli = tmp_path / "cli.png"
    run_cli(str(photo), "-o", str(by_cli), "--mode", "blur", "--on-error", "redact", "--keep-faces", "1")
    assert downloaded.name == "two_people_anonymized.png"
    assert downloaded.read_bytes() == by_cli.read_bytes()

    # The kept face's half is untouched; the other face was blurred, and nothing else changed.
    original, result = decode(photo), decode(downloaded)
    half = original.shape[1] // 2
    assert np.array_equal(result[:, half:], original[:, half:])
    changed = np.any(result != original, axis=2)
    assert changed[60:190, 60:180].mean() > 0.3  # face 1 blurred
    assert not changed[:, : half - 20][:, :30].any() and not changed[:20].any()  # far from face 1: untouched


def test_the_video_tab_blurs_a_clip_as_the_command_line_does(page, tmp_path):
    from video.video_helpers import decode_frames, moving_scene, write_clip

    frames, _ = moving_scene(6, size=(240, 160))
    clip = write_clip(tmp_path / "clip.mp4", frames).path
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-upload input[type=file]").set_input_files(str(clip))
    page.locator("#video-status", has_text="is ready").wait_for()
    page.locator("#video-mode").get_by_label("Blur").check()
    page.click("#video-run")
    page.locator("#video-status", has_text="Done").wait_for()
    assert "6 frames" in page.inner_text("#video-status")
    assert page.locator("#video-result video").count() == 1  # playable in the page
    with page.expect_download() as download:
        page.click("#video-download")
    downloaded = tmp_path / download.value.suggested_filename
    download.value.save_as(downloaded)
    assert downloaded.name == "clip_anonymized.mp4"
    # Not compared with face-anon's bytes: two runs of `face-anon clip.mp4 --mode blur` differ (the encoder).
    result, _, _ = decode_frames(downloaded)
    assert len(result) == len(frames)
    first = np.abs(result[0].astype(int) - frames[0].astype(int))
    assert first[100:140, 70:110].mean() > 4 * first[:35, :35].mean() + 2  # the face changed, the corner did not


def test_closing_the_page_deletes_the_visitors_files(browser, app_server, tmp_path):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(app_server.url)
    photo = save(two_faces(seed=4), tmp_path / "private.png")
    upload(page, photo)
    page.get_by_label("Face 2").wait_for()
    page.get_by_label("Pixelate").check()
    page.click("#photo-run")
    page.locator("#photo-status", has_text="Done").wait_for()
    sessions = app_server.root / "gradio" / "face-anon"
    mine = [p for p in sessions.iterdir() if p.name != "api" and (p / "result").exists()]
    assert mine, "the page's files were expected under the app's cache"
    uploaded = photo.read_bytes()
    assert not any(path.read_bytes() == uploaded for path in (app_server.root / "gradio").rglob("*") if path.is_file())
    context.close()  # the visitor leaves: Gradio's unload event
    assert wait_for(lambda: not any(path.exists() for path in mine), timeout=30)
    assert not any(path.read_bytes() == uploaded for path in app_server.files())


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("notes.jpg", b"this is a text file, not a photo\n", "notes.jpg cannot be read as a photo"),
        ("dot.png", "1x1", "dot.png is 1 x 1 pixels; a photo must be at least 32 pixels wide and high"),
        ("huge.png", "4000x300", "huge.png is 4000 x 300 pixels (1.2 megapixels); this app accepts photos up to 1"),
    ],
)
def test_a_bad_upload_is_explained_on_the_page(page, tmp_path, name, content, expected):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        width, height = map(int, content.split("x"))
        save(np.full((height, width, 3), 128, np.uint8), path)
    upload(page, path)
    page.locator("#photo-status", has_text="Cannot use this file").wait_for()
    text = page.inner_text("#photo-status")
    assert expected in text
    assert "Traceback" not in page.content()
    page.click("#photo-run")
    page.locator("#photo-status", has_text="Upload a photo first").wait_for()


def test_an_upload_over_the_size_limit_is_refused_with_a_message(page, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)  # ~1.9 MB as PNG
    path = save(noise, tmp_path / "big.png")
    assert path.stat().st_size > MAX_UPLOAD_MB * 1024 * 1024
    upload(page, path)
    message = page.get_by_text("exceed the maximum allowed size", exact=False).first
    message.wait_for()
    assert 'exceed the maximum allowed size of 1.0 Mb: "big.png"' in message.inner_text()  # Gradio's words
    assert not page.get_by_label("Face 1").count()  # nothing was received, nothing found
