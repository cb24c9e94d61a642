"""Local checkpoints: the fixed-point state at a round, so a restart replays only
the rounds it missed.

One file per checkpoint, ``<cache>/<task>/round-<round>.safetensors``, written to
a temporary name and renamed into place (a crash never leaves a half file
under a checkpoint's name). The newest ``keep`` are kept. A checkpoint is
used only after its state's digest has been recomputed and matches the digest
recorded with it, and its genesis matches the task's.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from seedfed.client.replica import Replica
from seedfed.shared.taskspec import TaskSpec

log = logging.getLogger("seedfed.client")

FORMAT = "seedfed-checkpoint/v1"
_NAME = re.compile(r"^round-(\d{12})\.safetensors$")


class CheckpointStore:
    def __init__(self, cache_dir: str | Path, spec: TaskSpec, keep: int = 2) -> None:
        self.spec = spec
        self.dir = Path(cache_dir) / spec.task_id
        self.keep = max(keep, 1)

    def path_for(self, round_no: int) -> Path:
        return self.dir / f"round-{round_no:012d}.safetensors"

    def rounds(self) -> list[int]:
        """Rounds with a checkpoint file, newest first."""
        if not self.dir.is_dir():
            return []
        found = [int(m.group(1)) for p in self.dir.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found, reverse=True)

    def save(self, replica: Replica, digest: str | None = None) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path_for(replica.round)
        tmp = self.dir / f".tmp-{os.getpid()}-round-{replica.round:012d}.safetensors"
        meta = {
            "format": FORMAT,
            "task_id": self.spec.task_id,
            "genesis_hash": self.spec.genesis_hash().hex(),
            "round": str(replica.round),
            "head_hash": replica.head_hash.hex(),
            "digest": digest or replica.digest(),
        }
        try:
            replica.state.save(str(tmp), meta)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.dir)
        self.prune()
        return final

    def prune(self) -> None:
        for r in self.rounds()[self.keep :]:
            self.path_for(r).unlink(missing_ok=True)

    def discard_after(self, round_no: int) -> None:
        """Forget checkpoints newer than ``round_no`` (their history is in doubt)."""
        for r in self.rounds():
            if r > round_no:
                self.path_for(r).unlink(missing_ok=True)

    def load(self, round_no: int, device="cpu") -> Replica:
        """The checkpoint of ``round_no``, verified; raises CheckpointError."""
        from seedfed.client.engine.state import FixedPointState

        path = self.path_for(round_no)
        try:
            state, meta = FixedPointState.load(str(path), device)
        except Exception as exc:  # a truncated or foreign file: any reader error means unusable
            raise CheckpointError(f"{path}: unreadable checkpoint: {exc}") from None
        want = {
            "format": FORMAT,
            "task_id": self.spec.task_id,
            "genesis_hash": self.spec.genesis_hash().hex(),
            "round": str(round_no),
        }
        for key, value in want.items():
            if meta.get(key) != value:
                raise CheckpointError(f"{path}: {key} is {meta.get(key)!r}, expected {value!r}")
        if state.unit_log2 != self.spec.unit_log2 or state.task_seed != self.spec.task_seed:
            raise CheckpointError(f"{path}: fixed-point unit or task seed differs from the task's")
        if state.manifest.digest() != self.spec.manifest_digest:
            raise CheckpointError(f"{path}: parameter manifest differs from the task's")
        digest = state.digest()
        if digest != meta.get("digest"):
            raise CheckpointError(
                f"{path}: state digest {digest[:16]}... does not match the recorded {str(meta.get('digest'))[:16]}..."
            )
        try:
            head_hash = bytes.fromhex(meta["head_hash"])
        except (KeyError, ValueError):
            raise CheckpointError(f"{path}: bad head hash") from None
        return Replica(self.spec, state, round_no, head_hash)

    def newest(self, device="cpu", max_round: int | None = None) -> Replica | None:
        """The newest checkpoint that verifies (at or below ``max_round``); bad ones are set aside."""
        for r in self.rounds():
            if max_round is not None and r > max_round:
                continue
            try:
                return self.load(r, device)
            except CheckpointError as exc:
                log.warning("ignoring checkpoint: %s", exc)
                path = self.path_for(r)
                path.rename(path.with_suffix(".bad"))
        return None


class CheckpointError(ValueError):
    pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
