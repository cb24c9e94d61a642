"""One seedfed probe (two perturbed forwards) against two plain forwards on the same batch.

    python bench/probe.py                          # GPT-2 small (124M, random init), 8 x 128 tokens, CPU, fp32
    python bench/probe.py --device cuda --dtype bfloat16 --batch 16
    python bench/probe.py --smoke                  # seconds: a tiny GPT-2, 2 x 16 tokens

The probe derives w = W * unit +- eps * z from the int32 state before each
forward and re-derives w = W * unit afterwards; the baseline runs the same
two forwards with nothing else. Ratio = probe time / baseline time (target
<= 1.15). A second row times the same probe with streamed weights (each
block derived from the master just before it runs, no full-size float
buffer) against the resident probe of the same process (target <= 1.15).
Runs alternate and the figures are medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from seedfed.client.engine.probe import probe
from seedfed.client.engine.state import ComputeWeights, FixedPointState, choose_unit_log2
from seedfed.client.engine.streamed import StreamedWeights

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
    # the same model again, its parameters left on the meta device: streamed from the same master
    shadow = tiny_module("gpt2", vocab_size=args.vocab, hidden=args.width, layers=args.layers, heads=args.heads, positions=1024)
    shadow.requires_grad_(False)
    streamed = StreamedWeights.bind(shadow, state, DTYPES[args.dtype], device)

    def loss_of(m: torch.nn.Module):
        def loss() -> float:
            with torch.inference_mode():
                return float(m(ids, labels=ids).loss)

        return loss

    loss_fn, shadow_loss = loss_of(model), loss_of(shadow)

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
    warm = probe(weights, 0, 1e-3, loss_fn)
    warm_streamed = probe(streamed, 0, 1e-3, shadow_loss)
    print(f"warm-up (includes compiling the perturb pass): {time.perf_counter() - t:.1f} s")
    if warm != warm_streamed:
        print(f"streamed and resident probes disagree: {warm_streamed} vs {warm}", file=sys.stderr)
        return 1

    base, probes, streamed_probes = [], [], []
    for i in range(args.repeats):
        sync(device)
        t = time.perf_counter()
        two_forwards()
        sync(device)
        base.append(time.perf_counter() - t)
        # resident and streamed back to back, in alternating order: drift in the machine's load cancels
        for which in ("resident", "streamed") if i % 2 == 0 else ("streamed", "resident"):
            w, fn, out = (weights, loss_fn, probes) if which == "resident" else (streamed, shadow_loss, streamed_probes)
            t = time.perf_counter()
            probe(w, i + 1, 1e-3, fn)
            sync(device)
            out.append(time.perf_counter() - t)
    assert state.digest() == digest, "a probe changed the state"

    tb, tp, ts = statistics.median(base), statistics.median(probes), statistics.median(streamed_probes)
    paired = statistics.median(s / r for s, r in zip(streamed_probes, probes))
    print(f"two plain forwards: {tb:8.3f} s")
    print(f"one seedfed probe:  {tp:8.3f} s  (perturb +eps, forward, perturb -eps, forward, refresh)")
    print(f"streamed probe:     {ts:8.3f} s  (each block derived +-eps as it runs; no full float buffer)")
    print(f"ratio probe / two forwards: {tp / tb:.3f}   (target <= 1.15)")
    print(f"ratio streamed / resident probe: {paired:.3f}   (median of back-to-back pairs; target <= 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
