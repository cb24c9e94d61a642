"""Helpers every test suite shares: a free loopback port, a bounded event loop,
waiting for a condition, the small data files the client reads, and a task
genesis over a real model directory."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A loopback port nothing listens on now (for a process that must keep one address across restarts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro: Awaitable[T], timeout: float = 120.0) -> T:
    """Run a coroutine on a fresh event loop, failing it after ``timeout`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def _timed_out(timeout: float, what: str | Callable[[], object]) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}")


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str | Callable[[], object] = "condition") -> None:
    """Poll ``predicate`` until it is true; on timeout fail naming ``what``
    (a string, or a function whose result is worth seeing then)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what)
        time.sleep(0.05)


async def wait_until_async(
    predicate: Callable[[], object], timeout: float = 20.0, what: str | Callable[[], object] = "condition"
) -> None:
    """``wait_until`` inside an event loop: the loop keeps running while it waits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise _timed_out(timeout, what)
        await asyncio.sleep(0.01)


# -- the client's data files ------------------------------------------------------------------

POSITIVE = ["good", "great", "lovely", "fine", "happy", "charming", "bright", "warm"]
NEGATIVE = ["bad", "awful", "dull", "poor", "sad", "bleak", "grim", "cold"]
FILLER = ["the", "a", "film", "movie", "story", "was", "is", "very", "quite", "and", "it", "plot", "acting", "music"]
LABELS = ("negative", "positive")
# every word the files below and the objectives' templates use: the tiny models' vocabulary
WORDS = sorted(
    set(
        POSITIVE
        + NEGATIVE
        + FILLER
        + list(LABELS)
        + ["instruction", "context", "response", "what", "why", "how", "answer", "#", ":"]
    )
)


def sentence(rng: random.Random, label: int) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))]
    words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
    return " ".join(words)


def write_classification(path: str | Path, n: int = 64, seed: int = 0, fmt: str | None = None) -> Path:
    """sentence<TAB>label rows (SST-2 layout), or CSV/JSONL by suffix."""
    path = Path(path)
    rng = random.Random(seed)
    rows = [(sentence(rng, lab), lab) for lab in (rng.randint(0, 1) for _ in range(n))]
    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    elif fmt == "csv":
        path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    else:
        path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    return path


def write_dolly(path: str | Path, n: int = 32, seed: int = 0) -> Path:
    """Instruction records in the Dolly layout (JSON lines)."""
    rng = random.Random(seed)
    lines = [
        json.dumps(
            {
                "instruction": f"what is the {rng.choice(FILLER)} {rng.choice(FILLER)}",
                "context": "" if i % 2 else sentence(rng, i % 2),
                "response": sentence(rng, rng.randint(0, 1)),
                "category": "open_qa",
            }
        )
        for i in range(n)
    ]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def save_test_model(directory: str | Path, arch: str, seed: int = 0, **config: Any) -> Path:
    """A tiny model directory whose tokenizer knows every word of the files above."""
    from seedfed.client.simulate.tinymodel import save_tiny_model

    return save_tiny_model(directory, arch, WORDS, seed=seed, **config)


def model_spec(model_dir: str | Path, task_id: str = "t1", kind: str = "classification", **fields: Any):
    """The genesis of a task over a real model directory, with small client-test defaults."""
    from seedfed.client.genesis import genesis_for_model
    from seedfed.shared.taskspec import Objective

    obj = Objective(kind=kind, labels=LABELS if kind == "classification" else (), template="it was {text}", max_length=24)
    defaults = dict(task_seed=7, pool_size=64, batch_size=4, digest_every=1, local_steps=2, eps=1e-2, lr=1e-3)
    return genesis_for_model(str(model_dir), task_id, obj, **(defaults | fields))


# -- tiny models in memory, for the engine tests --------------------------------------------


def tiny_gpt2(seed: int = 0, **config: Any):
    from seedfed.client.simulate.tinymodel import tiny_module

    return tiny_module("gpt2", seed, **({"positions": 32, "bos_token_id": 0, "eos_token_id": 0} | config))


def tiny_bert(seed: int = 0, **config: Any):
    from seedfed.client.simulate.tinymodel import tiny_module

    return tiny_module("bert", seed, **({"positions": 32} | config))
