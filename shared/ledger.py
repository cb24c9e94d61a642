"""Committed rounds, their canonical bytes, the hash chain and the portable
ledger file.

hash(round r) = sha256(hash(round r-1) || payload(r)), with hash(round 0) the
genesis hash, so a single hash names a whole history, and a client can check
every record it is sent.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from seedfed.shared.taskspec import TaskSpec, TaskSpecError

PAYLOAD_MAGIC = b"seedfed-round-v1\0"
LEDGER_FORMAT = "seedfed-ledger/v1"


class LedgerError(ValueError):
    """A record or file that breaks the chain or the format."""


@dataclass(frozen=True)
class RoundRecord:
    round: int
    seeds: tuple[int, ...]  # strictly increasing seed indices
    steps: tuple[int, ...]  # integer step per seed, non-zero
    hash: bytes

    @property
    def entries(self) -> dict[int, int]:
        return dict(zip(self.seeds, self.steps))


def round_payload(round_no: int, entries: Mapping[int, int]) -> bytes:
    seeds = sorted(entries)
    parts = [PAYLOAD_MAGIC, struct.pack(">QI", round_no, len(seeds))]
    parts.extend(struct.pack(">Iq", s, entries[s]) for s in seeds)
    return b"".join(parts)


def chain_hash(previous: bytes, round_no: int, entries: Mapping[int, int]) -> bytes:
    return hashlib.sha256(previous + round_payload(round_no, entries)).digest()


def make_record(previous: bytes, round_no: int, entries: Mapping[int, int]) -> RoundRecord:
    check_entries(entries)
    seeds = tuple(sorted(entries))
    return RoundRecord(round_no, seeds, tuple(entries[s] for s in seeds), chain_hash(previous, round_no, entries))


def record_bytes(rec: RoundRecord) -> int:
    """A committed round's size on the canonical record: its payload and its hash."""
    return len(round_payload(rec.round, rec.entries)) + len(rec.hash)


def check_entries(entries: Mapping[int, int]) -> None:
    for s, q in entries.items():
        if not (0 <= s < 2**32):
            raise LedgerError(f"seed index {s} is not a 32-bit unsigned integer")
        if not (-(2**63) <= q < 2**63) or q == 0:
            raise LedgerError(f"step {q} for seed {s} is zero or out of range")


def verify_record(previous: bytes, record: RoundRecord, expected_round: int | None = None) -> None:
    """Raise LedgerError unless ``record`` extends the chain ending in ``previous``."""
    if expected_round is not None and record.round != expected_round:
        raise LedgerError(f"expected round {expected_round}, got round {record.round}")
    if len(record.seeds) != len(record.steps):
        raise LedgerError(f"round {record.round}: {len(record.seeds)} seeds but {len(record.steps)} steps")
    if any(b <= a for a, b in zip(record.seeds, record.seeds[1:])):
        raise LedgerError(f"round {record.round}: seed indices are not strictly increasing")
    check_entries(record.entries)
    want = chain_hash(previous, record.round, record.entries)
    if want != record.hash:
        raise LedgerError(
            f"round {record.round}: hash {record.hash.hex()[:16]}... does not extend the chain (expected {want.hex()[:16]}...)"
        )


def verify_chain(
    genesis_hash: bytes, records: Iterable[RoundRecord], first_round: int = 1, previous: bytes | None = None
) -> bytes:
    """Verify consecutive records; returns the head hash."""
    head = genesis_hash if previous is None else previous
    expected = first_round
    for rec in records:
        verify_record(head, rec, expected)
        head = rec.hash
        expected += 1
    return head


# -- portable ledger file (JSON lines: a header with the genesis, then one round per line)


def write_ledger_file(path: str | Path, spec: TaskSpec, records: Iterable[RoundRecord]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        header = {"format": LEDGER_FORMAT, "genesis": spec.to_dict(), "genesis_hash": spec.genesis_hash().hex()}
        fh.write(json.dumps(header, sort_keys=True) + "\n")
        for rec in records:
            fh.write(
                json.dumps({"round": rec.round, "seeds": list(rec.seeds), "steps": list(rec.steps), "hash": rec.hash.hex()})
                + "\n"
            )
            n += 1
    return n


def read_ledger_file(path: str | Path) -> tuple[TaskSpec, list[RoundRecord]]:
    """Read and verify a ledger file; raises LedgerError naming the bad line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LedgerError(f"cannot read ledger file {path}: {exc.strerror}") from None
    if not lines:
        raise LedgerError(f"{path}: empty ledger file")
    try:
        header = json.loads(lines[0])
        if header.get("format") != LEDGER_FORMAT:
            raise LedgerError(f"{path}: not a {LEDGER_FORMAT} file")
        spec = TaskSpec.from_dict(header["genesis"])
    except (ValueError, KeyError, TypeError, TaskSpecError) as exc:
        raise LedgerError(f"{path}:1: bad header: {exc}") from None
    if header.get("genesis_hash") != spec.genesis_hash().hex():
        raise LedgerError(f"{path}:1: genesis hash does not match the genesis")
    records = list(_parse_rounds(path, lines[1:]))
    verify_chain(spec.genesis_hash(), records)
    return spec, records


def _parse_rounds(path: str | Path, lines: list[str]) -> Iterator[RoundRecord]:
    for i, line in enumerate(lines, start=2):
        try:
            row = json.loads(line)
            yield RoundRecord(
                int(row["round"]),
                tuple(int(s) for s in row["seeds"]),
                tuple(int(q) for q in row["steps"]),
                bytes.fromhex(row["hash"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerError(f"{path}:{i}: bad round record: {exc}") from None
