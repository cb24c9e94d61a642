"""A coordinator and clients as real local processes: what ``seedfed simulate``
runs, and what the end-to-end tests kill and restart.

Each process is the ordinary ``seedfed`` command line, so a simulation
exercises exactly what a deployment runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from seedfed.client.progress import read_events

_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def seedfed_command() -> list[str]:
    """The CLI of this very installation (works from a venv without activating it)."""
    return [sys.executable, "-c", "from seedfed.shared.cli import main; main()"]


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        if self.alive():
            self.popen.kill()
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=30)
        return self.popen.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _spawn(name: str, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(
        [*seedfed_command(), *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env
    )
    log.close()
    return ManagedProcess(name, popen, log_path)


@dataclass
class CoordinatorProcess(ManagedProcess):
    address: str = ""


def start_coordinator(
    db_url: str,
    log_path: Path,
    task_file: Path | None = None,
    listen: str = "127.0.0.1:0",
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
    transport: Sequence[str] = ("--insecure", "--no-auth"),
) -> CoordinatorProcess:
    """Start ``seedfed coordinator`` and wait until it says where it listens.
    ``transport`` defaults to plaintext without tokens: these processes talk over loopback only."""
    args = ["coordinator", "--db", db_url, "--listen", listen, *transport, *extra_args]
    if task_file is not None:
        args += ["--task", str(task_file)]
    offset = log_path.stat().st_size if log_path.exists() else 0
    proc = _spawn("coordinator", args, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = proc.log_text()[offset:]
        match = _LISTENING.search(text)
        if match:
            return CoordinatorProcess(proc.name, proc.popen, proc.log_path, f"{match.group(1)}:{match.group(2)}")
        if not proc.alive():
            raise RuntimeError(f"coordinator exited with {proc.popen.returncode}:\n{text[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"coordinator did not start within {timeout:.0f} s:\n{proc.log_text()[offset:][-2000:]}")


@dataclass
class ClientProcess(ManagedProcess):
    events_path: Path = field(default_factory=Path)

    def events(self) -> list[dict]:
        """The client's event log (JSON lines), tolerant of a line cut by a kill."""
        return read_events(self.events_path)


def start_client(
    name: str,
    coordinator: str,
    task_id: str,
    data: Path,
    cache: Path,
    log_dir: Path,
    model: str | None = None,
    extra_args: Sequence[str] = (),
    transport: Sequence[str] = ("--insecure",),
) -> ClientProcess:
    events = log_dir / f"{name}.events.jsonl"
    args = [
        "client",
        "--coordinator",
        coordinator,
        "--task",
        task_id,
        "--data",
        str(data),
        "--cache",
        str(cache),
        "--name",
        name,
        "--events",
        str(events),
        "--quiet",
        *transport,
        *extra_args,
    ]
    if model:
        args += ["--model", model]
    proc = _spawn(name, args, log_dir / f"{name}.log", env={"OMP_NUM_THREADS": "1"})
    return ClientProcess(proc.name, proc.popen, proc.log_path, events)


def coordinator_status(address: str, task_id: str, timeout: float = 5.0, metadata: Sequence[tuple[str, str]] = ()):
    """The Status RPC, or None while the coordinator is not answering."""
    import grpc

    from seedfed.v1 import coordinator_pb2 as pb
    from seedfed.v1 import coordinator_pb2_grpc as pbg

    with grpc.insecure_channel(address) as channel:
        try:
            return pbg.CoordinatorStub(channel).Status(
                pb.StatusRequest(task_id=task_id), timeout=timeout, metadata=tuple(metadata)
            )
        except grpc.RpcError:
            return None


def wait_for_round(address: str, task_id: str, round_no: int, timeout: float, poll: float = 0.5, on_status=None) -> int:
    """Block until the ledger head reaches ``round_no``; returns the head."""
    deadline = time.monotonic() + timeout
    head = 0
    while time.monotonic() < deadline:
        status = coordinator_status(address, task_id)
        if status is not None:
            head = status.head_round
            if on_status:
                on_status(status)
            if head >= round_no:
                return head
        time.sleep(poll)
    raise TimeoutError(f"task {task_id} reached round {head}, not {round_no}, within {timeout:.0f} s")


class Watchdog:
    """Stops the given processes if the caller hangs (a bounded test or simulation)."""

    def __init__(self, seconds: float, processes: list[ManagedProcess]) -> None:
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._processes = processes
        self.fired = False

    def _fire(self) -> None:
        self.fired = True
        for p in self._processes:
            p.kill()

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
