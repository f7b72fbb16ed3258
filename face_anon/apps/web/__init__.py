"""The face-anon web app (Gradio 6; ``pip install "face-anon[app]"``), started by ``face-anon-app``.

- :mod:`.jobs`: the work without Gradio: limits, the shared model, the speed estimate, one job through
  the command line's code path.
- :mod:`.store`: where uploads and results live, and when they are deleted.
- :mod:`.app`: the page, the ``/anonymize`` API endpoint and the ``face-anon-app`` command.
"""

from .app import AppConfig, WebApp, build_app, main
from .jobs import JobError, Limits, SharedModel, SpeedMeter
from .store import FileStore


__all__ = ["AppConfig", "FileStore", "JobError", "Limits", "SharedModel", "SpeedMeter", "WebApp", "build_app", "main"]
