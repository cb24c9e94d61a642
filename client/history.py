"""The edge side's one way into coordinator storage: tools that rebuild a
model (export, eval, simulate) read a task's history through here. The
daemon never does; it meets the coordinator only on the wire."""

from __future__ import annotations

from seedfed.server.db import DatabaseError
from seedfed.server.history import load_history

__all__ = ["DatabaseError", "load_history"]
