"""``seedfed token create | revoke | list``: client tokens in the coordinator database.

The database option reads SEEDFED_TOKEN_DB, then SEEDFED_COORDINATOR_DB, so
inside the coordinator's container ``seedfed token create --name NAME``
needs no flags.
"""

from __future__ import annotations

import time

import click

from seedfed.server.db import DEFAULT_DB_URL, DatabaseError
from seedfed.server.tokens import MAX_TOKEN_NAME
from seedfed.shared.wire import CLIENT_NAME

DB_ENV = ("SEEDFED_TOKEN_DB", "SEEDFED_COORDINATOR_DB")
DB_HELP = "coordinator database URL (env SEEDFED_TOKEN_DB or SEEDFED_COORDINATOR_DB)"


def _store(db_url: str):  # noqa: ANN202
    from seedfed.server.tokens import open_token_store

    try:
        return open_token_store(db_url)
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None


def db_option(f):  # noqa: ANN001, ANN201
    return click.option("--db", "db_url", default=DEFAULT_DB_URL, show_default=True, envvar=DB_ENV, help=DB_HELP)(f)


@click.group()
def token() -> None:
    """Create, revoke and list client tokens.

    A coordinator with authentication on (the default) accepts only RPCs that
    carry a valid token: authorization: Bearer <token>.
    """


@token.command("create")
@click.option(
    "--name",
    required=True,
    help=f"who the token is for (a device or a person): a client name ({CLIENT_NAME.rule}), at most {MAX_TOKEN_NAME} characters",
)
@db_option
def token_create(name: str, db_url: str) -> None:
    """Print a new token for NAME. It is shown only this once: only its hash is stored."""
    from seedfed.server.tokens import TokenError, fingerprint, token_hash

    store = _store(db_url)
    try:
        secret = store.create(name)
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.engine.dispose()
    # The token alone on stdout, so `seedfed token create --name x > x.token` works.
    click.echo(secret)
    click.echo(f"token {name!r} created (fingerprint {fingerprint(token_hash(secret))}); it is not shown again", err=True)


@token.command("revoke")
@click.argument("name")
@db_option
def token_revoke(name: str, db_url: str) -> None:
    """Revoke the active token of NAME; a running coordinator refuses it within a second, open streams included."""
    store = _store(db_url)
    try:
        n = store.revoke(name)
    finally:
        store.engine.dispose()
    if not n:
        raise click.ClickException(f"no active token named {name!r}")
    click.echo(f"token {name!r} revoked")


@token.command("list")
@db_option
def token_list(db_url: str) -> None:
    """Every token: name, fingerprint, created, revoked (never the token itself)."""
    from rich.console import Console
    from rich.table import Table

    store = _store(db_url)
    try:
        infos = store.list()
    finally:
        store.engine.dispose()
    table = Table("name", "fingerprint", "created (UTC)", "revoked (UTC)")
    for t in infos:
        table.add_row(t.name, t.fingerprint, _when(t.created_at), _when(t.revoked_at) if t.revoked_at else "active")
    Console().print(table)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
