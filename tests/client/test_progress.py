from __future__ import annotations

import io

from seedfed.client.progress import Reporter, read_events


def test_events_file_and_human_lines(tmp_path):
    out = io.StringIO()
    rep = Reporter(quiet=False, events_path=tmp_path / "e.jsonl", stream=out)
    rep.event("round", round=3, loss=0.5, digest="ab" * 32, bytes_sent=1234, bytes_received=56)
    rep.event("submitted", round=3, name="ignored-for-people")
    rep.event("refused", reason="round 4: hash does not extend the chain")
    rep.close()
    events = read_events(tmp_path / "e.jsonl")
    assert [e["event"] for e in events] == ["round", "submitted", "refused"]
    assert events[1]["name"] == "ignored-for-people"
    text = out.getvalue()
    assert "round      3" in text and "loss   0.5000" in text and "1.2 kB" in text and "digest abababababab" in text
    assert "REFUSED" in text and "submitted" not in text


def test_quiet_shows_only_trouble(tmp_path):
    out = io.StringIO()
    rep = Reporter(quiet=True, stream=out)
    rep.event("round", round=1, loss=None)
    rep.progress(10, 100, "catching up")
    rep.event("digest_mismatch", round=5, digest="x", expected="y")
    assert "round" not in out.getvalue().replace("round=5", "")
    assert "DIGEST_MISMATCH" in out.getvalue()


def test_progress_bar_for_long_catch_ups():
    out = io.StringIO()
    rep = Reporter(quiet=False, stream=out)
    for done in (16, 32, 64, 80):
        rep.progress(done, 80, "catching up")
    assert "catching up" in out.getvalue() and "80/80" in out.getvalue()
    short = io.StringIO()
    Reporter(quiet=False, stream=short).progress(3, 3, "catching up")
    assert short.getvalue() == ""


def test_read_events_skips_a_line_cut_short_and_a_missing_file(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "e.jsonl"
    path.write_text('{"event": "joined"}\n{"event": "commi')
    assert read_events(path) == [{"event": "joined"}]
    assert read_events(tmp_path / "missing.jsonl") == []
