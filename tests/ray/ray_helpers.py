"""Inputs and instruments of the Ray engine tests: twelve generated photos, a model loader that counts.

The photos are built from ``skimage.data.astronaut()`` (``tests/photo/photo_helpers.py``): faces of known
sizes and angles, photos without faces, one whose faces overlap (so its crops are cut in two layers),
a grey one, a corrupt one, and entries a folder scan passes over.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import PIL.Image


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the photo helpers

from photo.photo_helpers import Placement, background, compose  # noqa: E402


def make_photos(folder: Path) -> Path:
    """Twelve photos (and two files a scan skips) in ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "more").mkdir()

    def save(name: str, image: np.ndarray, **kwargs) -> None:
        PIL.Image.fromarray(image).save(folder / name, **kwargs)

    save("two.png", compose(480, 360, [Placement((150, 170), 0.9), Placement((345, 185), 0.7, 20.0)]))
    save("one.jpg", compose(400, 300, [Placement((200, 150), 1.0)], seed=1), quality=92)
    save("overlap.png", compose(480, 360, [Placement((200, 180), 0.9), Placement((290, 190), 0.8)], seed=3))
    save("tilted.png", compose(360, 360, [Placement((180, 180), 1.0, -30.0)], seed=4))
    save("small.jpg", compose(480, 320, [Placement((120, 110), 0.45), Placement((360, 200), 0.5)], seed=5))
    save(
        "three.png",
        compose(560, 300, [Placement((100, 150), 0.6), Placement((280, 150), 0.6), Placement((460, 150), 0.6)], seed=6),
    )
    save(
        "grey.png",
        np.asarray(PIL.Image.fromarray(compose(320, 320, [Placement((160, 160), 0.9)], seed=7)).convert("L")),
    )
    save("more/nested.png", compose(320, 240, [Placement((160, 120), 0.7)], seed=8))
    save("empty.png", background(320, 240, 9))
    save("empty.jpg", background(400, 260, 10), quality=90)
    save("more/empty.png", background(240, 240, 11))
    (folder / "corrupt.jpg").write_bytes((folder / "one.jpg").read_bytes()[:400])
    (folder / ".hidden.png").write_bytes((folder / "empty.png").read_bytes())
    (folder / ".cache").mkdir()
    (folder / ".cache" / "thumbnail.png").write_bytes((folder / "two.png").read_bytes())
    (folder / "notes.txt").write_text("not a photo\n")
    return folder


def read_report(path: Path, outputs: Path) -> list[dict]:
    """A JSON report with output paths made relative to ``outputs`` (two runs write to different folders)."""
    rows = json.loads(Path(path).read_text())
    for row in rows:
        if row["output"] is not None:
            row["output"] = Path(row["output"]).relative_to(outputs).as_posix()
        row.pop("journal", None)
    return rows


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones included) by relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder`` with its size and modification time in nanoseconds."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class _Counted:
    """A pipeline that appends one line to ``counter`` per call (any process), then calls the real one."""

    def __init__(self, pipeline, counter: str) -> None:
        self._pipeline, self._counter = pipeline, counter

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def __call__(self, *args, **kwargs):
        with open(self._counter, "a") as file:
            file.write(f"call {os.getpid()} {len(kwargs['image'])}\n")
        return self._pipeline(*args, **kwargs)


def load_counted(model_dir: str, counter: str):
    """The tiny model as the command line loads it (``load_pipeline(model_dir, "cpu", "float32")``),
    counting each load and each call in the file ``counter``."""
    from face_anon.replacers.diffusion import load_pipeline

    with open(counter, "a") as file:
        file.write(f"load {os.getpid()}\n")
    return _Counted(load_pipeline(model_dir, "cpu", "float32"), counter)


def count(counter: Path, what: str) -> int:
    """Lines of ``counter`` starting with ``what`` (``load`` or ``call``); 0 when it does not exist."""
    if not Path(counter).exists():
        return 0
    return sum(line.startswith(what + " ") for line in Path(counter).read_text().splitlines())


def load_broken():
    """A model that cannot be loaded."""
    raise OSError("no model files here")
