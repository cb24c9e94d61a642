"""The Dockerfiles, checked by construction: what they copy exists and is not
ignored, they run as an unprivileged user that owns its volume directories,
their entrypoints and health check exist, their ENV names real options, and
the coordinator image installs no torch (its wheel set is built here the way
the Dockerfile builds it, without the network)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from deploy_helpers import (
    DOCKER,
    ROOT,
    compose,
    dockerfile,
    dockerignore_allows,
    env_names,
    exec_form,
    resolve,
    service_image_dockerfile,
    stages,
)

IMAGES = {"coordinator": DOCKER / "coordinator.Dockerfile", "client": DOCKER / "client.Dockerfile"}
TORCH_STACK = ("torch", "transformers", "safetensors", "nvidia", "triton")


def _copies(path: Path) -> list[list[str]]:
    return [exec_form(i.args) for i in dockerfile(path) if i.keyword == "COPY" and "--from=" not in i.args]


@pytest.mark.parametrize("image", IMAGES)
def test_copied_paths_exist_and_are_not_ignored(image: str) -> None:
    path = IMAGES[image]
    ignore = ROOT / ".dockerignore"  # the build context is the repository root
    assert ignore.is_file()
    for args in _copies(path):
        for source in args[:-1]:
            assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such path in the repository"
            assert dockerignore_allows(ignore, source), f"{path.name}: COPY {source} is excluded by {ignore.name}"
    for junk in (".venv", ".git", "runs", "seedfed.db", "server/__pycache__/x.pyc"):
        assert not dockerignore_allows(ignore, junk), f"{ignore.name} lets {junk} into the build context"


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_an_unprivileged_user(image: str) -> None:
    final = stages(dockerfile(IMAGES[image]))[-1]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), f"{image} image must end with a non-root USER"
    last_user = max(n for n, i in enumerate(final) if i.keyword == "USER")
    assert all(i.keyword != "RUN" for i in final[last_user:]), "nothing runs as root after USER"


@pytest.mark.parametrize("image", IMAGES)
def test_volume_mount_points_belong_to_the_user(image: str) -> None:
    """A fresh named volume copies the ownership of its mount point from the
    image: every directory a service mounts must exist there, owned by the user."""
    final = stages(dockerfile(IMAGES[image]))[-1]
    script = " ".join(i.args for i in final if i.keyword == "RUN")
    assert "chown -R seedfed:seedfed /var/lib/seedfed" in script
    for name, service in compose()["services"].items():
        if service_image_dockerfile(service) != IMAGES[image]:
            continue
        for mount in service.get("volumes", []):
            target = mount.split(":")[1]
            if target.startswith("/var/lib/seedfed/"):
                assert target in script.split(), f"{name} mounts {target}, which the {image} image does not create"


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_and_env_are_real(image: str) -> None:
    final = stages(dockerfile(IMAGES[image]))[-1]
    entry = next(exec_form(i.args) for i in final if i.keyword == "ENTRYPOINT")
    assert entry[0] == "seedfed"
    cmd, rest = resolve(entry[1:])
    assert not rest
    valid = env_names(entry[1:], cmd)
    for ins in final:
        if ins.keyword == "ENV":
            for pair in ins.args.split():
                var = pair.split("=")[0]
                if var.startswith(f"SEEDFED_{entry[1].upper()}_"):
                    assert var in valid, f"{image}: ENV {var} is not an option of `seedfed {entry[1]}`"


def test_coordinator_health_check_module_exists() -> None:
    final = stages(dockerfile(IMAGES["coordinator"]))[-1]
    (check,) = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    assert '["python", "-m", "seedfed.server.healthcheck"]' in check
    import importlib

    assert callable(importlib.import_module("seedfed.server.healthcheck").main)


def test_base_dependencies_have_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    coordinator_deps = project["dependencies"] + project["optional-dependencies"]["postgres"]
    for dep in coordinator_deps:
        assert not dep.lower().startswith(TORCH_STACK), f"the coordinator image would install {dep}"
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["client"])


def test_coordinator_wheel_as_the_dockerfile_builds_it(tmp_path) -> None:  # noqa: ANN001
    """COPY what the Dockerfile copies into a clean directory, build the wheel
    there (no network: no build isolation, no dependencies), and read what it
    would pull in and whether it carries what the coordinator needs."""
    src = tmp_path / "src"
    src.mkdir()
    build_stage = stages(dockerfile(IMAGES["coordinator"]))[0]
    for ins in build_stage:
        if ins.keyword == "COPY":
            *sources, dest = exec_form(ins.args)
            for s in sources:
                if (ROOT / s).is_dir():  # COPY dir dest: the directory's contents into dest
                    shutil.copytree(ROOT / s, src / dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:  # COPY file ./
                    shutil.copy2(ROOT / s, src / dest / Path(s).name)
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = out.glob("seedfed-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    installed = [r for r in requires if "extra ==" not in r or 'extra == "postgres"' in r]
    assert installed, "no dependencies found in the wheel metadata"
    for req in installed:
        assert not req.lower().startswith(TORCH_STACK), f"`pip install seedfed[postgres]` would install {req}"
    for needed in (
        "seedfed/server/healthcheck.py",
        "seedfed/server/migrations/script.py.mako",
        "seedfed/server/migrations/versions/0001_initial_schema.py",
        "seedfed/v1/coordinator_pb2.py",
        "seedfed/server/auth.py",
        "seedfed/shared/cli.py",
    ):
        assert needed in names, f"the wheel lacks {needed}"
    assert [n for n in names if n.startswith("seedfed/server/migrations/versions/") and n.endswith(".py")]


def test_coordinator_commands_never_import_torch() -> None:
    """What the coordinator image runs works with torch absent: block it and run them."""
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {TORCH_STACK!r}: raise ModuleNotFoundError('blocked: ' + name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from click.testing import CliRunner\n"
        "from seedfed.shared.cli import cli\n"
        "for args in (['coordinator', '--help'], ['token', 'create', '--help'], ['status', '--help'], ['task', '--help']):\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    assert r.exit_code == 0, (args, r.output, r.exception)\n"
        "import seedfed.server.app, seedfed.server.hardening, seedfed.server.healthcheck\n"
        f"assert not any(m.split('.')[0] in {TORCH_STACK!r} for m in sys.modules)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
