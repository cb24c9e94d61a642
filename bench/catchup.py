"""Catch-up of a joining client, and a client's peak memory against plain inference.

Part 1 (catch-up): a client that missed N committed rounds (N = 10, 100,
1,000) with a seed pool of K = 64 rebuilds the model from the base weights
plus the ledger. Folded: the history is summed per seed first, at most K
replays however large N is. Baseline: sequential replay of every entry of
every round, as a client without a finite pool must. Both verify the hash
chain and end on the same digest (checked). Target: folded catch-up flat
within 2x between 10 and 1,000 rounds.

Part 2 (memory): peak resident memory (ru_maxrss) of a process doing a
client's work on a 124M-parameter GPT-2 (GPT2Config defaults, random init):
load, verify the base digest, bind compute weights, probe two seeds with a
local step, catch up two rounds, write a checkpoint; against a process that
loads the same model and runs the same forward pass. Target: at most 2.5x.

    python bench/catchup.py                    # both parts
    python bench/catchup.py --skip-memory      # catch-up only
    python bench/catchup.py --rounds 10,100    # fewer points
    python bench/catchup.py --smoke            # seconds: 2 and 4 rounds, a tiny GPT-2 for memory
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ["the", "a", "film", "was", "good", "bad", "what", "is", "answer", "###", "instruction", "response", ":"]
# GPT2Config's defaults: GPT-2 small, 124M parameters
GPT2_SMALL = {"vocab_size": 50257, "hidden": 768, "layers": 12, "heads": 12, "positions": 1024}
MEMORY_MODELS = {"gpt2-small": GPT2_SMALL, "tiny": {"vocab_size": 1000, "hidden": 64, "layers": 2, "heads": 2, "positions": 128}}
# a run of seconds
SMOKE = {"rounds": "2,4", "n_embd": 32, "n_layer": 1, "memory_model": "tiny"}


def make_model_dir(path: Path, **config) -> Path:
    """A GPT-2 (random init) whose word-level tokenizer knows WORDS, padded to the model's vocabulary."""
    from seedfed.client.simulate.tinymodel import save_tiny_model

    return save_tiny_model(path, "gpt2", WORDS, **config)


def task_for(model_dir: Path, **fields):
    from seedfed.client.genesis import genesis_for_model
    from seedfed.shared.taskspec import Objective

    return genesis_for_model(str(model_dir), "bench", Objective(kind="causal_lm", max_length=128), task_seed=1, **fields)


def write_dolly(path: Path, n: int = 32) -> Path:
    rng = random.Random(0)
    with open(path, "w") as fh:
        for _ in range(n):
            words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
            fh.write(json.dumps({"instruction": words(20), "context": words(40), "response": words(60)}) + "\n")
    return path


def synthetic_history(spec, rounds: int, seeds_per_round: int, seed: int = 0):
    from seedfed.shared.ledger import make_record

    rng = random.Random(seed)
    head, out = spec.genesis_hash(), []
    for r in range(1, rounds + 1):
        entries: dict[int, int] = {}
        while len(entries) < seeds_per_round:
            entries[rng.randrange(spec.pool_size)] = rng.choice([-4, -3, -2, -1, 1, 2, 3, 4])
        rec = make_record(head, r, entries)
        out.append(rec)
        head = rec.hash
    return out


# -- part 1 ------------------------------------------------------------------------


def bench_catchup(rounds_list: list[int], seeds_per_round: int, workdir: Path, n_embd: int, n_layer: int) -> list[dict]:
    from seedfed.client.model import load_base
    from seedfed.client.replica import Replica

    model_dir = make_model_dir(workdir / "catchup-model", vocab_size=4096, positions=128, hidden=n_embd, layers=n_layer, heads=4)
    spec = task_for(model_dir, pool_size=64)
    module = load_base(str(model_dir), "causal_lm").module
    history = synthetic_history(spec, max(rounds_list), seeds_per_round)
    params = sum(p.numel() for p in module.parameters())
    print(f"catch-up: GPT-2 with {params / 1e6:.2f}M parameters, K={spec.pool_size}, {seeds_per_round} seeds per round")
    print(f"{'missed':>8} {'folded s':>9} {'replays':>8} {'sequential s':>13} {'replays':>8} {'speed-up':>9}")
    rows = []
    for n in rounds_list:
        records = history[:n]
        timings = {}
        digests = {}
        for fold in (True, False):
            replica = Replica.from_base(spec, module)
            t0 = time.perf_counter()
            stats = replica.catch_up(records, fold_history=fold)
            timings[fold] = (time.perf_counter() - t0, stats.replays)
            digests[fold] = replica.digest()
            del replica
        assert digests[True] == digests[False], "folded and sequential catch-up disagree"
        row = {
            "missed": n,
            "folded_s": timings[True][0],
            "folded_replays": timings[True][1],
            "sequential_s": timings[False][0],
            "sequential_replays": timings[False][1],
        }
        row["speedup"] = row["sequential_s"] / row["folded_s"]
        rows.append(row)
        print(
            f"{n:>8} {row['folded_s']:>9.3f} {row['folded_replays']:>8} "
            f"{row['sequential_s']:>13.3f} {row['sequential_replays']:>8} {row['speedup']:>8.1f}x"
        )
    flat = rows[-1]["folded_s"] / rows[0]["folded_s"]
    verdict = "PASS" if flat <= 2.0 else "FAIL"
    print(
        f"ratio folded catch-up, {rows[-1]['missed']} / {rows[0]['missed']} missed rounds: {flat:.2f}x (target <= 2x: {verdict})"
    )
    print(f"ratio sequential / folded at {rows[-1]['missed']} missed rounds: {rows[-1]['speedup']:.1f}x")
    return rows


# -- part 2 ------------------------------------------------------------------------

_INFERENCE = r"""
import json, resource, sys, torch
from seedfed.client.data import read_instructions
from seedfed.client.model import load_base
from seedfed.client.objectives import build_objective
from seedfed.shared.taskspec import TaskSpec
spec = TaskSpec.load_toml(sys.argv[1])
base = load_base(sys.argv[2], "causal_lm")
objective = build_objective(spec.objective, base.module, base.tokenizer, "cpu")
batch = read_instructions(sys.argv[3])[: spec.batch_size]
loss = objective.loss(batch)
params = sum(p.numel() for p in base.module.parameters())
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "loss": loss, "params": params}))
"""

_CLIENT = r"""
import json, resource, sys, tempfile, torch
sys.path.insert(0, sys.argv[4])
from catchup import synthetic_history
from seedfed.client.checkpoints import CheckpointStore
from seedfed.client.data import MinibatchSampler, read_instructions
from seedfed.client.model import load_base
from seedfed.client.objectives import build_objective
from seedfed.client.replica import Replica
from seedfed.client.worker import Assignment, Prober
from seedfed.client.engine.state import ComputeWeights
from seedfed.shared.taskspec import TaskSpec
spec = TaskSpec.load_toml(sys.argv[1])
base = load_base(sys.argv[2], "causal_lm")
replica = Replica.from_base(spec, base.module)          # verifies the base digest
weights = ComputeWeights.bind(base.module, replica.state)
objective = build_objective(spec.objective, base.module, base.tokenizer, "cpu")
prober = Prober(replica, weights, objective, MinibatchSampler(read_instructions(sys.argv[3]), spec.batch_size, 0))
result = prober.work(Assignment(round=1, slot=0, seeds=(3, 17), lr=spec.lr))
replica.catch_up(synthetic_history(spec, 2, 1))
weights.refresh()
with tempfile.TemporaryDirectory() as cache:
    CheckpointStore(cache, spec).save(replica)
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "loss": result.loss}))
"""


def _run(code: str, *args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(workdir: Path, model: str) -> dict:
    config = MEMORY_MODELS[model]
    model_dir = make_model_dir(workdir / f"gpt2-{model}", **config)
    spec = task_for(model_dir, pool_size=64, batch_size=4, local_steps=2)
    task = workdir / "task.toml"
    task.write_text(spec.to_toml())
    data = write_dolly(workdir / "dolly.jsonl")
    here = str(Path(__file__).resolve().parent)
    inference = _run(_INFERENCE, str(task), str(model_dir), str(data))
    client = _run(_CLIENT, str(task), str(model_dir), str(data), here)
    ratio = client["maxrss_kb"] / inference["maxrss_kb"]
    verdict = "PASS" if ratio <= 2.5 else "FAIL"
    params = inference["params"] / 1e6
    print(f"memory: GPT-2 {model} ({params:.1f}M parameters, random init), batch of 4 x <=128 tokens, CPU")
    print(f"  plain inference (load + forward):     peak RSS {inference['maxrss_kb'] / 1024:8.0f} MiB")
    print(f"  client (load, verify, probe 2 seeds,   peak RSS {client['maxrss_kb'] / 1024:8.0f} MiB")
    print("          catch up 2 rounds, checkpoint)")
    print(f"ratio client / inference peak memory: {ratio:.2f}x (target <= 2.5x: {verdict})")
    return {"inference_kb": inference["maxrss_kb"], "client_kb": client["maxrss_kb"], "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", default="10,100,1000", help="missed rounds to measure, comma-separated")
    # e.g. 4 groups of clients x 2 local steps; with fewer, 10 rounds touch fewer distinct seeds
    # and the folded cost (one replay per distinct seed, at most K) is lower there
    ap.add_argument("--seeds-per-round", type=int, default=8, help="ledger entries per committed round")
    ap.add_argument("--n-embd", type=int, default=64, help="width of the catch-up model")
    ap.add_argument("--n-layer", type=int, default=2, help="depth of the catch-up model")
    ap.add_argument("--skip-catchup", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-model", choices=sorted(MEMORY_MODELS), default="gpt2-small", help="model of the memory part")
    ap.add_argument("--smoke", action="store_true", help="a run of seconds at a tiny size (the test suite runs it)")
    args = ap.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_catchup:
            bench_catchup([int(x) for x in args.rounds.split(",")], args.seeds_per_round, Path(tmp), args.n_embd, args.n_layer)
        if not args.skip_memory:
            bench_memory(Path(tmp), args.memory_model)


if __name__ == "__main__":
    main()
