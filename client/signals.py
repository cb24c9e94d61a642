"""SIGINT and SIGTERM for the client: the handler does nothing, a thread acts.

A Python signal handler runs on the main thread between any two bytecodes:
inside a write to the events file (the buffered writer then raises
"reentrant call"), or while a lock is held that it would wait for forever.
So the handler touches nothing. The interpreter's C-level handler writes the
signal number to a wakeup pipe, and a watcher thread reads it and tells the
daemon, as an ordinary thread that may write, lock and wait.

Signals that arrive before the daemon exists (start-up loads torch and the
model for seconds) are kept and delivered when it does.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore(signum, frame) -> None:
    """Replaces the default action (death, KeyboardInterrupt); the wakeup pipe carries the signal."""


class StopSignals:
    """Installs on creation (main thread only); ``close`` restores what the process had."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self._signals = frozenset(int(s) for s in signals)
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # the C handler must never block
        self._lock = threading.Lock()
        self._early: list[str] = []
        self._target: Callable[[str], None] | None = None
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous = {s: signal.signal(s, _ignore) for s in signals}
        self._thread = threading.Thread(target=self._watch, name="seedfed-signals", daemon=True)
        self._thread.start()

    def deliver_to(self, target: Callable[[str], None]) -> None:
        """From now on call ``target(signal_name)`` for each stop signal, first for those already received."""
        with self._lock:
            self._target = target
            early, self._early = self._early, []
        for name in early:
            target(name)

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return
            if not data:  # close() closed the write end
                return
            for signum in data:
                if signum not in self._signals:
                    continue
                name = signal.Signals(signum).name
                with self._lock:
                    target = self._target
                    if target is None:
                        self._early.append(name)
                if target is not None:
                    target(name)

    def close(self) -> None:
        if self._write < 0:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        os.close(self._write)
        self._write = -1
        self._thread.join(timeout=5)
        os.close(self._read)

    def __enter__(self) -> StopSignals:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
