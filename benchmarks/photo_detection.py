"""Hand measurements for whole photos: detection time and faces found, and the FFHQ round trip.

    python benchmarks/photo_detection.py --photos ../shared/photos/friends.jpg ../shared/photos/teaser.jpg \
        --ffhq ../shared/photos/00482.png ../shared/photos/14795.png

Detection: each photo is resized to 960 and 1920 px on its long side and detected ``--repeats`` times
after one warm-up; the best and median times are printed (the best is the least disturbed by other
work on the machine). "refined" adds the landmark refinement done before alignment.
FFHQ round trip: an FFHQ-aligned image is detected and aligned again at its own size; a perfect
alignment is the identity (scale 1, rotation 0, centre shift 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import cv2
import numpy as np
import PIL.Image

from face_anon.detection import CenterFaceDetector
from face_anon.geometry.alignment import ffhq_alignment, transform_points
from face_anon.io.images import load_image
from face_anon.orchestration.options import AnonymizeOptions
from face_anon.orchestration.stages import find_faces


def _timed(function, repeats):
    function()  # warm-up: onnxruntime plans memory for each new input shape
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", nargs="*", default=[])
    parser.add_argument("--ffhq", nargs="*", default=[])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    detector = CenterFaceDetector()
    options = AnonymizeOptions()
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    for path in args.photos:
        rgb = load_image(path).rgb
        for side in (960, 1920):
            scale = side / max(rgb.shape[:2])
            size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
            image = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
            faces, best, median = _timed(lambda image=image: detector.detect(image), args.repeats)
            _, best_r, median_r = _timed(lambda image=image: find_faces(image, detector, options), args.repeats)
            print(
                f"{os.path.basename(path)} at {size[0]}x{size[1]}: {len(faces)} faces, "
                f"detect {best:.3f} s (median {median:.3f}), with refinement {best_r:.3f} s (median {median_r:.3f})"
            )
    for path in args.ffhq:
        rgb = np.asarray(PIL.Image.open(path).convert("RGB"))
        size = rgb.shape[0]
        centre = np.array([(size - 1) / 2, (size - 1) / 2])
        for label, faces in (("raw", detector.detect(rgb)), ("refined", find_faces(rgb, detector, options))):
            alignment = ffhq_alignment(faces[0].landmark_array, size, eye_scale=detector.eye_scale)
            shift = transform_points(alignment.matrix, centre[None])[0] - centre
            print(
                f"{os.path.basename(path)} ({label}): {len(faces)} face(s), scale {alignment.scale:.3f}, "
                f"rotation {alignment.angle:+.2f} deg, shift {np.hypot(*shift):.1f} px"
            )


if __name__ == "__main__":
    main()
