"""The compose file, checked by construction (no Docker engine runs here):
every service builds from a Dockerfile that exists, every named volume is
declared, every dependency names a service that can satisfy its condition,
every SEEDFED_* variable is an option of the command the service runs, and
every flag passed in `command:` exists on that command."""

from __future__ import annotations

import re

import click
import pytest
from deploy_helpers import (
    COMPOSE,
    ROOT,
    compose,
    dockerfile,
    env_names,
    option_flags,
    resolve,
    seedfed_command_of,
    service_image_dockerfile,
    stages,
)

SERVICES = compose()["services"]
SEEDFED_SERVICES = [name for name, s in SERVICES.items() if "build" in s]


def test_the_stack_is_what_the_docs_promise() -> None:
    assert {"postgres", "coordinator", "client-1", "client-2"} <= set(SERVICES)
    assert SERVICES["coordinator"]["environment"]["SEEDFED_COORDINATOR_DB"].startswith("postgresql+psycopg://")


@pytest.mark.parametrize("name", SEEDFED_SERVICES)
def test_build_context_and_dockerfile_exist(name: str) -> None:
    build = SERVICES[name]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT, f"{name}: the build context must be the repository root"
    assert service_image_dockerfile(SERVICES[name]).is_file()


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(compose().get("volumes") or {})
    used = set()
    for name, service in SERVICES.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0] if isinstance(mount, str) else mount["source"]
            if not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source!r}"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"


def test_dependencies_can_be_satisfied() -> None:
    for name, service in SERVICES.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown service {dep}"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                target = SERVICES[dep]
                has_check = "healthcheck" in target or (
                    "build" in target
                    and any(i.keyword == "HEALTHCHECK" for i in stages(dockerfile(service_image_dockerfile(target)))[-1])
                )
                assert has_check, f"{name} waits for {dep} to be healthy, but {dep} has no health check"


@pytest.mark.parametrize("name", SEEDFED_SERVICES)
def test_environment_variables_are_real_options(name: str) -> None:
    service = SERVICES[name]
    path, _ = seedfed_command_of(service)
    cmd, rest = resolve(path)
    assert not rest, f"{name}: `seedfed {' '.join(path)}` is not a command"
    valid = env_names(path[: len(path) - len(rest)], cmd)
    for var in service.get("environment", {}):
        if var.startswith("SEEDFED_"):
            assert var in valid, f"{name}: {var} is not an option of `seedfed {' '.join(path)}` (valid: {sorted(valid)})"


@pytest.mark.parametrize("name", SEEDFED_SERVICES)
def test_command_flags_exist(name: str) -> None:
    path, args = seedfed_command_of(SERVICES[name])
    cmd, _ = resolve(path)
    flags = option_flags(cmd)
    for arg in args:
        if arg.startswith("-"):
            assert arg.split("=")[0] in flags, f"{name}: `seedfed {' '.join(path)}` has no option {arg}"
    given = {a.split("=")[0] for a in args if a.startswith("-")}
    env = set(SERVICES[name].get("environment", {}))
    for p in cmd.params:
        if isinstance(p, click.Option) and p.required:
            assert set(p.opts) & given or any(v.endswith("_" + p.name.upper()) for v in env), (
                f"{name}: required {p.opts[0]} is missing"
            )


def test_clients_get_their_token_from_the_secrets_volume() -> None:
    for name in ("client-1", "client-2"):
        script = " ".join(SERVICES[name]["entrypoint"])
        assert f"/var/lib/seedfed/secrets/{name}.token" in script and "SEEDFED_CLIENT_TOKEN" in script
        assert "--token" not in SERVICES[name]["command"], "a token on the command line shows in `ps`"
    tokens = SERVICES["tokens"]
    assert tokens["command"] == ["client-1", "client-2", "operator"]


def test_prepare_keeps_the_simulate_contract() -> None:
    path, args = seedfed_command_of(SERVICES["prepare"])
    assert path == ["simulate"]
    assert args[:1] == ["--prepare-only"] and args[args.index("--clients") + 1] == "2"
    out = args[args.index("--out") + 1]
    for name in ("client-1", "client-2"):
        command = SERVICES[name]["command"]
        data = command[command.index("--data") + 1]
        model = command[command.index("--model") + 1]
        assert re.fullmatch(re.escape(out) + r"/data/client-[01]\.tsv", data)
        assert model == f"{out}/model"
    assert SERVICES["coordinator"]["environment"]["SEEDFED_COORDINATOR_TASK"] == f"{out}/task.toml"


def test_demo_plaintext_is_explicit_and_metrics_stay_local() -> None:
    env = SERVICES["coordinator"]["environment"]
    assert env.get("SEEDFED_COORDINATOR_INSECURE") == "1" or "SEEDFED_COORDINATOR_TLS_CERT" in env
    for port in SERVICES["coordinator"]["ports"]:
        if port.endswith(":9464"):
            assert port.startswith("127.0.0.1:"), "metrics are published on the host's loopback only"
