"""One list of refusal reasons: the table in docs/coordinator.md is every
reason the coordinator can send, with its status code, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from seedfed.server import errors
from seedfed.shared.wire import FIELD_LIMITS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
NAME = re.compile(r"`([a-z][a-z-]*)`")


def _table(path: Path, heading: str) -> list[list[str]]:
    """The cells of the first table after ``heading``, header and rule dropped."""
    text = path.read_text()
    assert heading in text, f"{path.name} has no section {heading!r}"
    rows = []
    for line in text.split(heading, 1)[1].splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def documented_reasons() -> dict[str, str]:
    documented: dict[str, str] = {}
    for reasons, code, *_ in _table(DOCS / "coordinator.md", "### Refusals"):
        names = NAME.findall(reasons)
        assert names, f"a row of the reasons table names no reason: {reasons!r}"
        for name in names:
            assert name not in documented, f"{name} is listed twice"
            documented[name] = code
    return documented


def test_the_docs_list_every_reason_the_server_sends_and_no_other() -> None:
    sent = {name: reason.code.name for name, reason in errors.REASONS.items()}
    documented = documented_reasons()
    assert sorted(set(sent) - set(documented)) == [], "sent by the coordinator, missing from docs/coordinator.md"
    assert sorted(set(documented) - set(sent)) == [], "in docs/coordinator.md, never sent by the coordinator"
    assert documented == sent, "status codes differ between the docs and server/errors.py"


def test_every_field_of_the_wire_table_has_its_reason() -> None:
    for limit in FIELD_LIMITS:
        assert errors.REASONS[limit.reason].code == grpc.StatusCode.INVALID_ARGUMENT


def test_only_registered_reasons_reach_the_wire() -> None:
    # A refusal takes a registered reason only, and nothing else in the server writes the trailer.
    unregistered = errors.Reason("something-else", grpc.StatusCode.INTERNAL)
    try:
        errors.Refusal(unregistered, "no")
    except ValueError:
        pass
    else:
        raise AssertionError("a Refusal was made with an unregistered reason")
    writers = [
        p.name for p in (ROOT / "server").rglob("*.py") if "REASON_KEY" in p.read_text() or "trailing_metadata=" in p.read_text()
    ]
    assert writers == ["errors.py"], writers


def test_the_hostile_input_table_names_listed_reasons() -> None:
    documented = documented_reasons()
    named = {name for *_, refusal in _table(DOCS / "security.md", "## Hostile input") for name in NAME.findall(refusal)}
    assert named, "the hostile input table names no reason"
    assert sorted(named - set(documented)) == []
