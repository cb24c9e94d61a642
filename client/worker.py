"""The work of one assignment: probe the assigned seeds on local minibatches and
turn the projected gradients into one byte each.

Local steps (FedKSeed): after probing seed j the client moves its own copy of
W by the provisional integer step q_j = round(-lr * g_j / unit) before probing
seed j+1, so later probes see the earlier ones. All provisional steps are
reverted exactly (integer arithmetic) before the call returns: the state a
committed round is applied to is always the ledger head.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from seedfed.client.data import MinibatchSampler
from seedfed.client.objectives import Objective
from seedfed.client.replica import Replica
from seedfed.shared.philox import MASK32, STREAM_SCALAR_ROUNDING, draw_uniform
from seedfed.shared.quantize import encode_scalars

log = logging.getLogger("seedfed.client")


@dataclass(frozen=True)
class Assignment:
    round: int
    slot: int
    seeds: tuple[int, ...]
    lr: float
    scalar_scale: float = 0.0  # a byte b carries b * scalar_scale in this round; 0: the genesis scale


@dataclass(frozen=True)
class WorkResult:
    round: int
    slot: int
    scalars: bytes  # one signed byte per assigned seed, in assignment order
    gradients: tuple[float, ...]  # the projected gradients before quantisation
    loss: float  # mean of the probes' losses
    seconds: float


def scalar_uniforms(task_seed: int, round_no: int, slot: int, count: int) -> list[float]:
    """The stochastic-rounding draws for one submission, keyed by (task seed, round, slot, position):
    reproducible, and independent between clients of the same group."""
    key = (task_seed, round_no & MASK32)
    return [draw_uniform(key, slot, j, STREAM_SCALAR_ROUNDING) for j in range(count)]


def provisional_step(g: float, lr: float, unit: float) -> int:
    q = -lr * g / unit
    return int(round(q)) if math.isfinite(q) else 0


class Prober:
    def __init__(self, replica: Replica, weights, objective: Objective, sampler: MinibatchSampler) -> None:
        self.replica = replica
        self.weights = weights  # ComputeWeights bound to the module the objective runs
        self.objective = objective
        self.sampler = sampler

    def work(self, assignment: Assignment) -> WorkResult:
        from seedfed.client.engine.probe import probe
        from seedfed.client.engine.state import StateOverflowError

        spec = self.replica.spec
        state = self.replica.state
        start = time.perf_counter()
        gradients: list[float] = []
        losses: list[float] = []
        applied: list[tuple[int, int]] = []
        try:
            for j, seed in enumerate(assignment.seeds):
                batch = self.sampler.next_batch()
                result = probe(self.weights, seed, spec.eps, lambda batch=batch: self.objective.loss(batch))
                g = result.g
                if not math.isfinite(g):
                    log.warning(
                        "round %d seed %d: non-finite projected gradient (losses %s, %s); sending 0",
                        assignment.round,
                        seed,
                        result.loss_plus,
                        result.loss_minus,
                    )
                    g = 0.0
                gradients.append(g)
                losses.append(0.5 * (result.loss_plus + result.loss_minus))
                if j + 1 < len(assignment.seeds):  # the last step would be reverted unused
                    q = provisional_step(g, assignment.lr, spec.unit)
                    if q:
                        try:
                            state.apply({seed: q})
                        except StateOverflowError:
                            log.warning("round %d: provisional step for seed %d would overflow; skipped", assignment.round, seed)
                            continue
                        applied.append((seed, q))
                        self.weights.refresh()
        finally:
            for seed, q in reversed(applied):
                state.revert({seed: q})
            if applied:
                self.weights.refresh()
        uniforms = scalar_uniforms(spec.task_seed, assignment.round, assignment.slot, len(gradients))
        scalars = encode_scalars(gradients, assignment.scalar_scale or spec.scalar_scale, uniforms)
        finite = [x for x in losses if math.isfinite(x)]
        loss = sum(finite) / len(finite) if finite else float("nan")
        return WorkResult(assignment.round, assignment.slot, scalars, tuple(gradients), loss, time.perf_counter() - start)


def assignment_from(open_event, spec) -> Assignment:
    """From a RoundOpen message; the lr falls back to the genesis schedule and the
    scale to the genesis scale if the message has none."""
    lr = open_event.lr if open_event.lr > 0 else spec.lr_at(open_event.round)
    scale = open_event.scalar_scale if open_event.scalar_scale > 0 else spec.scalar_scale
    return Assignment(
        int(open_event.round), int(open_event.slot), tuple(int(s) for s in open_event.seeds), float(lr), float(scale)
    )
