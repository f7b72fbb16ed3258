"""The exceptions face_anon raises, one per kind of failure a caller handles differently.

Library functions validate what they are given and raise :class:`InputError` (a ``ValueError``) whose
message names the argument, the value it got and what is allowed; the command line turns it into exit
status 2. A photo that cannot be read raises :class:`ImageLoadError`; a batch turns it (and any other
per-file failure) into that file's ``error`` row and goes on. :class:`ModelLoadError` stops a batch:
without the model no face can be anonymized.
"""

from __future__ import annotations

from typing import Any


class FaceAnonError(Exception):
    """Base class of face_anon's own exceptions."""


class InputError(FaceAnonError, ValueError):
    """A bad argument: ``argument`` got ``value``, ``expected`` says what is allowed.

    Built from those parts so every layer words it the same way; ``str(error)`` is
    ``"{argument}: got {value!r}, expected {expected}"``, or ``"{argument}: {value!r} {detail}"`` when a
    sentence about the value says more (``"output: 'x.png' is also an input"``).
    """

    def __init__(self, argument: str, value: Any = None, expected: str | None = None, *, detail: str | None = None):
        self.argument = argument
        self.value = value
        self.expected = expected
        self.detail = detail
        if detail is not None:
            message = f"{argument}: {detail}" if value is None else f"{argument}: {value!r} {detail}"
        else:
            message = f"{argument}: got {value!r}, expected {expected}"
        super().__init__(message)


class ImageLoadError(FaceAnonError, ValueError):
    """A file that cannot be read as a photo; the message says why in words a user can act on."""


class ModelLoadError(FaceAnonError, RuntimeError):
    """The face model could not be loaded, so no face could be anonymized."""


__all__ = ["FaceAnonError", "ImageLoadError", "InputError", "ModelLoadError"]
