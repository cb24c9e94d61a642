"""A replica: the fixed-point model state at a known, verified position in the ledger.

Every record is checked against the hash chain before it touches the state,
and a batch of records (a catch-up) is verified as a whole before any of it
is applied, so a tampered history leaves the replica exactly as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from seedfed.shared.ledger import LedgerError, RoundRecord, verify_chain, verify_record
from seedfed.shared.steps import fold
from seedfed.shared.taskspec import TaskSpec, TaskSpecError

FOLD_CHUNK = 16  # seeds per engine call during a folded catch-up (progress granularity)


class BaseDigestMismatch(RuntimeError):
    """The base weights loaded here are not the base the task was created from."""


def _check_base(spec: TaskSpec, state) -> None:
    digest = state.digest()
    if digest != spec.base_digest:
        raise BaseDigestMismatch(
            f"the base model loaded from {spec.base_model!r} has digest {digest}, "
            f"but task {spec.task_id!r} was created from base digest {spec.base_digest}: "
            "load the task's base model (--model) or join the task created for this model"
        )


def _trainable_spans(spec: TaskSpec, manifest) -> tuple[tuple[int, int], ...]:
    from seedfed.client.engine.manifest import ManifestError

    try:
        return manifest.spans(spec.trainable)
    except ManifestError as exc:  # a task file edited by hand, or another model
        raise TaskSpecError(f"task {spec.task_id!r} cannot run on this model: {exc}") from None


@dataclass(frozen=True)
class CatchUpStats:
    first_round: int
    last_round: int
    rounds: int  # committed rounds caught up
    replays: int  # seed replays applied to the state (<= pool size when folded)
    folded: bool
    seconds: float


class Replica:
    def __init__(self, spec: TaskSpec, state, round_no: int = 0, head_hash: bytes | None = None) -> None:
        self.spec = spec
        self.state = state
        if spec.trainable:  # the task's perturbations cover only these parameters
            state.restrict(_trainable_spans(spec, state.manifest))
        self.round = round_no
        self.head_hash = spec.genesis_hash() if head_hash is None else head_hash

    @classmethod
    def from_base(cls, spec: TaskSpec, module, device="cpu") -> Replica:
        """W0 from the base module's float weights; refuses weights that are not the task's base."""
        from seedfed.client.engine.state import FixedPointState

        return cls.from_state(spec, FixedPointState.from_module(module, spec.unit_log2, spec.task_seed, device=device))

    @classmethod
    def from_state(cls, spec: TaskSpec, state) -> Replica:
        """A replica at round 0 over a master W0 however it was loaded (streamed or whole); refuses
        weights that are not the task's base."""
        _check_base(spec, state)
        return cls(spec, state)

    def rebase(self, fill: Callable[[object], None]) -> None:
        """Back to round 0 in place: ``fill(state)`` writes W0 into this replica's state (bound
        compute weights stay bound). Raises BaseDigestMismatch if the result is not the task's base."""
        fill(self.state)
        _check_base(self.spec, self.state)
        self.round, self.head_hash = 0, self.spec.genesis_hash()

    def digest(self) -> str:
        return self.state.digest()

    # -- verification --------------------------------------------------------------
    def verify(self, record: RoundRecord) -> None:
        """LedgerError unless ``record`` is the next round of this replica's chain."""
        verify_record(self.head_hash, record, self.round + 1)

    def verify_many(self, records: Sequence[RoundRecord]) -> bytes:
        return verify_chain(self.spec.genesis_hash(), records, first_round=self.round + 1, previous=self.head_hash)

    # -- applying ------------------------------------------------------------------
    def apply(self, record: RoundRecord) -> None:
        self.verify(record)
        self.state.apply(record.entries)
        self.round, self.head_hash = record.round, record.hash

    def catch_up(
        self,
        records: Sequence[RoundRecord],
        fold_history: bool | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> CatchUpStats:
        """Apply consecutive committed rounds. With a finite pool (the default when
        ``fold_history`` is None) the rounds are folded per seed first: at most K
        replays however many rounds were missed. ``progress(done, total)`` is
        called as replays are applied."""
        start = time.perf_counter()
        first = self.round + 1
        if not records:
            return CatchUpStats(first, self.round, 0, 0, False, 0.0)
        head = self.verify_many(records)  # all or nothing
        if fold_history is None:
            fold_history = self.spec.pool_size > 0
        if fold_history:
            # Integer addition is associative: one summed step per seed gives the same bytes.
            folded = fold(r.entries for r in records)
            items = list(folded.items())
            total = len(items)
            for i in range(0, total, FOLD_CHUNK):
                self.state.apply(dict(items[i : i + FOLD_CHUNK]))
                if progress:
                    progress(min(i + FOLD_CHUNK, total), total)
            replays = total
        else:
            total = sum(len(r.seeds) for r in records)
            done = 0
            for r in records:
                self.state.apply(r.entries)
                done += len(r.seeds)
                if progress:
                    progress(done, total)
            replays = total
        self.round, self.head_hash = records[-1].round, head
        return CatchUpStats(first, self.round, len(records), replays, fold_history, time.perf_counter() - start)

    def reset_to(self, other: Replica) -> None:
        """Take over another replica's position in place, so bound compute weights stay bound."""
        if other.spec.genesis_hash() != self.spec.genesis_hash():
            raise LedgerError("cannot reset to a replica of another task")
        self.state.flat.copy_(other.state.flat.to(self.state.flat.device))
        self.round, self.head_hash = other.round, other.head_hash
