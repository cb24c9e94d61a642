"""``seedfed export``: base weights plus ledger -> a Hugging Face model directory.

The rebuild is the same as a client's catch-up (verified chain, folded per
seed when the pool is finite), so the digest printed here is the digest
every client reports for that round. The directory holds float32 weights
derived from the fixed-point state (safetensors), the tokenizer, and
``seedfed.json`` naming the task, round, ledger hash and state digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from seedfed.shared.ledger import LedgerError, RoundRecord
from seedfed.shared.taskspec import TaskSpec


class ExportError(RuntimeError):
    pass


@dataclass
class Rebuilt:
    spec: TaskSpec
    module: Any
    tokenizer: Any
    replica: Any  # seedfed.client.replica.Replica at the requested round

    @property
    def digest(self) -> str:
        return self.replica.digest()


def select_rounds(records: list[RoundRecord], to_round: int | None) -> list[RoundRecord]:
    """The records up to ``to_round``: None is the head, 0 the base (no round applied)."""
    if to_round is None:
        return records
    head = records[-1].round if records else 0
    if to_round > head:
        raise ExportError(f"round {to_round} is not committed (the ledger ends at round {head})")
    return records[:to_round]


def rebuild(
    spec: TaskSpec, records: list[RoundRecord], model_ref: str | None = None, to_round: int | None = None, device: str = "cpu"
) -> Rebuilt:
    """The model at ``to_round`` (default: the head): base checked against the genesis, chain verified."""
    import torch

    from seedfed.client.engine.state import ComputeWeights
    from seedfed.client.model import load_base
    from seedfed.client.replica import Replica

    base = load_base(model_ref or spec.base_model, spec.objective.kind, device)
    replica = Replica.from_base(spec, base.module, device=device)
    try:
        replica.catch_up(select_rounds(records, to_round))
    except LedgerError as exc:
        raise ExportError(f"the ledger does not verify: {exc}") from None
    # The module's parameters now hold float(W) * unit: the exported weights.
    ComputeWeights.bind(base.module, replica.state, dtype=torch.float32).refresh()
    return Rebuilt(spec, base.module, base.tokenizer, replica)


def write_model_dir(rebuilt: Rebuilt, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    module = rebuilt.module
    # The flat-buffer views are not contiguous storages of their own; save real tensors.
    for p in module.parameters():
        p.data = p.data.clone()
    module.save_pretrained(out, safe_serialization=True)
    rebuilt.tokenizer.save_pretrained(out)
    meta = {
        "task_id": rebuilt.spec.task_id,
        "round": rebuilt.replica.round,
        "ledger_hash": rebuilt.replica.head_hash.hex(),
        "state_digest": rebuilt.digest,
        "base_digest": rebuilt.spec.base_digest,
        "genesis_hash": rebuilt.spec.genesis_hash().hex(),
    }
    (out / "seedfed.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


@click.command("export")
@click.option("--db", "db_url", default=None, help="coordinator database URL (default ./seedfed.db) to read the ledger from")
@click.option("--task", "task_id", default=None, help="task id in the database (may be omitted when it holds one task)")
@click.option(
    "--ledger",
    "ledger_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="a ledger file instead of a database",
)
@click.option("--model", "model_ref", default=None, help="base model directory or id (default: the genesis's base_model)")
@click.option(
    "--round",
    "to_round",
    type=click.IntRange(min=0),
    default=None,
    help="export the model after this round (0: the base; default: the head)",
)
@click.option("--device", default="cpu", show_default=True, help="where to replay: cpu, cuda or cuda:N (same bytes either way)")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="model directory to write")
def export_command(db_url, task_id, ledger_file, model_ref, to_round, device, out_dir) -> None:
    """Rebuild the model at a round from base weights plus ledger and save it for from_pretrained."""
    from transformers.utils import logging as hf_logging

    from seedfed.client.history import DatabaseError, load_history
    from seedfed.client.model import ModelLoadError
    from seedfed.client.replica import BaseDigestMismatch

    hf_logging.disable_progress_bar()  # one-line output for people and scripts
    try:
        spec, records = load_history(db_url, task_id, ledger_file)
        rebuilt = rebuild(spec, records, model_ref, to_round, device)
    except (LedgerError, DatabaseError, ExportError, ModelLoadError, BaseDigestMismatch) as exc:
        raise click.ClickException(str(exc)) from None
    out = write_model_dir(rebuilt, out_dir)
    click.echo(f"exported task {spec.task_id} at round {rebuilt.replica.round} to {out}")
    click.echo(f"digest {rebuilt.digest}")
