"""Waking the monitor loop when a watched file changes, instead of sleeping a full interval.

The kernel's inotify (through watchdog) is the fast path: one watch per directory, never one
per file, so 1,024 idle rank files cost one watch and no polling. Changes are handed to the
source (``notify(path)``) so a poll reads only what changed; the source still rescans
everything every ``rescan_interval`` seconds, which catches whatever an overflowing kernel queue
dropped. ``--poll`` (network filesystems, where inotify sees nothing) skips the watcher and the
loop sleeps ``poll_interval`` between full polls.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

__all__ = ["ChangeWatcher", "Notifiable"]


class Notifiable(Protocol):
    """A source that can be told which path changed."""

    def watch_dirs(self) -> list[tuple[str, bool]]:
        """``(directory, recursive)`` pairs to watch."""

    def notify(self, path: str) -> None:
        """``path`` changed (called from the watcher thread)."""


class ChangeWatcher:
    """Watches a source's directories with inotify; :meth:`wait` returns early on a change."""

    def __init__(self, source: Notifiable) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers.inotify import InotifyObserver

        self._wake = threading.Event()
        wake, notify = self._wake, source.notify

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                # O(1) per event: the watchdog queue is unbounded, so never do I/O here.
                if event.event_type in ("opened", "closed_no_write"):
                    return  # our own reads; they would wake the loop for nothing
                notify(os.fsdecode(event.src_path))
                dest = getattr(event, "dest_path", "")
                if dest:
                    notify(os.fsdecode(dest))
                wake.set()

        self._observer: Any = InotifyObserver()
        handler = _Handler()
        for directory, recursive in source.watch_dirs():
            if os.path.isdir(directory):
                self._observer.schedule(handler, directory, recursive=recursive)
        self._observer.daemon = True
        self._observer.start()
        notify("")  # tells the source that changes will be reported from now on

    def wake(self) -> None:
        """End the current :meth:`wait` now (a stop request, a signal)."""
        self._wake.set()

    def wait(self, timeout: float) -> None:
        """Block until something changed or ``timeout`` seconds passed."""
        self._wake.wait(timeout)
        self._wake.clear()

    def close(self) -> None:
        """Stop the observer thread and release its watches."""
        self._observer.stop()
        self._observer.join(timeout=5)


def start_watcher(source: object) -> ChangeWatcher | None:
    """A watcher for ``source`` when it can be watched and inotify works here, else ``None``
    (the loop then polls)."""
    if not hasattr(source, "watch_dirs") or not hasattr(source, "notify"):
        return None
    try:
        return ChangeWatcher(source)
    except (OSError, ImportError):
        return None  # no inotify (another OS, watch limit reached): polling still works
