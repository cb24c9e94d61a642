"""Philox4x32-10 over integer tensors: the perturbation generator of the engine.

The same Python code runs eagerly or through torch.compile, on CPU or CUDA,
and gives the same bits everywhere: it uses only integer additions, shifts,
masks, xors and multiplications whose results fit in int64 (uint32 values
are held in int64 tensors; each multiplier is split as 2**31 + m' so the
32x32 -> 64 bit product never overflows). ``philox`` is the scalar
reference.

Layout of the draws (published in tests/vectors/):
- key = (task_seed, ledger seed index); counter = (block & 0xffffffff,
  block >> 32, stream, 0).
- signs (stream STREAM_SIGNS): flat element i takes bit i % 32 of word
  (i % 128) // 32 of block i // 128; a set bit means -1.
- uniforms (stream STREAM_ELEMENT_UNIFORM): flat element i takes word i % 4
  of block i // 4, divided by 2**32.

Compilation: SEEDFED_COMPILE=0 forces eager, =1 compiles everything, unset
("auto") compiles only for large tensors, where it pays for itself. If
compilation fails the engine warns once and stays eager: both paths compute
the same integers, so the choice never changes a bit.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from seedfed.shared.philox import (
    MASK32,
    PHILOX_M0,
    PHILOX_M1,
    PHILOX_W0,
    PHILOX_W1,
    ROUNDS,
    STREAM_ELEMENT_UNIFORM,
    STREAM_SIGNS,
)

BLOCK_ELEMENTS = 128  # signs per Philox call: 4 words x 32 bits
COMPILE_MIN_ELEMENTS = 1 << 22  # "auto" compiles from this many elements up
# Blocks per chunk: large enough that per-call overhead vanishes, small enough
# that the temporaries (words, philox state) stay a small fraction of W.
COMPILED_CHUNK_BLOCKS = 1 << 19
EAGER_CHUNK_BLOCKS = 1 << 15  # eager: fewer, larger ops (per-op overhead dominates); temporaries ~16 MB

_ROUNDS_PER_CALL = 5  # inductor inlines each round into the next: compiling all 10 as one expression takes many minutes
_compile_broken = False
_compiled: dict[str, Callable[..., Any]] = {}


# -- the arithmetic ---------------------------------------------------------------


_M0_LOW31 = PHILOX_M0 - (1 << 31)  # both multipliers have their top bit set
_M1_LOW31 = PHILOX_M1 - (1 << 31)


def _mulhilo(m_low31: int, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of m * c for m = 2**31 + m_low31 and c a uint32 held in int64.

    a = c * m_low31 < 2**63 fits int64, and
    m * c = a + c * 2**31 = ((a >> 32) + (c >> 1)) * 2**32 + t
    with t = (a & 0xffffffff) + (c & 1) * 2**31 < 2**33. One multiply, no overflow.
    """
    a = c * m_low31
    t = (a & MASK32) + ((c & 1) << 31)
    high = (a >> 32) + (c >> 1) + (t >> 32)
    low = t & MASK32
    return high, low


def _philox_cols(c0, c1, c2, c3, k0, k1) -> torch.Tensor:
    """_ROUNDS_PER_CALL Philox rounds; (k0, k1) is the key of the first of them. Returns the (4, n) state."""
    for r in range(_ROUNDS_PER_CALL):
        if r:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        h0, l0 = _mulhilo(_M0_LOW31, c0)
        h1, l1 = _mulhilo(_M1_LOW31, c2)
        c0, c1, c2, c3 = h1 ^ c1 ^ k0, l1, h0 ^ c3 ^ k1, l0
    return torch.stack((c0, c1, c2, c3))


def _philox_rounds(state: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor) -> torch.Tensor:
    return _philox_cols(state[0], state[1], state[2], state[3], k0, k1)


def _philox_first_rounds(block0: torch.Tensor, n: int, stream: int, k0: torch.Tensor, k1: torch.Tensor) -> torch.Tensor:
    """Counters (block & 0xffffffff, block >> 32, stream, 0) for n blocks from block0, then the first rounds."""
    block = block0 + torch.arange(n, dtype=torch.int64, device=block0.device)
    # the constant words stay 0-d: their products in the first round are scalars, not vectors
    zero = block0 * 0
    return _philox_cols(block & MASK32, block >> 32, zero + stream, zero, k0, k1)


def _signed32(words: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 -> the int32 with the same bits (exact, no wrapping cast)."""
    return (words - ((words >> 31) << 32)).to(torch.int32)


_BIT_MASKS: dict[torch.device, torch.Tensor] = {}


def _bit_masks(device) -> torch.Tensor:
    """int32 1 << j for j in 0..31 (bit 31 is -2**31): an and + compare vectorises better than a variable shift."""
    device = torch.device(device)
    if device not in _BIT_MASKS:
        _BIT_MASKS[device] = torch.tensor(
            [(1 << j) - (1 << 32 if j == 31 else 0) for j in range(32)], dtype=torch.int32, device=device
        )
    return _BIT_MASKS[device]


def _sign_set(words4: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(4, nb) words -> (nb, 4, 32) bool, True where z = -1; bit j of word w of a block is its element 32*w + j."""
    return (_signed32(words4).T.unsqueeze(-1) & masks) != 0


def _add_signs_kernel(w3: torch.Tensor, words4: torch.Tensor, masks: torch.Tensor, q: torch.Tensor) -> None:
    """w3 (nb, 4, 32) int32 += q * z, z = -1 where the bit is set."""
    w3.add_(torch.where(_sign_set(words4, masks), -q, q))


def _perturbed_kernel(
    out3: torch.Tensor, w3: torch.Tensor, words4: torch.Tensor, masks: torch.Tensor, unit: torch.Tensor, scale: torch.Tensor
) -> None:
    """out3 = float32(w3) * unit + scale * z, rounded once to out3's dtype.
    float32(W) * unit is exact (unit is a power of two), scale * z is exact, so
    the only rounding is the sum's (and the cast's): identical with or without FMA."""
    step = torch.where(_sign_set(words4, masks), -scale, scale)
    out3.copy_(w3.to(torch.float32) * unit + step)


def _scaled_kernel(out: torch.Tensor, w: torch.Tensor, unit: torch.Tensor) -> None:
    """out = float32(w) * unit (exact product), rounded once to out's dtype."""
    out.copy_(w.to(torch.float32) * unit)


_BYTE_SIGNS: dict[torch.device, torch.Tensor] = {}
_BYTE_SHIFTS: dict[torch.device, torch.Tensor] = {}


def _byte_sign_set(device) -> torch.Tensor:
    """(256, 8) bool: bit j of byte b is set (z = -1)."""
    device = torch.device(device)
    if device not in _BYTE_SIGNS:
        b = torch.arange(256, device=device).unsqueeze(1)
        _BYTE_SIGNS[device] = ((b >> torch.arange(8, device=device)) & 1) == 1
        _BYTE_SHIFTS[device] = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=device)
    return _BYTE_SIGNS[device]


def _table_gather(words4: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Per element of the blocks, table[byte][bit]: (nb * 128,) in element order.
    Eager code pays per operation, so one gather over bytes beats unpacking bits."""
    _byte_sign_set(words4.device)
    byte = (words4.T.unsqueeze(-1) >> _BYTE_SHIFTS[words4.device]) & 255  # (nb, 4 words, 4 bytes)
    return table[byte.reshape(-1)].reshape(-1)


def _add_signs_eager(w3: torch.Tensor, words4: torch.Tensor, masks: torch.Tensor, q: torch.Tensor) -> None:
    """Same result as _add_signs_kernel, in few eager operations: a (256, 8) table of +-q per byte."""
    neg = _byte_sign_set(words4.device)
    step = torch.where(neg, -q, q)
    w3.add_(_table_gather(words4, step).view(w3.shape))


def _perturbed_eager(
    out3: torch.Tensor, w3: torch.Tensor, words4: torch.Tensor, masks: torch.Tensor, unit: torch.Tensor, scale: torch.Tensor
) -> None:
    """Same result as _perturbed_kernel: the same two float32 terms, one rounding."""
    neg = _byte_sign_set(words4.device)
    step = torch.where(neg, -scale, scale)
    out3.copy_(w3.to(torch.float32) * unit + _table_gather(words4, step).view(w3.shape))


# -- eager or compiled ------------------------------------------------------------------


def compile_wanted(numel: int) -> bool:
    """Whether the kernels for a tensor of ``numel`` elements run compiled."""
    if _compile_broken:
        return False
    mode = os.environ.get("SEEDFED_COMPILE", "auto").strip().lower()
    if mode in ("0", "false", "no", "off", "eager"):
        return False
    if mode in ("1", "true", "yes", "on", "always"):
        return True
    return numel >= COMPILE_MIN_ELEMENTS


def _cpu_threads() -> int:
    try:
        return max(1, int(os.environ.get("SEEDFED_CPU_THREADS", "1")))
    except ValueError:
        return 1


@contextlib.contextmanager
def _cpu_passes(device, enabled: bool = True):
    """Eager passes on the CPU run on SEEDFED_CPU_THREADS threads too (restored afterwards).
    Not ``enabled`` where other threads compute meanwhile: torch's thread count is global, and
    reductions split their work by it, so changing it under them could change their bits."""
    if not enabled or torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    wanted = min(_cpu_threads(), before)
    if wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _kernel(name: str, fn: Callable[..., Any], compiled: bool) -> Callable[..., Any]:
    if not compiled:
        return fn
    if name not in _compiled:
        # automatic dynamic: only the block count varies. CPU kernels run on
        # SEEDFED_CPU_THREADS threads (default 1): one thread already streams W at
        # memory speed, and on a busy machine every OpenMP barrier waits for a
        # descheduled worker (measured: 2 threads were 2-7x slower under load).
        options = {"cpp.threads": _cpu_threads()}
        _compiled[name] = torch.compile(fn, fullgraph=True, options=options)
    return _compiled[name]


def _run(name: str, fn: Callable[..., Any], compiled: bool, *args: Any, eager: Callable[..., Any] | None = None) -> Any:
    """Run ``fn`` compiled if asked, else ``eager`` (default ``fn``): both compute the same
    integers. On a compile failure warn once and run eagerly from then on."""
    global _compile_broken
    if compiled and not _compile_broken:
        try:
            return _kernel(name, fn, True)(*args)
        except Exception as exc:  # inductor needs a C++ compiler (CPU) or triton (CUDA)
            _compile_broken = True
            warnings.warn(
                f"seedfed: torch.compile failed ({type(exc).__name__}: {exc}); using the eager kernels, which give the same bits",
                RuntimeWarning,
                stacklevel=3,
            )
    return (eager or fn)(*args)


# -- public generator ------------------------------------------------------------------


def _key_schedule(k: Any, bump: int, r: int) -> Any:
    return (k + r * bump) & MASK32


def philox4x32_tensor(
    c0, c1, c2, c3, k0, k1, *, compiled: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 elementwise: int64 tensors (or ints) holding uint32 values; broadcasts."""
    tensors = [x for x in (c0, c1, c2, c3, k0, k1) if isinstance(x, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")

    def as_u32(x: Any) -> torch.Tensor:
        t = x if isinstance(x, torch.Tensor) else torch.tensor(int(x), dtype=torch.int64)
        return t.to(device=device, dtype=torch.int64) & MASK32

    c = [as_u32(x) for x in (c0, c1, c2, c3)]
    k = [as_u32(x) for x in (k0, k1)]
    shape = torch.broadcast_shapes(*(t.shape for t in c + k))
    state = torch.stack([t.expand(shape).reshape(-1) for t in c])
    k0t, k1t = (t.expand(shape).reshape(-1) for t in k)
    if compiled is None:
        compiled = compile_wanted(state.shape[1] * BLOCK_ELEMENTS)
    for r in range(0, ROUNDS, _ROUNDS_PER_CALL):
        state = _run(
            "philox_rounds", _philox_rounds, compiled, state, _key_schedule(k0t, PHILOX_W0, r), _key_schedule(k1t, PHILOX_W1, r)
        )
    return tuple(w.reshape(shape) for w in state.unbind(0))  # type: ignore[return-value]


def _stream_words4(
    task_seed: int, seed: int, first_block: int, n_blocks: int, stream: int, device, compiled: bool | None
) -> torch.Tensor:
    """(4, n_blocks) words of one stream; the counters are built inside the first kernel."""
    if compiled is None:
        compiled = compile_wanted(n_blocks * BLOCK_ELEMENTS)

    def scalar(v: int) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.int64, device=device)

    block0 = scalar(first_block)
    state = _run(
        "philox_first",
        _philox_first_rounds,
        compiled,
        block0,
        n_blocks,
        stream,
        scalar(task_seed & MASK32),
        scalar(seed & MASK32),
    )
    for r in range(_ROUNDS_PER_CALL, ROUNDS, _ROUNDS_PER_CALL):
        k0 = scalar(_key_schedule(task_seed & MASK32, PHILOX_W0, r))
        k1 = scalar(_key_schedule(seed & MASK32, PHILOX_W1, r))
        state = _run("philox_rounds", _philox_rounds, compiled, state, k0, k1)
    return state


def sign_words(
    task_seed: int, seed: int, first_block: int, n_blocks: int, device="cpu", *, compiled: bool | None = None
) -> torch.Tensor:
    """(n_blocks, 4) int64 words of stream STREAM_SIGNS for blocks [first_block, first_block + n_blocks)."""
    return _stream_words4(task_seed, seed, first_block, n_blocks, STREAM_SIGNS, device, compiled).T.contiguous()


def rademacher(
    task_seed: int, seed: int, numel: int, device="cpu", first_element: int = 0, *, compiled: bool | None = None
) -> torch.Tensor:
    """int32 +-1 for flat elements [first_element, first_element + numel)."""
    if numel <= 0:
        return torch.zeros(0, dtype=torch.int32, device=device)
    b0 = first_element // BLOCK_ELEMENTS
    b1 = (first_element + numel - 1) // BLOCK_ELEMENTS + 1
    words4 = _stream_words4(task_seed, seed, b0, b1 - b0, STREAM_SIGNS, device, compiled)
    z = 1 - 2 * _sign_set(words4, _bit_masks(device)).reshape(-1).to(torch.int32)
    skip = first_element - b0 * BLOCK_ELEMENTS
    return z[skip : skip + numel].contiguous()


def uniforms(
    task_seed: int, seed: int, numel: int, device="cpu", first_element: int = 0, *, compiled: bool | None = None
) -> torch.Tensor:
    """float64 in [0, 1) for flat elements [first_element, first_element + numel): word i % 4 of block i // 4, / 2**32."""
    if numel <= 0:
        return torch.zeros(0, dtype=torch.float64, device=device)
    b0 = first_element // 4
    b1 = (first_element + numel - 1) // 4 + 1
    words = _stream_words4(task_seed, seed, b0, b1 - b0, STREAM_ELEMENT_UNIFORM, device, compiled).T.reshape(-1)
    skip = first_element - b0 * 4
    return words[skip : skip + numel].to(torch.float64) / 4294967296.0


def negative_at_blocks(task_seed: int, seed: int, blocks: torch.Tensor) -> torch.Tensor:
    """(len(blocks) * 128,) bool, True where z = -1, for the given Philox blocks (int64, any
    order): element i of block b sits at 128 * (b's position) + i. One call for scattered blocks,
    such as the short ranges of a trainable scope."""
    words = philox4x32_tensor(blocks & MASK32, blocks >> 32, STREAM_SIGNS, 0, task_seed, seed, compiled=False)
    return _sign_set(torch.stack(words), _bit_masks(blocks.device)).reshape(-1)


# -- fused passes over a flat buffer ------------------------------------------------------


def sign_chunks(
    task_seed: int, seed: int, total: int, device, compiled: bool, first_block: int = 0
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(first element, element count, (4, nb) words) over [0, total) of a range that starts at
    Philox block ``first_block``, chunk by chunk; the last chunk may end inside a block (count not
    a multiple of 128). Element positions are relative to the range."""
    n_blocks = -(-total // BLOCK_ELEMENTS)
    step = COMPILED_CHUNK_BLOCKS if compiled else EAGER_CHUNK_BLOCKS
    for b0 in range(0, n_blocks, step):
        nb = min(step, n_blocks - b0)
        words4 = _stream_words4(task_seed, seed, first_block + b0, nb, STREAM_SIGNS, device, compiled)
        start = b0 * BLOCK_ELEMENTS
        yield start, min(nb * BLOCK_ELEMENTS, total - start), words4


def _head_steps(task_seed: int, seed: int, first_element: int, head: int, step: torch.Tensor) -> torch.Tensor:
    """step * z for the ``head`` elements from ``first_element`` up to the next block boundary,
    from the one Philox block they share (a slice that does not start on a block)."""
    words4 = _stream_words4(task_seed, seed, first_element // BLOCK_ELEMENTS, 1, STREAM_SIGNS, step.device, False)
    signed = torch.where(_byte_sign_set(step.device), -step, step)
    skip = first_element % BLOCK_ELEMENTS
    return _table_gather(words4, signed)[skip : skip + head]


def add_signs_(
    flat: torch.Tensor, task_seed: int, seed: int, q: int, *, first_element: int = 0, compiled: bool | None = None
) -> None:
    """flat (1-d int32) += q * z(task_seed, seed), in one pass. The caller guarantees no overflow.
    ``flat`` may be a slice of the flat index starting at element ``first_element`` of the whole
    model, as in write_perturbed_."""
    total = flat.numel()
    if compiled is None:
        compiled = compile_wanted(total)
    if first_element < 0:
        raise ValueError(f"first_element must be >= 0, got {first_element}")
    q_t = torch.tensor(q, dtype=torch.int32, device=flat.device)
    masks = _bit_masks(flat.device)
    with _cpu_passes(flat.device):
        head = min(-first_element % BLOCK_ELEMENTS, total)
        if head:
            flat[:head].add_(_head_steps(task_seed, seed, first_element, head, q_t))
        if total > head:
            first_block = (first_element + head) // BLOCK_ELEMENTS
            _add_signs_chunks(flat[head:], task_seed, seed, q_t, masks, compiled, first_block)


def _add_signs_chunks(
    flat: torch.Tensor,
    task_seed: int,
    seed: int,
    q_t: torch.Tensor,
    masks: torch.Tensor,
    compiled: bool,
    first_block: int = 0,
) -> None:
    total = flat.numel()
    for start, count, words4 in sign_chunks(task_seed, seed, total, flat.device, compiled, first_block):
        full = count // BLOCK_ELEMENTS
        if full:
            w3 = flat[start : start + full * BLOCK_ELEMENTS].view(full, 4, 32)
            _run("add_signs", _add_signs_kernel, compiled, w3, words4[:, :full], masks, q_t, eager=_add_signs_eager)
        tail = count - full * BLOCK_ELEMENTS
        if tail:  # the part-block at the end of the flat index
            step = torch.where(_byte_sign_set(flat.device), -q_t, q_t)
            flat[start + full * BLOCK_ELEMENTS : start + count].add_(_table_gather(words4[:, full:], step)[:tail])


def write_perturbed_(
    out: torch.Tensor,
    flat: torch.Tensor,
    unit: float,
    task_seed: int,
    seed: int,
    scale: float,
    *,
    first_element: int = 0,
    compiled: bool | None = None,
    set_threads: bool = True,
) -> None:
    """out (1-d float) = float32(flat) * unit + scale * z, in one pass. ``flat`` may be a slice of the
    flat index: its element 0 is element ``first_element`` of the whole model, which takes the sign
    that position has in the full pass (the slice need not start on a Philox block)."""
    total = flat.numel()
    if compiled is None:
        compiled = compile_wanted(total)
    if first_element < 0:
        raise ValueError(f"first_element must be >= 0, got {first_element}")
    unit_t = torch.tensor(unit, dtype=torch.float32, device=flat.device)
    scale_t = torch.tensor(scale, dtype=torch.float32, device=flat.device)
    masks = _bit_masks(flat.device)
    with _cpu_passes(flat.device, set_threads):
        # The part-block up to the next block boundary, then whole blocks from there.
        head = min(-first_element % BLOCK_ELEMENTS, total)
        if head:
            out[:head].copy_(flat[:head].to(torch.float32) * unit_t + _head_steps(task_seed, seed, first_element, head, scale_t))
        if total > head:
            first_block = (first_element + head) // BLOCK_ELEMENTS
            _perturbed_chunks(out[head:], flat[head:], unit_t, task_seed, seed, scale_t, masks, compiled, first_block)


def _perturbed_chunks(
    out: torch.Tensor,
    flat: torch.Tensor,
    unit_t: torch.Tensor,
    task_seed: int,
    seed: int,
    scale_t: torch.Tensor,
    masks: torch.Tensor,
    compiled: bool,
    first_block: int = 0,
) -> None:
    total = flat.numel()
    for start, count, words4 in sign_chunks(task_seed, seed, total, flat.device, compiled, first_block):
        full = count // BLOCK_ELEMENTS
        if full:
            sl = slice(start, start + full * BLOCK_ELEMENTS)
            _run(
                "perturbed",
                _perturbed_kernel,
                compiled,
                out[sl].view(full, 4, 32),
                flat[sl].view(full, 4, 32),
                words4[:, :full],
                masks,
                unit_t,
                scale_t,
                eager=_perturbed_eager,
            )
        tail = count - full * BLOCK_ELEMENTS
        if tail:
            sl = slice(start + full * BLOCK_ELEMENTS, start + count)
            step = torch.where(_byte_sign_set(flat.device), -scale_t, scale_t)
            out[sl].copy_(flat[sl].to(torch.float32) * unit_t + _table_gather(words4[:, full:], step)[:tail])


def write_scaled_(
    out: torch.Tensor, flat: torch.Tensor, unit: float, *, compiled: bool | None = None, set_threads: bool = True
) -> None:
    """out (1-d float) = float32(flat) * unit, in one pass (the compute weights without perturbation)."""
    total = flat.numel()
    if compiled is None:
        compiled = compile_wanted(total)
    unit_t = torch.tensor(unit, dtype=torch.float32, device=flat.device)
    step = (COMPILED_CHUNK_BLOCKS if compiled else EAGER_CHUNK_BLOCKS) * BLOCK_ELEMENTS
    with _cpu_passes(flat.device, set_threads):
        for start in range(0, total, step):
            sl = slice(start, min(start + step, total))
            _run("scaled", _scaled_kernel, compiled, out[sl], flat[sl], unit_t)
