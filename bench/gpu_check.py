"""The checks that need a CUDA device, beyond ``pytest -m cuda`` (bench/gpu_check.sh runs them all).

    python bench/gpu_check.py digest     # one ledger replayed on the CPU, on the GPU and into a pinned host master
    python bench/gpu_check.py big        # a Llama-3-8B-shaped client with its master in host memory against MeZO bf16
    python bench/gpu_check.py big --small --device cpu    # the same steps on a small Llama, anywhere (a dry run)

``digest``: a GPT-2-small-shaped state (124M) and a ledger of 60 rounds of 4
seeds: replayed round by round on the GPU (device master), folded per seed on
the CPU, and folded into a pinned host master; the three digests must agree,
and a probe through each layout (resident on the device, streamed from the
device master, streamed from the host master with both passes in lockstep)
must give the same losses.

``big``: Llama-3-8B's shape (hidden 4096, intermediate 14336, 32 layers, 32
heads, 8 KV heads, vocabulary 128256), random weights. seedfed: the int32
master in pinned host memory (32 GB), blocks copied to the GPU as they run,
one probe (two passes in lockstep) and one replay applied to the master where
it lives. MeZO: the same model in bf16 on the GPU, perturbed in place per
parameter from a reseeded torch generator, two forwards, restored. Prints
``torch.cuda.max_memory_allocated`` of each and the ratio (target <= 0.5).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch

GIB = 2**30


SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=4, vocab_size=1024)


def need(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible", file=sys.stderr)
        sys.exit(2)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def pinned(t: torch.Tensor, device: str) -> torch.Tensor:
    """A host copy in pinned memory when it serves a GPU (pinning needs CUDA)."""
    return t.pin_memory() if device.startswith("cuda") else t.clone()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0


def _ledger(rounds: int, pool: int = 64, per_round: int = 4) -> list[dict[int, int]]:
    rng = random.Random(20241123)
    return [{s: rng.choice([-1, 1]) * rng.randint(1, 2000) for s in rng.sample(range(pool), per_round)} for _ in range(rounds)]


def digest(device: str) -> int:
    from seedfed.client.engine.probe import probe
    from seedfed.client.engine.state import ComputeWeights, FixedPointState, choose_unit_log2
    from seedfed.client.engine.streamed import StreamedWeights
    from seedfed.client.simulate.tinymodel import tiny_module

    need(device)
    make = lambda: tiny_module("gpt2", vocab_size=50257, hidden=768, layers=12, heads=12, positions=1024)  # noqa: E731
    models = [make() for _ in range(3)]
    unit = choose_unit_log2(models[0])
    cpu = FixedPointState.from_module(models[0], unit, 20241123)
    gpu = cpu.to(device) if device != "cpu" else cpu.copy()
    host = FixedPointState(pinned(cpu.flat, device), cpu.manifest, unit, 20241123)
    base = cpu.digest()
    hist = _ledger(60)
    t = time.perf_counter()
    gpu.apply_history(hist, fold=False)
    sync(device)
    t_gpu = time.perf_counter() - t
    t = time.perf_counter()
    cpu.apply_history(hist, fold=True)
    t_cpu = time.perf_counter() - t
    host.apply_history(hist, fold=True)
    print(f"base digest        {base}")
    print(f"cpu (folded)       {cpu.digest()}  {t_cpu:.1f} s")
    print(f"{device} (per round)   {gpu.digest()}  {t_gpu:.1f} s")
    print(f"pinned host master {host.digest()}")
    ok = cpu.digest() == gpu.digest() == host.digest() != base
    ids = torch.randint(0, 50257, (4, 64), generator=torch.Generator().manual_seed(0)).to(device)
    layouts = {
        "resident (device master)": ComputeWeights.bind(models[0], gpu.copy(), torch.bfloat16),
        "streamed (device master)": StreamedWeights.bind(models[1], gpu.copy(), torch.bfloat16),
        "streamed (host master, dual)": StreamedWeights.bind(models[2], host, torch.bfloat16, device, staged=True, dual=True),
    }
    results = {}
    for name, w in layouts.items():
        results[name] = probe(w, 7, 1e-3, lambda w=w: w.module(ids, labels=ids).loss)
        print(f"probe {name:30s} {results[name]}")
    same = len(set(results.values())) == 1
    print(f"digests {'EQUAL' if ok else 'DIFFER'}; probes {'EQUAL' if same else 'DIFFER'}")
    return 0 if ok and same else 1


LLAMA3_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)


def _empty_llama(layers: int, small: bool):
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**(LLAMA3_8B | {"num_hidden_layers": layers} | (SMALL if small else {})))
    with init_empty_weights(include_buffers=False):
        model = LlamaForCausalLM(config)
    return model.eval().requires_grad_(False)


def big(layers: int, batch: int, seq: int, device: str, small: bool) -> int:
    from seedfed.client.engine.manifest import Manifest
    from seedfed.client.engine.memory import plan_layout
    from seedfed.client.engine.probe import probe
    from seedfed.client.engine.state import FixedPointState
    from seedfed.client.engine.streamed import StreamedWeights
    from seedfed.client.engine.weights import bind_weights

    need(device)
    vocab = (SMALL if small else LLAMA3_8B)["vocab_size"]
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)

    # -- seedfed: the master in pinned host memory, filled from the GPU chunk by chunk (random W)
    model = _empty_llama(layers, small)
    manifest = Manifest.from_module(model)
    n = manifest.total
    print(
        f"model: Llama-3-8B shape{' (small)' if small else ''}, {layers} layers, {n:,} parameters; batch {batch} x {seq} tokens"
    )
    t = time.perf_counter()
    flat = torch.empty(n, dtype=torch.int32, pin_memory=device.startswith("cuda"))
    step = 1 << 28
    for start in range(0, n, step):
        end = min(start + step, n)
        flat[start:end].copy_(torch.randint(-(2**22), 2**22, (end - start,), dtype=torch.int32, device=device))
    state = FixedPointState(flat, manifest, -29, 20241123, bound=2**22)  # weights of about +-0.008
    print(f"host master: {4 * n / GIB:.1f} GiB{' pinned' if flat.is_pinned() else ''}, filled in {time.perf_counter() - t:.1f} s")
    if device.startswith("cuda"):
        weights = bind_weights(model, state, plan_layout(n, device, torch.bfloat16, master="host"))
    else:  # the host-master path with the CPU as its compute device
        weights = StreamedWeights.bind(model, state, torch.bfloat16, device, staged=True, dual=True)
    print(f"layout: streamed, master on {state.device}, staged {weights.staged}, dual passes {weights.dual}")
    loss = lambda: model(ids, labels=ids).loss  # noqa: E731
    probe(weights, 0, 1e-3, loss)  # warm-up: allocator, kernels, call order learnt for copying ahead
    sync(device)
    reset_peak(device)
    t = time.perf_counter()
    r = probe(weights, 1, 1e-3, loss)
    sync(device)
    t_probe = time.perf_counter() - t
    seedfed_peak = peak(device)
    t = time.perf_counter()
    state.apply({1: 3})
    t_replay = time.perf_counter() - t
    print(f"seedfed probe {t_probe:.2f} s (g={r.g:.4g}), replay on the host master {t_replay:.2f} s")
    print(f"seedfed peak device memory: {seedfed_peak / GIB:.2f} GiB")
    del weights, model, state, flat, loss
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    # -- MeZO: bf16 weights on the device, perturbed in place
    model = _empty_llama(layers, small)
    for m in model.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                w = torch.empty(p.shape, dtype=torch.bfloat16, device=device).normal_(0.0, 0.02)
                m._parameters[name] = torch.nn.Parameter(w, requires_grad=False)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = b.to(device)
    params = list(model.parameters())
    loss = lambda: model(ids, labels=ids).loss  # noqa: E731

    def perturb(seed: int, scale: float) -> None:
        torch.manual_seed(seed)
        for p in params:
            p.add_(torch.randn(p.shape, dtype=p.dtype, device=p.device), alpha=scale)

    sync(device)
    reset_peak(device)
    t = time.perf_counter()
    with torch.inference_mode():
        perturb(1, 1e-3)
        plus = float(loss())
        perturb(1, -2e-3)
        minus = float(loss())
        perturb(1, 1e-3)
    sync(device)
    t_mezo = time.perf_counter() - t
    mezo_peak = peak(device)
    print(f"MeZO bf16 step {t_mezo:.2f} s (g={(plus - minus) / 2e-3:.4g})")
    print(f"MeZO peak device memory: {mezo_peak / GIB:.2f} GiB")
    print(f"time per probe: seedfed {t_probe:.2f} s, MeZO {t_mezo:.2f} s")
    if not mezo_peak:
        print("(no device memory to compare on the CPU: a dry run of the steps)")
        print(f"ratio seedfed / MeZO time per probe (dry run): {t_probe / t_mezo:.2f}")
        return 0
    ratio = seedfed_peak / mezo_peak
    print(f"ratio seedfed (host master) / MeZO peak device memory: {ratio:.3f}   (target <= 0.5)")
    return 0 if ratio <= 0.5 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("check", nargs="?", choices=["digest", "big"], default="big")
    ap.add_argument("--layers", type=int, default=32, help="big: decoder layers (default 32: the 8B shape)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run of the steps")
    ap.add_argument("--small", action="store_true", help="big: a small Llama instead of the 8B shape (a dry run)")
    ap.add_argument("--smoke", action="store_true", help="the big check's steps on a small Llama on the CPU (seconds)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.check, args.small, args.device = "big", True, "cpu"
    os.environ.setdefault("SEEDFED_CPU_THREADS", str(os.cpu_count() or 1))  # replay on the host master uses the cores
    if args.check == "digest":
        return digest(args.device)
    return big(args.layers, args.batch, args.seq, args.device, args.small)


if __name__ == "__main__":
    sys.exit(main())
