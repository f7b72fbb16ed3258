"""Pairing original and anonymized files: two files, or two folders matched by relative path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..io.images import IMAGE_EXTENSIONS
from ..io.video import VIDEO_EXTENSIONS


MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


@dataclass(frozen=True, kw_only=True)
class MediaPair:
    """An original file and its anonymized version; ``name`` is the relative path reports use."""

    name: str
    original: Path
    anonymized: Path

    @property
    def kind(self) -> str:
        """``video`` when the original has a video extension, else ``photo``."""
        return "video" if self.original.suffix.lower() in VIDEO_EXTENSIONS else "photo"


def _media(folder: Path) -> dict[str, Path]:
    """Photos and videos below ``folder`` by relative path (POSIX), hidden files and folders left out."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and path.suffix.lower() in MEDIA_EXTENSIONS:
            if not any(part.startswith(".") for part in relative.parts):
                found[relative.as_posix()] = path
    return found


def pair_media(
    original: str | os.PathLike, anonymized: str | os.PathLike, *, skip_unpaired: bool = False
) -> tuple[list[MediaPair], list[str]]:
    """Pair ``original`` with ``anonymized``: two files, or two folders by relative path.

    Returns the pairs (sorted by name) and the names of files found on one side only. Raises
    :class:`InputError` naming the argument for a missing path, a file paired with a folder, folders
    without a single pair, or, unless ``skip_unpaired``, any file present on one side only.
    """
    original, anonymized = Path(original), Path(anonymized)
    for argument, path in (("ORIGINAL", original), ("ANONYMIZED", anonymized)):
        if not path.exists():
            raise InputError(argument, detail=f"{str(path)!r} does not exist")
        if not (path.is_file() or path.is_dir()):
            raise InputError(argument, detail=f"{str(path)!r} is neither a file nor a folder")
    if original.is_file() != anonymized.is_file():
        raise InputError(
            "ANONYMIZED",
            detail=f"{str(anonymized)!r} is a {'file' if anonymized.is_file() else 'folder'} but ORIGINAL "
            f"{str(original)!r} is a {'file' if original.is_file() else 'folder'}; give two files or two folders",
        )
    if original.is_file():
        for argument, path in (("ORIGINAL", original), ("ANONYMIZED", anonymized)):
            if path.suffix.lower() not in MEDIA_EXTENSIONS:
                allowed = ", ".join(sorted(MEDIA_EXTENSIONS))
                raise InputError(argument, detail=f"{str(path)!r} is not a photo or video ({allowed})")
        if (original.suffix.lower() in VIDEO_EXTENSIONS) != (anonymized.suffix.lower() in VIDEO_EXTENSIONS):
            raise InputError("ANONYMIZED", detail=f"{str(anonymized)!r} and {str(original)!r}: a photo and a video")
        return [MediaPair(name=original.name, original=original, anonymized=anonymized)], []
    if original.resolve() == anonymized.resolve():
        raise InputError("ANONYMIZED", detail=f"{str(anonymized)!r} is ORIGINAL itself")
    left, right = _media(original), _media(anonymized)
    unpaired = sorted(set(left) ^ set(right))
    if unpaired and not skip_unpaired:
        only_left = [name for name in unpaired if name in left]
        only_right = [name for name in unpaired if name in right]
        parts = []
        if only_left:
            parts.append(f"{len(only_left)} only in ORIGINAL ({_few(only_left)})")
        if only_right:
            parts.append(f"{len(only_right)} only in ANONYMIZED ({_few(only_right)})")
        raise InputError(
            "ANONYMIZED",
            detail=f"unpaired files: {'; '.join(parts)}; files pair by relative path "
            "(--skip-unpaired evaluates the pairs there are)",
        )
    pairs = [
        MediaPair(name=name, original=left[name], anonymized=right[name]) for name in sorted(set(left) & set(right))
    ]
    if not pairs:
        raise InputError("ORIGINAL", detail=f"no photo or video of {str(original)!r} has a counterpart in ANONYMIZED")
    return pairs, unpaired


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")


__all__ = ["MEDIA_EXTENSIONS", "MediaPair", "pair_media"]
