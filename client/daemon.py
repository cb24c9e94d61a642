"""The edge client daemon: join, catch up, follow the ledger, work, checkpoint.

One session is: Join -> check the starting point against the coordinator's
ledger -> Sync from head + 1 -> buffer the catch-up commits (each verified
against the chain as it arrives) -> apply them at CaughtUp (folded per seed
with a finite pool) -> live: probe and submit for each RoundOpen, apply each
RoundCommit. Any transport failure ends the session; the daemon waits
(exponential backoff with jitter) and starts a new one from what it holds, so
a coordinator restart needs no user action. A record that does not extend
the chain is refused before it touches the state, and the session restarts.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from seedfed.client.checkpoints import CheckpointStore
from seedfed.client.connection import Backoff, ChannelConfig, is_retryable, open_channel
from seedfed.client.data import MinibatchSampler, read_examples
from seedfed.client.model import open_base, resolve_device
from seedfed.client.objectives import build_objective
from seedfed.client.progress import Reporter
from seedfed.client.replica import Replica
from seedfed.client.stream import END, EventStream
from seedfed.client.worker import Prober, assignment_from
from seedfed.shared.ledger import LedgerError, RoundRecord
from seedfed.shared.taskspec import TaskSpec, TaskSpecError
from seedfed.shared.wire import genesis_from, reason_of, record_of
from seedfed.v1 import coordinator_pb2 as pb
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger("seedfed.client")

RPC_TIMEOUT_S = 20.0
COMPUTE_DTYPES = ("float32", "bfloat16")


class ClientError(RuntimeError):
    """A problem retrying cannot fix: the user must act (wrong model, wrong task, bad data)."""


class SessionEnded(Exception):
    """The session must end and a new one start (stream closed, resync needed)."""


@dataclass
class ClientConfig:
    coordinator: str
    task_id: str
    data: str | Path
    cache: str | Path
    device: str = "cpu"
    model: str | None = None  # default: the genesis's base_model
    name: str | None = None  # stable device name; default: derived from the cache directory
    compute_dtype: str = "float32"
    weights: str = "auto"  # resident | streamed | auto (resident when the float buffer fits comfortably)
    master: str = "auto"  # on a GPU: device | host (pinned, blocks streamed to the device) | auto
    checkpoint_every: int = 10
    data_seed: int | None = None  # the local minibatch RNG; default derived from the name
    until_round: int | None = None  # leave cleanly after applying this round
    token: str | None = None
    tls_ca: str | None = None
    insecure: bool = True
    backoff_cap_s: float = 30.0


@dataclass
class Counters:
    bytes_sent: int = 0
    bytes_received: int = 0
    rounds_applied: int = 0
    rounds_worked: int = 0
    last_loss: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, sent: int = 0, received: int = 0) -> None:
        with self.lock:
            self.bytes_sent += sent
            self.bytes_received += received


class ClientDaemon:
    def __init__(self, config: ClientConfig, reporter: Reporter | None = None) -> None:
        if config.compute_dtype not in COMPUTE_DTYPES:
            raise ClientError(f"compute dtype must be one of {COMPUTE_DTYPES}")
        self.config = config
        self.reporter = reporter or Reporter(quiet=True)
        self.name = config.name or f"client-{hashlib.sha256(str(Path(config.cache).resolve()).encode()).hexdigest()[:12]}"
        self.counters = Counters()
        self._stop = threading.Event()
        self._stream: EventStream | None = None
        self.spec: TaskSpec | None = None
        self.replica: Replica | None = None
        self.client_id = ""
        self.confirmed_round = 0  # newest round whose digest the coordinator confirmed
        self._mismatches: set[tuple[int, str]] = set()  # (round, digest) reported as wrong once already

    # -- control -------------------------------------------------------------------
    def request_stop(self, signal_name: str | None = None) -> None:
        """Leave at the next opportunity: Leave, a final checkpoint, exit 0.

        From any thread, never from a signal handler: it writes an event and
        waits for the Sync stream to close (seedfed.client.signals relays signals).
        """
        if signal_name is not None:
            self._event("signal", signal=signal_name)
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def _event(self, event_name: str, /, **fields) -> None:
        self.reporter.event(event_name, **fields)

    # -- rpc helpers -----------------------------------------------------------------
    def _rpc(self, method, request, timeout: float = RPC_TIMEOUT_S):
        response = method(request, timeout=timeout)
        self.counters.add(sent=request.ByteSize(), received=response.ByteSize())
        return response

    # -- entry point ---------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; returns the exit code (0: left cleanly)."""
        cfg = self.config
        device = resolve_device(cfg.device)
        channel = open_channel(ChannelConfig(cfg.coordinator, token=cfg.token, tls_ca=cfg.tls_ca, insecure=cfg.insecure))
        stub = pb_grpc.CoordinatorStub(channel)
        backoff = Backoff(cap=cfg.backoff_cap_s)
        self._event("start", name=self.name, task=cfg.task_id, coordinator=cfg.coordinator, device=str(device))
        try:
            self.spec = self._retrying(lambda: self._fetch_genesis(stub), backoff)
            if self.spec is None:
                return 0
            self._prepare(device)
            backoff.reset()
            while not self._stop.is_set():
                try:
                    self._session(stub, backoff)
                except grpc.RpcError as exc:
                    if not is_retryable(exc) and not self._stop.is_set():
                        raise ClientError(f"the coordinator refused: {exc.code().name}: {exc.details()}") from None
                    reason = f"{exc.code().name}: {exc.details()}"
                except SessionEnded as exc:
                    reason = str(exc)
                except LedgerError as exc:
                    self._event("refused", reason=str(exc), head=self.replica.round)
                    log.error("refused a ledger record that does not extend the chain: %s", exc)
                    reason = "refused a bad ledger record"
                if self._stop.is_set() or self._reached_until():
                    break
                delay = backoff.next_delay()
                self._event("reconnecting", reason=reason, delay_s=round(delay, 2), head=self.replica.round)
                self._stop.wait(delay)
            return 0
        finally:
            self._shutdown(stub)
            channel.close()

    def _retrying(self, fn, backoff: Backoff):
        while not self._stop.is_set():
            try:
                return fn()
            except grpc.RpcError as exc:
                if not is_retryable(exc):
                    raise ClientError(f"the coordinator refused: {exc.code().name}: {exc.details()}") from None
                delay = backoff.next_delay()
                self._event("reconnecting", reason=f"{exc.code().name}: {exc.details()}", delay_s=round(delay, 2), head=0)
                self._stop.wait(delay)
        return None

    def _reached_until(self) -> bool:
        return self.config.until_round is not None and self.replica is not None and self.replica.round >= self.config.until_round

    # -- start-up ------------------------------------------------------------------
    def _fetch_genesis(self, stub) -> TaskSpec:
        """The genesis before joining: the base model and its digest depend on it."""
        resp = self._rpc(stub.GetLedger, pb.GetLedgerRequest(task_id=self.config.task_id, from_round=1, to_round=1))
        try:
            return genesis_from(resp.genesis, self.config.task_id)
        except (LedgerError, TaskSpecError) as exc:
            raise ClientError(f"bad genesis from the coordinator: {exc}") from None

    def _prepare(self, device) -> None:
        """Load the base (streamed into the master where it can be), check its digest, resume from
        the newest verified checkpoint, bind compute weights in the layout that fits."""
        import torch

        from seedfed.client.engine.memory import plan_layout
        from seedfed.client.engine.weights import bind_weights

        spec, cfg = self.spec, self.config
        examples = read_examples(cfg.data, spec.objective.kind, spec.objective.labels)
        reference = cfg.model or spec.base_model
        base = open_base(reference, spec.objective.kind)
        layout = plan_layout(base.manifest.total, device, getattr(torch, cfg.compute_dtype), cfg.weights, cfg.master)
        state = base.load_state(spec.task_seed, spec.unit_log2, layout.master_device, pin_memory=layout.pin)
        replica = Replica.from_state(spec, state)  # raises BaseDigestMismatch
        self.base = base
        self.store = CheckpointStore(cfg.cache, spec)
        if self.store.restore(replica):  # in place: no second copy of the state
            self._event("resumed", source="checkpoint", round=replica.round, seconds=round(self.store.restore_seconds, 3))
        else:
            self._event("resumed", source="base", round=0)
        self.replica = replica
        self.module = base.module
        self.weights = bind_weights(base.module, replica.state, layout)
        objective = build_objective(spec.objective, base.module, base.tokenizer, device)
        seed = (
            cfg.data_seed if cfg.data_seed is not None else int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:4], "big")
        )
        self.prober = Prober(replica, self.weights, objective, MinibatchSampler(examples, spec.batch_size, seed))
        self.examples = len(examples)  # claimed with each report; a task weighted by examples counts it
        self._event(
            "ready",
            examples=len(examples),
            parameters=int(replica.state.manifest.total),
            digest=replica.digest(),
            weights=layout.weights,
            master=str(layout.master_device),
        )

    # -- a session ----------------------------------------------------------------------
    def _join(self, stub) -> pb.JoinResponse:
        resp = self._rpc(stub.Join, pb.JoinRequest(task_id=self.spec.task_id, name=self.name, base_digest=self.spec.base_digest))
        spec = genesis_from(resp.genesis, self.spec.task_id)
        if spec.genesis_hash() != self.spec.genesis_hash():
            raise ClientError("the coordinator's genesis for this task changed: refusing to continue on a different task")
        self.client_id = resp.client_id
        self._event(
            "joined",
            client_id=resp.client_id,
            head_round=resp.head_round,
            first_work_round=resp.first_work_round,
            head=self.replica.round,
        )
        return resp

    def _check_start(self, stub, join: pb.JoinResponse) -> None:
        """The position held here must be a prefix of the coordinator's ledger; if not, start over from the base."""
        r = self.replica.round
        if r == 0:
            return
        problem = None
        if r > join.head_round:
            problem = f"local state is at round {r}, the coordinator's ledger ends at round {join.head_round}"
        else:
            resp = self._rpc(stub.GetLedger, pb.GetLedgerRequest(task_id=self.spec.task_id, from_round=r, to_round=r))
            if len(resp.rounds) != 1 or resp.rounds[0].round != r or bytes(resp.rounds[0].hash) != self.replica.head_hash:
                problem = f"local state at round {r} is not on the coordinator's hash chain"
        if problem:
            self._event("resync", reason=problem, to="base")
            log.error("%s: starting over from the base", problem)
            self.store.discard_after(0)
            self._reset(None)

    def _reset(self, source: Replica | None) -> None:
        """Move the replica in place to ``source`` (None: the base weights)."""
        if source is None:  # the base read again into the master in place: no second copy
            spec = self.spec
            self.replica.rebase(lambda state: self.base.load_state(spec.task_seed, spec.unit_log2, out=state))
        else:
            self.replica.reset_to(source)
        self.weights.refresh()

    def _session(self, stub, backoff: Backoff) -> None:
        join = self._join(stub)
        self._check_start(stub, join)
        lease = _LeaseKeeper(self, stub, max(1.0, join.lease_seconds / 3 if join.lease_seconds else 10.0))
        stream = EventStream(
            lambda: stub.Sync(
                pb.SyncRequest(task_id=self.spec.task_id, client_id=self.client_id, from_round=self.replica.round + 1)
            ),
            on_bytes=lambda n: self.counters.add(received=n),
        )
        self._stream = stream
        if self._stop.is_set():  # a stop that arrived before the stream existed
            stream.close()
        lease.start()
        pending: list[RoundRecord] = []
        pending_head = (self.replica.round, self.replica.head_hash)
        caught_up = False
        try:
            while not self._stop.is_set():
                ev = stream.get(timeout=0.5)
                if ev is None:
                    continue
                if ev is END:
                    raise SessionEnded("the coordinator closed the stream")
                if isinstance(ev, grpc.RpcError):
                    if self._stop.is_set():
                        return
                    raise ev
                if isinstance(ev, Exception):
                    raise SessionEnded(f"stream failed: {ev}")
                kind = ev.WhichOneof("event")
                if kind == "commit":
                    record = record_of(ev.commit)
                    if caught_up:
                        self._apply_live(stub, record)
                        backoff.reset()
                        if self._reached_until():
                            return
                    else:
                        # verified on arrival, so a bad record is refused at once, and again as a whole at CaughtUp
                        from seedfed.shared.ledger import verify_record

                        verify_record(pending_head[1], record, pending_head[0] + 1)
                        pending.append(record)
                        pending_head = (record.round, record.hash)
                elif kind == "caught_up":
                    self._finish_catch_up(stub, pending, ev.caught_up)
                    pending = []
                    caught_up = True
                    backoff.reset()
                    if self._reached_until():
                        return
                elif kind == "open":
                    if caught_up:
                        self._work(stub, ev.open)
        finally:
            lease.stop()
            self._stream = None
            stream.close()

    def _finish_catch_up(self, stub, pending: list[RoundRecord], marker: pb.CaughtUp) -> None:
        replica = self.replica
        stats = replica.catch_up(pending, progress=lambda done, total: self.reporter.progress(done, total, "catching up"))
        self.store.journal(pending)
        if stats.rounds:
            self.weights.refresh()
        if replica.round != marker.head_round or replica.head_hash != bytes(marker.head_hash):
            raise LedgerError(
                f"after catch-up the local head is round {replica.round}, "
                f"the coordinator's is round {marker.head_round} (or its hash differs)"
            )
        self.counters.rounds_applied += stats.rounds
        digest = replica.digest() if (stats.rounds or replica.round == 0) else None
        self._event(
            "caught_up",
            first_round=stats.first_round,
            last_round=stats.last_round,
            rounds=stats.rounds,
            replays=stats.replays,
            folded=stats.folded,
            seconds=round(stats.seconds, 3),
            head=replica.round,
            digest=digest,
        )
        if stats.rounds:
            self._checkpoint(digest)
            self._report_digest(stub, digest)

    def _apply_live(self, stub, record: RoundRecord) -> None:
        self.replica.apply(record)  # verifies first
        self.store.journal([record])
        self.weights.refresh()
        self.counters.rounds_applied += 1
        r = record.round
        digest = self.replica.digest() if r % self.spec.digest_every == 0 else None
        self._event(
            "round",
            round=r,
            entries=len(record.seeds),
            loss=self.counters.last_loss,
            digest=digest,
            bytes_sent=self.counters.bytes_sent,
            bytes_received=self.counters.bytes_received,
        )
        if digest is not None:
            self._report_digest(stub, digest)
        if self.config.checkpoint_every > 0 and r % self.config.checkpoint_every == 0:
            self._checkpoint(digest)

    def _report_digest(self, stub, digest: str) -> None:
        r = self.replica.round
        try:
            resp = self._rpc(
                stub.Heartbeat,
                pb.HeartbeatRequest(task_id=self.spec.task_id, client_id=self.client_id, digest_round=r, digest=digest),
            )
        except grpc.RpcError as exc:
            log.warning("digest report for round %d failed: %s", r, exc.code().name)
            return
        if resp.digest_ok:
            self.confirmed_round = r
            self._event("digest", round=r, digest=digest, ok=True)
            return
        self._event("digest_mismatch", round=r, digest=digest, expected=resp.expected_digest)
        if (r, digest) in self._mismatches:
            # A rebuild from verified history gave these same bytes again: they are the exact
            # function of base + ledger, so the reports the coordinator holds are what is wrong.
            self._event("digest_disputed", round=r, digest=digest, expected=resp.expected_digest)
            log.error(
                "round %d: a rebuild from the ledger gives digest %s again, the federation reports %s; keeping the rebuilt state",
                r,
                digest,
                resp.expected_digest,
            )
            return
        self._mismatches.add((r, digest))
        log.error("STATE DIGEST MISMATCH at round %d: local %s, federation %s; resyncing", r, digest, resp.expected_digest)
        self.store.discard_after(self.confirmed_round)
        restored = self.store.restore(self.replica)
        self._event("resync", reason="digest mismatch", to=f"checkpoint {self.replica.round}" if restored else "base")
        if restored:
            self.weights.refresh()
        else:
            self._reset(None)
        raise SessionEnded(f"digest mismatch at round {r}: resynced to round {self.replica.round}")

    def _work(self, stub, open_event: pb.RoundOpen) -> None:
        if open_event.round != self.replica.round + 1:
            log.info("skipping round %d: local head is %d", open_event.round, self.replica.round)
            return
        # No local deadline check: clocks differ; the coordinator answers "late" if it is.
        assignment = assignment_from(open_event, self.spec)
        result = self.prober.work(assignment)
        self.counters.last_loss = result.loss
        request = pb.SubmitRequest(
            task_id=self.spec.task_id,
            client_id=self.client_id,
            round=result.round,
            slot=result.slot,
            scalars=result.scalars,
            loss=result.loss if result.loss == result.loss else 0.0,
            examples=min(self.examples, 2**32 - 1) if self.spec.weighs_by_examples else 0,  # else unread
        )
        try:
            resp = self._rpc(stub.Submit, request)
        except grpc.RpcError as exc:
            # late, duplicate, wrong round, or a coordinator gone (the stream reports that): never fatal
            self._event("submit_refused", round=result.round, code=exc.code().name, reason=reason_of(exc), details=exc.details())
            return
        self.counters.rounds_worked += 1
        self._event(
            "submitted",
            round=result.round,
            slot=result.slot,
            seeds=len(assignment.seeds),
            loss=result.loss,
            seconds=round(result.seconds, 3),
            received=resp.received,
            expected=resp.expected,
        )

    def _checkpoint(self, digest: str | None = None) -> None:
        path = self.store.save(self.replica, digest)
        saved = self.store.last_saved
        self._event(
            "checkpoint",
            round=self.replica.round,
            path=str(path),
            kind=saved.kind,
            bytes=saved.bytes,
            seconds=round(saved.seconds, 3),
        )

    def _shutdown(self, stub) -> None:
        if self.client_id:
            try:
                self._rpc(stub.Leave, pb.LeaveRequest(task_id=self.spec.task_id, client_id=self.client_id), timeout=3.0)
            except grpc.RpcError:
                pass
        if self.replica is not None:
            digest = self.replica.digest()
            if self.replica.round > 0 and self.replica.round not in self.store.rounds():
                self._checkpoint(digest)
            self._event(
                "stopped",
                round=self.replica.round,
                digest=digest,
                bytes_sent=self.counters.bytes_sent,
                bytes_received=self.counters.bytes_received,
                rounds_applied=self.counters.rounds_applied,
                rounds_worked=self.counters.rounds_worked,
            )


class _LeaseKeeper:
    """Renews the lease while the main thread probes; failures are left to the Sync stream to report."""

    def __init__(self, daemon: ClientDaemon, stub, interval: float) -> None:
        self._daemon, self._stub, self._interval = daemon, stub, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="seedfed-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        d = self._daemon
        while not self._stop.wait(self._interval):
            try:
                d._rpc(self._stub.Heartbeat, pb.HeartbeatRequest(task_id=d.spec.task_id, client_id=d.client_id), timeout=5.0)
            except grpc.RpcError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=6)
