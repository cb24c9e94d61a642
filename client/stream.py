"""The Sync stream, read on a background thread into a queue.

Reading on a thread keeps the main thread free to probe while events keep
arriving, and lets it wait with a timeout, so a stop (SIGINT, SIGTERM) takes
effect promptly instead of after the next event.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

END = object()  # the stream closed without an error


class EventStream:
    def __init__(self, open_call: Callable[[], Any], on_bytes: Callable[[int], None] | None = None) -> None:
        """``open_call()`` starts the server-streaming call and returns its iterator (a grpc call)."""
        self._queue: queue.Queue = queue.Queue()
        self._call = open_call()
        self._on_bytes = on_bytes
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="seedfed-sync", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for event in self._call:
                if self._on_bytes:
                    self._on_bytes(event.ByteSize())
                self._queue.put(event)
            self._queue.put(END)
        except Exception as exc:  # grpc.RpcError, or a cancellation we asked for
            self._queue.put(exc)

    def get(self, timeout: float) -> Any:
        """The next event, END, an exception the stream ended with, or None on timeout."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            cancel = getattr(self._call, "cancel", None)
            if cancel:
                cancel()
            self._thread.join(timeout=5)
