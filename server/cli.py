"""``seedfed coordinator``, ``seedfed task ...`` and ``seedfed status``."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click

from seedfed.server.db import DEFAULT_DB_URL, DatabaseError, normalize_url, open_store
from seedfed.server.hardening import hardening_options, options_from_kwargs
from seedfed.server.store import TaskConflictError
from seedfed.shared.taskspec import TaskSpec, TaskSpecError

DB_HELP = "database URL: sqlite:///PATH (default ./seedfed.db) or postgresql+psycopg://USER@HOST:PORT/DB"
COORDINATOR_DB_HELP = DB_HELP + "; memory:// keeps the ledger in memory for a throwaway run (with --no-auth)"


def _load_specs(paths: tuple[str, ...]) -> list[TaskSpec]:
    specs = []
    for p in paths:
        try:
            specs.append(TaskSpec.load_toml(p))
        except TaskSpecError as exc:
            raise click.ClickException(str(exc)) from None
    return specs


def _open_store(url: str, *, must_exist: bool = False, lock: bool = False):  # noqa: ANN202
    """The store at ``url`` (and, with lock=True, the one-coordinator lock), or a clear CLI error."""
    try:
        store, held = open_store(url, must_exist=must_exist, lock=lock)
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    return (store, held) if lock else store


def _parse_listen(listen: str) -> str:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    return listen


@click.command()
# --task and --db name their variables: click's automatic ones would follow the
# parameter names (SEEDFED_COORDINATOR_TASK_FILES, ..._DB_URL).
@click.option(
    "--task",
    "task_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    envvar="SEEDFED_COORDINATOR_TASK",
    help="task file (TOML) to register; repeatable (env SEEDFED_COORDINATOR_TASK, space-separated)",
)
@click.option(
    "--db", "db_url", default=DEFAULT_DB_URL, show_default=True, envvar="SEEDFED_COORDINATOR_DB", help=COORDINATOR_DB_HELP
)
@click.option("--listen", default="127.0.0.1:50051", show_default=True, help="HOST:PORT to serve gRPC on")
@click.option(
    "--lease-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="how long a client counts as online after a heartbeat",
)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]), show_default=True)
@hardening_options
def coordinator(
    task_files: tuple[str, ...], db_url: str, listen: str, lease_seconds: float, log_level: str, log_format: str, **deployment
) -> None:
    """Run the coordinator: rounds, ledger and the gRPC service.

    Serves every task in the database; --task registers a task file first
    (the same genesis again is fine; a different one for an existing task id
    is an error). Serves TLS with --tls-cert/--tls-key (or plaintext with
    --insecure) and requires client tokens unless --no-auth.
    """
    from seedfed.server.app import run_until_signal, start_coordinator
    from seedfed.server.hardening import Hardening, TransportError
    from seedfed.server.rounds import RoundsConfig
    from seedfed.shared.logs import configure_logging

    configure_logging(log_level, log_format)
    listen = _parse_listen(listen)
    specs = _load_specs(task_files)
    try:  # transport and tokens first: a missing choice stops the start before anything is opened
        hardening = Hardening.from_options(db_url, **options_from_kwargs(deployment))
    except TransportError as exc:
        raise click.UsageError(str(exc)) from None
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    store, lock = _open_store(db_url, lock=True)
    for spec in specs:  # before serving, so a conflicting task file stops the start
        try:
            store.register_task(spec, time.time())
        except TaskConflictError as exc:
            store.close()
            if lock is not None:
                lock.release()
            raise click.ClickException(f"{exc}; use a new task_id for a new genesis") from None

    def ready(port: int) -> None:
        host = listen.rpartition(":")[0]
        click.echo(f"seedfed coordinator listening on {host}:{port} ({normalize_url(db_url).split('://')[0]})", err=False)
        sys.stdout.flush()

    async def main() -> None:
        try:
            await hardening.start()
        except OSError as exc:  # the metrics port is taken, or the address is not ours
            raise click.ClickException(
                f"cannot serve metrics on {hardening.metrics_host}:{hardening.metrics_port}: {exc}"
            ) from None
        try:
            try:
                running = await start_coordinator(
                    "",
                    listen,
                    config=RoundsConfig(lease_seconds=lease_seconds),
                    store=store,
                    lock=lock,
                    observer=hardening.observer,
                    interceptors=hardening.interceptors,
                    credentials=hardening.credentials,
                )
            except (OSError, RuntimeError) as exc:
                raise click.ClickException(f"cannot listen on {listen}: {exc}") from None
            hardening.bind(running.coordinator)
            await run_until_signal(running, ready)
        finally:
            await hardening.stop()

    asyncio.run(main())


@click.group()
def task() -> None:
    """Create and inspect tasks in a coordinator database."""


@task.command("create")
@click.option("--db", "db_url", default=DEFAULT_DB_URL, show_default=True, help=DB_HELP)
@click.argument("task_file", type=click.Path(dir_okay=False))
def task_create(db_url: str, task_file: str) -> None:
    """Register TASK_FILE (idempotent for the same genesis)."""
    (spec,) = _load_specs((task_file,))
    store = _open_store(db_url)
    try:
        created = store.register_task(spec, time.time())
    except TaskConflictError as exc:
        raise click.ClickException(f"{exc}; use a new task_id for a new genesis") from None
    finally:
        store.close()
    state = "created" if created else "already present with the same genesis"
    click.echo(f"task {spec.task_id} {state} (genesis {spec.genesis_hash().hex()[:16]}...)")


@task.command("list")
@click.option("--db", "db_url", default=DEFAULT_DB_URL, show_default=True, help=DB_HELP)
def task_list(db_url: str) -> None:
    """Every task with its ledger head."""
    from rich.console import Console
    from rich.table import Table

    store = _open_store(db_url, must_exist=True)
    try:
        table = Table("task", "base model", "head round", "clients", "abandoned", "ledger bytes", "genesis")
        for spec in store.list_tasks():
            s = store.summary(spec.task_id)
            table.add_row(
                spec.task_id,
                spec.base_model,
                str(s.head_round),
                str(s.clients),
                str(s.abandoned_attempts),
                str(s.ledger_bytes),
                spec.genesis_hash().hex()[:16],
            )
    finally:
        store.close()
    Console().print(table)


@task.command("show")
@click.option("--db", "db_url", default=DEFAULT_DB_URL, show_default=True, help=DB_HELP)
@click.argument("task_id")
def task_show(db_url: str, task_id: str) -> None:
    """The genesis (as TOML) and the ledger head of TASK_ID."""
    store = _open_store(db_url, must_exist=True)
    try:
        spec = store.get_task(task_id)
        if spec is None:
            raise click.ClickException(f"no task {task_id!r} in {normalize_url(db_url)}")
        s = store.summary(task_id)
    finally:
        store.close()
    click.echo(spec.to_toml())
    click.echo(f"# genesis hash {spec.genesis_hash().hex()}")
    click.echo(
        f"# head round {s.head_round}, hash {s.head_hash.hex()}, {s.clients} clients, {s.abandoned_attempts} abandoned attempts"
    )


@click.command()
@click.option("--coordinator", "address", default="127.0.0.1:50051", show_default=True, help="HOST:PORT of a running coordinator")
@click.option("--task", "task_id", default="", help="task id (needed when the coordinator serves several)")
@click.option("--timeout", default=5.0, show_default=True, help="seconds to wait for an answer")
@click.option(
    "--token", default=None, help="a client token (env SEEDFED_STATUS_TOKEN); the coordinator requires one unless --no-auth"
)
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None, help="read the token from this file")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), default=None, help="CA certificate of a TLS coordinator")
@click.option("--insecure", is_flag=True, help="plaintext connection (a coordinator started with --insecure)")
@click.option(
    "--metrics",
    "metrics_url",
    default=None,
    metavar="URL",
    help="also read the coordinator's Prometheus metrics, e.g. http://HOST:9464/metrics",
)
def status(
    address: str,
    task_id: str,
    timeout: float,
    token: str | None,
    token_file: str | None,
    tls_ca: str | None,
    insecure: bool,
    metrics_url: str | None,
) -> None:
    """A running coordinator at a glance (the Status RPC, and its metrics with --metrics)."""
    import grpc
    from rich.console import Console
    from rich.table import Table

    from seedfed.server.metrics import fetch_summary, summary_rows
    from seedfed.shared.tls import TransportError, dial
    from seedfed.v1 import coordinator_pb2 as pb
    from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

    if token_file:
        token = Path(token_file).read_text().strip()
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        channel = dial(address, tls_ca=tls_ca, insecure=insecure)
    except TransportError as exc:
        raise click.UsageError(str(exc)) from None
    with channel:
        try:
            s = pb_grpc.CoordinatorStub(channel).Status(pb.StatusRequest(task_id=task_id), timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise click.ClickException(f"{address}: {exc.code().name}: {exc.details()}") from None
    extra: list[tuple[str, str]] = []
    if metrics_url:
        try:
            extra = summary_rows(fetch_summary(metrics_url, timeout=timeout))
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot read metrics at {metrics_url}: {exc}") from None
    table = Table(title=f"seedfed coordinator {address}", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")  # a hash is folded onto two lines, never cut
    for key, value in [
        ("task", s.task_id),
        ("head round", str(s.head_round)),
        ("head hash", s.head_hash.hex()),
        ("open round", str(s.open_round) if s.open_round else "none"),
        ("clients online", str(s.clients_online)),
        ("submissions in open round", str(s.submissions_in_open_round)),
        ("digest", f"{s.digest[:16]}... at round {s.digest_round}" if s.digest else "no reports"),
        ("ledger bytes", str(s.ledger_bytes)),
        ("last loss", f"{s.last_loss:.4f}"),
        *extra,
    ]:
        table.add_row(key, value)
    Console().print(table)
