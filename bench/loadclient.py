"""Torch-free scripted clients: they speak the real protocol but submit
arbitrary bytes instead of probing a model. Used by the tests and by
bench/coordinator_load.py; they verify every commit against the hash chain
and count the bytes they send and receive. ``make_spec`` gives the task
they join: a genesis whose base digest is a placeholder, for no model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from seedfed.shared.ledger import RoundRecord, verify_record
from seedfed.shared.taskspec import Objective, TaskSpec
from seedfed.shared.wire import reason_of
from seedfed.v1 import coordinator_pb2 as pb
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

BASE_DIGEST = "ab" * 32


def make_spec(**overrides: Any) -> TaskSpec:
    """A task for scripted clients (placeholder digests), with overrides."""
    base = TaskSpec(
        task_id="t1",
        base_model="tiny-model",
        base_digest=BASE_DIGEST,
        manifest_digest="cd" * 32,
        unit_log2=-20,
        task_seed=12345,
        objective=Objective(kind="classification", labels=("negative", "positive")),
        lr=1e-3,
        pool_size=64,
        local_steps=4,
        min_clients=1,
        round_deadline_s=5.0,
    )
    # through the canonical form, so that 60 and 60.0 give one genesis hash
    return TaskSpec.from_canonical(dataclasses.replace(base, **overrides).canonical_bytes())


ScalarFn = Callable[[str, int, int, int], bytes]  # (name, round, slot, n_seeds) -> scalars
LossFn = Callable[[str, int], float]  # (name, round) -> the loss a client reports


def constant_loss(name: str, round_no: int) -> float:
    return 0.5


def hashed_scalars(name: str, round_no: int, slot: int, n: int) -> bytes:
    """Deterministic pseudo-random bytes in -127..127 (never 0x80): a retry sends the same."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        block = hashlib.sha256(f"{name}/{round_no}/{counter}".encode()).digest()
        out.extend(b for b in block if b != 0x80)
        counter += 1
    return bytes(out[:n])


@dataclass
class Refused:
    round: int
    code: grpc.StatusCode
    reason: str


@dataclass
class ScriptedClient:
    stub: pb_grpc.CoordinatorStub
    task_id: str
    name: str
    base_digest: str
    scalars: ScalarFn = hashed_scalars
    losses: LossFn = constant_loss
    submit_delay: float = 0.0
    examples: int = 0  # the training examples claimed with each report (0: none said)
    auto_submit: bool = True  # False: record RoundOpen events, submit nothing (silent or hand-driven clients)
    client_id: str = ""
    genesis_hash: bytes = b""
    head_round: int = 0
    head_hash: bytes = b""
    commits: dict[int, RoundRecord] = field(default_factory=dict)
    opens: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)
    acks: list[tuple[int, int, bytes]] = field(default_factory=list)
    refusals: list[Refused] = field(default_factory=list)
    submit_latencies: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    messages: int = 0  # messages sent and received (gRPC frames each with 5 bytes)
    open_times: dict[int, float] = field(default_factory=dict)  # round -> loop time its (first) RoundOpen arrived
    commit_times: dict[int, float] = field(default_factory=dict)  # round -> loop time its RoundCommit arrived
    ack_times: dict[int, float] = field(default_factory=dict)  # round -> loop time the Submit was acknowledged
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def join(self, timeout: float = 30.0) -> pb.JoinResponse:
        req = pb.JoinRequest(task_id=self.task_id, name=self.name, base_digest=self.base_digest)
        resp = await self.stub.Join(req, timeout=timeout)
        self.messages += 2
        self.bytes_sent += req.ByteSize()
        self.bytes_received += resp.ByteSize()
        self.client_id = resp.client_id
        self.genesis_hash = bytes(resp.genesis.hash)
        if not self.head_hash:
            self.head_hash = self.genesis_hash
        return resp

    async def leave(self) -> None:
        await self.stub.Leave(pb.LeaveRequest(task_id=self.task_id, client_id=self.client_id), timeout=10)

    async def heartbeat(self, digest_round: int = 0, digest: str = "") -> pb.HeartbeatResponse:
        req = pb.HeartbeatRequest(task_id=self.task_id, client_id=self.client_id, digest_round=digest_round, digest=digest)
        resp = await self.stub.Heartbeat(req, timeout=10)
        self.messages += 2
        self.bytes_sent += req.ByteSize()
        self.bytes_received += resp.ByteSize()
        return resp

    def _apply_commit(self, c: pb.RoundCommit) -> None:
        rec = RoundRecord(c.round, tuple(c.seeds), tuple(c.steps), bytes(c.hash))
        verify_record(self.head_hash, rec, self.head_round + 1)  # raises LedgerError on a broken chain
        self.commits[rec.round] = rec
        self.head_round, self.head_hash = rec.round, rec.hash

    async def sync(self, until_round: int = 0) -> None:
        """One Sync stream: catch up, then answer every RoundOpen; returns when the
        head reaches ``until_round`` (0: when the stream ends)."""
        req = pb.SyncRequest(task_id=self.task_id, client_id=self.client_id, from_round=self.head_round + 1)
        self.bytes_sent += req.ByteSize()
        self.messages += 1
        call = self.stub.Sync(req)
        loop = asyncio.get_running_loop()
        try:
            async for event in call:
                self.bytes_received += event.ByteSize()
                self.messages += 1
                kind = event.WhichOneof("event")
                if kind == "commit":
                    self._apply_commit(event.commit)
                    self.commit_times.setdefault(event.commit.round, loop.time())
                    if until_round and self.head_round >= until_round:
                        return
                elif kind == "caught_up":
                    if event.caught_up.head_round != self.head_round or bytes(event.caught_up.head_hash) != self.head_hash:
                        raise AssertionError(
                            f"{self.name}: caught up at {event.caught_up.head_round} "
                            f"{bytes(event.caught_up.head_hash).hex()[:12]}, "
                            f"holding {self.head_round} {self.head_hash.hex()[:12]}"
                        )
                    self.caught_up.set()
                    if until_round and self.head_round >= until_round:
                        return
                elif kind == "open":
                    o = event.open
                    self.opens.append((o.round, o.slot, tuple(o.seeds)))
                    self.open_times.setdefault(o.round, loop.time())
                    if not self.auto_submit:
                        continue
                    t = asyncio.get_running_loop().create_task(self._answer(o.round, o.slot, len(o.seeds)))
                    self._tasks.add(t)
                    t.add_done_callback(self._tasks.discard)
        finally:
            call.cancel()

    async def _answer(self, round_no: int, slot: int, n: int) -> None:
        if self.submit_delay:
            await asyncio.sleep(self.submit_delay)
        try:
            await self.submit(round_no, slot, self.scalars(self.name, round_no, slot, n), self.losses(self.name, round_no))
        except grpc.RpcError:
            pass  # recorded in refusals (or the coordinator went away)

    async def submit(self, round_no: int, slot: int, scalars: bytes, loss: float = 0.5) -> pb.SubmitResponse:
        req = pb.SubmitRequest(
            task_id=self.task_id,
            client_id=self.client_id,
            round=round_no,
            slot=slot,
            scalars=scalars,
            loss=loss,
            examples=self.examples,
        )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            resp = await self.stub.Submit(req, timeout=30)
        except grpc.aio.AioRpcError as exc:
            self.bytes_sent += req.ByteSize()
            self.messages += 1
            self.refusals.append(Refused(round_no, exc.code(), reason_of(exc)))
            raise
        now = loop.time()
        self.submit_latencies.append(now - t0)
        self.ack_times[round_no] = now
        self.messages += 2
        self.bytes_sent += req.ByteSize()
        self.bytes_received += resp.ByteSize()
        self.acks.append((round_no, slot, scalars))
        return resp

    async def run(self, until_round: int, retry_delay: float = 0.2) -> None:
        """Join and follow rounds until ``until_round`` is committed, rejoining and
        resyncing whenever the coordinator goes away (crash tests)."""
        while self.head_round < until_round:
            try:
                if not self.client_id:
                    await self.join()
                await self.sync(until_round)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(exc) == "unknown-client":
                    self.client_id = ""
                await asyncio.sleep(retry_delay)
