"""Stop at a batch boundary, not half-way through an update: SIGINT and SIGTERM during ``fit``."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class StopRequested(Exception):
    """A signal asked training to stop; raised at a batch boundary, where the weights are consistent."""


class StopSignals:
    """Turns SIGINT (Ctrl-C, the notebook's stop button) and SIGTERM into "stop at the next batch".

    Installed for the duration of ``fit``, in the main thread only (Python delivers signals there).
    A second SIGINT raises KeyboardInterrupt at once, except inside :meth:`uninterruptible`.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self.in_update = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(signum)
                if previous is None:  # installed outside Python: we could not put it back
                    continue
                signal.signal(signum, self._handle)
                self._previous[signum] = previous
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    @contextlib.contextmanager
    def uninterruptible(self) -> Iterator[None]:
        """Within this block a second Ctrl-C does not raise: what it changes, changes together."""
        self.in_update = True
        try:
            yield
        finally:
            self.in_update = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum).name
        elif signum == signal.SIGINT and not self.in_update:
            raise KeyboardInterrupt


__all__ = ["StopRequested", "StopSignals"]
