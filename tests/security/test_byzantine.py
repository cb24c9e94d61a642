"""Byzantine clients: a minority sends extreme scalars (+-127, against the
sign of the true gradient). With median or trimmed-mean aggregation the run
ends close to the honest run; with mean aggregation it does not.

The measure: after ROUNDS rounds, fold the ledger per seed (the accumulated
integer step of every seed, what a replica applies) and take the relative
L2 distance between the attacked run's vector and the honest run's:

    d = ||fold(attacked) - fold(honest)|| / ||fold(honest)||

Tolerance: d <= TOLERANCE (0.2) for median and trimmed mean, while mean
aggregation is pushed past MEAN_AT_LEAST (1.0): the attack moves every step
of the mean by more than the step itself. Everything runs through a real
coordinator on loopback with torch-free scripted clients; group_size 0 puts
every client on the same seeds, so each seed gets N reports to aggregate.
"""

from __future__ import annotations

import asyncio
import hashlib
import math

import grpc
import pytest
from loadclient import ScriptedClient
from sec_helpers import BASE_DIGEST, make_spec

from seedfed.server.app import start_coordinator
from seedfed.server.memory_store import MemoryStore
from seedfed.server.rounds import RoundsConfig
from seedfed.shared.assignment import uniform_seeds
from seedfed.shared.steps import fold
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

N_CLIENTS = 7
N_BYZANTINE = 2  # a minority: 2 of 7
ROUNDS = 6
TOLERANCE = 0.2
MEAN_AT_LEAST = 1.0


def _word(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "big")


def true_scalar(seed: int) -> int:
    """The seed's projected gradient in bytes, the same for every honest client (in -40..40)."""
    return _word("truth", seed) % 81 - 40


def _seeds(spec, round_no: int, n: int) -> list[int]:  # noqa: ANN001
    seeds = uniform_seeds(spec.task_seed, round_no, 0, spec.local_steps, spec.pool_size)
    assert len(seeds) == n
    return seeds


def honest(spec):  # noqa: ANN001, ANN201
    def scalars(name: str, round_no: int, slot: int, n: int) -> bytes:
        # Minibatch noise of +-5 around the truth.
        return bytes((true_scalar(s) + _word(name, round_no, s) % 11 - 5) & 0xFF for s in _seeds(spec, round_no, n))

    return scalars


def byzantine(spec):  # noqa: ANN001, ANN201
    def scalars(name: str, round_no: int, slot: int, n: int) -> bytes:
        return bytes((-127 if true_scalar(s) >= 0 else 127) & 0xFF for s in _seeds(spec, round_no, n))

    return scalars


async def federation(rule: str, n_byzantine: int) -> dict[int, int]:
    """One run; returns the ledger folded per seed (asserting every client holds the same ledger)."""
    spec = make_spec(
        task_id="byz",
        aggregation=rule,
        trim_fraction=0.3,
        group_size=0,
        local_steps=8,
        min_clients=N_CLIENTS,
        round_deadline_s=30.0,
        max_rounds=ROUNDS,
    )
    running = await start_coordinator(
        "", "127.0.0.1:0", tasks=[spec], store=MemoryStore(), config=RoundsConfig(lease_seconds=30.0, tick_seconds=0.05)
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        s = pb_grpc.CoordinatorStub(channel)
        clients = [
            ScriptedClient(s, spec.task_id, f"c{i}", BASE_DIGEST, scalars=(byzantine(spec) if i < n_byzantine else honest(spec)))
            for i in range(N_CLIENTS)
        ]
        await asyncio.gather(*(c.run(ROUNDS) for c in clients))
    finally:
        await channel.close()
        await running.stop(grace=0.5)
    heads = {c.head_hash for c in clients}
    assert len(heads) == 1 and all(c.head_round == ROUNDS for c in clients)
    return fold(clients[0].commits[r].entries for r in range(1, ROUNDS + 1))


def relative_distance(attacked: dict[int, int], reference: dict[int, int]) -> float:
    seeds = set(attacked) | set(reference)
    num = math.sqrt(sum((attacked.get(k, 0) - reference.get(k, 0)) ** 2 for k in seeds))
    den = math.sqrt(sum(v * v for v in reference.values()))
    return num / den


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "mean"])
def test_minority_of_extreme_clients(rule: str) -> None:
    async def both() -> tuple[dict[int, int], dict[int, int]]:
        return await federation(rule, 0), await federation(rule, N_BYZANTINE)

    reference, attacked = asyncio.run(asyncio.wait_for(both(), 120))
    assert len(reference) >= 10  # enough seeds moved for the measure to mean something
    d = relative_distance(attacked, reference)
    if rule == "mean":
        assert d > MEAN_AT_LEAST, f"mean aggregation moved only {d:.3f}: the attack is too weak to test anything"
    else:
        assert d <= TOLERANCE, f"{rule}: attacked run is {d:.3f} away from the honest run (tolerance {TOLERANCE})"
