"""``seedfed eval``: loss of a model on a data file, with accuracy (classification)
or Rouge-L of greedy generations against the references (causal_lm).

The model is either a directory (an export, or any base) evaluated with a
task's objective, or a task rebuilt at a round from its ledger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from seedfed.shared.ledger import LedgerError
from seedfed.shared.taskspec import TaskSpec, TaskSpecError

MAX_NEW_TOKENS = 64  # the default bound on a generated response (causal_lm)


@dataclass(frozen=True)
class EvalResult:
    examples: int
    loss: float
    accuracy: float | None  # None for causal language modelling
    rouge_l: float | None = None  # causal language modelling: mean Rouge-L of greedy generations
    generations: tuple[str, ...] = ()  # the generated responses, in example order
    rouge_l_scores: tuple[float, ...] = ()  # each generation's Rouge-L against its reference


def evaluate_module(
    spec: TaskSpec,
    module,
    tokenizer,
    data_path: str | Path,
    device: str = "cpu",
    limit: int = 0,
    max_new_tokens: int | None = None,
) -> EvalResult:
    """Loss, and accuracy or Rouge-L; ``max_new_tokens`` bounds each generated response
    (default ``MAX_NEW_TOKENS``; 0: no generation, no Rouge-L)."""
    from seedfed.client.data import read_examples
    from seedfed.client.objectives import accuracy_and_loss, build_objective, mean_loss, rouge_l

    examples = read_examples(data_path, spec.objective.kind, spec.objective.labels)
    if limit:
        examples = examples[:limit]
    objective = build_objective(spec.objective, module, tokenizer, device)
    if spec.objective.kind == "classification":
        acc, loss = accuracy_and_loss(objective, examples)  # one forward pass per batch gives both
        return EvalResult(len(examples), loss, acc)
    loss = mean_loss(objective, examples)
    new_tokens = MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    if new_tokens == 0:
        return EvalResult(len(examples), loss, None)
    generated = rouge_l(objective, examples, new_tokens)
    return EvalResult(len(examples), loss, None, generated.rouge_l, generated.texts, generated.scores)


def model_for_eval(model_dir: str, objective_kind: str, device: str = "cpu", unit_log2: int | None = None, weights: str = "auto"):
    """A model directory ready to compute: read tensor by tensor into an int32 master, at the
    task's unit ``unit_log2`` when every weight fits it (then an export of the task computes with
    exactly the weights the task's replicas use), else at the unit its weights call for; compute
    weights in the layout that fits. Returns (module, tokenizer)."""
    import torch

    from seedfed.client.engine.errors import UnitRangeError
    from seedfed.client.engine.memory import plan_layout
    from seedfed.client.engine.weights import bind_weights
    from seedfed.client.model import open_base, resolve_device

    base = open_base(model_dir, objective_kind)
    layout = plan_layout(base.manifest.total, resolve_device(device), torch.float32, weights)
    try:
        state = base.load_state(0, unit_log2, layout.master_device, pin_memory=layout.pin)
    except UnitRangeError:
        state = base.load_state(0, None, layout.master_device, pin_memory=layout.pin)
    bind_weights(base.module, state, layout)
    return base.module, base.tokenizer


@click.command("eval")
@click.option(
    "--data",
    "data_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="labelled TSV/CSV/JSONL or instruction JSONL",
)
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(file_okay=False, exists=True),
    help="a model directory (e.g. from seedfed export)",
)
@click.option(
    "--task-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="task file whose objective to use with --model",
)
@click.option("--db", "db_url", default=None, help="coordinator database to rebuild the task from")
@click.option("--task", "task_id", default=None, help="task id in the database")
@click.option(
    "--ledger",
    "ledger_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="a ledger file to rebuild the task from",
)
@click.option(
    "--round", "to_round", type=click.IntRange(min=0), default=None, help="round to evaluate at (0: the base; default: the head)"
)
@click.option("--base", "base_ref", default=None, help="base model of the task (default: the genesis's base_model)")
@click.option("--device", default="cpu", show_default=True)
@click.option("--limit", type=click.IntRange(min=0), default=0, help="evaluate only the first N examples")
@click.option(
    "--max-new-tokens",
    type=click.IntRange(0, 4096),
    default=MAX_NEW_TOKENS,
    show_default=True,
    help="causal_lm: tokens generated greedily per prompt for Rouge-L (0: loss only)",
)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def eval_command(
    data_path, model_dir, task_file, db_url, task_id, ledger_file, to_round, base_ref, device, limit, max_new_tokens, as_json
) -> None:
    """Loss and accuracy (classification) or Rouge-L (causal_lm) of a model directory, or of a
    task at a round, on a data file."""
    from transformers.utils import logging as hf_logging

    from seedfed.client.data import DataError
    from seedfed.client.export import ExportError, rebuild
    from seedfed.client.history import DatabaseError, load_history
    from seedfed.client.model import ModelLoadError
    from seedfed.client.replica import BaseDigestMismatch

    if model_dir and to_round is not None:
        raise click.UsageError("--round picks a round of a task rebuilt from its ledger; a --model directory is one fixed model")
    hf_logging.disable_progress_bar()  # one-line output for people and scripts
    try:
        if model_dir:
            spec = _spec_for_model_dir(model_dir, task_file, db_url, task_id, ledger_file)
            module, tokenizer = model_for_eval(model_dir, spec.objective.kind, device, spec.unit_log2)
            where = model_dir
        else:
            spec, records = load_history(db_url, task_id, ledger_file)
            rebuilt = rebuild(spec, records, base_ref, to_round, device)
            module, tokenizer, where = rebuilt.module, rebuilt.tokenizer, f"task {spec.task_id} round {rebuilt.replica.round}"
        result = evaluate_module(spec, module, tokenizer, data_path, device, limit, max_new_tokens)
    except (DataError, LedgerError, DatabaseError, ExportError, ModelLoadError, BaseDigestMismatch, TaskSpecError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        fields = {"model": where, "examples": result.examples, "loss": result.loss, "accuracy": result.accuracy}
        click.echo(json.dumps(fields | {"rouge_l": result.rouge_l}))
        return
    acc = f", accuracy {100 * result.accuracy:.2f}%" if result.accuracy is not None else ""
    rouge = f", Rouge-L {result.rouge_l:.4f} (at most {max_new_tokens} new tokens)" if result.rouge_l is not None else ""
    click.echo(f"{where}: {result.examples} examples, loss {result.loss:.4f}{acc}{rouge}")


def _spec_for_model_dir(
    model_dir: str, task_file: str | None, db_url: str | None, task_id: str | None, ledger_file: str | None
) -> TaskSpec:
    """The objective to evaluate a model directory with: a task file, a ledger, a database, or the
    task named in the directory's seedfed.json (written by seedfed export) looked up in a database."""
    if task_file:
        return TaskSpec.load_toml(task_file)
    if ledger_file or db_url or task_id:
        from seedfed.client.history import load_history

        return load_history(db_url, task_id, ledger_file)[0]
    raise click.ClickException("say which objective to evaluate with: --task-file, --ledger, or --db/--task")
