"""seedfed coordinator / task / status: clear errors, no state change on bad input."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from coord_helpers import make_spec

from seedfed.server.cli import coordinator, status, task
from seedfed.shared.taskspec import TaskSpec

# Plaintext without tokens, chosen explicitly (the coordinator refuses to guess).
PLAIN = ("--insecure", "--no-auth")


def write_task(path: Path, spec: TaskSpec) -> str:
    path.write_text(spec.to_toml())
    return str(path)


def test_task_create_list_show(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    spec = make_spec()
    f = write_task(tmp_path / "task.toml", spec)
    r = CliRunner().invoke(task, ["create", "--db", db, f])
    assert r.exit_code == 0 and "created" in r.output, r.output
    r = CliRunner().invoke(task, ["create", "--db", db, f])
    assert r.exit_code == 0 and "already present" in r.output
    r = CliRunner().invoke(task, ["list", "--db", db])
    assert r.exit_code == 0 and spec.task_id in r.output
    r = CliRunner().invoke(task, ["show", "--db", db, spec.task_id])
    assert r.exit_code == 0 and spec.genesis_hash().hex() in r.output
    assert TaskSpec.from_dict(__import__("tomllib").loads(r.output.split("# genesis")[0])["task"]) == spec
    r = CliRunner().invoke(task, ["show", "--db", db, "nope"])
    assert r.exit_code != 0 and "no task 'nope'" in r.output


def test_bad_input_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    db_path = tmp_path / "c.db"
    db = f"sqlite:///{db_path}"
    spec = make_spec()
    CliRunner().invoke(task, ["create", "--db", db, write_task(tmp_path / "task.toml", spec)])
    before = db_path.read_bytes()
    other = write_task(tmp_path / "other.toml", dataclasses.replace(spec, lr=0.5))
    r = CliRunner().invoke(task, ["create", "--db", db, other])
    assert r.exit_code == 1 and "different genesis" in r.output
    r = CliRunner().invoke(coordinator, ["--db", db, "--task", other, "--listen", "127.0.0.1:0", *PLAIN])
    assert r.exit_code == 1 and "different genesis" in r.output
    (tmp_path / "broken.toml").write_text("[task]\ntask_id = 'x'\nlr = 'fast'\n")
    r = CliRunner().invoke(task, ["create", "--db", db, str(tmp_path / "broken.toml")])
    assert r.exit_code == 1 and "missing task field" in r.output
    r = CliRunner().invoke(task, ["create", "--db", db, str(tmp_path / "absent.toml")])
    assert r.exit_code == 1 and "cannot read task file" in r.output
    r = CliRunner().invoke(task, ["list", "--db", "mysql://x/y"])
    assert r.exit_code == 1 and "unsupported database" in r.output
    r = CliRunner().invoke(task, ["list", "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert r.exit_code == 1 and "no database" in r.output and not (tmp_path / "none.db").exists()
    r = CliRunner().invoke(coordinator, ["--db", db, "--listen", "nowhere", *PLAIN])
    assert r.exit_code == 2 and "HOST:PORT" in r.output
    assert db_path.read_bytes() == before


def test_coordinator_process_serves_status_and_stops_on_sigterm(tmp_path: Path) -> None:
    spec = make_spec()
    f = write_task(tmp_path / "task.toml", spec)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seedfed.server",
            "--task",
            f,
            "--db",
            f"sqlite:///{tmp_path / 'c.db'}",
            "--listen",
            "127.0.0.1:0",
            *PLAIN,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line + proc.stderr.read()
        address = line.split("listening on ")[1].split()[0]
        r = CliRunner().invoke(status, ["--coordinator", address, "--task", spec.task_id, "--insecure"])
        assert r.exit_code == 0 and spec.task_id in r.output and "head round" in r.output, r.output
        r = CliRunner().invoke(status, ["--coordinator", address, "--task", "nope", "--insecure"])
        assert r.exit_code == 1 and "NOT_FOUND" in r.output
        r = CliRunner().invoke(coordinator, ["--db", f"sqlite:///{tmp_path / 'c.db'}", "--listen", "127.0.0.1:0", *PLAIN])
        assert r.exit_code == 1 and "another coordinator is running" in r.output
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = CliRunner().invoke(status, ["--coordinator", address, "--timeout", "1", "--insecure"])
    assert r.exit_code == 1 and "UNAVAILABLE" in r.output


def test_root_cli_routes_to_the_coordinator_commands() -> None:
    from seedfed.shared.cli import cli

    r = CliRunner().invoke(cli, ["task", "--help"])
    assert r.exit_code == 0 and "create" in r.output


def test_ledger_dump_and_import_round_trip(tmp_path: Path) -> None:
    from seedfed.server.db import open_store
    from seedfed.server.ledger_cli import ledger
    from seedfed.shared.ledger import make_record

    spec = make_spec()
    history, prev = [], spec.genesis_hash()
    for r in range(1, 4):
        history.append(make_record(prev, r, {r: 7, 9: -r}))
        prev = history[-1].hash
    src, dst = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    store, lock = open_store(src, lock=True)
    store.import_rounds(spec, history)
    store.close()
    lock.release()
    out = tmp_path / "ledger.jsonl"
    r = CliRunner().invoke(ledger, ["dump", "--db", src, "-o", str(out)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(ledger, ["import", str(out), "--db", dst])
    assert r.exit_code == 0 and "3 rounds imported" in r.output, r.output
    r = CliRunner().invoke(ledger, ["verify", "--db", dst])
    assert r.exit_code == 0 and history[-1].hash.hex() in r.output, r.output


def _serve(*args: str) -> tuple[subprocess.Popen, str, str]:
    """A coordinator process: (process, its address, the line it printed when ready)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "seedfed.server", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(line + proc.communicate()[1])
    return proc, line.split("listening on ")[1].split()[0], line


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    return err


def test_a_memory_coordinator_is_a_throwaway_run(tmp_path: Path) -> None:
    import grpc

    from seedfed.shared.wire import reason_of
    from seedfed.v1 import coordinator_pb2 as pb
    from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

    spec = make_spec()
    f = write_task(tmp_path / "task.toml", spec)
    client_id = ""
    for run_no in (1, 2):
        proc, address, ready = _serve("--task", f, "--db", "memory://", *PLAIN)
        assert "(memory)" in ready
        try:
            with grpc.insecure_channel(address) as channel:
                s = pb_grpc.CoordinatorStub(channel)
                if run_no == 1:
                    joined = s.Join(pb.JoinRequest(task_id=spec.task_id, name="dev", base_digest=spec.base_digest), timeout=5)
                    client_id = joined.client_id
                    assert s.Status(pb.StatusRequest(task_id=spec.task_id), timeout=5).clients_online == 1
                else:  # nothing survived the restart: the task is there again (--task), its client is not
                    assert s.Status(pb.StatusRequest(task_id=spec.task_id), timeout=5).clients_online == 0
                    try:
                        s.Heartbeat(pb.HeartbeatRequest(task_id=spec.task_id, client_id=client_id), timeout=5)
                        raise AssertionError("the client outlived its memory coordinator")
                    except grpc.RpcError as exc:
                        assert reason_of(exc) == "unknown-client"
        finally:
            err = _stop(proc)
        assert "nothing survives a restart" in err
    assert not list(tmp_path.glob("*.db*"))


def test_memory_is_refused_where_it_would_lose_what_is_asked(tmp_path: Path) -> None:
    f = write_task(tmp_path / "task.toml", make_spec())
    r = CliRunner().invoke(coordinator, ["--db", "memory://", "--task", f, "--listen", "127.0.0.1:0", "--insecure"])
    assert r.exit_code == 1 and "--no-auth" in r.output, r.output
    for args in (["create", "--db", "memory://", f], ["list", "--db", "memory://"], ["show", "--db", "memory://", "t1"]):
        r = CliRunner().invoke(task, args)
        assert r.exit_code == 1 and "memory://" in r.output and "running coordinator" in r.output, (args, r.output)
