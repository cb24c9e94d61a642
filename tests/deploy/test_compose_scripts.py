"""The shell snippets of the compose file, run for real (with compose's $$
unescaping, paths moved into a temporary directory, SQLite standing in for
PostgreSQL): the token one-shot, the clients' token hand-off, the idempotent
prepare step."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from deploy_helpers import compose, compose_unescape

SERVICES = compose()["services"]
BIN = Path(sys.executable).parent  # the venv's bin: `seedfed` is there


def _script(service: str, root: Path) -> list[str]:
    entry = [compose_unescape(str(e)).replace("/var/lib/seedfed", str(root)) for e in SERVICES[service]["entrypoint"]]
    command = [compose_unescape(str(c)).replace("/var/lib/seedfed", str(root)) for c in SERVICES[service].get("command", [])]
    assert entry[:2] == ["sh", "-c"]
    return entry + command


def _fake_seedfed(directory: Path) -> Path:
    """A `seedfed` that prints its arguments and token instead of running."""
    directory.mkdir()
    fake = directory / "seedfed"
    fake.write_text('#!/bin/sh\necho "args: $*"\necho "token: ${SEEDFED_CLIENT_TOKEN:-none}"\n')
    fake.chmod(0o755)
    return directory


def test_token_one_shot_is_idempotent_and_stores_only_hashes(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "secrets").mkdir()
    db = tmp_path / "c.db"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "SEEDFED_COORDINATOR_DB": f"sqlite:///{db}"}
    argv = _script("tokens", tmp_path)
    subprocess.run(argv, env=env, check=True, timeout=120, capture_output=True)

    names = SERVICES["tokens"]["command"]
    files = {n: tmp_path / "secrets" / f"{n}.token" for n in names}
    tokens = {n: f.read_text().strip() for n, f in files.items()}
    for n, f in files.items():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert tokens[n].startswith("sfk_")
    active = dict(sqlite3.connect(db).execute("select name, token_hash from tokens where revoked_at is null").fetchall())
    assert active == {n: hashlib.sha256(t.encode()).digest() for n, t in tokens.items()}

    subprocess.run(argv, env=env, check=True, timeout=120, capture_output=True)  # again: nothing changes
    assert {n: f.read_text().strip() for n, f in files.items()} == tokens

    files[names[0]].unlink()  # a lost secret: a new token replaces the old one
    subprocess.run(argv, env=env, check=True, timeout=120, capture_output=True)
    renewed = files[names[0]].read_text().strip()
    assert renewed != tokens[names[0]]
    rows = sqlite3.connect(db).execute("select token_hash, revoked_at from tokens where name = ?", (names[0],)).fetchall()
    assert sorted(r[1] is None for r in rows) == [False, True]
    assert (hashlib.sha256(renewed.encode()).digest(), None) in rows


def test_clients_read_their_token_from_the_file(tmp_path) -> None:  # noqa: ANN001
    fake = _fake_seedfed(tmp_path / "bin")
    (tmp_path / "secrets").mkdir()
    for name in ("client-1", "client-2"):
        (tmp_path / "secrets" / f"{name}.token").write_text(f"sfk_secret_of_{name}\n")
        out = subprocess.run(
            _script(name, tmp_path),
            env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert f"token: sfk_secret_of_{name}" in out
        expected = " ".join(c.replace("/var/lib/seedfed", str(tmp_path)) for c in SERVICES[name]["command"])
        assert f"args: client {expected}" in out


def test_prepare_runs_once(tmp_path) -> None:  # noqa: ANN001
    fake = _fake_seedfed(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    out = subprocess.run(_script("prepare", tmp_path), env=env, check=True, capture_output=True, text=True, timeout=30).stdout
    assert f"args: simulate --prepare-only --clients 2 --out {tmp_path}/demo" in out
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "task.toml").write_text("")
    out = subprocess.run(_script("prepare", tmp_path), env=env, check=True, capture_output=True, text=True, timeout=30).stdout
    assert out == ""
