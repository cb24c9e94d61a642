"""The parameter manifest: which tensors a model trains, in which order.

The manifest fixes the canonical flat index over which the generator draws:
parameters in ``named_parameters()`` order (a tied weight counted once, under
its first name), each starting where the previous one ended. No padding
between tensors, so the index depends on nothing but names and shapes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch

MANIFEST_MAGIC = b"seedfed-manifest-v1\0"


class ManifestError(ValueError):
    """A module or file whose parameters do not match the manifest."""


@dataclass(frozen=True)
class Slot:
    name: str
    shape: tuple[int, ...]
    dtype: str  # the base parameter's dtype, e.g. "float32"
    offset: int  # first position in the canonical flat index
    numel: int

    @property
    def end(self) -> int:
        return self.offset + self.numel


@dataclass(frozen=True)
class Manifest:
    slots: tuple[Slot, ...]

    @property
    def total(self) -> int:
        return self.slots[-1].end if self.slots else 0

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> Manifest:
        slots: list[Slot] = []
        offset = 0
        for name, p in module.named_parameters():  # remove_duplicate=True: tied weights once
            n = p.numel()
            slots.append(Slot(name, tuple(p.shape), str(p.dtype).removeprefix("torch."), offset, n))
            offset += n
        if not slots:
            raise ManifestError("the module has no parameters")
        return cls(tuple(slots))

    def canonical_bytes(self) -> bytes:
        """Names, shapes, dtypes and offsets in order, length-prefixed, little-endian."""
        parts = [MANIFEST_MAGIC, struct.pack("<I", len(self.slots))]
        for s in self.slots:
            name = s.name.encode("utf-8")
            dtype = s.dtype.encode("ascii")
            parts.append(struct.pack("<H", len(name)) + name + struct.pack("<B", len(dtype)) + dtype)
            parts.append(struct.pack(f"<B{len(s.shape)}q", len(s.shape), *s.shape))
            parts.append(struct.pack("<qq", s.offset, s.numel))
        return b"".join(parts)

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def slot(self, name: str) -> Slot:
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(name)

    def spans(self, patterns: Sequence[str]) -> tuple[tuple[int, int], ...]:
        """The flat-index ranges [start, end) of the parameters whose names match any of the
        shell-style ``patterns`` (case-sensitive, the same on every platform), adjacent ones
        merged. A pattern that matches nothing is an error: a typo would freeze the whole model."""
        for pattern in patterns:
            if not any(fnmatchcase(s.name, pattern) for s in self.slots):
                examples = ", ".join(s.name for s in self.slots[:3])
                raise ManifestError(
                    f"trainable pattern {pattern!r} matches none of the model's {len(self.slots)} parameters "
                    f"(names look like {examples})"
                )
        out: list[tuple[int, int]] = []
        for s in self.slots:
            if s.numel and any(fnmatchcase(s.name, p) for p in patterns):
                if out and out[-1][1] == s.offset:
                    out[-1] = (out[-1][0], s.end)
                else:
                    out.append((s.offset, s.end))
        return tuple(out)

    def check_module(self, module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """The module's parameters by name, if they match this manifest's names and shapes
        (dtypes may differ: compute weights are rebound in their own dtype)."""
        params = dict(module.named_parameters())
        names = [s.name for s in self.slots]
        if list(params) != names:
            missing = sorted(set(names) - set(params))
            extra = sorted(set(params) - set(names))
            raise ManifestError(
                f"module parameters do not match the manifest (missing {missing[:5]}, unexpected {extra[:5]}, or another order)"
            )
        for s in self.slots:
            if tuple(params[s.name].shape) != s.shape:
                raise ManifestError(f"parameter {s.name}: shape {tuple(params[s.name].shape)}, manifest says {s.shape}")
        return params

    # -- JSON for checkpoint metadata
    def to_json(self) -> str:
        return json.dumps([[s.name, list(s.shape), s.dtype] for s in self.slots], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        slots = []
        offset = 0
        for name, shape, dtype in json.loads(text):
            n = 1
            for d in shape:
                n *= int(d)
            slots.append(Slot(str(name), tuple(int(d) for d in shape), str(dtype), offset, n))
            offset += n
        return cls(tuple(slots))
