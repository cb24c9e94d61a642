"""The Dockerfiles, checked by construction: what they copy exists and is not
ignored, they run as an unprivileged user that owns its volume directories,
their entrypoints and health check exist, their ENV names real options, and
the coordinator image installs no torch (its wheel set is built here the way
the Dockerfile builds it, without the network)."""

from __future__ import annotations

import os
import shutil
import signal
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
from helpers import free_port, wait_until

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


def test_base_dependencies_have_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    coordinator_deps = project["dependencies"] + project["optional-dependencies"]["postgres"]
    for dep in coordinator_deps:
        assert not dep.lower().startswith(TORCH_STACK), f"the coordinator image would install {dep}"
    assert any(d.startswith("torch") for d in project["optional-dependencies"]["client"])


@pytest.fixture(scope="module")
def coordinator_wheel(tmp_path_factory) -> Path:  # noqa: ANN001
    """COPY what the Dockerfile copies into a clean directory and build the wheel
    there (no network: no build isolation, no dependencies)."""
    tmp_path = tmp_path_factory.mktemp("coordinator-image")
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
    return wheel


def test_coordinator_wheel_as_the_dockerfile_builds_it(coordinator_wheel) -> None:  # noqa: ANN001
    """What the wheel would pull in, and whether it carries what the coordinator needs."""
    wheel = coordinator_wheel
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


# The coordinator image's Python, as far as these tests can make it: torch and the
# rest of the client stack cannot be imported, and this checkout's editable
# install is out of sight, so every seedfed module comes from the wheel.
IMAGE_SITECUSTOMIZE = f"""
import importlib.abc
import sys


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TORCH_STACK!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path[:] = [_NotInstalled()] + [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
"""


def _image_env(site: Path, db: Path, port: int) -> dict[str, str]:
    """The final stage's ENV, on a port and database of this test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEEDFED_") and k != "PYTHONPATH"}
    final = stages(dockerfile(IMAGES["coordinator"]))[-1]
    for ins in final:
        if ins.keyword == "ENV":
            env.update(pair.split("=", 1) for pair in ins.args.split())
    host = env["SEEDFED_COORDINATOR_LISTEN"].rpartition(":")[0]
    env.update(
        PYTHONPATH=str(site),
        SEEDFED_COORDINATOR_LISTEN=f"{host}:{port}",
        SEEDFED_COORDINATOR_DB=f"sqlite:///{db}",
        SEEDFED_COORDINATOR_INSECURE="1",  # the transport choice the image leaves to its deployment
    )
    return env


def test_coordinator_image_runs_from_its_wheel_without_torch(coordinator_wheel, tmp_path) -> None:  # noqa: ANN001
    """The wheel installed as the image installs it, run as the image runs it: the ENTRYPOINT with
    the image's ENV serves, the HEALTHCHECK command sees it serving, and the client commands
    stop with the message that names the missing extras."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(coordinator_wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (site / "sitecustomize.py").write_text(IMAGE_SITECUSTOMIZE)
    env = _image_env(site, tmp_path / "seedfed.db", free_port())
    final = stages(dockerfile(IMAGES["coordinator"]))[-1]
    entry = next(exec_form(i.args) for i in final if i.keyword == "ENTRYPOINT")
    (check,) = [exec_form(i.args.split(" CMD ", 1)[1]) for i in final if i.keyword == "HEALTHCHECK"]
    assert entry[0] == "seedfed" and check[0] == "python"
    seedfed = [str(site / "bin" / "seedfed")]  # the console script pip wrote for the wheel
    python = [sys.executable]

    def image_run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)

    where = image_run(python + ["-c", "import seedfed.shared.cli as m, seedfed.server.app as a; print(m.__file__, a.__file__)"])
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(Path(f).is_relative_to(site) for f in where.stdout.split()), where.stdout
    assert image_run(python + check[1:]).returncode == 1  # nothing serves yet
    log = tmp_path / "coordinator.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(seedfed + entry[1:], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "listening on" in log.read_text() or proc.poll() is not None, 60, lambda: log.read_text())
        assert proc.poll() is None, log.read_text()[-3000:]
        health = image_run(python + check[1:])
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stdout + health.stderr
        for args in (["--help"], ["token", "create", "--help"], ["status", "--help"], ["task", "--help"]):
            shown = image_run(seedfed + args)
            assert shown.returncode == 0, (args, shown.stderr[-2000:])
        data = tmp_path / "d.tsv"
        data.write_text("a good film\t1\n")
        for args in (
            ["client", "--coordinator", "127.0.0.1:1", "--task", "t", "--data", str(data), "--cache", str(tmp_path / "c")]
            + ["--insecure"],
            ["init", "--model", "m", "--task-id", "t", "--labels", "a,b", "-o", str(tmp_path / "t.toml")],
            ["eval", "--ledger", str(data), "--data", str(data)],
        ):
            refused = image_run(seedfed + args)
            assert refused.returncode == 1, (args, refused.stdout, refused.stderr[-2000:])
            assert f"'seedfed {args[0]}' needs the client extras: pip install 'seedfed[client]'" in refused.stderr, (
                args,
                refused.stderr[-2000:],
            )
            assert "Traceback" not in refused.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
