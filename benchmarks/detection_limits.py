"""What the detector finds and what it costs: faces cut by the border, close-up crops, dithered images.

    python benchmarks/detection_limits.py              # about 10 minutes on 2 CPU cores
    python benchmarks/detection_limits.py --skip border dither

Compares the bare CenterFace detector with ``RobustDetector`` (what ``load_detector()`` returns) on the
synthetic inputs of the hardening tests (``tests/photo/attack_inputs.py``, built from
``skimage.data.astronaut()``):

- ``border``: one face in a 640 x 480 picture, cut by each border so that a fraction of its box (width
  for left and right, height for top and bottom) is inside, from 0.10 to 1.00 in steps of 0.05, at five
  face sizes. Reported: the smallest fraction from which every larger one is found (IoU > 0.3 with the
  visible part of the box), per border and size.
- ``closeup``: crops of part of a face (an eyes-only strip, eyes to nose) at several enlargements.
- ``dither``: three faces (large, tilted, small) dithered five ways at three widths: faces found.
- ``large``: six small faces in 12, 24 and 48 megapixel photos, at five face sizes: faces found, and the
  robust detector's CPU seconds.
- ``time``: CPU seconds per image with one onnxruntime thread, bare and robust, alone and with the
  landmark refinement of ``find_faces``, on photos and a dithered image (best of ``--repeats`` after a
  warm-up).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from face_anon.detection import CenterFaceDetector, RobustDetector  # noqa: E402
from tests.photo.attack_inputs import (  # noqa: E402
    bayer,
    close_up,
    cut_face,
    dither_scene,
    floyd_steinberg,
    grey,
    halftone,
    iou,
    visible_box,
)
from tests.photo.photo_helpers import SCENE, SCENE_SIZE, Placement, compose, match_faces  # noqa: E402


FRACTIONS = np.round(np.arange(0.10, 1.001, 0.05), 2)
SCALES = (0.3, 0.5, 1.0, 2.0, 3.5)  # face box heights 36, 60, 120, 239, 419 px


def border(base, robust) -> None:
    print("\n## Faces cut by the border (640 x 480): smallest visible fraction from which all are found")
    print("| border | face height | bare | robust |\n|---|---|---|---|")
    worst = {}
    for side in ("left", "right", "top", "bottom"):
        for scale in SCALES:
            smallest = {}
            for name, detector in (("bare", base), ("robust", robust)):
                found_from = None
                for fraction in FRACTIONS[::-1]:
                    image, placement = cut_face(side, float(fraction), scale)
                    target = visible_box(placement, (640, 480))
                    if not any(iou(face.box, target) > 0.3 for face in detector.detect(image)):
                        break
                    found_from = float(fraction)
                smallest[name] = found_from
            worst[side] = max(worst.get(side, 0.0), smallest["robust"] or 1.1)
            print(f"| {side} | {round(119.6 * scale)} px | {smallest['bare']} | {smallest['robust']} |", flush=True)
    print("worst over face sizes, robust:", {side: round(value, 2) for side, value in worst.items()})


def closeup(base, robust) -> None:
    print("\n## Close-up crops of part of a face\n| crop | size | bare | robust |\n|---|---|---|---|")
    for kind in ("eyes", "eyes_nose"):
        for zoom in (2, 3, 4, 5, 8):
            image = close_up(kind, zoom)
            size = f"{image.shape[1]} x {image.shape[0]}"
            print(f"| {kind} x{zoom} | {size} | {len(base.detect(image))} | {len(robust.detect(image))} |", flush=True)


def dither(base, robust) -> None:
    print("\n## Dithered images: faces found of 3 (extra detections in brackets)")
    print("| width | dither | bare | robust |\n|---|---|---|---|")
    for width in (640, 1280, 2560):
        rgb, placements = dither_scene(width)
        scene_grey = grey(rgb)
        kinds = {
            "Floyd-Steinberg": floyd_steinberg(scene_grey),
            "Bayer 8x8": bayer(scene_grey),
            "halftone 4 px": halftone(scene_grey, 4),
            "halftone 6 px": halftone(scene_grey, 6),
            "halftone 10 px": halftone(scene_grey, 10),
        }
        for name, bitonal in kinds.items():
            image = np.repeat(bitonal[:, :, None], 3, axis=2)
            cells = []
            for detector in (base, robust):
                faces = detector.detect(image)
                found = sum(face is not None for _, face in match_faces(faces, placements))
                cells.append(f"{found} ({len(faces) - found})")
            print(f"| {width} | {name} | {cells[0]} | {cells[1]} |", flush=True)


def large(base, robust) -> None:
    print("\n## Small faces in large photos: faces found of 6 (robust CPU seconds, all threads)")
    print("| photo | face height | bare | robust | robust CPU s |\n|---|---|---|---|---|")
    for width, height in ((4000, 3000), (6000, 4000), (8000, 6000)):
        for scale in (0.17, 0.25, 0.4, 0.6, 1.0):
            placements = [
                Placement((width * (0.15 + 0.7 * i / 5), height * (0.3 + 0.4 * (i % 2))), scale) for i in range(6)
            ]
            image = compose(width, height, placements)
            start = time.process_time()
            faces = robust.detect(image)
            seconds = time.process_time() - start
            cells = [
                sum(face is not None for _, face in match_faces(found, placements))
                for found in (base.detect(image), faces)
            ]
            print(
                f"| {width} x {height} | {round(119.6 * scale)} px | {cells[0]} | {cells[1]} | {seconds:.1f} |",
                flush=True,
            )


def timing(repeats: int) -> None:
    """CPU seconds per image with one onnxruntime thread: the work done, which a machine shared with
    other jobs does not distort as it does wall-clock time (on idle cores wall time is at most this)."""
    import cv2

    from face_anon import AnonymizeOptions
    from face_anon.orchestration.stages import find_faces

    base = CenterFaceDetector(num_threads=1)
    robust = RobustDetector(base)
    options = AnonymizeOptions(mode="blur")

    def best(function):
        function()
        times = []
        for _ in range(repeats):
            start = time.process_time()
            function()
            times.append(time.process_time() - start)
        return min(times)

    scene = compose(*SCENE_SIZE, SCENE)
    rgb, _ = dither_scene(1280)
    images = {
        "640 x 400 photo": cv2.resize(scene, (640, 400), interpolation=cv2.INTER_AREA),
        "1280 x 800 photo": scene,
        "1920 x 1200 photo": cv2.resize(scene, (1920, 1200), interpolation=cv2.INTER_CUBIC),
        "4000 x 2500 photo": cv2.resize(scene, (4000, 2500), interpolation=cv2.INTER_CUBIC),
        "1280 x 800 dithered": np.repeat(floyd_steinberg(grey(rgb))[:, :, None], 3, axis=2),
    }
    print(f"\n## CPU seconds per image, one thread, best of {repeats} (7 faces in the photos, 3 in the dithered)")
    print("| image | bare | robust | ratio | bare + refinement | robust + refinement |\n|---|---|---|---|---|---|")
    for name, image in images.items():
        bare, wrapped = best(lambda i=image: base.detect(i)), best(lambda i=image: robust.detect(i))
        refined = [best(lambda i=image, d=d: find_faces(i, d, options)) for d in (base, robust)]
        print(
            f"| {name} | {bare:.2f} | {wrapped:.2f} | {wrapped / bare:.1f} | {refined[0]:.2f} | {refined[1]:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", nargs="*", default=[], choices=["border", "closeup", "dither", "large", "time"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = CenterFaceDetector()
    robust = RobustDetector(base)
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    for name, section in (("border", border), ("closeup", closeup), ("dither", dither), ("large", large)):
        if name not in args.skip:
            section(base, robust)
    if "time" not in args.skip:
        timing(args.repeats)


if __name__ == "__main__":
    main()
