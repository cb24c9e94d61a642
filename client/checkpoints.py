"""Local checkpoints: the fixed-point state at a round, so a restart replays only
the rounds it missed.

A task's checkpoint set in ``<cache>/<task>/`` is one full checkpoint and a few
small deltas after it:

- ``round-<r>.safetensors``: the int32 master at round r (4 bytes per
  parameter), with the task, round, head hash and state digest in its header.
- ``round-<r>.delta.json``: the ledger steps applied since the full
  checkpoint, folded per seed (seed -> summed integer step), with the round,
  head hash and state digest they lead to: a few KB.

Restoring is the full checkpoint plus one replay per seed of a delta (at most
K with a finite pool). A delta is written while its replays cost less than
writing the full state again (``max_replays``); past that, or when the steps
since the full checkpoint are not known (the daemon reports the rounds it
applies through ``journal``), the checkpoint is full, and the older full
checkpoint and its deltas are removed once the new one is in place.

Crash safety: every file is written under a temporary name, fsynced and
renamed into place, and an old file is removed only after its successor is in
place, so a kill at any instant leaves the previous set or the new one (plus a
temporary file, removed later). Verification: a full checkpoint is hashed from
the file before it touches a state; a delta must pass its own checksum, name
the full checkpoint's digest, and, once replayed, give the digest recorded
with it. Anything that fails is renamed to ``*.bad`` (removed at the next full
checkpoint) and the next older state is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from seedfed.client.replica import Replica
from seedfed.shared.ledger import LedgerError, RoundRecord, verify_record
from seedfed.shared.steps import fold
from seedfed.shared.taskspec import TaskSpec

log = logging.getLogger("seedfed.client")

FORMAT = "seedfed-checkpoint/v2"
DELTA_FORMAT = "seedfed-checkpoint-delta/v1"
# One replay (a pass of the generator over W) costs about 1/30 of writing W to disk
# and hashing it, measured on CPU (docs/client.md); a GPU replays faster still.
REPLAYS_PER_FULL = 32
KEEP_DELTAS = 2  # a damaged newest delta falls back to the one before
_FULL = re.compile(r"^round-(\d{12})\.safetensors$")
_DELTA = re.compile(r"^round-(\d{12})\.delta\.json$")
_TMP = re.compile(r"^\.tmp-(\d+)-")
_IO_BYTES = 1 << 26  # 64 MiB per read or write: bounded scratch whatever the model size
_MAX_HEADER = 1 << 26
_PENDING = "digest-pending-" + "x" * 49  # as long as a hex digest, and never one


class CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class Saved:
    """What one save wrote."""

    kind: str  # "full" or "delta"
    round: int
    path: Path
    bytes: int
    seconds: float


@dataclass
class _Journal:
    """The folded steps from the full checkpoint at ``full_round`` to ``round``."""

    full_round: int
    full_digest: str
    round: int
    head_hash: bytes
    entries: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Full:
    path: Path
    meta: dict[str, str]
    data_start: int
    numel: int


@dataclass(frozen=True)
class _Delta:
    path: Path
    round: int
    head_hash: bytes
    digest: str
    full_round: int
    full_digest: str
    entries: dict[int, int]


class CheckpointStore:
    def __init__(
        self, cache_dir: str | Path, spec: TaskSpec, keep_deltas: int = KEEP_DELTAS, max_replays: int = REPLAYS_PER_FULL
    ) -> None:
        self.spec = spec
        self.dir = Path(cache_dir) / spec.task_id
        self.keep_deltas = max(int(keep_deltas), 1)
        self.max_replays = max(int(max_replays), 0)
        self.last_saved: Saved | None = None
        self.restore_seconds: float | None = None  # of the last restore()
        self._journal: _Journal | None = None

    # -- names ----------------------------------------------------------------------------
    def path_for(self, round_no: int) -> Path:
        """The full checkpoint's file of ``round_no``."""
        return self.dir / f"round-{round_no:012d}.safetensors"

    def delta_path_for(self, round_no: int) -> Path:
        return self.dir / f"round-{round_no:012d}.delta.json"

    def _list(self, pattern: re.Pattern) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted((int(m.group(1)) for p in self.dir.iterdir() if (m := pattern.match(p.name))), reverse=True)

    def full_rounds(self) -> list[int]:
        return self._list(_FULL)

    def delta_rounds(self) -> list[int]:
        return self._list(_DELTA)

    def rounds(self) -> list[int]:
        """Rounds with a checkpoint (full or delta), newest first."""
        return sorted(set(self.full_rounds()) | set(self.delta_rounds()), reverse=True)

    # -- following the replica ---------------------------------------------------------------
    def journal(self, records: list[RoundRecord] | tuple[RoundRecord, ...]) -> None:
        """Note rounds the replica has just applied, so the next checkpoint can be a delta.
        Rounds that do not extend the journal's chain end it: the next checkpoint is full."""
        j = self._journal
        if j is None:
            return
        try:
            for record in records:
                verify_record(j.head_hash, record, j.round + 1)
                j.entries = fold([j.entries, record.entries])
                j.round, j.head_hash = record.round, record.hash
        except LedgerError:
            self._journal = None

    # -- saving ------------------------------------------------------------------------------
    def save(self, replica: Replica, digest: str | None = None) -> Path:
        """Checkpoint ``replica``: a delta when the journal leads from the full checkpoint to
        its position in at most ``max_replays`` replays, else a full checkpoint."""
        self.dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        j = self._journal
        follows = j is not None and j.round == replica.round and j.head_hash == replica.head_hash
        if follows and j.round == j.full_round and self.path_for(j.round).exists():
            path, kind = self.path_for(j.round), "full"  # nothing new since the full checkpoint
        elif follows and (len(j.entries) <= self.max_replays or not self._room_for_full(replica)):
            path, kind = self._write_delta(replica, digest or replica.digest()), "delta"
        else:
            self._check_room(replica)
            path, kind = self._write_full(replica, digest), "full"
        self.last_saved = Saved(kind, replica.round, path, path.stat().st_size, time.perf_counter() - start)
        self.prune()
        return path

    def _full_bytes(self, replica: Replica) -> int:
        return 4 * replica.state.manifest.total + _MAX_HEADER // 64

    def _room_for_full(self, replica: Replica) -> bool:
        return shutil.disk_usage(self.dir).free >= self._full_bytes(replica)

    def _check_room(self, replica: Replica) -> None:
        need, free = self._full_bytes(replica), shutil.disk_usage(self.dir).free
        if free < need:
            raise CheckpointError(
                f"a full checkpoint needs {need / 2**30:.2f} GiB free in {self.dir}, only {free / 2**30:.2f} GiB are"
            )

    def _header_meta(self, replica: Replica, digest: str) -> dict[str, str]:
        state = replica.state
        return {
            "format": FORMAT,
            "task_id": self.spec.task_id,
            "genesis_hash": self.spec.genesis_hash().hex(),
            "round": str(replica.round),
            "head_hash": replica.head_hash.hex(),
            "digest": digest,
            "manifest": state.manifest.to_json(),
            "unit_log2": str(state.unit_log2),
            "task_seed": str(state.task_seed),
        }

    def _write_full(self, replica: Replica, digest: str | None) -> Path:
        """A safetensors file written from the master in bounded pieces (no copy of W);
        without a known digest, W is hashed on the way and the digest patched into the header."""
        state = replica.state
        numel = state.manifest.total
        meta = self._header_meta(replica, digest or _PENDING)
        header = json.dumps(
            {"__metadata__": meta, "W": {"dtype": "I32", "shape": [numel], "data_offsets": [0, 4 * numel]}},
            separators=(",", ":"),
        ).encode()
        header += b" " * (-len(header) % 8)
        hasher = None if digest else hashlib.sha256(state.manifest.canonical_bytes())
        final = self.path_for(replica.round)
        tmp = self.dir / f".tmp-{os.getpid()}-{final.name}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(len(header).to_bytes(8, "little"))
                fh.write(header)
                step = _IO_BYTES // 4
                for a in range(0, numel, step):
                    part = state.flat[a : a + step].detach().cpu().numpy()
                    if sys.byteorder != "little":
                        part = part.astype("<i4")
                    view = memoryview(part).cast("B")
                    fh.write(view)
                    if hasher is not None:
                        hasher.update(view)
                if hasher is not None:
                    fh.seek(8 + header.index(_PENDING.encode()))
                    fh.write(hasher.hexdigest().encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.dir)
        written = hasher.hexdigest() if hasher is not None else digest
        self._journal = _Journal(replica.round, written, replica.round, replica.head_hash)
        return final

    def _write_delta(self, replica: Replica, digest: str) -> Path:
        j = self._journal
        body = {
            "format": DELTA_FORMAT,
            "task_id": self.spec.task_id,
            "genesis_hash": self.spec.genesis_hash().hex(),
            "round": replica.round,
            "head_hash": replica.head_hash.hex(),
            "digest": digest,
            "full_round": j.full_round,
            "full_digest": j.full_digest,
            "entries": sorted([s, q] for s, q in j.entries.items()),
        }
        text = json.dumps({"check": _checksum(body), "delta": body}, separators=(",", ":")) + "\n"
        final = self.delta_path_for(replica.round)
        _write_atomic(final, text.encode())
        _fsync_dir(self.dir)
        return final

    # -- pruning -----------------------------------------------------------------------------
    def prune(self) -> None:
        """Keep the newest full checkpoint and its newest ``keep_deltas`` deltas; remove the
        rest, set-aside files once a newer full checkpoint exists, and temporaries of dead processes."""
        fulls = self.full_rounds()
        if not fulls:
            return
        newest = fulls[0]
        newest_digest = self._journal.full_digest if self._journal and self._journal.full_round == newest else None
        kept = 0
        for r in self.delta_rounds():
            path = self.delta_path_for(r)
            try:
                d = self._read_delta(path)
                ok = d.full_round == newest and r > newest and (newest_digest is None or d.full_digest == newest_digest)
            except CheckpointError:
                ok = False
            if ok and kept < self.keep_deltas:
                kept += 1
            else:
                path.unlink(missing_ok=True)
        for r in fulls[1:]:
            self.path_for(r).unlink(missing_ok=True)
        for p in self.dir.iterdir():
            if p.name.endswith(".bad") and p.name.startswith("round-"):
                bad_round = int(p.name[6:18]) if p.name[6:18].isdigit() else -1
                if bad_round <= newest:
                    p.unlink(missing_ok=True)
            elif (m := _TMP.match(p.name)) and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                p.unlink(missing_ok=True)

    def discard_after(self, round_no: int) -> None:
        """Forget checkpoints newer than ``round_no`` (their history is in doubt)."""
        for r in self.full_rounds():
            if r > round_no:
                self.path_for(r).unlink(missing_ok=True)
        for r in self.delta_rounds():
            if r > round_no:
                self.delta_path_for(r).unlink(missing_ok=True)
        if self._journal is not None and self._journal.round > round_no:
            self._journal = None

    # -- reading -----------------------------------------------------------------------------
    def _read_full_header(self, path: Path) -> _Full:
        try:
            with open(path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if not 2 <= n <= _MAX_HEADER:
                    raise CheckpointError(f"{path}: not a checkpoint (header length {n})")
                header = json.loads(fh.read(n))
            meta = header["__metadata__"]
            w = header["W"]
            numel = int(w["shape"][0])
            if w["dtype"] != "I32" or len(w["shape"]) != 1 or w["data_offsets"] != [0, 4 * numel]:
                raise CheckpointError(f"{path}: W is not a flat int32 tensor")
        except CheckpointError:
            raise
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint: {exc}") from None
        size = path.stat().st_size
        if size != 8 + n + 4 * numel:
            raise CheckpointError(f"{path}: {size} bytes, expected {8 + n + 4 * numel} (truncated or padded)")
        return _Full(path, {str(k): str(v) for k, v in meta.items()}, 8 + n, numel)

    def _check_full(self, full: _Full, round_no: int, manifest) -> None:
        """The header names this task, round and manifest; the bytes hash to the recorded digest."""
        meta = full.meta
        want = {
            "format": FORMAT,
            "task_id": self.spec.task_id,
            "genesis_hash": self.spec.genesis_hash().hex(),
            "round": str(round_no),
            "unit_log2": str(self.spec.unit_log2),
            "task_seed": str(self.spec.task_seed),
        }
        for key, value in want.items():
            if meta.get(key) != value:
                raise CheckpointError(f"{full.path}: {key} is {meta.get(key)!r}, expected {value!r}")
        if manifest.digest() != self.spec.manifest_digest or full.numel != manifest.total:
            raise CheckpointError(f"{full.path}: parameter manifest differs from the task's")
        _hex(full.path, meta.get("head_hash"), "head hash")
        digest = _file_digest(full, manifest)
        if digest != meta.get("digest"):
            raise CheckpointError(
                f"{full.path}: state digest {digest[:16]}... does not match the recorded {str(meta.get('digest'))[:16]}..."
            )

    def _read_delta(self, path: Path) -> _Delta:
        try:
            doc = json.loads(path.read_text())
            body = doc["delta"]
            if doc.get("check") != _checksum(body):
                raise CheckpointError(f"{path}: checksum does not match (corrupt file)")
            want = {"format": DELTA_FORMAT, "task_id": self.spec.task_id, "genesis_hash": self.spec.genesis_hash().hex()}
            for key, value in want.items():
                if body.get(key) != value:
                    raise CheckpointError(f"{path}: {key} is {body.get(key)!r}, expected {value!r}")
            entries = {int(s): int(q) for s, q in body["entries"]}
            return _Delta(
                path,
                int(body["round"]),
                _hex(path, body["head_hash"], "head hash"),
                str(body["digest"]),
                int(body["full_round"]),
                str(body["full_digest"]),
                entries,
            )
        except CheckpointError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable delta checkpoint: {exc}") from None

    def _set_aside(self, path: Path, exc: Exception) -> None:
        log.warning("ignoring checkpoint: %s", exc)
        if path.exists():
            path.rename(path.with_name(path.name + ".bad"))

    # -- restoring ---------------------------------------------------------------------------
    def restore(self, replica: Replica, max_round: int | None = None) -> bool:
        """Move ``replica`` in place to the newest checkpoint that verifies (at or below
        ``max_round``), with no second copy of the state. False, with the replica untouched,
        when there is none."""
        start = time.perf_counter()
        try:
            return self._restore(replica, max_round, only=None)
        finally:
            self.restore_seconds = time.perf_counter() - start

    def load(self, round_no: int, device="cpu") -> Replica:
        """The checkpoint of ``round_no`` as a new replica, verified; raises CheckpointError."""
        replica = self._blank(round_no, device)
        if not self._restore(replica, round_no, only=round_no, strict=True):
            raise CheckpointError(f"no checkpoint of round {round_no} in {self.dir}")
        return replica

    def newest(self, device="cpu", max_round: int | None = None) -> Replica | None:
        """The newest checkpoint that verifies (at or below ``max_round``) as a new replica; bad ones are set aside."""
        for r in self.rounds():
            if max_round is not None and r > max_round:
                continue
            try:
                replica = self._blank(r, device)
            except CheckpointError as exc:
                self._set_aside(self._file_of(r), exc)
                continue
            if self._restore(replica, max_round, only=None):
                return replica
            return None
        return None

    def _file_of(self, round_no: int) -> Path:
        full = self.path_for(round_no)
        return full if full.exists() else self.delta_path_for(round_no)

    def _blank(self, round_no: int, device) -> Replica:
        """A replica whose state has the shape a checkpoint at ``round_no`` needs (contents unset)."""
        import torch

        from seedfed.client.engine.manifest import Manifest
        from seedfed.client.engine.state import FixedPointState

        full_round = round_no
        if not self.path_for(round_no).exists() and self.delta_path_for(round_no).exists():
            full_round = self._read_delta(self.delta_path_for(round_no)).full_round
        full = self._read_full_header(self.path_for(full_round))
        try:
            manifest = Manifest.from_json(full.meta["manifest"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{full.path}: bad manifest ({exc})") from None
        if manifest.digest() != self.spec.manifest_digest:
            raise CheckpointError(f"{full.path}: parameter manifest differs from the task's")
        flat = torch.empty(manifest.total, dtype=torch.int32, device=device)
        return Replica(self.spec, FixedPointState(flat, manifest, self.spec.unit_log2, self.spec.task_seed, bound=0))

    def _restore(self, replica: Replica, max_round: int | None, only: int | None, strict: bool = False) -> bool:
        state = replica.state
        loaded: _Full | None = None  # the full checkpoint the state now holds, verified
        for r in self.rounds():
            if (max_round is not None and r > max_round) or (only is not None and r != only):
                continue
            delta = None
            if not (self.path_for(r).exists() or self.delta_path_for(r).exists()):
                continue  # set aside earlier in this pass
            try:
                if self.path_for(r).exists():
                    full_round = r
                else:
                    delta = self._read_delta(self.delta_path_for(r))
                    if delta.round != r:
                        raise CheckpointError(f"{delta.path}: names round {delta.round}")
                    full_round = delta.full_round
                full = self._read_full_header(self.path_for(full_round))
                if delta is not None and full.meta.get("digest") != delta.full_digest:
                    raise CheckpointError(f"{delta.path}: its full checkpoint (round {full_round}) has another digest")
            except (CheckpointError, FileNotFoundError) as exc:
                if strict:
                    raise CheckpointError(str(exc)) from None
                self._set_aside(delta.path if delta else self._file_of(r), exc)
                continue
            if loaded is None or loaded.path != full.path:
                try:
                    self._check_full(full, full_round, state.manifest)
                except CheckpointError as exc:
                    if strict:
                        raise
                    self._set_aside(full.path, exc)
                    if delta is not None:
                        self._set_aside(delta.path, CheckpointError(f"{delta.path}: its full checkpoint is unusable"))
                    continue
                _read_into(full, state)
                loaded = full
                replica.round, replica.head_hash = full_round, bytes.fromhex(full.meta["head_hash"])
            if delta is not None:
                state.apply(delta.entries)
                digest = state.digest()
                if digest != delta.digest:
                    state.revert(delta.entries)  # exact: back to the verified full checkpoint
                    exc = CheckpointError(
                        f"{delta.path}: state digest {digest[:16]}... after replay does not match "
                        f"the recorded {delta.digest[:16]}..."
                    )
                    if strict:
                        raise exc
                    self._set_aside(delta.path, exc)
                    continue
                replica.round, replica.head_hash = delta.round, delta.head_hash
            self._journal = _Journal(
                full_round, full.meta["digest"], replica.round, replica.head_hash, dict(delta.entries) if delta else {}
            )
            return True
        if loaded is not None:  # every delta failed: the verified full checkpoint stands
            self._journal = _Journal(replica.round, loaded.meta["digest"], replica.round, replica.head_hash)
            return True
        self._journal = None  # the caller moves the replica elsewhere
        return False


def _checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _hex(path: Path, value, what: str) -> bytes:
    try:
        out = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: bad {what}") from None
    if len(out) != 32:
        raise CheckpointError(f"{path}: bad {what}")
    return out


def _chunks(full: _Full):
    """The file's W bytes in bounded pieces, read with plain reads (no mapping of the file)."""
    buf = bytearray(min(_IO_BYTES, 4 * full.numel) or 1)
    view = memoryview(buf)
    with open(full.path, "rb") as fh:
        fh.seek(full.data_start)
        left = 4 * full.numel
        while left:
            n = fh.readinto(view[: min(left, len(buf))])
            if not n:
                raise CheckpointError(f"{full.path}: truncated")
            left -= n
            yield view[:n]


def _file_digest(full: _Full, manifest) -> str:
    """The state digest of the file's W (FixedPointState.digest over the same bytes)."""
    h = hashlib.sha256(manifest.canonical_bytes())
    for piece in _chunks(full):
        h.update(piece)
    return h.hexdigest()


def _read_into(full: _Full, state) -> None:
    """Copy the file's W into the state's master through torch, so its version counter
    (which keys the digest cache and the overflow bound) sees the write."""
    import numpy as np
    import torch

    at = 0
    for piece in _chunks(full):
        values = torch.from_numpy(np.frombuffer(piece, dtype="<i4").astype("=i4", copy=False))
        state.flat[at : at + values.numel()].copy_(values)
        at += values.numel()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
