"""A stop signal is a clean exit wherever it lands, also in the middle of a
write to the events file: the handler runs on the main thread between any two
bytecodes, so it must not write anything itself."""

from __future__ import annotations

import io
import os
import signal
import time

import pytest
from click.testing import CliRunner
from fakecoord import FakeCoordinator, Served, commit_message, synthetic_ledger
from helpers import wait_until, write_classification

from seedfed.client import progress
from seedfed.client.checkpoints import CheckpointStore
from seedfed.client.cli import client
from seedfed.client.progress import read_events
from seedfed.shared.ledger import make_record
from seedfed.v1 import coordinator_pb2 as pb

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture()
def own_signals():
    """What the process had before: the command under test must leave it so, and pytest keeps it either way."""
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    yield handlers, wakeup
    for s, h in handlers.items():
        signal.signal(s, h)
    signal.set_wakeup_fd(wakeup)


class SignalInsideWrite(io.RawIOBase):
    """The events file, with SIGTERM raised at this process while the buffered writer above is
    mid-write of the first line containing ``trigger`` (its lock held, as in any real write)."""

    def __init__(self, path, trigger: bytes) -> None:
        self._file = open(path, "ab", buffering=0)
        self._trigger = trigger
        self.fired = False

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if not self.fired and self._trigger in bytes(b):
            self.fired = True
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)  # the Python-level handler runs here, inside the write
        return self._file.write(b)

    def close(self) -> None:
        self._file.close()
        super().close()


def test_sigterm_inside_an_event_write_stops_cleanly_with_a_final_checkpoint(
    tmp_path, monkeypatch, own_signals, bert_spec, bert_dir
):
    records = synthetic_ledger(bert_spec, 12)
    fake = FakeCoordinator(bert_spec, records)
    rec13 = make_record(records[-1].hash, 13, {5: 1, 6: -2})
    fake.live.put(pb.SyncEvent(commit=commit_message(rec13)))  # a live round after the catch-up
    raw: list[SignalInsideWrite] = []

    def events_open(path, mode="r", encoding=None, buffering=-1):
        assert mode == "a"
        raw.append(SignalInsideWrite(path, b'"event": "round"'))
        return io.TextIOWrapper(io.BufferedWriter(raw[-1]), encoding=encoding, line_buffering=True)

    monkeypatch.setattr(progress, "open", events_open, raising=False)
    events = tmp_path / "events.jsonl"
    cache = tmp_path / "cache"
    data = write_classification(tmp_path / "d.tsv", n=16)
    served = Served(fake)
    try:
        result = CliRunner().invoke(
            client,
            ["--coordinator", served.target, "--task", bert_spec.task_id, "--data", str(data), "--cache", str(cache)]
            + ["--name", "c1", "--checkpoint-every", "10", "--events", str(events), "--insecure", "--quiet"],
        )
    finally:
        served.stop()
    assert raw and raw[0].fired, read_events(events)
    assert result.exit_code == 0, (result.output, result.exception)
    names = [e["event"] for e in read_events(events)]
    assert names.count("signal") == 1 and names[-1] == "stopped", names
    assert [e["signal"] for e in read_events(events) if e["event"] == "signal"] == ["SIGTERM"]
    stopped = read_events(events)[-1]
    assert stopped["round"] == 13
    # round 13 is no multiple of --checkpoint-every: its checkpoint is the one written on the way out
    assert 13 in CheckpointStore(cache, bert_spec).rounds()
    assert fake.left == ["id-c1"]
    handlers, wakeup = own_signals
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == handlers
    assert signal.set_wakeup_fd(wakeup) == wakeup


def test_signals_before_the_target_are_kept_then_each_is_relayed_once(own_signals):
    from seedfed.client.signals import StopSignals

    got: list[str] = []
    with StopSignals() as stops:
        os.kill(os.getpid(), signal.SIGTERM)  # during start-up: nobody to tell yet, and no death
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt either
        time.sleep(0.2)
        assert got == []
        stops.deliver_to(got.append)
        wait_until(lambda: len(got) == 2, 5, lambda: got)
        assert got == ["SIGTERM", "SIGINT"]
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: len(got) == 3, 5, lambda: got)
        time.sleep(0.2)
        assert got == ["SIGTERM", "SIGINT", "SIGTERM"]
    handlers, wakeup = own_signals
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == handlers
    assert signal.set_wakeup_fd(wakeup) == wakeup
