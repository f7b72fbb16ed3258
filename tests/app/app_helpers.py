"""The web app under test: started as its own process on 127.0.0.1 with the tiny model, as a visitor or a
``gradio_client`` script meets it; test photos built from ``skimage.data.astronaut()``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
from photo.photo_helpers import Placement, compose


REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("FACE_ANON_CHROMIUM", "/usr/bin/chromium")

# The test server's settings: small limits so that too-large uploads are cheap to make. The model's last bits
# depend on the number of CPU threads: the app and the command line compared with it both use THREADS.
THREADS = 1
STEPS = 4
KEEP_SECONDS = 15
MAX_UPLOAD_MB = 1
MAX_MEGAPIXELS = 1
SERVER_FLAGS = [
    "--steps",
    str(STEPS),
    "--keep-results",
    str(KEEP_SECONDS),
    "--max-upload-mb",
    str(MAX_UPLOAD_MB),
    "--max-megapixels",
    str(MAX_MEGAPIXELS),
    "--max-video-seconds",
    "5",
    "--concurrency",
    "2",
    "--threads",
    str(THREADS),
]

# Two faces, one in each half of the photo: a job that keeps face 2 may change the left half only.
PHOTO_SIZE = (480, 240)
TWO_FACES = [Placement((120, 125), 0.8), Placement((360, 120), 0.75, 10.0)]


def two_faces(seed: int = 0, placements=None) -> np.ndarray:
    return compose(*PHOTO_SIZE, placements or TWO_FACES, seed=seed)


def save(image: np.ndarray, path: Path, **options) -> Path:
    PIL.Image.fromarray(image).save(path, **options)
    return path


def decode(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class AppServer:
    """A running ``face-anon-app`` process."""

    url: str
    root: Path  # its --cache-dir
    process: subprocess.Popen
    log: Path

    def files(self) -> list[Path]:
        """Every regular file under the app's folder."""
        return sorted(path for path in self.root.rglob("*") if path.is_file())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_app(model_dir: Path, root: Path, log: Path, *flags: str, timeout: float = 180.0) -> AppServer:
    """Start ``python -m face_anon.apps.web`` (what ``face-anon-app`` runs) and wait until it answers."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    env.pop("GRADIO_SERVER_NAME", None)
    command = [
        sys.executable,
        "-m",
        "face_anon.apps.web",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--cache-dir",
        str(root),
        *flags,
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = AppServer(url=f"http://127.0.0.1:{port}/", root=root, process=process, log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(server.url, timeout=5) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"the app did not answer within {timeout} s:\n{log.read_text()}")


def run_cli(*args: str) -> None:
    """``face-anon ARGS`` as its own process with the app's number of torch threads (a model's last bits depend
    on it); fails the test unless it exits 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS)}
    done = subprocess.run(
        [sys.executable, "-m", "face_anon", *args, "-q"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"face-anon {' '.join(args)} exited with {done.returncode}:\n{done.stderr}"


def wait_for(condition, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
