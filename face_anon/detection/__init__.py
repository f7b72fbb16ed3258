"""Finding faces: the detector protocol and the bundled CenterFace detector."""

from .centerface import (
    DETECTOR_NAMES,
    LANDMARK_NAMES,
    CenterFaceDetector,
    Face,
    FaceDetector,
    default_centerface_path,
    load_detector,
)


__all__ = [
    "DETECTOR_NAMES",
    "LANDMARK_NAMES",
    "CenterFaceDetector",
    "Face",
    "FaceDetector",
    "default_centerface_path",
    "load_detector",
]
