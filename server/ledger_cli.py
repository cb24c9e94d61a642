"""``seedfed ledger show | verify | dump | import``: a run's history, from the
coordinator's database or from a portable ledger file.

A ledger file is the whole history of a task (genesis plus every committed
round, hash-chained) in a few kilobytes: enough, with the base weights, to
rebuild the model at any round (``seedfed export --ledger FILE``).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from seedfed.server import history
from seedfed.server.cli import DB_HELP, _open_store
from seedfed.server.db import DEFAULT_DB_URL, DatabaseError
from seedfed.shared.ledger import LedgerError, RoundRecord, read_ledger_file, record_bytes, verify_chain, write_ledger_file
from seedfed.shared.taskspec import TaskSpec


def load_history(db_url: str | None, task_id: str | None, ledger_file: str | None) -> tuple[TaskSpec, list[RoundRecord]]:
    try:
        return history.load_history(db_url, task_id, ledger_file)
    except (LedgerError, DatabaseError) as exc:
        raise click.ClickException(str(exc)) from None


def source_options(fn):
    fn = click.option(
        "--file", "ledger_file", type=click.Path(dir_okay=False, exists=True), help="a ledger file instead of a database"
    )(fn)
    fn = click.option("--task", "task_id", default=None, help="task id (may be omitted when the database holds one task)")(fn)
    fn = click.option("--db", "db_url", default=DEFAULT_DB_URL, show_default=True, help=DB_HELP)(fn)
    return fn


@click.group()
def ledger() -> None:
    """Inspect, verify and move a task's ledger."""


@ledger.command("show")
@source_options
@click.option("--last", default=20, show_default=True, type=click.IntRange(min=0), help="how many of the newest rounds to list")
def show(db_url: str, task_id: str | None, ledger_file: str | None, last: int) -> None:
    """Genesis summary, size and the newest rounds."""
    spec, records = load_history(db_url, task_id, ledger_file)
    console = Console(soft_wrap=True)  # hashes stay on one line, to be copied whole
    total = sum(record_bytes(r) for r in records)
    entries = sum(len(r.seeds) for r in records)
    console.print(f"task [bold]{spec.task_id}[/] base {spec.base_model} (digest {spec.base_digest[:16]}...)")
    console.print(
        f"genesis {spec.genesis_hash().hex()}  K={spec.pool_size or 'unbounded'} "
        f" local steps {spec.local_steps}  aggregation {spec.aggregation}"
    )
    console.print(f"{len(records)} committed rounds, {entries} entries, {total:,} bytes canonical")
    if records:
        console.print(f"head round {records[-1].round} hash {records[-1].hash.hex()}")
    table = Table("round", "entries", "bytes", "max |step|", "hash")
    for r in records[-last:] if last else []:
        table.add_row(
            str(r.round),
            str(len(r.seeds)),
            str(record_bytes(r)),
            str(max((abs(q) for q in r.steps), default=0)),
            r.hash.hex()[:16] + "...",
        )
    if last and records:
        console.print(table)


@ledger.command("verify")
@source_options
def verify(db_url: str, task_id: str | None, ledger_file: str | None) -> None:
    """Check the hash chain from the genesis to the head; exit 1 on a break."""
    spec, records = load_history(db_url, task_id, ledger_file)
    try:
        head = verify_chain(spec.genesis_hash(), records)
    except LedgerError as exc:
        raise click.ClickException(f"ledger of task {spec.task_id!r} does not verify: {exc}") from None
    click.echo(f"ok: task {spec.task_id}, {len(records)} rounds, head {head.hex()}")


@ledger.command("dump")
@source_options
@click.option(
    "-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False, writable=True), help="ledger file to write"
)
@click.option("--to-round", default=0, type=click.IntRange(min=0), help="last round to include (0: the head)")
def dump(db_url: str, task_id: str | None, ledger_file: str | None, out_path: str, to_round: int) -> None:
    """Write a portable, verified ledger file."""
    spec, records = load_history(db_url, task_id, ledger_file)
    if to_round:
        if to_round > len(records):
            raise click.ClickException(f"round {to_round} is not committed (head is {len(records)})")
        records = records[:to_round]
    try:
        verify_chain(spec.genesis_hash(), records)
    except LedgerError as exc:
        raise click.ClickException(f"refusing to dump a ledger that does not verify: {exc}") from None
    n = write_ledger_file(out_path, spec, records)
    click.echo(f"wrote {n} rounds of task {spec.task_id} to {out_path} ({Path(out_path).stat().st_size:,} bytes)")


@ledger.command("import")
@click.argument("ledger_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--db", "db_url", default=DEFAULT_DB_URL, show_default=True, help=DB_HELP)
def import_(ledger_file: str, db_url: str) -> None:
    """Load a ledger file into a database, so a coordinator continues the run."""
    try:
        spec, records = read_ledger_file(ledger_file)
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from None
    store = _open_store(db_url)
    try:
        from seedfed.server.store import StoreError

        try:
            added = store.import_rounds(spec, records)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"task {spec.task_id}: {added} rounds imported, head round {records[-1].round if records else 0}")
