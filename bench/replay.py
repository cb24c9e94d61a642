"""Replays per second: seedfed's exact replay against MeZO/FedKSeed's and a plain memory pass.

    python bench/replay.py                       # GPT-2-small shapes (124M), CPU
    python bench/replay.py --device cuda
    python bench/replay.py --params 20000000 --repeats 3
    python bench/replay.py --smoke               # seconds: a tiny GPT-2 (170k parameters), eager only

One replay applies one ledger step (seed, q) to every parameter:
- seedfed: W += q * z(seed) on the int32 state (Philox signs, one fused pass);
- (a) MeZO / FedKSeed: torch.manual_seed(seed), then for every parameter
  z = torch.normal(0, 1, size) and p.add_(z, alpha=-lr * g) on float32 weights;
- (b) one plain memory pass over the same int32 tensor: w.add_(other).
Then the same replay in a task that tunes only biases and LayerNorms (the
genesis's trainable), against the whole model's.
All three run in this process on the same device; the figures are medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from seedfed.client.engine import philox
from seedfed.client.engine.manifest import Manifest, Slot
from seedfed.client.engine.state import FixedPointState

SCOPE = ("*bias", "*ln_*")  # GPT-2's biases and LayerNorm weights
# a run of seconds: no compilation, a tiny GPT-2
SMOKE = {"tiny": True, "repeats": 3, "baseline_repeats": 1, "no_compile": True}
TINY = {"n_embd": 64, "n_layer": 2, "n_head": 2, "vocab_size": 1000, "n_positions": 128}  # 170k parameters


def gpt2_shapes(**config) -> list[tuple[str, tuple[int, ...]]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(**config))
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def shapes_for(params: int | None, tiny: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """GPT-2-small's parameter shapes (or a tiny GPT-2's); with --params, cycled or cut to that many elements."""
    base = gpt2_shapes(**(TINY if tiny else {}))
    if params is None:
        return base
    out: list[tuple[str, tuple[int, ...]]] = []
    total, i = 0, 0
    while total < params:
        name, shape = base[i % len(base)]
        n = int(torch.Size(shape).numel())
        if total + n > params:
            shape, n = (params - total,), params - total
        out.append((f"{i}.{name}", shape))
        total += n
        i += 1
    return out


def make_state(shapes, device) -> FixedPointState:
    slots, off = [], 0
    for name, shape in shapes:
        n = int(torch.Size(shape).numel())
        slots.append(Slot(name, shape, "float32", off, n))
        off += n
    flat = torch.randint(-(2**24), 2**24, (off,), dtype=torch.int32, device=device)
    return FixedPointState(flat, Manifest(tuple(slots)), -24, 20241123)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--params", type=int, default=None, help="state size in parameters (default: GPT-2 small, 124,439,808)")
    ap.add_argument("--repeats", type=int, default=7, help="timed seedfed replays and memory passes (default 7)")
    ap.add_argument("--baseline-repeats", type=int, default=3, help="timed MeZO/FedKSeed replays (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the baselines (default: torch's default)")
    ap.add_argument("--no-eager", action="store_true", help="skip timing the eager (uncompiled) seedfed path")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled seedfed path (and its compile time)")
    ap.add_argument("--smoke", action="store_true", help="a run of seconds at a tiny size, eager only (the test suite runs it)")
    args = ap.parse_args(argv)
    args.tiny = False
    if args.smoke:
        vars(args).update(SMOKE)
    if args.no_eager and args.no_compile:
        ap.error("--no-eager and --no-compile leave no seedfed path to time")
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        return 2

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = shapes_for(args.params, args.tiny)
    state = make_state(shapes, device)
    n = state.manifest.total
    print(
        f"state: {n:,} parameters in {len(shapes)} tensors, int32, device {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads (seedfed's CPU kernels: SEEDFED_CPU_THREADS={philox._cpu_threads()})"
    )

    seeds = iter(range(1, 10**6))
    compiled: list[float] = []
    if not args.no_compile:
        # the first call compiles: timed on its own
        os.environ["SEEDFED_COMPILE"] = "1"
        warm = timed(lambda: state.apply({0: 1}), device)
        compiled = [timed(lambda: state.apply({next(seeds): 3}), device) for _ in range(args.repeats)]
        if philox._compile_broken:
            print("torch.compile failed here: the 'compiled' figures are the eager path")
    eager: list[float] = []
    if not args.no_eager:
        os.environ["SEEDFED_COMPILE"] = "0"
        state.apply({0: 1})  # warm-up
        eager = [timed(lambda: state.apply({next(seeds): 3}), device) for _ in range(max(2, args.repeats // 3))]
    os.environ.pop("SEEDFED_COMPILE", None)

    # (b) one plain memory pass over the same int32 tensor
    other = torch.ones_like(state.flat)
    memory = [timed(lambda: state.flat.add_(other), device) for _ in range(args.repeats)]

    # (a) MeZO / FedKSeed replay over float32 parameters of the same shapes
    params = [torch.zeros(shape, dtype=torch.float32, device=device) for _, shape in shapes]
    lr, g = 1e-6, 0.37

    def mezo_replay(seed: int) -> None:
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0.0, std=1.0, size=p.shape, device=p.device, dtype=p.dtype)
            p.add_(z, alpha=-lr * g)

    mezo_replay(0)
    mezo = [timed(lambda: mezo_replay(next(seeds)), device) for _ in range(args.baseline_repeats)]

    t_mem, t_mezo = statistics.median(memory), statistics.median(mezo)
    if compiled:
        t_comp = statistics.median(compiled)
        print(
            f"seedfed replay (compiled): {t_comp * 1e3:9.1f} ms  ({1 / t_comp:7.2f} replays/s; "
            f"first call incl. compile {warm:.1f} s)"
        )
    if eager:
        t_eager = statistics.median(eager)
        print(f"seedfed replay (eager):    {t_eager * 1e3:9.1f} ms  ({1 / t_eager:7.2f} replays/s)")
    print(f"(a) MeZO/FedKSeed replay:  {t_mezo * 1e3:9.1f} ms  ({1 / t_mezo:7.2f} replays/s)")
    print(f"(b) memory pass w.add_(o): {t_mem * 1e3:9.1f} ms  ({1 / t_mem:7.2f} passes/s)")
    path, t_seed = ("compiled", t_comp) if compiled else ("eager", t_eager)
    print(f"ratio seedfed ({path}) vs (a): {t_mezo / t_seed:6.1f}x faster   (target >= 10x)")
    print(f"ratio seedfed ({path}) vs (b): {t_mem / t_seed:6.2f} of a memory pass's speed   (target >= 0.5)")
    if compiled and eager:
        print(f"eager path: {t_mezo / t_eager:.1f}x (a), {t_mem / t_eager:.2f} of (b)")
    scoped_replay(state, seeds, t_seed, path, args.repeats, device)
    return 0


def scoped_replay(state: FixedPointState, seeds, t_whole: float, path: str, repeats: int, device: str) -> None:
    """A task that tunes only biases and LayerNorms (genesis trainable): a replay writes only them."""
    scoped = state.copy()
    scoped.restrict(scoped.manifest.spans(SCOPE))
    tuned = sum(b - a for a, b in scoped.ranges())
    os.environ["SEEDFED_COMPILE"] = "1" if path == "compiled" else "0"
    scoped.apply({0: 1})  # warm-up
    t = statistics.median(timed(lambda: scoped.apply({next(seeds): 3}), device) for _ in range(repeats))
    os.environ.pop("SEEDFED_COMPILE", None)
    what = f"{tuned:,} of {scoped.manifest.total:,} parameters in {len(scoped.ranges())} ranges"
    print(f"seedfed replay, trainable {' '.join(SCOPE)} ({what}): {t * 1e3:.2f} ms ({1 / t:.1f} replays/s)")
    print(f"ratio whole / scoped replay ({path}): {t_whole / t:6.1f}x")


if __name__ == "__main__":
    sys.exit(main())
