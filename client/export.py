"""``seedfed export``: base weights plus ledger -> a Hugging Face model directory.

The rebuild is the same as a client's catch-up (verified chain, folded per
seed when the pool is finite), so the digest printed here is the digest
every client reports for that round. The directory holds float32 weights
derived from the fixed-point state (safetensors, written tensor by tensor
from the master: no float copy of the model is ever held), the config, the
tokenizer, and ``seedfed.json`` naming the task, round, ledger hash and
state digest.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from seedfed.shared.ledger import LedgerError, RoundRecord
from seedfed.shared.taskspec import TaskSpec, TaskSpecError


class ExportError(RuntimeError):
    pass


@dataclass
class Rebuilt:
    spec: TaskSpec
    base: Any  # seedfed.client.model.BaseSource: the module (built without weights where streamed) and tokenizer
    replica: Any  # seedfed.client.replica.Replica at the requested round
    layout: Any  # seedfed.client.engine.memory.Layout for computing with the model
    weights: Any = None  # compute weights, bound when the module is first asked for

    @property
    def digest(self) -> str:
        return self.replica.digest()

    @property
    def tokenizer(self) -> Any:
        return self.base.tokenizer

    @property
    def module(self) -> Any:
        """The model, its compute weights derived from the rebuilt state (bound on first use, so an
        export that only writes files never holds float weights)."""
        if self.weights is None:
            from seedfed.client.engine.weights import bind_weights

            self.weights = bind_weights(self.base.module, self.replica.state, self.layout)
        return self.base.module


def select_rounds(records: list[RoundRecord], to_round: int | None) -> list[RoundRecord]:
    """The records up to ``to_round``: None is the head, 0 the base (no round applied)."""
    if to_round is None:
        return records
    head = records[-1].round if records else 0
    if to_round > head:
        raise ExportError(f"round {to_round} is not committed (the ledger ends at round {head})")
    return records[:to_round]


def rebuild(
    spec: TaskSpec,
    records: list[RoundRecord],
    model_ref: str | None = None,
    to_round: int | None = None,
    device: str = "cpu",
    weights: str = "auto",
) -> Rebuilt:
    """The model at ``to_round`` (default: the head): base streamed into the master and checked
    against the genesis, chain verified. ``weights`` chooses how the module computes if asked to."""
    import torch

    from seedfed.client.engine.memory import plan_layout
    from seedfed.client.model import open_base, resolve_device
    from seedfed.client.replica import Replica

    base = open_base(model_ref or spec.base_model, spec.objective.kind)
    layout = plan_layout(base.manifest.total, resolve_device(device), torch.float32, weights)
    state = base.load_state(spec.task_seed, spec.unit_log2, layout.master_device, pin_memory=layout.pin)
    replica = Replica.from_state(spec, state)
    try:
        replica.catch_up(select_rounds(records, to_round))
    except LedgerError as exc:
        raise ExportError(f"the ledger does not verify: {exc}") from None
    return Rebuilt(spec, base, replica, layout)


def write_model_dir(rebuilt: Rebuilt, out: str | Path) -> Path:
    import torch

    from seedfed.client.engine.saving import write_float_checkpoint

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    module = rebuilt.base.module
    write_float_checkpoint(rebuilt.replica.state, module, out)
    config = copy.deepcopy(module.config)
    config.dtype = torch.float32  # the weights written are float32
    config.architectures = [type(module).__name__]  # as save_pretrained records the class that wrote them
    config.save_pretrained(out)
    generation = getattr(module, "generation_config", None)
    if generation is not None and getattr(module, "can_generate", lambda: False)():
        generation.save_pretrained(out)
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
    except (LedgerError, DatabaseError, ExportError, ModelLoadError, BaseDigestMismatch, TaskSpecError) as exc:
        raise click.ClickException(str(exc)) from None
    out = write_model_dir(rebuilt, out_dir)
    click.echo(f"exported task {spec.task_id} at round {rebuilt.replica.round} to {out}")
    click.echo(f"digest {rebuilt.digest}")
