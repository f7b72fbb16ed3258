"""Face anonymization for whole photos, built on the ``FaceAnonPipeline`` diffusion model.

Find every face (CenterFace, bundled), align it as FFHQ was, replace it in batches (the diffusion
model, or blur / pixelate / black) and blend it back with a soft mask::

    from face_anon import AnonymizeOptions, anonymize_photo, load_detector, load_pipeline

    detector = load_detector()
    pipe = load_pipeline("path/to/converted-model")
    result = anonymize_photo(image, detector=detector, pipeline=pipe, options=AnonymizeOptions(seed=0))
    result.image, result.outcomes

The stages (``find_faces``, ``select_faces``, ``plan_crops``, ``cut_crops``, ``replace_crops``,
``paste_faces``, ``face_outcomes``) are public for callers that run them one by one: see
:mod:`face_anon.orchestration.stages`.
"""

from .detection import CenterFaceDetector, Face, FaceDetector, load_detector
from .errors import FaceAnonError, ImageLoadError, InputError, ModelLoadError
from .geometry.alignment import Alignment, crop_face, ffhq_alignment, refine_landmarks
from .geometry.blending import face_mask, paste_face
from .io.files import FileJob, FilePlan, Journal, check_report_path, plan_files, write_atomic
from .io.images import load_image
from .orchestration.batch import FileRun, engine_settings, process_files
from .orchestration.options import AnonymizeOptions
from .orchestration.photo import PhotoResult, anonymize_photo, anonymize_photos, make_replacer
from .orchestration.report import FaceOutcome, FileReport, Status, assemble_report, report_json, summarize
from .orchestration.stages import (
    FaceCrop,
    FaceDecision,
    FacePlan,
    FaceSelector,
    Replacement,
    apply_on_error,
    crop_layers,
    cut_crops,
    face_outcomes,
    find_faces,
    paste_faces,
    plan_crops,
    replace_crops,
    select_faces,
)
from .orchestration.video import TrackSelector, VideoOptions, VideoReport, anonymize_video
from .replacers import DiffusionAnonymizer, FaceAction, FaceReplacer, Redactor
from .replacers.diffusion import load_pipeline


__all__ = [
    "Alignment",
    "AnonymizeOptions",
    "CenterFaceDetector",
    "DiffusionAnonymizer",
    "Face",
    "FaceAction",
    "FaceAnonError",
    "FaceCrop",
    "FaceDecision",
    "FaceDetector",
    "FaceOutcome",
    "FacePlan",
    "FaceReplacer",
    "FaceSelector",
    "FileJob",
    "FilePlan",
    "FileReport",
    "FileRun",
    "ImageLoadError",
    "InputError",
    "Journal",
    "ModelLoadError",
    "PhotoResult",
    "Redactor",
    "Replacement",
    "Status",
    "TrackSelector",
    "VideoOptions",
    "VideoReport",
    "anonymize_photo",
    "anonymize_photos",
    "anonymize_video",
    "apply_on_error",
    "assemble_report",
    "check_report_path",
    "crop_face",
    "crop_layers",
    "cut_crops",
    "engine_settings",
    "face_mask",
    "face_outcomes",
    "ffhq_alignment",
    "find_faces",
    "load_detector",
    "load_image",
    "load_pipeline",
    "make_replacer",
    "paste_face",
    "paste_faces",
    "plan_crops",
    "plan_files",
    "process_files",
    "refine_landmarks",
    "replace_crops",
    "report_json",
    "select_faces",
    "summarize",
    "write_atomic",
]
