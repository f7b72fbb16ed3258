"""``face-anon-app``: the Gradio web app, for people who do not use a command line.

Photo tab: upload a photo, see its faces boxed and numbered, untick the faces to keep, choose the mode
(the diffusion model, blur, pixelate, black), the anonymization degree, the seed and the steps, compare
before and after, download the result (byte for byte what ``face-anon`` writes with the same options:
same code path, metadata stripped) and the JSON report. Video tab: the same for a short clip.

A named API endpoint, ``/anonymize`` (image, mode, anonymization degree, seed) -> (PNG image, report),
serves ``gradio_client`` scripts. One pipeline object serves every visitor; the queue runs at most
``--concurrency`` jobs at once. See :mod:`.store` for when files are deleted.
"""

# No ``from __future__ import annotations``: Gradio reads the ``gr.Request`` and ``gr.Progress`` parameters of
# the event functions from their annotations at run time.
import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image

from ...detection import FaceDetector, load_detector
from ...errors import InputError
from ...io.video import VIDEO_EXTENSIONS
from ...orchestration.options import LIMITS, MAX_ANONYMIZATION_DEGREE, ON_ERROR_CHOICES, AnonymizeOptions
from ...orchestration.stages import find_faces
from ...replacers.base import MODES
from ...replacers.diffusion import DTYPES, load_pipeline
from .jobs import (
    DETECTOR_THRESHOLD,
    MEGABYTE,
    JobError,
    KeepUnticked,
    Limits,
    SharedModel,
    SpeedMeter,
    check_photo,
    check_video,
    draw_faces,
    duration_text,
    kept_indices,
    photo_suffix,
    report_for_visitor,
    report_summary,
    run_file,
)
from .store import FileStore


logger = logging.getLogger(__name__)

MODE_LABELS = {
    "anonymize": "Anonymize: a new face (diffusion model)",
    "blur": "Blur",
    "pixelate": "Pixelate",
    "black": "Black box",
}
ON_ERROR_LABELS = {
    "redact": "black it out and say so",
    "fail": "make no image at all",
}
PREVIEW_SIDE = 1600  # pixels: the before/after comparison is a preview; the download is the full file

INTRO = """\
# Face anonymization

Upload a photo: every face found is boxed and numbered. Untick the faces to keep, choose what happens
to the others, and download the result. **Anonymize** replaces each face with a new one (same pose,
expression and light) using the diffusion model of *Face Anonymization Made Simple* (WACV 2025);
blur, pixelate and black box are instant. Metadata (camera, GPS, dates) is removed from every result.

Privacy: your upload is used for your job only and deleted when you upload again or close this page
(at the latest {keep} after your last click). Nothing is shared with anyone.
"""


@dataclass(frozen=True, kw_only=True)
class AppConfig:
    """How the app runs.

    Args:
        model: a converted face-anon repository (Hub id or folder); None assembles the authors' weights.
        device: ``auto``, ``cpu``, ``cuda``, ...; dtype: ``auto``, ``float32``, ``float16``, ``bfloat16``.
        concurrency: jobs run at once (the queue holds the others), all on the one shared pipeline.
        num_inference_steps: the steps offered first on the page and used by the API endpoint.
        limits: what uploads may be (size, resolution, video length, steps).
        keep_seconds: the longest any file stays after its last use.
        cache_dir: the app's private folder; None makes a temporary one, removed when the app stops.
    """

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    concurrency: int = 2
    num_inference_steps: int = 25
    limits: Limits = field(default_factory=Limits)
    keep_seconds: float = 600.0
    cache_dir: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Upload:
    """A visitor's current upload, kept in their private folder between clicks."""

    kind: str  # "photo" or "video"
    name: str
    path: Path
    boxes: tuple[tuple[float, float, float, float], ...] = ()


def _display_name(path: str | os.PathLike | None, fallback: str) -> str:
    name = Path(path).name if path else ""
    return name or fallback


def _stem(name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem).strip("._")
    return stem or "photo"


def _preview(rgb, path: Path) -> Path:
    image = PIL.Image.fromarray(rgb)
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), PIL.Image.LANCZOS)
    image.save(path, quality=90)
    return path


def _take(upload: str | None, folder: Path, name: str) -> Path:
    """Move an upload out of Gradio's cache into ``folder`` (never served) and delete what is left of it."""
    target = folder / f"upload{Path(name).suffix.lower()}"
    source = Path(upload)
    shutil.move(source, target)
    try:
        source.parent.rmdir()  # Gradio keeps each upload in a folder of its own
    except OSError:
        pass
    return target


class WebApp:
    """The app's state shared by every visitor (the detector, the model, the speed, the files) and the
    functions the page's events call. Every function returns words for the visitor, never a traceback."""

    def __init__(
        self,
        config: AppConfig,
        *,
        detector: FaceDetector | None = None,
        model: SharedModel | None = None,
        store: FileStore | None = None,
    ) -> None:
        self.config = config
        self.limits = config.limits
        self.store = store or FileStore(config.cache_dir, keep_seconds=config.keep_seconds)
        self.detector = detector or load_detector("centerface", threshold=DETECTOR_THRESHOLD)
        self.speed = SpeedMeter()
        if model is None:
            model = SharedModel(lambda: load_pipeline(config.model, config.device, config.dtype), speed=self.speed)
        elif model.speed is None:
            model.speed = self.speed
        self.model = model

    # helpers

    def options(self, mode: str, degree: float, steps: int | float, seed: int | float, on_error: str):
        """The job's options; a bad value raises :class:`JobError` naming it."""
        try:
            steps, seed = int(steps), int(seed)
        except (TypeError, ValueError):
            raise JobError(f"steps and seed must be whole numbers (got {steps!r} and {seed!r})") from None
        if steps > self.limits.max_steps:
            raise JobError(f"steps: {steps} is more than this app allows ({self.limits.max_steps})")
        try:
            return AnonymizeOptions(
                mode=mode,
                anonymization_degree=float(degree),
                num_inference_steps=steps,
                seed=seed,
                on_error=on_error,
            )
        except (InputError, TypeError, ValueError) as error:
            raise JobError(str(error)) from None

    def estimate_text(self, faces: int, mode: str, steps: int | float | None) -> str:
        """What the page says a job will take, before it starts."""
        if faces == 0:
            return "No face is ticked: the result will be the photo as it is, with its metadata removed."
        plural = "face" if faces == 1 else "faces"
        if mode != "anonymize":
            return f"{faces} {plural} to {mode}: this takes a moment."
        if self.model.error is not None:
            return f"The diffusion model could not be loaded ({self.model.error}); blur, pixelate and black work."
        steps = int(steps or self.config.num_inference_steps)
        seconds = self.speed.estimate(faces, steps)
        if seconds is None:
            return f"{faces} {plural} to anonymize with {steps} steps. (Measuring this server's speed...)"
        per_face = seconds / faces
        return (
            f"{faces} {plural} to anonymize with {steps} steps: {duration_text(seconds)} on this server "
            f"({per_face:.1f} s per face, measured). Blur, pixelate and black box are instant."
        )

    def _session(self, request: Any):
        """The visitor's session for one event (see ``FileStore.session``)."""
        return self.store.session(getattr(request, "session_hash", None))

    # photo tab

    def photo_uploaded(
        self, upload: str | None, mode: str = "anonymize", steps: float | None = None, request: Any = None
    ):
        """A photo was dropped: keep it privately, find its faces, show them numbered.

        Returns (faces image, face list update, estimate, status).
        """
        import gradio as gr

        def rejected(status: str):
            return None, gr.CheckboxGroup(choices=[], value=[], visible=False), "", status

        with self._session(request) as session:
            session.clear()
            if not upload:
                return rejected("")
            name = _display_name(upload, "photo")
            try:
                path = _take(upload, session.private_folder(), name)
                loaded = check_photo(path, name, self.limits)
                faces = find_faces(loaded.rgb, self.detector, AnonymizeOptions())  # what the job will find
            except JobError as error:
                session.clear()
                return rejected(f"**Cannot use this file.** {error}")
            except Exception as error:  # noqa: BLE001 - said in words; the details go to the server's log
                logger.exception("reading an upload failed")
                session.clear()
                return rejected(f"**Cannot use this file.** Reading it failed ({type(error).__name__}).")
            session.upload = Upload(kind="photo", name=name, path=path, boxes=tuple(face.box for face in faces))
            image = session.folder("photo") / "faces.jpg"
            draw_faces(loaded.rgb, faces).save(image, quality=90)
            choices = [(f"Face {number}", number - 1) for number in range(1, len(faces) + 1)]
            if faces:
                status = f"{len(faces)} {'face' if len(faces) == 1 else 'faces'} found. Untick any face to keep it."
            else:
                status = (
                    "**No face was found in this photo.** Faces smaller than about 20 pixels or seen from behind "
                    "cannot be found. You can still make a copy without metadata."
                )
            return (
                str(image),
                gr.CheckboxGroup(choices=choices, value=[index for _, index in choices], visible=bool(faces)),
                self.estimate_text(len(faces), mode, steps),
                status,
            )

    def photo_estimate(self, ticked: Sequence[int] | None, mode: str, steps: float, request: Any = None) -> str:
        upload = self.store.peek(getattr(request, "session_hash", None)).upload
        if upload is None or upload.kind != "photo":
            return ""
        return self.estimate_text(len(ticked or ()), mode, steps)

    def photo_run(
        self,
        ticked: Sequence[int] | None,
        mode: str,
        degree: float,
        steps: float,
        seed: float,
        on_error: str,
        request: Any = None,
        progress: Any = None,
    ):
        """Anonymize the visitor's photo. Returns (status, before/after, download button, report)."""
        import gradio as gr

        nothing = (None, gr.DownloadButton(value=None, interactive=False), None)
        with self._session(request) as session:
            upload = session.upload
            if upload is None or upload.kind != "photo":
                return ("**Upload a photo first.**", *nothing)
            try:
                options = self.options(mode, degree, steps, seed, on_error)
                keep = kept_indices(len(upload.boxes), ticked)
                faces = len(upload.boxes) - len(keep)
                if mode == "anonymize" and faces:
                    gr.Info(self.estimate_text(faces, mode, options.num_inference_steps), duration=8)

                def on_progress(done: float, total: int) -> None:
                    if progress is not None:
                        progress(done / total, desc=f"Anonymizing: {done:.1f} of {total} faces")

                if progress is not None:
                    progress(0.0, desc="Finding faces")
                start = time.perf_counter()
                result = run_file(
                    upload.path,
                    output_suffix=photo_suffix(upload.name),
                    options=options,
                    detector=self.detector,
                    model=self.model,
                    work_dir=self.store.jobs_dir,
                    limits=self.limits,
                    selector=KeepUnticked(keep=keep, shown=upload.boxes) if keep else None,
                    faces=faces,
                    on_progress=on_progress,
                    previews=True,
                )
                if mode == "anonymize":
                    self.speed.observe(faces, options.num_inference_steps, time.perf_counter() - start)
            except JobError as error:
                session.folder("result")
                return (f"**Nothing was made.** {str(error)[0].upper() + str(error)[1:]}", *nothing)
            except Exception as error:  # noqa: BLE001 - said in words; the details go to the server's log
                logger.exception("a photo job failed")
                session.folder("result")
                return (f"**Nothing was made.** Something went wrong ({type(error).__name__}).", *nothing)
            folder = session.folder("result")
            output_name = f"{_stem(upload.name)}_anonymized{result.suffix}"
            download = folder / output_name
            download.write_bytes(result.data)
            before = _preview(result.before, folder / "before.jpg")
            after = _preview(result.after, folder / "after.jpg")
            report = report_for_visitor(result.report, input_name=upload.name, output_name=output_name)
            return (
                f"**Done.** {report_summary(result.report)}",
                (str(before), str(after)),
                gr.DownloadButton(label=f"Download {output_name}", value=str(download), interactive=True),
                report,
            )

    # video tab

    def video_uploaded(self, upload: str | None, request: Any = None) -> str:
        with self._session(request) as session:
            session.clear()
            if not upload:
                return ""
            name = _display_name(upload, "video.mp4")
            try:
                path = _take(upload, session.private_folder(), name)
                duration = check_video(path, name, self.limits)
            except JobError as error:
                session.clear()
                return f"**Cannot use this file.** {error}"
            except Exception as error:  # noqa: BLE001
                logger.exception("reading a video upload failed")
                session.clear()
                return f"**Cannot use this file.** Reading it failed ({type(error).__name__})."
            session.upload = Upload(kind="video", name=name, path=path)
            length = "" if duration is None else f" ({duration:.1f} s)"
            return (
                f"{name}{length} is ready. Blur, pixelate and black box take seconds; the diffusion model "
                "anonymizes every person in every frame and is slow without a GPU."
            )

    def video_run(self, mode: str, degree: float, steps: float, seed: float, request: Any = None, progress: Any = None):
        """Anonymize the visitor's video. Returns (status, video, download button, report)."""
        import gradio as gr

        nothing = (None, gr.DownloadButton(value=None, interactive=False), None)
        with self._session(request) as session:
            upload = session.upload
            if upload is None or upload.kind != "video":
                return ("**Upload a video first.**", *nothing)

            def on_frame(state) -> None:
                if progress is not None and state.frames:
                    progress(min(state.frame / state.frames, 1.0), desc=f"Frame {state.frame} of {state.frames}")

            output_suffix = ".webm" if Path(upload.name).suffix.lower() == ".webm" else ".mp4"
            try:
                options = self.options(mode, degree, steps, seed, "redact")
                result = run_file(
                    upload.path,
                    output_suffix=output_suffix,
                    options=options,
                    detector=self.detector,
                    model=self.model,
                    work_dir=self.store.jobs_dir,
                    limits=self.limits,
                    on_video_progress=on_frame,
                )
            except JobError as error:
                session.folder("result")
                return (f"**Nothing was made.** {str(error)[0].upper() + str(error)[1:]}", *nothing)
            except Exception as error:  # noqa: BLE001
                logger.exception("a video job failed")
                session.folder("result")
                return (f"**Nothing was made.** Something went wrong ({type(error).__name__}).", *nothing)
            folder = session.folder("result")
            output_name = f"{_stem(upload.name)}_anonymized{output_suffix}"
            download = folder / output_name
            download.write_bytes(result.data)
            report = report_for_visitor(result.report, input_name=upload.name, output_name=output_name)
            tracks = len(report.get("tracks", []))
            return (
                f"**Done.** {report.get('frames', 0)} frames, {tracks} {'person' if tracks == 1 else 'people'} "
                f"tracked.",
                str(download),
                gr.DownloadButton(label=f"Download {output_name}", value=str(download), interactive=True),
                report,
            )

    # the API endpoint

    def api_anonymize(self, image: str | None, mode: str, anonymization_degree: float, seed: float):
        """``/anonymize``: (image file, mode, anonymization degree, seed) -> (PNG file, report).

        The PNG is what ``face-anon IMAGE -o OUT.png --mode MODE --degree D --seed S`` writes; every face
        is treated. Errors are raised as ``gradio.Error`` with the reason in words.
        """
        import gradio as gr

        if not image:
            raise gr.Error("image: no file was sent")
        name = _display_name(image, "image")
        try:
            try:
                path = self.store.claim(image)
            except FileNotFoundError:
                raise JobError(f"{name} was not received completely; send it again") from None
            check_photo(path, name, self.limits)
            options = self.options(mode, anonymization_degree, self.config.num_inference_steps, seed, "fail")
            result = run_file(
                path,
                output_suffix=".png",
                options=options,
                detector=self.detector,
                model=self.model,
                work_dir=self.store.jobs_dir,
                limits=self.limits,
            )
        except JobError as error:
            raise gr.Error(str(error)) from None
        except Exception as error:  # noqa: BLE001
            logger.exception("an API job failed")
            raise gr.Error(f"something went wrong ({type(error).__name__})") from None
        output_name = f"{_stem(name)}_anonymized.png"
        served = self.store.one_off(output_name, result.data)
        return str(served), report_for_visitor(result.report, input_name=name, output_name=output_name)

    def page_closed(self, request: Any = None) -> None:
        self.store.drop(getattr(request, "session_hash", None))

    # the page

    def blocks(self):
        """The Gradio page and its API endpoint."""
        import gradio as gr

        config, limits = self.config, self.limits
        modes = [(MODE_LABELS[mode], mode) for mode in MODES]
        on_error_choices = [(ON_ERROR_LABELS[choice], choice) for choice in reversed(ON_ERROR_CHOICES)]
        keep = duration_text(config.keep_seconds).replace("about ", "")

        def settings(prefix: str, faces: str):
            mode = gr.Radio(modes, value="anonymize", label=f"What to do with {faces}", elem_id=f"{prefix}-mode")
            with gr.Accordion("Settings", open=False):
                degree = gr.Slider(
                    0.05,
                    2.0,
                    value=1.25,
                    step=0.05,
                    label="Anonymization degree",
                    info="How far each face moves from its identity: 1 reaches no identity at all; 1.25 is the "
                    "authors' choice.",
                    elem_id=f"{prefix}-degree",
                )
                steps = gr.Slider(
                    1,
                    limits.max_steps,
                    value=config.num_inference_steps,
                    step=1,
                    label="Steps",
                    info="Denoising steps of the diffusion model: fewer is faster, 25 is the authors' choice.",
                    elem_id=f"{prefix}-steps",
                )
                seed = gr.Number(
                    value=0,
                    precision=0,
                    minimum=0,
                    label="Seed",
                    info="Same seed, same faces.",
                    elem_id=f"{prefix}-seed",
                )
            return mode, degree, steps, seed

        # Jobs share one queue lane of --concurrency slots (they share the pipeline); finding the faces of an
        # upload has its own lane, so a visitor sees their faces while others' diffusion jobs run.
        jobs = dict(concurrency_id="jobs", concurrency_limit=config.concurrency)
        uploads = dict(concurrency_id="uploads", concurrency_limit=4, api_visibility="private")

        with gr.Blocks(title="face-anon: face anonymization", analytics_enabled=False) as demo:
            gr.Markdown(INTRO.format(keep=keep))
            with gr.Tab("Photo"):
                with gr.Row():
                    with gr.Column():
                        photo = gr.File(
                            label=f"Photo (JPEG, PNG, WebP, TIFF, BMP; up to {limits.max_upload_bytes // MEGABYTE} MB, "
                            f"{limits.max_pixels / 1e6:g} megapixels)",
                            file_types=["image"],
                            elem_id="photo-upload",
                        )
                        faces_image = gr.Image(
                            label="Faces found",
                            type="filepath",
                            interactive=False,
                            buttons=["fullscreen"],  # no share button: nothing leaves this page
                            elem_id="faces-image",
                        )
                        faces = gr.CheckboxGroup(
                            label="Faces to anonymize (untick a face to keep it as it is)",
                            visible=False,
                            elem_id="faces-list",
                        )
                        mode, degree, steps, seed = settings("photo", "the ticked faces")
                        with gr.Accordion("If a face cannot be anonymized", open=False):
                            on_error = gr.Radio(
                                on_error_choices, value="redact", show_label=False, elem_id="photo-on-error"
                            )
                        estimate = gr.Markdown(elem_id="photo-estimate")
                        run = gr.Button("Anonymize the photo", variant="primary", elem_id="photo-run")
                    with gr.Column():
                        status = gr.Markdown(elem_id="photo-status")
                        compare = gr.ImageSlider(
                            label="Before / after (a preview: download the result below)",
                            type="filepath",
                            interactive=False,
                            buttons=["fullscreen"],
                            elem_id="photo-compare",
                        )
                        download = gr.DownloadButton(
                            "Download the result", interactive=False, variant="primary", elem_id="photo-download"
                        )
                        report = gr.JSON(label="Report", elem_id="photo-report")

                def photo_uploaded(upload, mode, steps, request: gr.Request):
                    cleared = (None, gr.DownloadButton(value=None, interactive=False), None)
                    return (*self.photo_uploaded(upload, mode, steps, request), *cleared)

                def photo_estimate(ticked, mode, steps, request: gr.Request):
                    return self.photo_estimate(ticked, mode, steps, request)

                uploaded = [faces_image, faces, estimate, status, compare, download, report]
                for trigger in (photo.upload, photo.clear):
                    trigger(photo_uploaded, inputs=[photo, mode, steps], outputs=uploaded, **uploads)
                for trigger in (faces.change, mode.change, steps.change):
                    trigger(
                        photo_estimate,
                        inputs=[faces, mode, steps],
                        outputs=estimate,
                        api_visibility="private",
                        queue=False,
                    )

                def photo_run(ticked, mode, degree, steps, seed, on_error, request: gr.Request, progress=gr.Progress()):
                    return self.photo_run(ticked, mode, degree, steps, seed, on_error, request, progress)

                run.click(
                    photo_run,
                    inputs=[faces, mode, degree, steps, seed, on_error],
                    outputs=[status, compare, download, report],
                    api_visibility="private",
                    **jobs,
                )

            with gr.Tab("Video"):
                with gr.Row():
                    with gr.Column():
                        video = gr.File(
                            label=f"Video ({', '.join(sorted(e[1:] for e in VIDEO_EXTENSIONS))}; up to "
                            f"{limits.max_video_seconds:g} s)",
                            file_types=sorted(VIDEO_EXTENSIONS),
                            elem_id="video-upload",
                        )
                        v_mode, v_degree, v_steps, v_seed = settings("video", "every face")
                        v_run = gr.Button("Anonymize the video", variant="primary", elem_id="video-run")
                    with gr.Column():
                        v_status = gr.Markdown(elem_id="video-status")
                        v_player = gr.Video(
                            label="Result", interactive=False, buttons=["download"], elem_id="video-result"
                        )
                        v_download = gr.DownloadButton(
                            "Download the result", interactive=False, variant="primary", elem_id="video-download"
                        )
                        v_report = gr.JSON(label="Report", elem_id="video-report")

                def video_uploaded(upload, request: gr.Request):
                    cleared = (None, gr.DownloadButton(value=None, interactive=False), None)
                    return (self.video_uploaded(upload, request), *cleared)

                uploaded = [v_status, v_player, v_download, v_report]
                for trigger in (video.upload, video.clear):
                    trigger(video_uploaded, inputs=video, outputs=uploaded, **uploads)

                def video_run(mode, degree, steps, seed, request: gr.Request, progress=gr.Progress()):
                    return self.video_run(mode, degree, steps, seed, request, progress)

                v_run.click(
                    video_run,
                    inputs=[v_mode, v_degree, v_steps, v_seed],
                    outputs=[v_status, v_player, v_download, v_report],
                    api_visibility="private",
                    **jobs,
                )

            # The API endpoint: hidden components, one named event.
            with gr.Group(visible=False):
                api_image = gr.File(label="image")
                api_mode = gr.Dropdown(list(MODES), value="anonymize", label="mode")
                api_degree = gr.Number(
                    value=1.25, label="anonymization_degree", minimum=0, maximum=MAX_ANONYMIZATION_DEGREE
                )
                api_seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                api_result = gr.Image(type="filepath", format="png", label="image")
                api_report = gr.JSON(label="report")
                api_button = gr.Button()
            api_button.click(
                self.api_anonymize,
                inputs=[api_image, api_mode, api_degree, api_seed],
                outputs=[api_result, api_report],
                api_name="anonymize",
                **jobs,
                api_description="Anonymize every face of a photo: (image, mode, anonymization_degree, seed) -> "
                "(the result as a lossless PNG, the JSON report).",
            )

            def page_closed(request: gr.Request):
                self.page_closed(request)

            demo.unload(page_closed)
        return demo


def _theme():
    import gradio as gr

    # System fonts: the page asks no third party for anything (Gradio's default loads Google Fonts).
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="face-anon-app",
        description="The face-anon web app (Gradio): anonymize the faces of photos and short videos in a browser.",
    )
    add = parser.add_argument
    add(
        "--model",
        metavar="REPO_OR_DIR",
        default=env("FACE_ANON_MODEL") or None,
        help="converted face-anon pipeline (Hub id or folder); default: $FACE_ANON_MODEL, else the authors' "
        "published weights",
    )
    add("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to listen on (default: 127.0.0.1)")
    add("--port", type=int, default=int(env("GRADIO_SERVER_PORT", "7860")), help="port (default: 7860)")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    add("--dtype", choices=DTYPES, default="auto", help="model dtype (default: float16 on GPU, else float32)")
    add("--concurrency", type=int, default=2, help="jobs run at once on the shared model (default: 2)")
    add(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of the model (torch); default: CPU cores / --concurrency, at least 1, so concurrent "
        "jobs do not fight over the cores",
    )
    add("--steps", type=int, default=25, help="denoising steps offered first and used by the API (default: 25)")
    add("--max-upload-mb", type=float, default=25.0, help="largest upload in MB (default: 25)")
    add("--max-megapixels", type=float, default=40.0, help="largest photo in megapixels (default: 40)")
    add("--max-video-seconds", type=float, default=60.0, help="longest video in seconds (default: 60)")
    add(
        "--keep-results",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="the longest any upload or result stays on disk after its last use (default: 600)",
    )
    add(
        "--cache-dir",
        default=None,
        help="the app's private folder for uploads and results (default: a new temporary folder, deleted at exit)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> AppConfig:
    """Check the command line's values; a bad one raises :class:`InputError` naming the flag."""
    checks = {
        "--concurrency": args.concurrency >= 1,
        "--threads": args.threads is None or args.threads >= 1,
        "--steps": 1 <= args.steps <= 1000 and LIMITS["num_inference_steps"][0](args.steps),
        "--max-upload-mb": args.max_upload_mb > 0,
        "--max-megapixels": args.max_megapixels > 0,
        "--max-video-seconds": args.max_video_seconds > 0,
        "--keep-results": args.keep_results > 0,
    }
    for flag, ok in checks.items():
        if not ok:
            raise InputError(flag, getattr(args, flag[2:].replace("-", "_")), "a positive number")
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * MEGABYTE),
        max_pixels=int(args.max_megapixels * 1e6),
        max_video_seconds=args.max_video_seconds,
        max_steps=max(100, args.steps),
    )
    return AppConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        concurrency=args.concurrency,
        num_inference_steps=args.steps,
        limits=limits,
        keep_seconds=args.keep_results,
        cache_dir=None if args.cache_dir is None else Path(args.cache_dir),
    )


def prepare_gradio(store: FileStore) -> None:
    """Point Gradio's cache at the app's private folder and turn its analytics off; before any Blocks exist."""
    os.environ["GRADIO_TEMP_DIR"] = str(store.cache_dir)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def build_app(config: AppConfig = AppConfig(), **kwargs: Any):
    """The app as Gradio ``Blocks`` with its queue set (``.launch()`` it), and its :class:`WebApp`.

    ``kwargs`` go to :class:`WebApp` (a detector, a :class:`SharedModel`, a :class:`FileStore`).
    """
    store = kwargs.pop("store", None) or FileStore(config.cache_dir, keep_seconds=config.keep_seconds)
    prepare_gradio(store)
    app = WebApp(config, store=store, **kwargs)
    demo = app.blocks()
    demo.queue(default_concurrency_limit=config.concurrency, max_size=16 * config.concurrency)
    return demo, app


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except InputError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="face-anon-app: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    import torch

    # Jobs run in threads of this one process: more torch threads than cores in all makes every job crawl.
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // config.concurrency))
    demo, app = build_app(config)
    app.store.start_sweeper()
    app.model.start()
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            max_file_size=config.limits.max_upload_bytes,
            ssr_mode=False,
            theme=_theme(),
            footer_links=["api"],
        )
    finally:
        app.store.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
