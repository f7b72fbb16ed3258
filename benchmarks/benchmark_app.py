"""The web app under load: memory of the app process over sequential blur jobs, and the time to the first
result for one face in blur and in diffusion mode, through the ``/anonymize`` API endpoint (gradio_client).

    python benchmarks/benchmark_app.py                      # the tiny fixture model; about 5 minutes on 2 CPU cores
    python benchmarks/benchmark_app.py --model DIR --jobs 50 --json app.json

Each measurement starts ``face-anon-app`` as its own process (as a visitor meets it) on 127.0.0.1:

- ``first_result``: a fresh app per mode; the time from submitting one photo with one face (a 300 x 300 crop
  of ``skimage.data.astronaut()``) to having the result file, for the first job after the page answers
  (model loading included for diffusion), then the median of the next ``--repeats`` jobs.
- ``memory``: ``--jobs`` blur jobs one after the other on one app; the resident memory (RSS) of the app
  process after each. Flat means no upload, result or session piles up in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "reference_tiny"


def tiny_model(folder: Path) -> Path:
    """The reference fixture's tiny model as a converted folder (what ``--model`` loads)."""
    from diffusers import DDIMScheduler

    sys.path.insert(0, str(REPO))
    from pipeline_face_anon import FaceAnonPipeline

    pipe = FaceAnonPipeline.from_original(FIXTURE / "face_model", FIXTURE / "sd", FIXTURE / "clip")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(folder)
    return folder


def one_face_photo(path: Path) -> Path:
    import PIL.Image
    import skimage.data

    PIL.Image.fromarray(skimage.data.astronaut()[20:320, 80:380]).save(path)
    return path


class App:
    """``python -m face_anon.apps.web`` on a free port, stopped on exit."""

    def __init__(self, model: Path, folder: Path, *flags: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        command = [sys.executable, "-m", "face_anon.apps.web", "--model", str(model), "--port", str(port)]
        command += ["--cache-dir", str(folder / "cache"), *flags]
        self.log = open(folder / "app.log", "wb")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}/"
        start = time.perf_counter()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited: see {folder / 'app.log'}")
            try:
                with urllib.request.urlopen(self.url, timeout=5):
                    break
            except OSError:
                time.sleep(0.2)
        self.started = time.perf_counter() - start

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def job(client, photo: Path, mode: str) -> float:
    from gradio_client import handle_file

    start = time.perf_counter()
    result, report = client.predict(handle_file(str(photo)), mode, 1.25, 0, api_name="/anonymize")
    seconds = time.perf_counter() - start
    if report["status"] != "ok" or len(report["faces"]) != 1 or not Path(result).is_file():
        raise RuntimeError(f"unexpected result: {report}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="converted model folder (default: the tiny fixture model)")
    parser.add_argument("--jobs", type=int, default=50, help="sequential blur jobs for the memory run (default: 50)")
    parser.add_argument("--repeats", type=int, default=5, help="warm jobs after the first one (default: 5)")
    parser.add_argument("--steps", type=int, default=25, help="diffusion steps (default: 25)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    from gradio_client import Client

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "load": os.getloadavg(), "platform": platform.platform()},
        "steps": args.steps,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else tiny_model(tmp / "tiny")
        results["model"] = args.model or "tiny fixture (tests/fixtures/reference_tiny)"
        photo = one_face_photo(tmp / "astronaut.png")
        flags = ("--steps", str(args.steps))

        results["first_result"] = {}
        for mode in ("blur", "anonymize"):
            folder = tmp / f"first-{mode}"
            folder.mkdir()
            with App(model, folder, *flags) as app:
                client = Client(app.url, verbose=False)
                first = job(client, photo, mode)
                warm = [job(client, photo, mode) for _ in range(args.repeats)]
            results["first_result"][mode] = {
                "app_start_s": round(app.started, 2),
                "first_s": round(first, 3),
                "warm_median_s": round(statistics.median(warm), 3),
            }
            print(f"{mode}: {results['first_result'][mode]}", flush=True)

        folder = tmp / "memory"
        folder.mkdir()
        with App(model, folder, *flags) as app:
            client = Client(app.url, verbose=False)
            job(client, photo, "blur")  # first job: imports and allocations that happen once
            before = app.rss()
            rss, seconds = [], []
            for _ in range(args.jobs):
                seconds.append(job(client, photo, "blur"))
                rss.append(app.rss())
        mb = [value / 2**20 for value in rss]
        settled = mb[10:] or mb  # the allocators of Python, torch and onnxruntime grow over the first jobs
        results["memory"] = {
            "jobs": args.jobs,
            "rss_after_first_job_mb": round(before / 2**20, 1),
            "rss_mb": [round(v, 1) for v in mb],
            "rss_max_mb": round(max(mb), 1),
            "rss_range_after_10_jobs_mb": [round(min(settled), 1), round(max(settled), 1)],
            "rss_last_minus_job_10_mb": round(mb[-1] - settled[0], 2),
            "job_median_s": round(statistics.median(seconds), 3),
        }
        print(f"memory: { {k: v for k, v in results['memory'].items() if k != 'rss_mb'} }", flush=True)
    results["machine"]["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
