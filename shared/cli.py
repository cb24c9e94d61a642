"""The one console script, ``seedfed``.

Subcommands load on demand, so ``seedfed coordinator`` never imports torch
and works in the slim coordinator image.
"""

from __future__ import annotations

import importlib

import click

COMMANDS: dict[str, tuple[str, str]] = {
    "coordinator": ("seedfed.server.cli:coordinator", "run the coordinator service"),
    "task": ("seedfed.server.cli:task", "create and inspect tasks"),
    "token": ("seedfed.server.token_cli:token", "create, revoke and list client tokens"),
    "status": ("seedfed.server.cli:status", "a running coordinator at a glance"),
    "ledger": ("seedfed.server.ledger_cli:ledger", "show, verify, dump and import ledgers"),
    "init": ("seedfed.client.cli:init_task", "write a task file (genesis) for a base model"),
    "client": ("seedfed.client.cli:client", "run an edge client daemon"),
    "simulate": ("seedfed.client.simulate.cli:simulate_command", "a local federation: coordinator plus N clients"),
    "export": ("seedfed.client.export:export_command", "base weights + ledger -> Hugging Face model directory"),
    "eval": ("seedfed.client.evaluate:eval_command", "accuracy or loss of a model or task round on a data file"),
}


CLIENT_EXTRAS = ("torch", "transformers", "safetensors")


def _missing_extras(name: str, exc: ModuleNotFoundError) -> click.ClickException | None:
    if exc.name and exc.name.split(".")[0] in CLIENT_EXTRAS:
        return click.ClickException(
            f"'seedfed {name}' needs the client extras: pip install 'seedfed[client]' ({exc.name} is missing)"
        )
    return None


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = _missing_extras(name, exc)
            if missing is None:
                raise
            raise missing from None
        return getattr(module, attr)

    def invoke(self, ctx: click.Context) -> object:
        # The client commands import torch when they run, not when they load (their
        # --help, and a signal handler installed before the slow import, need none).
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            missing = _missing_extras(ctx.invoked_subcommand or "", exc)
            if missing is None:
                raise
            raise missing from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text without importing every subcommand.
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in sorted(COMMANDS)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="seedfed")
def cli() -> None:
    """Federated zeroth-order fine-tuning over a seed-and-scalar ledger."""


def main() -> None:
    # Every option can also come from the environment, which is how containers
    # configure it: `seedfed coordinator --db` reads SEEDFED_COORDINATOR_DB.
    cli(auto_envvar_prefix="SEEDFED")
