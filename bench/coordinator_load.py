"""Coordinator load: torch-free clients over real gRPC on loopback.

For each backend (SQLite, PostgreSQL) and client count (10, 100, 1,000) this
starts the coordinator as its own process (`seedfed coordinator`), joins
N scripted clients from this process (one asyncio loop, a few channels, one
Sync stream per client), runs rounds with K=4096 and 200 local steps, and
prints:

  rounds/s, Submit latency p50/p99, round latency p99 (RoundOpen seen ->
  RoundCommit seen) and commit latency p99 (last Submit acknowledged ->
  RoundCommit seen), Sync streams held, and the bytes on the wire per client
  per round (every protobuf message the client sent or received, Join and
  catch-up included, plus gRPC's 5-byte frame header per message) next to
  FedKSeed's figure for the same K and local steps (4 bytes per pool seed down,
  8 bytes per step up).

All clients run in this one process, so they reach the coordinator from one
address: the coordinator is started with a Join rate limit (--join-rate,
--join-burst) that lets every one of them join at once.

  python bench/coordinator_load.py                      # full matrix
  python bench/coordinator_load.py --clients 10,100 --backends sqlite
  python bench/coordinator_load.py --smoke              # seconds: 100 clients, 2 rounds, SQLite
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from loadclient import ScriptedClient, make_spec

from seedfed.client.simulate.processes import start_coordinator
from seedfed.shared.taskspec import TaskSpec
from seedfed.v1 import coordinator_pb2 as pb
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

DEFAULT_PG = os.environ.get("SEEDFED_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CLIENTS_PER_CHANNEL = 100
GRPC_FRAME = 5
# a run of seconds, with more clients than the coordinator's default Join burst
SMOKE = {"clients": "100", "backends": "sqlite", "rounds": "2"}


def fedkseed_bytes(pool_size: int, local_steps: int) -> int:
    return 4 * pool_size + 8 * local_steps


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Backend:
    def __init__(self, name: str, pg_url: str, workdir: Path) -> None:
        self.name, self.pg_url, self.workdir = name, pg_url, workdir
        self.schema = ""

    def __enter__(self) -> str:
        if self.name == "sqlite":
            return f"sqlite:///{self.workdir / f'load-{uuid.uuid4().hex[:6]}.db'}"
        import psycopg

        self.schema = f"seedfed_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.pg_url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        sep = "&" if "?" in self.pg_url else "?"
        return f"{self.pg_url}{sep}options=-csearch_path%3D{self.schema}"

    def __exit__(self, *exc: object) -> None:
        if self.schema:
            import psycopg

            with psycopg.connect(self.pg_url.replace("+psycopg", ""), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{self.schema}" CASCADE')


async def run_clients(address: str, spec: TaskSpec, n: int, rounds: int) -> dict[str, float]:
    n_channels = max(1, (n + CLIENTS_PER_CHANNEL - 1) // CLIENTS_PER_CHANNEL)
    channels = [grpc.aio.insecure_channel(address) for _ in range(n_channels)]
    stubs = [pb_grpc.CoordinatorStub(ch) for ch in channels]
    clients = [ScriptedClient(stubs[i % n_channels], spec.task_id, f"load-{i}", spec.base_digest) for i in range(n)]
    limit = asyncio.Semaphore(64)

    async def join(c: ScriptedClient) -> None:
        async with limit:
            await c.join(timeout=120)

    t_join = time.perf_counter()
    await asyncio.gather(*(join(c) for c in clients))
    join_s = time.perf_counter() - t_join
    runs = [asyncio.create_task(c.run(rounds)) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.caught_up.wait() for c in clients)), 300)
    status = await stubs[0].Status(pb.StatusRequest(task_id=spec.task_id))
    streams_held = sum(1 for c in clients if c.caught_up.is_set())
    online = status.clients_online
    await asyncio.wait_for(asyncio.gather(*runs), 600)
    for ch in channels:
        await ch.close()

    heads = {c.commits[rounds].hash for c in clients}
    assert len(heads) == 1, "clients disagree on the ledger head"
    first_open = min(min(c.open_times.values()) for c in clients)
    last_commit = max(c.commit_times[rounds] for c in clients)
    round_lat, commit_lat = [], []
    for r in range(1, rounds + 1):
        opened = min(c.open_times[r] for c in clients if r in c.open_times)
        committed = min(c.commit_times[r] for c in clients)
        round_lat.append(committed - opened)
        last_ack = max((c.ack_times[r] for c in clients if r in c.ack_times), default=committed)
        commit_lat.append(max(0.0, committed - last_ack))
    submit_lat = [x for c in clients for x in c.submit_latencies]
    wire = [(c.bytes_sent + c.bytes_received + GRPC_FRAME * c.messages) / rounds for c in clients]
    return {
        "join_s": join_s,
        "rounds_per_s": rounds / (last_commit - first_open),
        "submit_p50_ms": 1e3 * pct(submit_lat, 0.5),
        "submit_p99_ms": 1e3 * pct(submit_lat, 0.99),
        "round_p99_ms": 1e3 * pct(round_lat, 0.99),
        "commit_p99_ms": 1e3 * pct(commit_lat, 0.99),
        "streams_held": float(streams_held),
        "online": float(online),
        "wire_bytes": statistics.mean(wire),
    }


def one_config(
    backend: str, pg_url: str, n: int, rounds: int, pool_size: int, local_steps: int, workdir: Path
) -> dict[str, float]:
    spec = make_spec(
        task_id="load",
        base_model="bench-model",
        task_seed=7,
        lr=1e-4,
        pool_size=pool_size,
        local_steps=local_steps,
        min_clients=n,
        round_deadline_s=120.0,
        max_rounds=rounds,
    )
    task_file = workdir / "task.toml"
    task_file.write_text(spec.to_toml())
    with Backend(backend, pg_url, workdir) as db:
        coordinator = start_coordinator(
            db,
            workdir / f"coordinator-{backend}-{n}.log",
            task_file=task_file,
            # every client joins from this process's one address, all at once
            extra_args=("--lease-seconds", "120", "--log-level", "warning", "--join-rate", str(n), "--join-burst", str(n)),
        )
        try:
            return asyncio.run(run_clients(coordinator.address, spec, n, rounds))
        finally:
            coordinator.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="10,100,1000")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--rounds", default="", help="rounds per client count, e.g. 30,15,6 (default: 30 / 15 / 6)")
    ap.add_argument("--pool-size", type=int, default=4096)
    ap.add_argument("--local-steps", type=int, default=200)
    ap.add_argument("--postgres-url", default=DEFAULT_PG)
    ap.add_argument("--smoke", action="store_true", help="a run of seconds at a small size (the test suite runs it)")
    args = ap.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    counts = [int(x) for x in args.clients.split(",")]
    default_rounds = {10: 30, 100: 15, 1000: 6}
    rounds = [int(x) for x in args.rounds.split(",")] if args.rounds else [default_rounds.get(n, 6) for n in counts]
    baseline = fedkseed_bytes(args.pool_size, args.local_steps)
    print(f"seedfed coordinator load, K={args.pool_size}, {args.local_steps} local steps, loopback, {os.cpu_count()} cores")
    print(f"FedKSeed per client per round: 4 B x {args.pool_size} seeds down + 8 B x {args.local_steps} steps up = {baseline} B")
    header = (
        f"{'backend':9} {'clients':>7} {'joins/s':>7} {'rounds':>6} {'rounds/s':>8} {'submit p50':>10} {'submit p99':>10} "
        f"{'round p99':>10} {'commit p99':>10} {'streams':>9} {'B/client/round':>14} {'FedKSeed B':>10} {'ratio':>6}"
    )
    print(header)
    ok = True
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            for n, r in zip(counts, rounds):
                res = one_config(backend, args.postgres_url, n, r, args.pool_size, args.local_steps, Path(tmp))
                ratio = res["wire_bytes"] / baseline
                ratios.append(ratio)
                ok &= res["streams_held"] == n and res["online"] == n and ratio <= 0.25
                print(
                    f"{backend:9} {n:7d} {n / res['join_s']:7.0f} {r:6d} "
                    f"{res['rounds_per_s']:8.2f} {res['submit_p50_ms']:8.1f}ms {res['submit_p99_ms']:8.1f}ms"
                    f" {res['round_p99_ms']:8.1f}ms {res['commit_p99_ms']:8.1f}ms "
                    f"{int(res['streams_held']):4d}/{n:<4d} {res['wire_bytes']:14.0f}"
                    f" {baseline:10d} {ratio:6.3f}",
                    flush=True,
                )
    print(f"ratio bytes per client per round / FedKSeed's: {max(ratios):.3f} at most (target <= 0.25)")
    print("targets (every stream held and online; wire bytes <= 1/4 of FedKSeed):", "met" if ok else "NOT met")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
