"""Restartable handles on the coordinator and client processes that
``seedfed.client.simulate.processes`` starts, for the client end-to-end
tests: the same address and database across coordinator restarts, the same
cache and event log across client restarts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from seedfed.client.simulate.processes import ClientProcess, CoordinatorProcess, start_client, start_coordinator


class Coordinator:
    def __init__(self, workdir: Path, task_file: Path, lease_seconds: float = 3.0) -> None:
        self.workdir, self.task_file = workdir, task_file
        self.db = f"sqlite:///{workdir / 'coord.db'}"
        self.lease_seconds = lease_seconds
        self.address = "127.0.0.1:0"  # the first start picks a port; restarts keep it
        self.proc: CoordinatorProcess | None = None

    def start(self) -> Coordinator:
        self.proc = start_coordinator(
            self.db,
            self.workdir / "coordinator.log",
            task_file=self.task_file,
            listen=self.address,
            extra_args=("--lease-seconds", str(self.lease_seconds)),
        )
        self.address = self.proc.address
        return self

    def kill(self) -> None:
        self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=15)


class Client:
    def __init__(
        self,
        workdir: Path,
        name: str,
        coordinator: Coordinator,
        task_id: str,
        data: Path,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.workdir, self.name, self.coordinator = workdir, name, coordinator
        self.task_id, self.data, self.extra = task_id, data, extra
        self.proc: ClientProcess | None = None

    def start(self) -> Client:
        self.proc = start_client(
            self.name,
            self.coordinator.address,
            self.task_id,
            self.data,
            self.workdir / f"{self.name}-cache",
            self.workdir,
            extra_args=("--device", "cpu", *self.extra),
        )
        return self

    def events(self, name: str | None = None) -> list[dict]:
        return [e for e in self.proc.events() if name is None or e["event"] == name]

    def digests(self) -> dict[int, str]:
        """round -> digest, from live rounds and catch-ups."""
        out = {e["round"]: e["digest"] for e in self.events("round") if e.get("digest")}
        out.update({e["last_round"]: e["digest"] for e in self.events("caught_up") if e.get("digest") and e["rounds"]})
        return out

    def head(self) -> int:
        heads = [e["round"] for e in self.events("round")] + [e["last_round"] for e in self.events("caught_up")]
        return max(heads, default=0)

    def log(self) -> str:
        return self.proc.log_text()

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"client {self.name} still running after {timeout}s; log:\n{self.log()[-3000:]}") from None

    def signal(self, sig: int) -> None:
        self.proc.popen.send_signal(sig)

    def kill(self) -> None:
        self.proc.kill()
