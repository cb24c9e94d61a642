"""What a client tells the world: events (for programs and tests) and progress (for people).

Every noteworthy moment is an event: a name plus fields. The reporter writes
each as one JSON line to an events file if asked, and prints a readable line
unless quiet. Long catch-ups get a progress bar.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

# events a person watching a client wants to see even when nothing goes wrong
_SHOWN = {
    "joined",
    "resumed",
    "caught_up",
    "round",
    "checkpoint",
    "stopped",
    "reconnecting",
    "refused",
    "digest_mismatch",
    "resync",
    "error",
    "warning",
}
PROGRESS_MIN_TOTAL = 64  # replays below this finish too fast for a bar


class Reporter:
    def __init__(self, quiet: bool = False, events_path: str | Path | None = None, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self._stream = stream or sys.stderr
        self._events: TextIO | None = open(events_path, "a", encoding="utf-8", buffering=1) if events_path else None
        # Events come from the main thread and from the thread that relays stop signals. Never from a
        # signal handler: one that wrote here mid-write would re-enter the buffered file.
        self._lock = threading.Lock()
        self._bar = None

    def event(self, name: str, /, **fields: Any) -> None:
        record = {"t": round(time.time(), 3), **fields, "event": name}
        with self._lock:
            if self._events:
                self._events.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            if not self.quiet and name in _SHOWN:
                self._stream.write(self._format(name, fields) + "\n")
                self._stream.flush()
            elif self.quiet and name in ("error", "refused", "digest_mismatch"):
                self._stream.write(self._format(name, fields) + "\n")
                self._stream.flush()

    @staticmethod
    def _format(name: str, f: dict[str, Any]) -> str:
        stamp = time.strftime("%H:%M:%S")
        if name == "round":
            loss = f.get("loss")
            loss_s = f"{loss:.4f}" if isinstance(loss, float) else "-"
            digest = f.get("digest")
            return (
                f"{stamp} round {f['round']:>6}  loss {loss_s:>8}  sent {_size(f.get('bytes_sent', 0))}  "
                f"received {_size(f.get('bytes_received', 0))}" + (f"  digest {digest[:12]}" if digest else "")
            )
        if name in ("refused", "digest_mismatch", "error"):
            return f"{stamp} !! {name.upper()}: " + " ".join(f"{k}={v}" for k, v in f.items())
        return f"{stamp} {name}: " + " ".join(f"{k}={v}" for k, v in f.items())

    def progress(self, done: int, total: int, what: str) -> None:
        """A catch-up bar for people; nothing in quiet mode or for short replays."""
        if self.quiet or total < PROGRESS_MIN_TOTAL:
            return
        from tqdm import tqdm

        with self._lock:
            if self._bar is None:
                self._bar = tqdm(total=total, desc=what, unit="replay", file=self._stream, leave=True)
            self._bar.n = done
            self._bar.refresh()
            if done >= total:
                self._bar.close()
                self._bar = None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._events:
            self._events.close()
            self._events = None


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """The events a client wrote, for tests and tools; a line cut short by a kill is skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
