"""``seedfed init`` (write a task genesis for a base model) and ``seedfed client`` (run the daemon)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import tomllib
from pathlib import Path

import click

from seedfed.shared.taskspec import (
    AGGREGATIONS,
    SCALE_RULES,
    SCHEDULES,
    STEP_RULES,
    WEIGHTINGS,
    Objective,
    TaskSpec,
    TaskSpecError,
)
from seedfed.shared.wire import CLIENT_NAME, TASK_ID, FieldLimit

# genesis fields `init` takes from its own options or computes; --set may override the rest
_COMPUTED = {"task_id", "base_model", "base_digest", "manifest_digest", "objective", "generator"}


def _wire_field(limit: FieldLimit):
    """A click callback refusing a value the coordinator would refuse, before anything loads."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None and not limit.check(value):
            raise click.BadParameter(f"{value!r} is not a valid {limit.name}: {limit.rule}")
        return value

    return check


def _parse_set(pairs: tuple[str, ...]) -> dict[str, object]:
    """``--set key=value``: value parsed as a TOML value (numbers, strings, booleans)."""
    out: dict[str, object] = {}
    fields = {f.name for f in dataclasses.fields(TaskSpec)} - _COMPUTED
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise click.BadParameter(
                f"{pair!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}", param_hint="--set"
            )
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw  # a bare word, e.g. --set aggregation=median
    return out


@click.command("init")
@click.option("--model", "model_ref", required=True, help="Base model: a Hugging Face model directory or id.")
@click.option("--task-id", required=True, help=f"Name of the task: {TASK_ID.rule}.")
@click.option("--objective", type=click.Choice(["classification", "causal_lm"]), default="classification", show_default=True)
@click.option("--labels", default="", help='Label descriptions for classification, comma-separated, e.g. "negative,positive".')
@click.option(
    "--template",
    default="{text}",
    show_default=True,
    help="How a label becomes the text the model embeds; {text} stands for the label.",
)
@click.option("--max-length", type=int, default=128, show_default=True, help="Tokens per example.")
@click.option("--task-seed", type=int, default=None, help="32-bit key of the generator (default: random).")
@click.option("--unit-log2", type=int, default=None, help="Fixed-point unit 2**N (default: chosen from the weights).")
@click.option("--eps", type=float, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--pool-size", type=int, default=None, help="K, the seed pool (0: unbounded).")
@click.option("--local-steps", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--min-clients", type=int, default=None)
@click.option("--round-deadline", "round_deadline_s", type=float, default=None, help="Seconds.")
@click.option(
    "--aggregation",
    type=click.Choice(AGGREGATIONS),
    default=None,
    help="How a seed's scalars combine (default mean). screened_mean leaves out clients whose scalars are outlying "
    "over recent rounds and clips the rest; it holds against a minority under zeroth-order noise (docs/security.md).",
)
@click.option(
    "--weighting",
    type=click.Choice(WEIGHTINGS),
    default=None,
    help="How reports count (default equal: once per client): examples weighs each by the examples its client "
    "holds (FedAvg), so clients whose data differ train the model of all their data (mean and screened_mean; "
    "measured in docs/bench/quality_sst2.md).",
)
@click.option("--trim-fraction", type=float, default=None, help="trimmed_mean: the fraction cut from each end.")
@click.option(
    "--byzantine-clients",
    type=int,
    default=None,
    help="Faulty clients the aggregation must outvote in a round of --min-clients; a rule that cannot is refused.",
)
@click.option(
    "--scale-rule",
    type=click.Choice(SCALE_RULES),
    default=None,
    help="The one-byte scale of the scalars: fixed, or adaptive (follows their spread round by round; "
    "the default with screened_mean).",
)
@click.option(
    "--step-rule",
    type=click.Choice(STEP_RULES),
    default=None,
    help="constant (default): a step is -lr x the mean scalar; spread: each scalar clipped at step_clip "
    "(default 1) times the round's median scalar size and the mean divided by that size, so lr is the step "
    "a typical scalar makes (docs/decisions.md; measured best in docs/bench/quality_sst2.md).",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(SCHEDULES),
    default=None,
    help="How the lr decays over --set max_rounds=N after the warmup (default constant).",
)
@click.option("--warmup-rounds", type=int, default=None, help="Rounds over which the lr rises linearly to --lr.")
@click.option(
    "--guard-rounds",
    type=int,
    default=None,
    help="The loss guard's window (default 0: off): a window whose reported loss rose goes back to the best "
    "window's weights and halves the lr (--set guard_z=Z: the rise, in standard errors, default 4; "
    "--set guard_return=window_start: go back to where the best window began, not where it ended; "
    "--set guard_remeasure=true: after a rollback, compare with the next window, not the best).",
)
@click.option(
    "--trainable",
    multiple=True,
    metavar="PATTERN",
    help="Tune only the parameters whose names match (shell-style, repeatable), e.g. --trainable '*bias' "
    "--trainable '*LayerNorm.weight'; the rest keep the base weights. Default: all. Fewer dimensions make "
    "each zeroth-order step count for more (docs/decisions.md).",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other genesis field, e.g. --set digest_every=1.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="task.toml", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def init_task(
    model_ref, task_id, objective, labels, template, max_length, task_seed, unit_log2, output, force, sets, **overrides
) -> None:
    """Write a task file (the genesis) for a base model.

    Loads the model, computes its parameter manifest, the fixed-point unit and
    the base digest, and writes every genesis field to a TOML file for
    `seedfed coordinator --task`.
    """
    from seedfed.client.genesis import genesis_for_model
    from seedfed.client.model import ModelLoadError

    if os.path.exists(output) and not force:
        raise click.ClickException(f"{output} exists; pass --force to overwrite it")
    label_list = tuple(x.strip() for x in labels.split(",") if x.strip())
    if objective == "classification" and len(label_list) < 2:
        raise click.ClickException(
            'a classification task needs --labels with at least two descriptions, e.g. --labels "negative,positive"'
        )
    fields: dict[str, object] = {k: v for k, v in overrides.items() if v is not None}
    fields.update(_parse_set(sets))
    if fields.get("aggregation") == "screened_mean":
        fields.setdefault("scale_rule", "adaptive")  # screening needs unsaturated bytes
    obj = Objective(
        kind=objective, labels=label_list if objective == "classification" else (), template=template, max_length=max_length
    )
    try:
        spec = genesis_for_model(model_ref, task_id, obj, task_seed=task_seed, unit_log2=unit_log2, **fields)
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from None
    except TaskSpecError as exc:
        raise click.ClickException(str(exc)) from None
    Path(output).write_text(spec.to_toml(), encoding="utf-8")
    click.echo(f"wrote {output}: task {spec.task_id}, unit 2^{spec.unit_log2}, task seed {spec.task_seed}")
    click.echo(f"base digest {spec.base_digest}")
    click.echo(f"genesis hash {spec.genesis_hash().hex()}")


@click.command("client")
@click.option("--coordinator", required=True, metavar="HOST:PORT", help="Address of the coordinator.")
@click.option("--task", "task_id", required=True, callback=_wire_field(TASK_ID), help="Task id to join.")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Local training data (TSV/CSV/JSONL); never leaves this device.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--cache", required=True, type=click.Path(file_okay=False), help="Directory for local checkpoints.")
@click.option("--model", default=None, help="Base model directory or id (default: the task's base_model).")
@click.option(
    "--name",
    default=None,
    callback=_wire_field(CLIENT_NAME),
    help="Stable device name; a restart under the same name keeps its identity (default: derived from --cache).",
)
@click.option("--compute-dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
@click.option(
    "--weights",
    type=click.Choice(["auto", "resident", "streamed"]),
    default="auto",
    show_default=True,
    help="Compute weights: one resident float buffer, or streamed (each block derived from the master as it runs; "
    "no full float copy). auto: streamed above 256M parameters on the CPU, else resident when the buffer "
    "takes under a quarter of the free memory.",
)
@click.option(
    "--master",
    type=click.Choice(["auto", "device", "host"]),
    default="auto",
    show_default=True,
    help="With a GPU: keep the int32 master on the device, or in pinned host memory with blocks copied to the "
    "device as they run (a model larger than the device). auto: the device when it fits comfortably.",
)
@click.option(
    "--checkpoint-every", type=int, default=10, show_default=True, help="Rounds between local checkpoints (and one on exit)."
)
@click.option("--data-seed", type=int, default=None, help="Seed of the local minibatch sampler (default: derived from the name).")
@click.option("--until-round", type=int, default=None, help="Leave after applying this round (for scripted runs).")
@click.option(
    "--token",
    default=None,
    help=(
        "Client token issued by the coordinator's operator (better: env "
        "SEEDFED_CLIENT_TOKEN; arguments show in ps). Join under the token's name."
    ),
)
@click.option(
    "--tls-ca", type=click.Path(exists=True, dir_okay=False), default=None, help="CA certificate of the coordinator (TLS)."
)
@click.option(
    "--insecure", is_flag=True, help="Plaintext connection, to a coordinator started with --insecure (a trusted network only)."
)
@click.option("--events", type=click.Path(dir_okay=False), default=None, help="Append every event as a JSON line to this file.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def client(
    coordinator,
    task_id,
    data,
    device,
    cache,
    model,
    name,
    compute_dtype,
    weights,
    master,
    checkpoint_every,
    data_seed,
    until_round,
    token,
    tls_ca,
    insecure,
    events,
    quiet,
) -> None:
    """Run an edge client: follow the task's ledger, probe local data, submit one byte per scalar.

    SIGINT or SIGTERM leaves the federation cleanly, writes a checkpoint and exits 0.
    Needs --tls-ca (TLS) or --insecure (plaintext): it never falls back to plaintext by itself.
    """
    # Signals are caught before torch and the model load (seconds), so a stop
    # asked for during start-up is a clean exit too, never a default SIGTERM death.
    from seedfed.client.signals import StopSignals

    with StopSignals() as stop_signals:
        from seedfed.shared.tls import TransportError, check_client_transport

        try:  # before anything slow is loaded
            check_client_transport(tls_ca, insecure)
        except TransportError as exc:
            raise click.UsageError(str(exc)) from None

        from transformers.utils import logging as hf_logging

        from seedfed.client.daemon import ClientConfig, ClientDaemon, ClientError
        from seedfed.client.data import DataError
        from seedfed.client.model import ModelLoadError
        from seedfed.client.progress import Reporter
        from seedfed.client.replica import BaseDigestMismatch
        from seedfed.shared.ledger import LedgerError

        logging.basicConfig(
            level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
        )
        hf_logging.set_verbosity_error()  # the client reports its own progress; no loader bars in between
        hf_logging.disable_progress_bar()
        config = ClientConfig(
            coordinator=coordinator,
            task_id=task_id,
            data=data,
            cache=cache,
            device=device,
            model=model,
            name=name,
            compute_dtype=compute_dtype,
            weights=weights,
            master=master,
            checkpoint_every=checkpoint_every,
            data_seed=data_seed,
            until_round=until_round,
            token=token,
            tls_ca=tls_ca,
            insecure=insecure,
        )
        reporter = Reporter(quiet=quiet, events_path=events)
        try:
            daemon = ClientDaemon(config, reporter)
            stop_signals.deliver_to(daemon.request_stop)
            code = daemon.run()
        except (ClientError, BaseDigestMismatch, ModelLoadError, DataError, TaskSpecError, LedgerError) as exc:
            reporter.event("error", message=str(exc))
            raise click.ClickException(str(exc)) from None
        finally:
            stop_signals.close()  # nothing may reach the daemon once its reporter is closed
            reporter.close()
    sys.exit(code)
