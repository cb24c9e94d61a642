"""Streamed compute weights: each block's float weights derived from the master just before it runs.

The module's parameters stay on the meta device (in the compute dtype, so
``model.dtype`` reads as it would with resident weights). A forward pre-hook
on every module that owns parameters derives them, plain or perturbed by
scale * z with z taken at the parameters' canonical offsets in the flat
index, into scratch reused from block to block; a forward hook releases
them. The values are those ``ComputeWeights`` would hold (the same kernels
at the same offsets), so losses and digests are the same bit for bit.

The derived tensors are resolved per thread (the parameter dicts of owning
modules answer each thread with its own), which lets the two passes of a
probe run at once in two threads (``dual``): they advance in lockstep, so a
block staged from a host master to the compute device crosses the bus once
per probe, as in ZO2.

Requirement on the model: a parameter is used inside the forward of the
module that owns it (true of the transformers models; a model that reaches
into another module's weights fails loudly on the meta tensor instead of
computing with wrong numbers).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from seedfed.client.engine import philox
from seedfed.client.engine.manifest import ManifestError, Slot
from seedfed.client.engine.state import FixedPointState

log = logging.getLogger("seedfed.client")

_ALIGN_BYTES = 512  # scratch views keep the alignment resident views have (kernels may choose paths by it)
DUAL_WINDOW = 2  # how many module calls one pass of a dual probe may run ahead of the other


class _ThreadParams(dict):
    """A module's parameter dict whose values each thread may override for itself: the meta
    parameters stay what named_parameters() sees, the derived tensors are what forward() gets."""

    __slots__ = ("_local",)

    def __init__(self, items) -> None:
        super().__init__(items)
        self._local = threading.local()

    def __getitem__(self, key):
        over = getattr(self._local, "values", None)
        if over is not None and key in over:
            return over[key]
        return dict.__getitem__(self, key)

    def override(self, values: dict[str, torch.Tensor] | None) -> None:
        self._local.values = values


@dataclass
class _Owner:
    index: int
    module: torch.nn.Module
    params: _ThreadParams
    names: list[str]  # local parameter names, in slot order
    slots: list[Slot]
    spans: list[Slot] = field(default_factory=list)  # runs of slots adjacent in the flat index: one kernel each

    def __post_init__(self) -> None:
        for slot in sorted(self.slots, key=lambda x: x.offset):
            last = self.spans[-1] if self.spans else None
            if last is not None and last.end == slot.offset:
                self.spans[-1] = Slot(last.name, (last.numel + slot.numel,), last.dtype, last.offset, last.numel + slot.numel)
            elif last is None or slot.offset >= last.end:  # (a tied weight held twice by one module: once)
                self.spans.append(Slot(slot.name, (slot.numel,), slot.dtype, slot.offset, slot.numel))

    def span_of(self, slot: Slot) -> int:
        return next(i for i, sp in enumerate(self.spans) if sp.offset <= slot.offset < sp.end)

    @property
    def numel(self) -> int:
        return sum(s.numel for s in self.spans)


class _Arena:
    """Scratch for derived weights, taken and given back in stack order (module calls nest)."""

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        with torch.inference_mode(False):  # usable inside and outside inference mode
            self.buffer = torch.empty(numel, dtype=dtype, device=device)
        self.dtype, self.device = dtype, device
        self.top = 0
        self.marks: list[int] = []
        self.modulus = max(1, _ALIGN_BYTES // dtype.itemsize)

    def mark(self) -> None:
        self.marks.append(self.top)

    def release(self) -> None:
        self.top = self.marks.pop()

    def take(self, slot: Slot) -> torch.Tensor:
        """A 1-d view for ``slot``, at the same alignment the slot has in a flat buffer."""
        pos = self.top + (slot.offset - self.top) % self.modulus
        if pos + slot.numel <= self.buffer.numel():
            self.top = pos + slot.numel
            return self.buffer[pos : pos + slot.numel]
        with torch.inference_mode(False):  # more nesting than planned: a fresh tensor, same alignment
            extra = torch.empty(slot.numel + self.modulus, dtype=self.dtype, device=self.device)
        skip = slot.offset % self.modulus
        return extra[skip : skip + slot.numel]


@dataclass
class _Staged:
    owner: int
    tensors: list[torch.Tensor]
    event: Any = None
    users: int = 1  # passes that will use it
    used: int = 0  # passes that took it


class _Staging:
    """int32 slices of the master copied to the compute device, keyed by call number; the next
    call's slices are copied ahead (on a side stream on CUDA) while the current block computes."""

    def __init__(self, weights: StreamedWeights, users: int) -> None:
        self.w = weights
        self.users = users
        self.entries: dict[int, _Staged] = {}
        self.lock = threading.Lock()

    def _copy(self, owner: _Owner) -> _Staged:
        flat, device = self.w.state.flat, self.w.device
        stream = self.w._copy_stream
        if stream is None:
            tensors = [torch.empty(s.numel, dtype=torch.int32, device=device).copy_(flat[s.offset : s.end]) for s in owner.spans]
            return _Staged(owner.index, tensors, None, self.users)
        with torch.cuda.stream(stream):
            tensors = [
                torch.empty(s.numel, dtype=torch.int32, device=device).copy_(flat[s.offset : s.end], non_blocking=True)
                for s in owner.spans
            ]
            event = torch.cuda.Event()
            event.record(stream)
        return _Staged(owner.index, tensors, event, self.users)

    def acquire(self, call: int, owner: _Owner) -> list[torch.Tensor]:
        with self.lock:
            if self.users == 1:  # one pass: copies guessed for calls that went another way are stale
                for stale in [k for k in self.entries if k < call]:
                    del self.entries[stale]
            entry = self.entries.get(call)
            if entry is not None and entry.owner != owner.index:
                if entry.used:
                    raise _Diverged(f"call {call}: the passes ran different modules")
                entry = None  # a wrong guess
            if entry is None:
                entry = self.entries[call] = self._copy(owner)
            entry.used += 1
            nxt = self.w._successor.get(owner.index)
            if nxt is not None and call + 1 not in self.entries:
                self.entries[call + 1] = self._copy(self.w._owners[nxt])
        if entry.event is not None:
            current = torch.cuda.current_stream(self.w.device)
            current.wait_event(entry.event)
            for t in entry.tensors:
                t.record_stream(current)  # the allocator keeps them until this stream is done with them
        return entry.tensors

    def release(self, call: int) -> None:
        with self.lock:
            entry = self.entries.get(call)
            if entry is not None:
                entry.users -= 1
                if entry.users <= 0:
                    del self.entries[call]

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


@dataclass
class _Frame:
    owner: int
    call: int
    staged: bool = False
    marked: bool = False


@dataclass
class _Lane:
    """One thread's view of a forward pass: its perturbation, scratch, call count and frames."""

    index: int
    seed: int | None = None
    scale: float = 0.0
    calls: int = 0
    frames: list[_Frame] = field(default_factory=list)
    staging: _Staging | None = None
    run: _DualRun | None = None
    last_owner: int | None = None


class _Diverged(RuntimeError):
    """The two passes of a dual probe called different modules: they cannot share staged blocks."""


class _Aborted(RuntimeError):
    """The other pass of a dual probe failed."""


class _DualRun:
    def __init__(self, weights: StreamedWeights) -> None:
        self.cond = threading.Condition()
        self.entered = [0, 0]
        self.finished = [False, False]
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.staging = _Staging(weights, users=2) if weights.staged else None

    def wait_turn(self, lane: int, call: int) -> None:
        other = 1 - lane
        with self.cond:
            self.entered[lane] = call + 1
            self.cond.notify_all()
            while self.error is None and not self.finished[other] and call - self.entered[other] >= DUAL_WINDOW:
                self.cond.wait()
            if self.error is not None:
                raise _Aborted("the other pass of the probe failed")

    def finish(self, lane: int, error: BaseException | None = None) -> None:
        with self.cond:
            self.finished[lane] = True
            if error is not None and self.error is None:
                self.error = error
            self.cond.notify_all()
        self.started.set()


class StreamedWeights:
    """Compute weights derived per block on each forward; same interface as ComputeWeights
    (``refresh()``, ``perturb(seed, scale)``, ``dtype``)."""

    def __init__(
        self,
        module: torch.nn.Module,
        state: FixedPointState,
        dtype: torch.dtype,
        device: torch.device,
        owners: list[_Owner],
        staged: bool,
        dual: bool,
    ) -> None:
        self.module = module
        self.state = state
        self._dtype = dtype
        self.device = device
        self._owners = owners
        self.staged = staged
        self.dual = dual
        self._copy_stream = torch.cuda.Stream(device) if staged and device.type == "cuda" else None
        self._successor: dict[int, int] = {}
        self._local = threading.local()
        self._main = _Lane(0, staging=_Staging(self, users=1) if staged else None)
        self._arenas: dict[int, _Arena] = {}
        self._arena_numel = _scratch_need(module, {id(o.module): o for o in owners})
        self._handles: list[Any] = []

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    # -- binding -------------------------------------------------------------------------
    @classmethod
    def bind(
        cls,
        module: torch.nn.Module,
        state: FixedPointState,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        *,
        staged: bool | None = None,
        dual: bool | None = None,
    ) -> StreamedWeights:
        """Hook ``module`` so its weights come from ``state`` on ``device`` (default: the state's).
        ``staged`` (default: master and compute on different devices) copies each block's slice of
        the master to the compute device before deriving it; ``dual`` (default: when staged on CUDA)
        runs a probe's two passes together so each block is copied once per probe."""
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"compute dtype {dtype} is not supported (float32, bfloat16, float16)")
        try:
            state.manifest.check_module(module)
        except ManifestError as exc:
            raise ManifestError(f"cannot bind: {exc}") from None
        device = torch.device(device) if device is not None else state.device
        if staged is None:
            staged = state.device != device
        elif not staged and state.device != device:
            raise ValueError(f"the master is on {state.device}, compute on {device}: blocks must be staged")
        if dual is None:
            dual = staged and device.type == "cuda"
        by_id = {id(p): name for name, p in module.named_parameters()}
        slots = {s.name: s for s in state.manifest.slots}
        metas: dict[str, torch.nn.Parameter] = {}  # one meta parameter per slot keeps tied weights tied
        owners: list[_Owner] = []
        for m in module.modules():
            own = [(name, p) for name, p in m._parameters.items() if p is not None]
            if not own:
                continue
            names, owner_slots, meta_items = [], [], {}
            for name, p in own:
                slot = slots[by_id[id(p)]]
                if slot.name not in metas:
                    metas[slot.name] = torch.nn.Parameter(
                        torch.empty(slot.shape, dtype=dtype, device="meta"), requires_grad=False
                    )
                names.append(name)
                owner_slots.append(slot)
                meta_items[name] = metas[slot.name]
            params = _ThreadParams({**dict(m._parameters), **meta_items})
            m._parameters = params
            owners.append(_Owner(len(owners), m, params, names, owner_slots))
        for m in module.modules():
            for name, b in list(m._buffers.items()):
                if b is not None and b.device != device:
                    m._buffers[name] = b.to(device)
        weights = cls(module, state, dtype, device, owners, staged, dual)
        for owner in owners:
            weights._handles.append(owner.module.register_forward_pre_hook(functools.partial(weights._pre, owner)))
            weights._handles.append(owner.module.register_forward_hook(functools.partial(weights._post, owner), always_call=True))
        return weights

    def unbind(self) -> None:
        """Remove the hooks (the parameters stay meta)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- what the next forward passes see ---------------------------------------------------
    def refresh(self) -> None:
        """Plain weights w = W * unit from the next forward on (derived when each block runs)."""
        self._main.seed, self._main.scale = None, 0.0

    def perturb(self, seed: int, scale: float) -> None:
        """w = W * unit + scale * z(seed) from the next forward on."""
        self._main.seed, self._main.scale = int(seed), float(scale)

    # -- hooks ----------------------------------------------------------------------------------
    def _lane(self) -> _Lane:
        return getattr(self._local, "lane", None) or self._main

    def _arena(self, lane: int) -> _Arena:
        arena = self._arenas.get(lane)
        if arena is None:
            arena = self._arenas[lane] = _Arena(self._arena_numel, self._dtype, self.device)
        return arena

    def _pre(self, owner: _Owner, module, args) -> None:
        lane = self._lane()
        call = lane.calls
        lane.calls += 1
        frame = _Frame(owner.index, call)
        lane.frames.append(frame)
        if lane.run is not None:
            lane.run.started.set()
            lane.run.wait_turn(lane.index, call)
        if lane.index == 0:  # learn the call order, so the next block is copied while this one runs
            if lane.last_owner is not None:
                self._successor[lane.last_owner] = owner.index
            lane.last_owner = owner.index
        if lane.staging is not None:
            sources = lane.staging.acquire(call, owner)
            frame.staged = True
        else:
            flat = self.state.flat
            sources = [flat[s.offset : s.end] for s in owner.spans]
        arena = self._arena(lane.index)
        arena.mark()
        frame.marked = True
        compiled = philox.compile_wanted(self.state.manifest.total)
        outs = []
        with torch.no_grad():
            for span, src in zip(owner.spans, sources):
                out = arena.take(span)
                # cut at the state's scope: z is 0 outside it
                for a, b, inside in self.state.pieces(span.offset, span.end):
                    part, from_ = out[a - span.offset : b - span.offset], src[a - span.offset : b - span.offset]
                    if lane.seed is None or not inside:
                        philox.write_scaled_(part, from_, self.state.unit, compiled=compiled, set_threads=lane.run is None)
                    else:
                        philox.write_perturbed_(
                            part,
                            from_,
                            self.state.unit,
                            self.state.task_seed,
                            lane.seed,
                            lane.scale,
                            first_element=a,
                            compiled=compiled,
                            set_threads=lane.run is None,
                        )
                outs.append(out)
        values: dict[str, torch.Tensor] = {}
        for name, slot in zip(owner.names, owner.slots):
            i = owner.span_of(slot)
            rel = slot.offset - owner.spans[i].offset
            values[name] = outs[i][rel : rel + slot.numel].view(slot.shape)
        owner.params.override(values)

    def _post(self, owner: _Owner, module, args, output) -> None:
        lane = self._lane()
        if not lane.frames or lane.frames[-1].owner != owner.index:
            return  # the pre-hook never ran for this call
        frame = lane.frames.pop()
        owner.params.override(None)
        if frame.marked:
            self._arena(lane.index).release()
        if frame.staged and lane.staging is not None:
            lane.staging.release(frame.call)

    # -- a probe's two passes together ------------------------------------------------------------
    def probe_pair(self, seed: int, eps: float, loss_fn: Callable[[], Any]) -> tuple[float, float]:
        """(L(w + eps z), L(w - eps z)) from two passes run together in lockstep; falls back to one
        pass after the other if the passes do not call the same modules in the same order."""
        if self._main.frames:
            raise RuntimeError("probe_pair inside a forward pass")
        run = _DualRun(self)
        results: list[Any] = [None, None]

        def work(lane_index: int, scale: float) -> None:
            lane = _Lane(lane_index, seed=int(seed), scale=scale, staging=run.staging, run=run)
            self._local.lane = lane
            try:
                if self.device.type == "cuda":
                    torch.cuda.set_device(self.device)  # a new thread starts on device 0
                with torch.no_grad():
                    results[lane_index] = float(loss_fn())
                run.finish(lane_index)
            except BaseException as exc:  # handed to the caller below
                run.finish(lane_index, exc)
            finally:
                for frame in reversed(lane.frames):
                    self._owners[frame.owner].params.override(None)
                self._local.lane = None

        plus = threading.Thread(target=work, args=(0, float(eps)), name="seedfed-probe-plus", daemon=True)
        minus = threading.Thread(target=work, args=(1, -float(eps)), name="seedfed-probe-minus", daemon=True)
        plus.start()
        run.started.wait()  # the minus pass starts once the plus pass is inside the model: its input is prepared
        minus.start()
        plus.join()
        minus.join()
        for arena in self._arenas.values():
            arena.top, arena.marks = 0, []
        if run.error is not None:
            if isinstance(run.error, _Diverged):
                log.warning("the two passes of a probe diverged; running them one after the other from now on")
                self.dual = False
                return self._sequential(seed, eps, loss_fn)
            raise run.error
        return results[0], results[1]

    def _sequential(self, seed: int, eps: float, loss_fn: Callable[[], Any]) -> tuple[float, float]:
        try:
            self.perturb(seed, eps)
            plus = float(loss_fn())
            self.perturb(seed, -eps)
            minus = float(loss_fn())
        finally:
            self.refresh()
        return plus, minus


def _scratch_need(module: torch.nn.Module, owners: dict[int, _Owner]) -> int:
    """Elements of scratch one pass needs: a module's own weights plus the largest need of the
    modules it calls (its children, one at a time), plus alignment room per tensor."""
    modulus = _ALIGN_BYTES  # elements; enough for any dtype's alignment modulus
    memo: dict[int, int] = {}

    def need(m: torch.nn.Module) -> int:
        if id(m) in memo:
            return memo[id(m)]
        o = owners.get(id(m))
        own = o.numel + modulus * len(o.spans) if o else 0
        memo[id(m)] = 0  # a module reachable from itself (never in practice) ends the recursion
        memo[id(m)] = own + max((need(c) for c in m.children()), default=0)
        return memo[id(m)]

    return need(module)
