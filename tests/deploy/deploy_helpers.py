"""Reading the docker files the way Docker and Compose do, as far as these
tests need: Dockerfile instructions (with line continuations), compose
services, and the environment variables every seedfed command accepts."""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile(path: Path) -> list[Instruction]:
    lines, out, current = path.read_text().splitlines(), [], ""
    for raw in lines:
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.strip().partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        current = ""
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by FROM; the last group is the image that runs."""
    groups: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            groups.append([])
        groups[-1].append(ins)
    return groups


def exec_form(args: str) -> list[str]:
    import json

    return json.loads(args) if args.startswith("[") else shlex.split(args)


def dockerignore_allows(ignore: Path, rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    allowed = True
    for line in ignore.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.replace("**/", "")
        parts = rel.split("/")
        if any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) or fnmatch.fnmatch(parts[i], pattern) for i in range(len(parts))
        ):
            allowed = negate
    return allowed


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service_image_dockerfile(service: dict) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    context = (COMPOSE.parent / build["context"]).resolve()
    return context / build.get("dockerfile", "Dockerfile")


def compose_unescape(text: str) -> str:
    """Compose turns $$ into a literal $ (after interpolating ${VAR})."""
    return text.replace("$$", "$")


def seedfed_command_of(service: dict) -> tuple[list[str], list[str]]:
    """(seedfed subcommand path, its arguments) a service runs: its entrypoint
    (a `seedfed ...` exec form, or a shell script that execs `seedfed ... "$@"`)
    or the image's ENTRYPOINT, followed by its command."""
    entry = service.get("entrypoint")
    if entry is None:
        (final,) = stages(dockerfile(service_image_dockerfile(service)))[-1:]
        entry = next(exec_form(i.args) for i in final if i.keyword == "ENTRYPOINT")
    command = [compose_unescape(str(c)) for c in service.get("command", [])]
    entry = [compose_unescape(str(e)) for e in entry]
    if entry[:1] == ["seedfed"]:
        return entry[1:], command
    if entry[:2] == ["sh", "-c"]:
        script = entry[2]
        match = re.search(r"seedfed ((?:[a-z]+ ?)+)", script)
        assert match, f"the shell entrypoint runs no seedfed command: {script!r}"
        return match.group(1).split(), command
    raise AssertionError(f"cannot tell which seedfed command {entry!r} runs")


# -- the CLI ------------------------------------------------------------------------------


def resolve(path: list[str]) -> tuple[click.Command, list[str]]:
    """The click command at ``path`` (e.g. ['token', 'create']) and the leftover words."""
    from seedfed.shared.cli import cli

    cmd: click.Command = cli
    ctx = click.Context(cli, info_name="seedfed")
    used: list[str] = []
    for word in path:
        if not isinstance(cmd, click.Group):
            break
        sub = cmd.get_command(ctx, word)
        if sub is None:
            break
        cmd, used = sub, used + [word]
    return cmd, path[len(used) :]


def env_names(path: list[str], cmd: click.Command) -> set[str]:
    """Every environment variable the command reads: explicit envvars, and
    SEEDFED_<PATH>_<OPTION> from the root's auto_envvar_prefix."""
    prefix = "_".join(["SEEDFED", *(p.upper().replace("-", "_") for p in path)])
    names: set[str] = set()
    for p in cmd.params:
        if not isinstance(p, click.Option):
            continue
        if p.envvar:
            names.update([p.envvar] if isinstance(p.envvar, str) else p.envvar)
        else:
            names.add(f"{prefix}_{p.name.upper()}")
    return names


def option_flags(cmd: click.Command) -> set[str]:
    flags: set[str] = set()
    for p in cmd.params:
        if isinstance(p, click.Option):
            flags.update(p.opts)
            flags.update(p.secondary_opts)
    return flags


def all_env_names() -> dict[str, list[str]]:
    """env var -> the command path that reads it, for every seedfed command."""
    from seedfed.shared.cli import COMMANDS

    out: dict[str, list[str]] = {}
    for name in COMMANDS:
        cmd, _ = resolve([name])
        subs = [([name], cmd)]
        if isinstance(cmd, click.Group):
            subs += [([name, s], cmd.commands[s]) for s in cmd.commands]
        for path, c in subs:
            for env in env_names(path, c):
                out.setdefault(env, path)
    return out
