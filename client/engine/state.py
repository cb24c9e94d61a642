"""The exact model state: int32 fixed-point master weights over the canonical flat index.

W0 = round(w0 / unit) with unit = 2**unit_log2; a ledger step (seed, q) adds
q * z(seed) with z in {-1, +1}. Integer addition is associative and exact, so
round-by-round replay, per-seed folded catch-up and revert of provisional
steps give the same bytes on every device. Overflow raises, never wraps.

The float weights a model computes with (``ComputeWeights``) are derived from
W and never written back.

A task may tune only some parameters (its genesis names them): the state's
``scope`` is then the flat-index ranges z covers, and z is 0 elsewhere. Each
element inside the scope takes the sign it has in the whole-model pass, so a
scope changes which weights move, never how.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterable, Iterator, Mapping

import torch

from seedfed.client.engine import philox
from seedfed.client.engine.manifest import Manifest, ManifestError
from seedfed.shared.steps import fold

INT32_LIMIT = 2**31 - 1  # |W| never exceeds this (so -W and |W| are always int32 too)
HEADROOM_LOG2 = 29  # choose_unit_log2 leaves max|W0| <= 2**29: two bits of room to grow
MIN_UNIT_LOG2 = -30  # finer units only add bits the base weights do not have
_PASS_CHUNK = 1 << 22  # elements per chunk for passes that need temporaries
# A scope range shorter than this joins one pass over all such ranges: a pass of its own costs a
# Philox call of fixed overhead, and a scope of biases and norms has dozens of short ranges.
SHORT_RANGE = 1 << 16
_STATE_FORMAT = "seedfed-fixed-point-state/v1"
_META_PREFIX = "seedfed.state."


class StateOverflowError(ArithmeticError):
    """A step would move some weight outside int32; the state is unchanged."""


def choose_unit_log2(module: torch.nn.Module) -> int:
    """The finest power-of-two unit (but not finer than 2**MIN_UNIT_LOG2) with max|W0| <= 2**HEADROOM_LOG2."""
    maxabs = 0.0
    for _, p in module.named_parameters():
        if p.numel():
            m = float(p.detach().abs().max().to(torch.float64))
            if not math.isfinite(m):
                raise ValueError("the base weights contain NaN or infinity")
            maxabs = max(maxabs, m)
    return unit_log2_for(maxabs)


def unit_log2_for(maxabs: float) -> int:
    """choose_unit_log2's rule, from the largest |w| of the base weights (computed however they are read)."""
    if maxabs == 0.0:
        return MIN_UNIT_LOG2
    mant, exp = math.frexp(maxabs)  # maxabs = mant * 2**exp, 0.5 <= mant < 1
    top = exp - 1 if mant == 0.5 else exp  # smallest e with maxabs <= 2**e
    return max(top - HEADROOM_LOG2, MIN_UNIT_LOG2)


class FixedPointState:
    """int32 master weights ``flat`` (one tensor over the manifest's flat index)."""

    def __init__(
        self,
        flat: torch.Tensor,
        manifest: Manifest,
        unit_log2: int,
        task_seed: int,
        *,
        bound: int | None = None,
        scope: tuple[tuple[int, int], ...] | None = None,
    ):
        if flat.dtype != torch.int32 or flat.dim() != 1 or flat.numel() != manifest.total:
            raise ValueError(f"flat must be a 1-d int32 tensor of {manifest.total} elements")
        self.flat = flat
        self.manifest = manifest
        self.unit_log2 = int(unit_log2)
        self.task_seed = int(task_seed)
        # An upper bound on max|W|, raised by |q| per step and recomputed only
        # near the limit: overflow is excluded without a pass per apply.
        self._bound = self._true_max() if bound is None else int(bound)
        self._bound_version = flat._version
        self._digest_cache: tuple[int, str] | None = None
        self.scope: tuple[tuple[int, int], ...] | None = None  # None: every element; else the ranges z covers
        self.short: ShortRanges | None = None  # the scope's short ranges, drawn in one pass
        if scope is not None:
            self.restrict(scope)

    @property
    def device(self) -> torch.device:
        return self.flat.device

    @property
    def unit(self) -> float:
        return math.ldexp(1.0, self.unit_log2)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_module(cls, module: torch.nn.Module, unit_log2: int, task_seed: int, device="cpu") -> FixedPointState:
        manifest = Manifest.from_module(module)
        params = dict(module.named_parameters())
        flat = torch.empty(manifest.total, dtype=torch.int32, device=device)
        scale = math.ldexp(1.0, -int(unit_log2))
        for slot in manifest.slots:
            # float64 holds every fp32/bf16/fp16 value exactly; * 2**-unit_log2 is exact; round half to even
            w = torch.round(params[slot.name].detach().to(device=device, dtype=torch.float64).reshape(-1) * scale)
            if not bool(torch.isfinite(w).all()) or float(w.abs().max()) > INT32_LIMIT:
                raise StateOverflowError(
                    f"parameter {slot.name} does not fit int32 at unit 2**{unit_log2}; use a coarser unit (choose_unit_log2)"
                )
            flat[slot.offset : slot.end] = w.to(torch.int32)
        return cls(flat, manifest, unit_log2, task_seed)

    def copy(self) -> FixedPointState:
        return self._with_flat(self.flat.clone())

    def to(self, device) -> FixedPointState:
        if torch.device(device) == self.device:
            return self
        return self._with_flat(self.flat.to(device))

    def _with_flat(self, flat: torch.Tensor) -> FixedPointState:
        return FixedPointState(flat, self.manifest, self.unit_log2, self.task_seed, bound=self._current_bound(), scope=self.scope)

    # -- scope ------------------------------------------------------------------------
    def restrict(self, spans: tuple[tuple[int, int], ...]) -> None:
        """From now on z covers only ``spans`` (from Manifest.spans): the task tunes those parameters."""
        total = self.flat.numel()
        inside = all(0 <= a < b <= total for a, b in spans)
        ordered = all(b <= a2 for (_, b), (a2, _) in zip(spans, spans[1:]))
        if not spans or not inside or not ordered:
            raise ValueError(f"a scope is one or more sorted, disjoint, non-empty ranges inside [0, {total})")
        self.scope = tuple(spans)
        short = [(a, b) for a, b in spans if b - a < SHORT_RANGE]
        self.short = ShortRanges(short, self.device) if short else None

    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The ranges z covers: the scope, or the whole flat index."""
        return self.scope if self.scope is not None else ((0, self.flat.numel()),)

    def long_ranges(self) -> tuple[tuple[int, int], ...]:
        """The ranges z covers that are passed one by one; the rest are ``short``'s."""
        return tuple((a, b) for a, b in self.ranges() if b - a >= SHORT_RANGE or self.short is None)

    def pieces(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """[start, end) cut at the scope's edges: (a, b, inside) in order, covering it exactly."""
        at = start
        for a, b in self.ranges():
            a, b = max(a, start), min(b, end)
            if a >= b:
                continue
            if at < a:
                yield at, a, False
            yield a, b, True
            at = b
        if at < end:
            yield at, end, False

    # -- identity -------------------------------------------------------------------
    def digest(self) -> str:
        """sha256(manifest bytes || W as little-endian int32), hashed from CPU bytes: the same on every device."""
        version = self.flat._version
        if self._digest_cache is not None and self._digest_cache[0] == version:
            return self._digest_cache[1]
        h = hashlib.sha256(self.manifest.canonical_bytes())
        for start in range(0, self.flat.numel(), _PASS_CHUNK * 4):
            part = self.flat[start : start + _PASS_CHUNK * 4].cpu().numpy()
            if sys.byteorder != "little":
                part = part.astype("<i4")
            h.update(memoryview(part).cast("B"))
        value = h.hexdigest()
        self._digest_cache = (version, value)
        return value

    # -- ledger steps -----------------------------------------------------------------
    def apply(self, entries: Mapping[int, int]) -> None:
        """W += q * z(seed) for every (seed, q). Raises StateOverflowError (leaving W
        unchanged) if any weight would leave [-(2**31 - 1), 2**31 - 1]."""
        items = [(int(s), int(q)) for s, q in sorted(entries.items()) if int(q) != 0]
        if not items:
            return
        for s, _ in items:
            if not 0 <= s < 2**32:
                raise ValueError(f"seed index {s} is not a 32-bit unsigned integer")
        need = sum(abs(q) for _, q in items)
        if not self._reserve(need):
            self._apply_checked(items)
            return
        for seed, q in items:
            for a, b in self.long_ranges():
                philox.add_signs_(self.flat[a:b], self.task_seed, seed, q, first_element=a)
            if self.short is not None:
                q_t = torch.tensor(q, dtype=torch.int32, device=self.device)
                self.flat.index_add_(0, self.short.elements, torch.where(self.short.negative(self.task_seed, seed), -q_t, q_t))
        self._bound_version = self.flat._version

    def revert(self, entries: Mapping[int, int]) -> None:
        """The exact inverse of apply(entries)."""
        self.apply({s: -q for s, q in entries.items()})

    def apply_history(self, rounds: Iterable[Mapping[int, int]], fold: bool = True) -> None:
        """Apply rounds in order; with fold, sum the steps per seed first (one pass per seed)."""
        if fold:
            self.apply(_fold(rounds))
        else:
            for entries in rounds:
                self.apply(entries)

    # -- overflow control -----------------------------------------------------------------
    def _true_max(self) -> int:
        if self.flat.numel() == 0:
            return 0
        lo, hi = torch.aminmax(self.flat)
        return max(-int(lo), int(hi))

    def _current_bound(self) -> int:
        if self.flat._version != self._bound_version:  # written from outside (copy_, load): re-measure
            self._bound = self._true_max()
            self._bound_version = self.flat._version
        return self._bound

    def _reserve(self, need: int) -> bool:
        """True if adding steps of total magnitude ``need`` cannot overflow (and books it)."""
        bound = self._current_bound()
        if bound + need > INT32_LIMIT:
            bound = self._bound = self._true_max()
        if bound + need > INT32_LIMIT:
            return False
        self._bound = bound + need
        return True

    def _exact_sums(self, items: list[tuple[int, int]], start: int, end: int) -> torch.Tensor:
        acc = self.flat[start:end].to(torch.int64)
        for seed, q in items:
            z = philox.rademacher(self.task_seed, seed, end - start, self.device, first_element=start)
            acc += z.to(torch.int64) * q
        return acc

    def _apply_checked(self, items: list[tuple[int, int]]) -> None:
        """Near the int32 limit: check every element exactly (in int64) before writing anything."""
        if sum(abs(q) for _, q in items) > 2**62:
            raise StateOverflowError(f"steps {dict(items)} cannot fit any int32 weight")
        chunks = [(s, min(s + _PASS_CHUNK, b)) for a, b in self.ranges() for s in range(a, b, _PASS_CHUNK)]
        for start, end in chunks:
            out = self._exact_sums(items, start, end).abs() > INT32_LIMIT
            if bool(out.any()):
                i = start + int(out.nonzero()[0, 0])
                slot = next(s for s in self.manifest.slots if s.offset <= i < s.end)
                raise StateOverflowError(
                    f"applying steps {dict(items)} would overflow int32 at flat element {i} "
                    f"({slot.name}[{i - slot.offset}]); the state is unchanged. The fixed-point unit "
                    f"2**{self.unit_log2} leaves too little room for these steps: lower lr or use a coarser unit."
                )
        for start, end in chunks:
            self.flat[start:end] = self._exact_sums(items, start, end).to(torch.int32)
        self._bound = self._true_max()
        self._bound_version = self.flat._version

    # -- files --------------------------------------------------------------------------
    def save(self, path, meta: Mapping[str, str] | None = None) -> None:
        """safetensors file with W and everything needed to check it on load."""
        from safetensors.torch import save_file

        metadata = {str(k): str(v) for k, v in (meta or {}).items()}
        metadata.update(
            {
                _META_PREFIX + "format": _STATE_FORMAT,
                _META_PREFIX + "manifest": self.manifest.to_json(),
                _META_PREFIX + "unit_log2": str(self.unit_log2),
                _META_PREFIX + "task_seed": str(self.task_seed),
                _META_PREFIX + "digest": self.digest(),
            }
        )
        save_file({"W": self.flat.detach().cpu().contiguous()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path, device="cpu") -> tuple[FixedPointState, dict[str, str]]:
        """Read a saved state; raises ValueError if the file is not one or its bytes do not match its digest."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                metadata = dict(fh.metadata() or {})
                flat = fh.get_tensor("W")
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable state file ({exc})") from None
        if metadata.get(_META_PREFIX + "format") != _STATE_FORMAT:
            raise ValueError(f"{path}: not a {_STATE_FORMAT} file")
        try:
            manifest = Manifest.from_json(metadata[_META_PREFIX + "manifest"])
            state = cls(
                flat.to(device), manifest, int(metadata[_META_PREFIX + "unit_log2"]), int(metadata[_META_PREFIX + "task_seed"])
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: bad state metadata ({exc})") from None
        if state.digest() != metadata.get(_META_PREFIX + "digest"):
            raise ValueError(f"{path}: the weights do not match the digest stored with them (corrupt file)")
        return state, {k: v for k, v in metadata.items() if not k.startswith(_META_PREFIX)}


class ShortRanges:
    """The short ranges of a scope as one set of elements, with where each one's sign sits among
    the signs of the Philox blocks they touch: one generator call covers them all."""

    def __init__(self, spans: list[tuple[int, int]], device) -> None:
        elements = torch.cat([torch.arange(a, b, dtype=torch.int64) for a, b in spans])
        blocks, rank = torch.unique(elements // philox.BLOCK_ELEMENTS, return_inverse=True)
        self.elements = elements.to(device)
        self.blocks = blocks.to(device)
        self.places = (rank * philox.BLOCK_ELEMENTS + elements % philox.BLOCK_ELEMENTS).to(device)

    def negative(self, task_seed: int, seed: int) -> torch.Tensor:
        """bool per element, True where z(seed) = -1: the signs the whole-model pass gives them."""
        return philox.negative_at_blocks(task_seed, seed, self.blocks)[self.places]


def _fold(rounds: Iterable[Mapping[int, int]]) -> dict[int, int]:
    return fold(rounds)


class ComputeWeights:
    """The float weights of a module, derived from a state: the module's parameters
    become views of one flat buffer, so refresh and perturb are single passes."""

    def __init__(self, module: torch.nn.Module, state: FixedPointState, buffer: torch.Tensor):
        self.module = module
        self.state = state
        self.buffer = buffer

    @property
    def dtype(self) -> torch.dtype:
        return self.buffer.dtype

    @classmethod
    def bind(cls, module: torch.nn.Module, state: FixedPointState, dtype: torch.dtype = torch.float32) -> ComputeWeights:
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"compute dtype {dtype} is not supported (float32, bfloat16, float16)")
        try:
            params = state.manifest.check_module(module)
        except ManifestError as exc:
            raise ManifestError(f"cannot bind: {exc}") from None
        buffer = torch.empty(state.manifest.total, dtype=dtype, device=state.device)
        replaced: dict[int, torch.nn.Parameter] = {}
        for slot in state.manifest.slots:
            p = params[slot.name]
            view = buffer[slot.offset : slot.end].view(slot.shape)
            if p.is_meta:  # a module built without weights: new parameters (tensor types differ)
                replaced[id(p)] = torch.nn.Parameter(view, requires_grad=False)
            else:
                p.data = view
        if replaced:  # every module holding one of them, so tied weights stay tied
            for m in module.modules():
                for name, p in list(m._parameters.items()):
                    if p is not None and id(p) in replaced:
                        m._parameters[name] = replaced[id(p)]
        module.to(state.device)  # buffers (masks, position ids) follow; parameters are already there
        weights = cls(module, state, buffer)
        weights.refresh()
        return weights

    def refresh(self) -> None:
        """w = float32(W) * unit (rounded to the buffer's dtype)."""
        with torch.no_grad():
            philox.write_scaled_(self.buffer, self.state.flat, self.state.unit)

    def perturb(self, seed: int, scale: float) -> None:
        """w = float32(W) * unit + scale * z(seed): computed from W, so no drift accumulates. Only
        the state's scope is written: outside it z is 0 and the buffer already holds the plain
        weights (every change to W is followed by a refresh)."""
        state = self.state
        with torch.no_grad():
            for a, b in state.long_ranges():
                philox.write_perturbed_(
                    self.buffer[a:b], state.flat[a:b], state.unit, state.task_seed, seed, scale, first_element=a
                )
            short = state.short
            if short is not None:  # the same two float32 terms and one rounding as write_perturbed_
                unit_t = torch.tensor(state.unit, dtype=torch.float32, device=state.device)
                scale_t = torch.tensor(scale, dtype=torch.float32, device=state.device)
                step = torch.where(short.negative(state.task_seed, seed), -scale_t, scale_t)
                value = state.flat[short.elements].to(torch.float32) * unit_t + step
                self.buffer[short.elements] = value.to(self.buffer.dtype)
