"""Face anonymization for whole photos, built on the ``FaceAnonPipeline`` diffusion model.

Find every face (CenterFace, bundled), align it as FFHQ was, replace it in batches (the diffusion
model, or blur / pixelate / black) and blend it back with a soft mask::

    from face_anon import AnonymizeOptions, anonymize_photo, load_detector, load_pipeline

    detector = load_detector()
    pipe = load_pipeline("path/to/converted-model")
    result = anonymize_photo(image, detector=detector, pipeline=pipe, options=AnonymizeOptions(seed=0))
    result.image, result.faces
"""

from .detection import CenterFaceDetector, Face, FaceDetector, load_detector
from .geometry.alignment import Alignment, crop_face, ffhq_alignment, refine_landmarks
from .geometry.blending import face_mask, paste_face
from .io.images import ImageLoadError, load_image
from .orchestration.batch import FileJob, FileReport, plan_jobs, process_files
from .orchestration.photo import (
    AnonymizeOptions,
    FaceOutcome,
    PhotoResult,
    anonymize_photo,
    anonymize_photos,
    detect_faces,
)
from .replacers import DiffusionAnonymizer, FaceReplacer, Redactor
from .replacers.diffusion import load_pipeline


__all__ = [
    "Alignment",
    "AnonymizeOptions",
    "CenterFaceDetector",
    "DiffusionAnonymizer",
    "Face",
    "FaceDetector",
    "FaceOutcome",
    "FaceReplacer",
    "FileJob",
    "FileReport",
    "ImageLoadError",
    "PhotoResult",
    "Redactor",
    "anonymize_photo",
    "anonymize_photos",
    "crop_face",
    "detect_faces",
    "face_mask",
    "ffhq_alignment",
    "load_detector",
    "load_image",
    "load_pipeline",
    "paste_face",
    "plan_jobs",
    "process_files",
    "refine_landmarks",
]
