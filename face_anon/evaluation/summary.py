"""The whole set's numbers: re-identification, rank-1, detection retention, landmarks, pose, video stability.

:func:`summarize` turns the per-file records of :mod:`.compare` into the report's JSON object. Its
top level holds the headline numbers as plain numbers (None where a number is undefined, e.g. a
rate over no faces):

- ``reidentification_rate``: the share of identifiable faces whose anonymized version is still
  within the threshold of the original;
- ``rank1_rate``: the share of anonymized faces whose nearest original, among all originals of the
  set, is their own source (each photo face is an identity, each video track one identity, from its
  median embedding); defined with at least two identities;
- ``detection_retention``: the share of faces the detector still finds after anonymization;
- ``landmark_error``: mean landmark error over the inter-ocular distance (detected faces);
- ``yaw_difference`` and ``roll_difference``: mean absolute pose change in degrees (detected faces);
- videos only: ``identity_stability`` (mean pairwise cosine similarity of a track's anonymized faces,
  averaged over tracks; ``identity_stability_original`` is the same for the original as a yardstick)
  and ``flicker_ratio`` (frame-to-frame change inside face boxes, anonymized over original).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..identity.matching import track_embedding
from . import metrics
from .compare import EvaluationOptions, FaceRecord, FileRecord


HISTOGRAM_BIN = 0.05  # width of the distance histogram's bins (distance units)


def _rank1(files: Sequence[FileRecord]) -> tuple[float | None, int]:
    """Fill ``FaceRecord.rank1`` and return the rate and the number of identities in the gallery."""
    gallery, probes = [], []  # probes: (record, identity index)
    for file in files:
        tracks: dict[int, list[FaceRecord]] = {}
        for face in file.faces:
            if face.original_embedding is None:
                continue
            if file.kind == "video" and face.track is not None:
                tracks.setdefault(face.track, []).append(face)
            else:
                gallery.append(face.original_embedding)
                probes.append((face, len(gallery) - 1))
        for members in tracks.values():
            gallery.append(track_embedding(np.stack([m.original_embedding for m in members])))
            probes.extend((member, len(gallery) - 1) for member in members)
    if len(gallery) < 2:
        return None, len(gallery)
    hits = metrics.rank1_hits(
        np.stack([face.anonymized_embedding for face, _ in probes]), np.stack(gallery), [t for _, t in probes]
    )
    for (face, _), hit in zip(probes, hits):
        face.rank1 = hit
    return metrics.rate(hits), len(gallery)


def _tracks(files: Sequence[FileRecord]) -> list[dict]:
    """Per video track: frames evaluated and the identity stability of its anonymized and original faces."""
    rows = []
    for file in files:
        if file.kind != "video":
            continue
        tracks: dict[int, list[FaceRecord]] = {}
        for face in file.faces:
            tracks.setdefault(face.track, []).append(face)
        for track, members in sorted(tracks.items(), key=lambda t: (t[0] is None, t[0])):
            embedded = [m for m in members if m.anonymized_embedding is not None]
            after = metrics.pairwise_cosine(np.stack([m.anonymized_embedding for m in embedded])) if embedded else None
            before = metrics.pairwise_cosine(np.stack([m.original_embedding for m in embedded])) if embedded else None
            rows.append(
                {
                    "file": file.name,
                    "track": track,
                    "frames": len(members),
                    "first_frame": min(m.frame for m in members),
                    "last_frame": max(m.frame for m in members),
                    "identity_stability": metrics.mean_or_none([after] if after is not None else []),
                    "identity_stability_original": metrics.mean_or_none([before] if before is not None else []),
                }
            )
    return rows


def _histogram_edges(values: Sequence[float], threshold: float) -> np.ndarray:
    """Bins of ``HISTOGRAM_BIN`` from 0 past the largest value and the threshold (shared by both histograms)."""
    top = max([*values, threshold]) + HISTOGRAM_BIN
    return np.round(np.arange(0.0, top + HISTOGRAM_BIN, HISTOGRAM_BIN), 4)


def _distances(values: list[float], edges: np.ndarray) -> dict:
    if not values:
        return {"count": 0, "mean": None, "median": None, "min": None, "max": None, "histogram": None}
    counts, _ = np.histogram(values, bins=edges)
    return {
        "count": len(values),
        "mean": round(float(np.mean(values)), 4),
        "median": round(float(np.median(values)), 4),
        "min": round(float(np.min(values)), 4),
        "max": round(float(np.max(values)), 4),
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def _impostor_distances(files: Sequence[FileRecord], limit: int = 2000) -> list[float]:
    """Distances between different original photo faces (different people, presumably): the yardstick
    the histogram draws next to the anonymized faces' distances. At most ``limit`` faces are used."""
    embeddings = [
        face.original_embedding
        for file in files
        if file.kind == "photo"
        for face in file.faces
        if face.original_embedding is not None
    ][:limit]
    if len(embeddings) < 2:
        return []
    stacked = np.stack(embeddings)
    distances = np.linalg.norm(stacked[:, None, :] - stacked[None, :, :], axis=2)
    return [float(d) for d in distances[np.triu_indices(len(stacked), k=1)]]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def summarize(
    files: Sequence[FileRecord],
    *,
    embedder_name: str,
    threshold: float,
    options: EvaluationOptions,
    original: str,
    anonymized: str,
    unpaired: Sequence[str] = (),
) -> dict:
    """The report's JSON object for a set of compared files (fills each face's ``rank1``)."""
    ok = [file for file in files if file.status == "ok"]
    faces = [face for file in ok for face in file.faces]
    identifiable = [face for face in faces if face.distance is not None]
    detected = [face for face in faces if face.detected]
    rank1_rate, identities = _rank1(ok)
    has_video = any(file.kind == "video" for file in files)
    tracks = _tracks(ok)

    report: dict = {
        "original": original,
        "anonymized": anonymized,
        "embedder": embedder_name,
        "threshold": threshold,
        "reidentification_rate": _round(metrics.rate([face.reidentified for face in identifiable])),
        "rank1_rate": _round(rank1_rate),
        "detection_retention": _round(metrics.rate([face.detected for face in faces])),
        "landmark_error": _round(metrics.mean_or_none([face.landmark_error for face in detected])),
        "yaw_difference": _round(metrics.mean_or_none([face.yaw_difference for face in detected]), 2),
        "roll_difference": _round(metrics.mean_or_none([face.roll_difference for face in detected]), 2),
    }
    if has_video:
        videos = [file for file in ok if file.kind == "video"]
        flicker_before = [f.flicker_original for f in videos if f.flicker_original is not None]
        flicker_after = [f.flicker_anonymized for f in videos if f.flicker_anonymized is not None]
        before = metrics.mean_or_none(flicker_before)
        report["identity_stability"] = _round(metrics.mean_or_none([t["identity_stability"] for t in tracks]))
        report["identity_stability_original"] = _round(
            metrics.mean_or_none([t["identity_stability_original"] for t in tracks])
        )
        report["flicker_ratio"] = _round(
            metrics.mean_or_none(flicker_after) / before if before is not None and before > 1e-9 else None
        )
    report["counts"] = {
        "files": len(files),
        "files_failed": len(files) - len(ok),
        "unpaired_skipped": len(unpaired),
        "faces": len(faces),
        "identifiable_faces": len(identifiable),
        "detected_faces": len(detected),
        "rank1_identities": identities,
    }
    report["settings"] = {
        "min_iou": options.min_iou,
        "min_eye_distance": options.min_eye_distance,
        "frame_step": options.frame_step,
        "refine_landmarks": options.refine_landmarks,
    }
    genuine = [face.distance for face in identifiable]
    impostor = _impostor_distances(ok)
    edges = _histogram_edges(genuine + impostor, threshold)
    report["distances"] = _distances(genuine, edges)
    report["distances_between_originals"] = _distances(impostor, edges)
    report["files"] = [
        {
            "file": file.name,
            "kind": file.kind,
            "status": file.status,
            "error": file.error,
            "faces": len(file.faces),
            "reidentified": sum(bool(face.reidentified) for face in file.faces),
            "detected": sum(face.detected for face in file.faces),
            **(
                {
                    "frames": file.frames,
                    "evaluated_frames": file.evaluated_frames,
                    "flicker_original": _round(file.flicker_original),
                    "flicker_anonymized": _round(file.flicker_anonymized),
                    "flicker_ratio": _round(file.flicker_ratio),
                }
                if file.kind == "video"
                else {}
            ),
        }
        for file in files
    ]
    report["unpaired"] = list(unpaired)
    if has_video:
        report["tracks"] = [{key: _round(v) if isinstance(v, float) else v for key, v in t.items()} for t in tracks]
    report["faces"] = [face.to_json() for face in faces]
    return report


__all__ = ["summarize"]
