"""Face identity and evaluation: embedder speed, evaluation throughput, and the measurements behind
the identity constants (the dlib chip template, the smallest identifiable face).

    python benchmarks/benchmark_identity.py                  # speed: embedder ms/face, evaluate faces/s
    python benchmarks/benchmark_identity.py --sizes          # distance to itself and to another person vs face size
    python benchmarks/benchmark_identity.py --calibrate [PHOTO ...]   # the chip template, from these photos' faces

Uses only images that ship with the test dependencies (scikit-image's astronaut and camera, matplotlib's
Grace Hopper) plus any photos given on the command line. Needs the ``identity`` and ``test`` extras.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import PIL.Image


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from identity import identity_helpers as people  # noqa: E402

from face_anon.detection import Face, load_detector  # noqa: E402
from face_anon.geometry.alignment import transform_points  # noqa: E402
from face_anon.identity import DlibFaceEmbedder, eye_distance  # noqa: E402
from face_anon.identity.embedders import (  # noqa: E402
    DLIB_CHIP_PADDING,
    DLIB_CHIP_SIZE,
    DLIB_CHIP_TEMPLATE,
    SHAPE_MODEL_5,
    dlib_model_dir,
)
from face_anon.orchestration.options import AnonymizeOptions  # noqa: E402
from face_anon.orchestration.stages import find_faces  # noqa: E402


MIRROR = [1, 0, 2, 4, 3]


def _people() -> dict[str, np.ndarray]:
    return {"astronaut": people.astronaut(), "cameraman": people.cameraman(), "hopper": people.hopper()}


def speed(detector, repeats: int) -> None:
    images = _people()
    faces = {name: find_faces(image, detector, AnonymizeOptions()) for name, image in images.items()}
    for alignment in ("landmarks", "dlib5"):
        embedder = DlibFaceEmbedder(alignment=alignment)
        times, cpu = [], []
        for _ in range(repeats):
            for name, image in images.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                embedder.embed(image, faces[name])
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
        print(
            f"embedder ({alignment} chip): median {1000 * statistics.median(times):.1f} ms/face wall, "
            f"{1000 * statistics.median(cpu):.1f} ms/face CPU, over {len(times)}"
        )

    from face_anon.evaluation import evaluate
    from face_anon.orchestration.photo import anonymize_photos

    embedder = DlibFaceEmbedder()
    with tempfile.TemporaryDirectory() as folder:
        originals, blurred = Path(folder, "original"), Path(folder, "blurred")
        for copy in range(4):
            for name, image in images.items():
                people.save(image, originals / f"{name}_{copy}.png")
                (result,) = anonymize_photos([image], detector=detector, options=AnonymizeOptions(mode="blur"))
                people.save(np.asarray(result.image), blurred / f"{name}_{copy}.png")
        start, start_cpu = time.perf_counter(), time.process_time()
        report = evaluate(originals, blurred, detector=detector, embedder=embedder)
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        faces = report["counts"]["faces"]
        print(
            f"evaluate: {faces} faces in {elapsed:.1f} s wall ({elapsed_cpu:.1f} s CPU) = {faces / elapsed:.2f} faces/s "
            "(12 photos of ~512 px, detection with landmark refinement on both sides)"
        )


def sizes(detector) -> None:
    embedder = DlibFaceEmbedder()
    images = _people()
    full = {name: find_faces(image, detector, AnonymizeOptions())[0] for name, image in images.items()}
    embeddings = {name: embedder.embed(images[name], [full[name]])[0] for name in images}
    print("eye distance (px) | distance to itself at full size | distance to the nearest other person")
    for target in (40, 30, 24, 20, 16, 12, 10, 8, 6):
        row = []
        for name, image in images.items():
            scale = target / eye_distance(full[name])
            if scale >= 1:
                continue
            small = people.resized(image, scale)
            points = (full[name].landmark_array + 0.5) * scale - 0.5
            face = Face(full[name].box, full[name].score, tuple(map(tuple, points)))
            vector = embedder.embed(small, [face])[0]
            other = min(np.linalg.norm(vector - embeddings[o]) for o in images if o != name)
            row.append(f"{name} {np.linalg.norm(vector - embeddings[name]):.3f} / {other:.3f}")
        print(f"{target:>3} | " + " | ".join(row))


def _chip_to_image(details) -> np.ndarray:
    """dlib's chip_details as the 2 x 3 matrix from chip pixels to image pixels (its rectangle, turned
    by its angle about the rectangle's centre)."""
    rect, angle = details.rect, details.angle
    centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    corners = [(rect.left(), rect.top()), (rect.right(), rect.top()), (rect.left(), rect.bottom())]
    image = np.array([centre + turn @ (np.array(c) - centre) for c in corners], np.float32)
    chip = np.array([[0, 0], [details.cols - 1, 0], [0, details.rows - 1]], np.float32)
    return cv2.getAffineTransform(chip, image)


def calibrate(detector, photos: list[str]) -> None:
    import dlib

    shapes = dlib.shape_predictor(str(dlib_model_dir() / SHAPE_MODEL_5))
    images = dict(_people())
    for path in photos:
        images[Path(path).name] = np.asarray(PIL.Image.open(path).convert("RGB"))
    ours, dlibs = DlibFaceEmbedder(alignment="landmarks"), DlibFaceEmbedder(alignment="dlib5")
    placed, agreement = [], []
    for name, image in images.items():
        for face in find_faces(image, detector, AnonymizeOptions()):
            if face.size < 60:
                continue
            agreement.append(float(np.linalg.norm(ours.embed(image, [face])[0] - dlibs.embed(image, [face])[0])))
            shape = shapes(image, dlib.rectangle(*(int(round(v)) for v in face.box)))
            details = dlib.get_face_chip_details(shape, DLIB_CHIP_SIZE, DLIB_CHIP_PADDING)
            to_chip = cv2.invertAffineTransform(_chip_to_image(details))
            placed.append(transform_points(to_chip, face.landmark_array))
            print(f"{name}: face {face.size:.0f} px -> {np.round(placed[-1], 1).tolist()}")
    placed = np.stack(placed)
    mirrored = placed[:, MIRROR].copy()
    mirrored[:, :, 0] = DLIB_CHIP_SIZE - 1 - mirrored[:, :, 0]
    template = np.concatenate([placed, mirrored]).mean(axis=0)
    print(f"{len(placed)} faces; template (mirror-averaged): {np.round(template, 2).tolist()}")
    print(f"largest difference to DLIB_CHIP_TEMPLATE: {np.abs(template - DLIB_CHIP_TEMPLATE).max():.2f} px")
    print(
        f"distance between our chip's and dlib's own chip's embeddings: mean {np.mean(agreement):.3f}, "
        f"max {np.max(agreement):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", action="store_true", help="distance vs face size")
    parser.add_argument("--calibrate", nargs="*", metavar="PHOTO", default=None, help="measure the chip template")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (default: 5)")
    args = parser.parse_args()
    detector = load_detector()
    if args.calibrate is not None:
        calibrate(detector, args.calibrate)
    elif args.sizes:
        sizes(detector)
    else:
        speed(detector, args.repeats)


if __name__ == "__main__":
    main()
