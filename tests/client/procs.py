"""Real processes for end-to-end client tests: a coordinator and client daemons,
started through the ``seedfed`` console entry point, talking over loopback."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from seedfed.client.progress import read_events

SEEDFED = [sys.executable, "-c", "from seedfed.shared.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # two cores shared by several processes
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Coordinator:
    def __init__(self, workdir: Path, task_file: Path, port: int | None = None, lease_seconds: float = 3.0) -> None:
        self.workdir = workdir
        self.task_file = task_file
        self.port = port or free_port()
        self.db = f"sqlite:///{workdir / 'coord.db'}"
        self.lease_seconds = lease_seconds
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Coordinator:
        self.starts += 1
        log = open(self.workdir / f"coordinator-{self.starts}.log", "w")
        self.proc = subprocess.Popen(
            SEEDFED
            + [
                "coordinator",
                "--task",
                str(self.task_file),
                "--db",
                self.db,
                "--listen",
                self.target,
                "--lease-seconds",
                str(self.lease_seconds),
                "--insecure",
                "--no-auth",
            ],  # loopback: plaintext without tokens, chosen explicitly
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=self.workdir,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.proc.returncode}: {self.log()}")
            if "listening on" in self.log():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"coordinator did not start: {self.log()}")

    def log(self) -> str:
        return (self.workdir / f"coordinator-{self.starts}.log").read_text()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Client:
    def __init__(
        self,
        workdir: Path,
        name: str,
        coordinator: Coordinator,
        task_id: str,
        data: Path,
        cache: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.workdir, self.name = workdir, name
        self.events_path = workdir / f"{name}.events.jsonl"
        self.log_path = workdir / f"{name}.log"
        self.cache = cache or workdir / f"{name}-cache"
        self.args = SEEDFED + [
            "client",
            "--coordinator",
            coordinator.target,
            "--task",
            task_id,
            "--data",
            str(data),
            "--device",
            "cpu",
            "--cache",
            str(self.cache),
            "--name",
            name,
            "--events",
            str(self.events_path),
            "--quiet",
            "--insecure",
            *extra,
        ]
        self.proc: subprocess.Popen | None = None

    def start(self) -> Client:
        self.proc = subprocess.Popen(
            self.args, stdout=open(self.log_path, "a"), stderr=subprocess.STDOUT, env=_env(), cwd=self.workdir
        )
        return self

    def events(self, name: str | None = None) -> list[dict]:
        return [e for e in read_events(self.events_path) if name is None or e["event"] == name]

    def digests(self) -> dict[int, str]:
        """round -> digest, from live rounds and catch-ups."""
        out = {e["round"]: e["digest"] for e in self.events("round") if e.get("digest")}
        out.update({e["last_round"]: e["digest"] for e in self.events("caught_up") if e.get("digest") and e["rounds"]})
        return out

    def head(self) -> int:
        heads = [e["round"] for e in self.events("round")] + [e["last_round"] for e in self.events("caught_up")]
        return max(heads, default=0)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"client {self.name} still running after {timeout}s; log:\n{self.log()[-3000:]}") from None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_until(predicate, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
