"""A federation inside one process, for comparing methods on one machine.

It runs the coordinator's own round arithmetic (``seedfed.shared.round_math``)
and the client's own prober (``seedfed.client.worker``) with no network in
between, so a simulated run commits exactly the rounds a real deployment with
the same submissions would. All clients share one replica: they hold the same
bytes by construction, and each client's provisional local steps are reverted
exactly before the next client probes.

Bytes on the wire are counted as the serialised size of the protocol
messages each client would send and receive.

With ``together`` set, a round in which every client probes the same single
seed (group_size 0, local_steps 1) runs one forward pass per sign over all
clients' minibatches instead of two per client: the same minibatches, seed,
scale and byte encoding, so each client's scalar is its own two losses'
difference; only the float rounding of a batched forward differs, so a byte
can differ by one from a separate client's. The pass count falls from 2N to 2.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from seedfed.client.data import MinibatchSampler
from seedfed.client.objectives import Objective
from seedfed.client.replica import Replica
from seedfed.client.worker import Assignment, Prober, scalar_uniforms
from seedfed.shared.ledger import RoundRecord
from seedfed.shared.loss_guard import LossGuard
from seedfed.shared.quantize import BYTE_MAX, decode_bytes, encode_scalars
from seedfed.shared.round_math import CommittedRound, RoundPlan, Submission, compute_commit, history_rounds, plan_round
from seedfed.v1 import coordinator_pb2 as pb


@dataclass(frozen=True)
class RoundReport:
    round: int
    mean_loss: float
    entries: int
    bytes_down_per_client: float  # RoundOpen + RoundCommit events, serialised
    bytes_up_per_client: float  # SubmitRequest, serialised
    seconds: float
    scalars: int = 0  # one-byte scalars the clients sent
    saturated: int = 0  # of those, bytes at +-127: the codec clipped them
    rolled_back: bool = False  # the loss guard took the weights back to its best window's


def _event_size(event: pb.SyncEvent) -> int:
    # A streamed message costs its bytes plus gRPC's 5-byte length prefix.
    return event.ByteSize() + 5


class InProcessFederation:
    """``client_examples[i]`` is client i's private data set."""

    def __init__(
        self,
        replica: Replica,
        weights: Any,
        objective: Objective,
        client_examples: Sequence[Sequence[Any]],
        batch_size: int | None = None,
        sampler_seed: int = 0,
        together: bool = False,
    ) -> None:
        if not client_examples:
            raise ValueError("a federation needs at least one client")
        self.replica = replica
        self.spec = replica.spec
        batch = batch_size or self.spec.batch_size
        self.client_ids = [f"client-{i}" for i in range(len(client_examples))]
        self.sizes = [len(examples) for examples in client_examples]  # what each client claims under weighting examples
        self.probers = [
            Prober(replica, weights, objective, MinibatchSampler(examples, batch, seed=sampler_seed + i))
            for i, examples in enumerate(client_examples)
        ]
        self.weights = weights
        self.objective = objective
        self.together = together and hasattr(objective, "example_losses") and not getattr(weights, "dual", False)
        self.stats: dict[int, tuple[float, int]] = {}
        self.history: list[RoundRecord] = []
        self.recent: deque[CommittedRound] = deque(maxlen=history_rounds(self.spec))  # what later rounds' arithmetic reads
        self.guard = LossGuard.for_spec(self.spec)

    def plan(self, round_no: int) -> RoundPlan:
        """The coordinator's plan for the next round (a benchmark may override it to try a rule)."""
        return plan_round(self.spec, round_no, 0, self.client_ids, self.stats, time.time(), tuple(self.recent), self.guard)

    def _probe_each(self, plan: RoundPlan) -> list[tuple[bytes, float]]:
        """Each client's Prober on its own seeds: what a client daemon runs."""
        out = []
        for slot, prober in enumerate(self.probers):
            result = prober.work(Assignment(plan.round, slot, plan.seeds_of_slot(slot), plan.lr, plan.scalar_scale))
            out.append((result.scalars, result.loss))
        return out

    def _probe_together(self, plan: RoundPlan) -> list[tuple[bytes, float]]:
        """Every client on the round's one seed: one forward pass per sign over all minibatches."""
        import torch

        seed, eps = plan.group_seeds[0][0], self.spec.eps
        batches = [prober.sampler.next_batch() for prober in self.probers]
        examples = [ex for batch in batches for ex in batch]
        try:
            with torch.no_grad():
                self.weights.perturb(seed, eps)
                plus = self.objective.example_losses(examples)
                self.weights.perturb(seed, -eps)
                minus = self.objective.example_losses(examples)
        finally:
            self.weights.refresh()
        out = []
        start = 0
        for slot, batch in enumerate(batches):
            end = start + len(batch)
            loss_plus, loss_minus = math.fsum(plus[start:end]) / len(batch), math.fsum(minus[start:end]) / len(batch)
            start = end
            g = (loss_plus - loss_minus) / (2.0 * eps)
            uniforms = scalar_uniforms(self.spec.task_seed, plan.round, slot, 1)
            out.append(
                (encode_scalars([g if math.isfinite(g) else 0.0], plan.scalar_scale, uniforms), 0.5 * (loss_plus + loss_minus))
            )
        return out

    def run_round(self) -> RoundReport:
        start = time.perf_counter()
        round_no = self.replica.round + 1
        plan = self.plan(round_no)
        submissions: list[Submission] = []
        down = up = 0
        one_seed = plan.group_size == 0 and len(plan.group_seeds[0]) == 1
        work = self._probe_together(plan) if self.together and one_seed else self._probe_each(plan)
        for slot, (client_id, (scalars, loss)) in enumerate(zip(self.client_ids, work)):
            submissions.append(Submission(client_id, slot, scalars, loss, time.time(), self.sizes[slot]))
            seeds = plan.seeds_of_slot(slot)
            opened = pb.RoundOpen(
                round=round_no, slot=slot, seeds=seeds, deadline_unix=plan.deadline, lr=plan.lr, scalar_scale=plan.scalar_scale
            )
            down += _event_size(pb.SyncEvent(open=opened))
            request = pb.SubmitRequest(
                task_id=self.spec.task_id,
                client_id=client_id,
                round=round_no,
                slot=slot,
                scalars=scalars,
                loss=loss,
                examples=self.sizes[slot] if self.spec.weighs_by_examples else 0,  # as a daemon sends it
            )
            up += request.ByteSize() + 5
        commit = compute_commit(self.spec, plan, submissions, self.replica.head_hash, tuple(self.recent), self.guard)
        self.recent.append(CommittedRound(plan, submissions))
        record = commit.record
        if self.guard:
            self.guard.record(round_no, commit.loss, record.entries)
        self.replica.apply(record)
        self.weights.refresh()
        for seed, (a, n) in commit.seed_abs.items():
            old_a, old_n = self.stats.get(seed, (0.0, 0))
            self.stats[seed] = (old_a + a, old_n + n)
        self.history.append(record)
        committed = pb.RoundCommit(round=record.round, seeds=record.seeds, steps=record.steps, hash=record.hash)
        n = len(self.client_ids)
        sent = [b for sub in submissions for b in decode_bytes(sub.scalars)]
        return RoundReport(
            round=round_no,
            mean_loss=commit.mean_loss if commit.mean_loss is not None else float("nan"),
            entries=len(record.seeds),
            bytes_down_per_client=down / n + _event_size(pb.SyncEvent(commit=committed)),
            bytes_up_per_client=up / n,
            seconds=time.perf_counter() - start,
            scalars=len(sent),
            saturated=sum(abs(b) >= BYTE_MAX for b in sent),
            rolled_back=commit.rolled_back,
        )
