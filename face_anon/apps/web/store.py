"""Where the web app keeps files, and when it deletes them: the app keeps no face longer than it must.

Everything lives under one private folder (mode 0700) made for the app and removed when it stops::

    ROOT/gradio/        Gradio's cache (GRADIO_TEMP_DIR): uploads land here; what a page shows is served from here
         face-anon/TOKEN/KIND/   one visitor's previews and result (or one API call's result)
    ROOT/private/TOKEN/ one visitor's upload between their clicks (never served)
         api/           API uploads (never served; see :meth:`FileStore.claim`)
    ROOT/jobs/          running jobs' folders (each job deletes its own)

- An upload is moved out of Gradio's cache as soon as the app receives it (nothing serves it again).
- A visitor's previous previews and result are deleted when they upload or run again, and all their
  files when they close the page.
- Anything else (an API call's upload and result, a visitor who vanished without closing the page, an
  upload Gradio received for an event that failed) is deleted ``keep_seconds`` after it was last
  written or used, by a sweeper thread.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@dataclass
class Session:
    """One visitor's page: their current upload and the folders of what their page shows."""

    token: str
    served: Path  # under the Gradio cache: previews and result files
    private: Path  # never served: the upload between clicks
    last_used: float = field(default_factory=time.monotonic)
    upload: Any = None  # the app's record of the current upload (kind, name, bytes or path, faces)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def folder(self, kind: str) -> Path:
        """A fresh, empty folder for ``kind`` (``photo``, ``result``, ...), the previous one deleted."""
        path = self.served / kind
        _remove(path)
        path.mkdir(parents=True)
        return path

    def private_folder(self) -> Path:
        _remove(self.private)
        self.private.mkdir(parents=True)
        return self.private

    def clear(self) -> None:
        self.upload = None
        _remove(self.served)
        _remove(self.private)


class FileStore:
    """The app's folders, the visitors' sessions, and the sweeper that deletes what is left behind.

    Args:
        root: the app's folder; None makes a private temporary one, removed by :meth:`close`.
        keep_seconds: how long an unused file or an idle session is kept at most.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, keep_seconds: float = 600.0) -> None:
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="face-anon-app-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.cache_dir = self.root / "gradio"
        self.private_dir = self.root / "private"
        self.jobs_dir = self.root / "jobs"
        for folder in (self.cache_dir, self.private_dir, self.jobs_dir):
            folder.mkdir(exist_ok=True)
        self.keep_seconds = float(keep_seconds)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    # sessions

    def _get(self, key: str | None) -> Session:
        key = key or secrets.token_hex(8)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                token = secrets.token_hex(16)
                session = Session(
                    token=token, served=self.cache_dir / "face-anon" / token, private=self.private_dir / token
                )
                self._sessions[key] = session
            session.last_used = time.monotonic()
            return session

    @contextlib.contextmanager
    def session(self, key: str | None) -> Iterator[Session]:
        """The session of ``key`` (Gradio's session hash; made on first use), held for one event: its
        lock is taken, and it counts as used until the event ends."""
        session = self._get(key)
        with session.lock:
            try:
                yield session
            finally:
                session.last_used = time.monotonic()

    def peek(self, key: str | None) -> Session:
        """The session of ``key`` without waiting for its event in progress (read-only use)."""
        return self._get(key)

    def drop(self, key: str | None, *, idle_for: float | None = None) -> None:
        """Forget a session and delete all its files (the visitor closed the page: waits for their event in
        progress). With ``idle_for`` (the sweeper), only a session unused for that many seconds and with no
        event in progress."""
        with self._lock:
            session = self._sessions.get(key) if key else None
        if session is None:
            return
        if not session.lock.acquire(blocking=idle_for is None):
            return  # an event is running: the session is in use
        try:
            if idle_for is not None and time.monotonic() - session.last_used <= idle_for:
                return
            with self._lock:
                if self._sessions.get(key) is session:
                    del self._sessions[key]
            session.clear()
        finally:
            session.lock.release()

    def claim(self, upload: str | os.PathLike) -> Path:
        """Take an API upload out of Gradio's cache into the private folder; its private path, to read now.

        Gradio stores an upload by its content (the same bytes and name land on the same path), so a script
        that sends one file several times at once (trying seeds) gets one file for all its requests: the
        first request moves it here, the later ones find it here. The private copy is deleted
        ``keep_seconds`` after its last claim.
        """
        source = Path(upload)
        target = self.private_dir / "api" / source.parent.name / source.name
        with self._lock:
            if source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
                with contextlib.suppress(OSError):
                    source.parent.rmdir()  # Gradio keeps each upload in a folder of its own
            if not target.exists():
                raise FileNotFoundError(f"the upload {source.name!r} is no longer here")
            os.utime(target)  # claimed now: kept keep_seconds from now
        return target

    def one_off(self, name: str, data: bytes) -> Path:
        """Serve one API call's result: ``data`` written as ``name`` in a fresh folder of the cache
        (deleted by the sweeper ``keep_seconds`` later)."""
        folder = self.cache_dir / "face-anon" / "api" / secrets.token_hex(16)
        folder.mkdir(parents=True)
        path = folder / name
        path.write_bytes(data)
        return path

    @property
    def sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    # sweeping

    def sweep(self) -> None:
        """Drop sessions idle for ``keep_seconds``; delete files under the cache and the private folder
        not written or used for ``keep_seconds``, and the folders left empty."""
        now = time.monotonic()
        with self._lock:
            idle = [key for key, s in self._sessions.items() if now - s.last_used > self.keep_seconds]
        for key in idle:
            self.drop(key, idle_for=self.keep_seconds)
        with self._lock:
            in_use = {s.served for s in self._sessions.values()} | {s.private for s in self._sessions.values()}
        limit = time.time() - self.keep_seconds
        for top in (self.cache_dir, self.private_dir):
            emptied: set[Path] = set()  # folders this sweep took something out of
            for folder, _, files in os.walk(top, topdown=False):
                here = Path(folder)
                if any(here == used or used in here.parents for used in in_use):
                    continue
                for name in files:
                    path = here / name
                    with contextlib.suppress(FileNotFoundError):
                        if path.lstat().st_mtime < limit:
                            path.unlink()
                            emptied.add(here)
                if here != top:
                    with contextlib.suppress(OSError):
                        if here in emptied or here.stat().st_mtime < limit:
                            here.rmdir()  # only if empty; a folder made just now is left for its file
                            emptied.add(here.parent)

    def start_sweeper(self, interval: float | None = None) -> None:
        """Sweep every ``interval`` seconds (default: a third of ``keep_seconds``, between 1 and 60 s)."""
        if self._sweeper is not None:
            return
        interval = interval if interval is not None else min(max(self.keep_seconds / 3, 1.0), 60.0)

        def loop() -> None:
            while not self._stop.wait(interval):
                self.sweep()

        self._sweeper = threading.Thread(target=loop, name="face-anon-sweeper", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        """Stop sweeping; delete every session's files, and the whole folder if the store made it."""
        self._stop.set()
        with self._lock:
            keys = list(self._sessions)
        for key in keys:
            self.drop(key)
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)


__all__ = ["FileStore", "Session"]
