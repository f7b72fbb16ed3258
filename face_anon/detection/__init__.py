"""Finding faces: the detector protocol, the bundled CenterFace detector, and the robust wrapper
that every caller gets from :func:`load_detector` (faces cut by the border, dithered images)."""

from .base import LANDMARK_NAMES, Face, FaceDetector, box_iou, iou_matrix
from .centerface import CenterFaceDetector, default_centerface_path
from .robust import RobustDetector


DETECTOR_NAMES = ("centerface",)
# What the robust detector finds, as a number the resume journal records: raise it whenever detection
# changes so that it finds faces it missed before, and outputs written before are made again, not skipped.
# 2: full-resolution tiles for large images, the corner rule (2026-11-30).
DETECTION_REVISION = 2


def load_detector(name: str = "centerface", *, robust: bool = True, **options) -> FaceDetector:
    """Build a detector by name (the command line's ``--detector``); ``options`` go to its constructor.

    With ``robust`` (the default) it is wrapped in :class:`RobustDetector`, which also finds faces cut by
    the image border, faces in dithered or bitonal images and small faces in large images, at several
    times the detection time (``benchmarks/README.md``, "Detection limits"); ``robust=False`` gives the
    bare detector.
    """
    if name == "centerface":
        detector = CenterFaceDetector(**options)
    else:
        raise ValueError(f"detector: got {name!r}, expected one of: {', '.join(DETECTOR_NAMES)}")
    return RobustDetector(detector) if robust else detector


__all__ = [
    "DETECTION_REVISION",
    "DETECTOR_NAMES",
    "LANDMARK_NAMES",
    "CenterFaceDetector",
    "Face",
    "FaceDetector",
    "RobustDetector",
    "box_iou",
    "default_centerface_path",
    "iou_matrix",
    "load_detector",
]
