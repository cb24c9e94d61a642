"""One seedfed probe (two perturbed forwards) against two plain forwards on the same batch.

    python bench/probe.py                          # GPT-2 small (124M, random init), 8 x 128 tokens, CPU, fp32
    python bench/probe.py --device cuda --dtype bfloat16 --batch 16
    python bench/probe.py --smoke                  # seconds: a tiny GPT-2, 2 x 16 tokens

The probe derives w = W * unit +- eps * z from the int32 state before each
forward and re-derives w = W * unit afterwards; the baseline runs the same
two forwards with nothing else. Ratio = probe time / baseline time (target
<= 1.15). Runs alternate and the figures are medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from seedfed.client.engine.probe import probe
from seedfed.client.engine.state import ComputeWeights, FixedPointState, choose_unit_log2

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# a run of seconds: a 2-layer GPT-2 of width 64 over 1,000 tokens
SMOKE = {"layers": 2, "width": 64, "heads": 2, "vocab": 1000, "batch": 2, "seq": 16, "repeats": 2}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="compute weights (default float32)")
    ap.add_argument("--batch", type=int, default=8, help="sequences per batch (default 8)")
    ap.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    ap.add_argument("--layers", type=int, default=12, help="GPT-2 layers (default 12: GPT-2 small, 124M)")
    ap.add_argument("--width", type=int, default=768, help="GPT-2 hidden size (default 768)")
    ap.add_argument("--heads", type=int, default=12, help="GPT-2 attention heads (default 12)")
    ap.add_argument("--vocab", type=int, default=50257, help="GPT-2 vocabulary size (default 50257)")
    ap.add_argument("--repeats", type=int, default=3, help="timed probe/baseline pairs (default 3)")
    ap.add_argument("--smoke", action="store_true", help="a run of seconds on a tiny GPT-2 (the test suite runs it)")
    args = ap.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        return 2

    from transformers.utils import logging as hf_logging

    from seedfed.client.simulate.tinymodel import tiny_module

    hf_logging.set_verbosity_error()
    # GPT-2 small's config unless asked otherwise: a random-init base model
    model = tiny_module("gpt2", vocab_size=args.vocab, hidden=args.width, layers=args.layers, heads=args.heads, positions=1024)
    model.requires_grad_(False)
    torch.manual_seed(0)  # the batch
    state = FixedPointState.from_module(model, choose_unit_log2(model), 20241123, device=device)
    weights = ComputeWeights.bind(model, state, DTYPES[args.dtype])
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device=device)

    def loss_fn() -> float:
        with torch.inference_mode():
            return float(model(ids, labels=ids).loss)

    def two_forwards() -> None:
        loss_fn()
        loss_fn()

    digest = state.digest()
    print(
        f"model: GPT-2 {args.layers} layers, {state.manifest.total:,} parameters, "
        f"{args.dtype} compute weights, device {device}, {torch.get_num_threads()} threads"
    )
    print(f"batch: {args.batch} x {args.seq} tokens")
    # warm-up: allocator, kernels, and the compiled perturb pass
    t = time.perf_counter()
    probe(weights, 0, 1e-3, loss_fn)
    print(f"warm-up (includes compiling the perturb pass): {time.perf_counter() - t:.1f} s")

    base, probes = [], []
    for i in range(args.repeats):
        sync(device)
        t = time.perf_counter()
        two_forwards()
        sync(device)
        base.append(time.perf_counter() - t)
        t = time.perf_counter()
        probe(weights, i + 1, 1e-3, loss_fn)
        sync(device)
        probes.append(time.perf_counter() - t)
    assert state.digest() == digest, "a probe changed the state"

    tb, tp = statistics.median(base), statistics.median(probes)
    print(f"two plain forwards: {tb:8.3f} s")
    print(f"one seedfed probe:  {tp:8.3f} s  (perturb +eps, forward, perturb -eps, forward, refresh)")
    print(f"ratio probe / two forwards: {tp / tb:.3f}   (target <= 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
