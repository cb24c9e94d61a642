"""safetensors files read and written piece by piece, with plain file reads and writes.

A file is an 8-byte little-endian header length, a JSON header (per tensor:
dtype, shape, data_offsets relative to the end of the header; an optional
``__metadata__``), then the data. Reading a tensor in chunks through one
reused buffer keeps a process's memory flat however large the model: no
memory map grows its resident set, and no tensor is ever held whole.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seedfed.client.engine.errors import ModelLoadError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CHUNK_BYTES = 1 << 23  # 8 MiB per read: large enough for full-speed I/O, small beside any model
_MAX_HEADER_BYTES = 100 << 20  # the format's own limit

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")  # what the int32 master is loaded from


@dataclass(frozen=True)
class TensorEntry:
    key: str
    path: Path
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def itemsize(self) -> int:
        return self.torch_dtype.itemsize

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """The tensors of one file and its metadata; ModelLoadError if the file is not a whole safetensors file."""
    if sys.byteorder != "little":
        raise ModelLoadError("reading safetensors files needs a little-endian machine")
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n > _MAX_HEADER_BYTES or 8 + n > size:
                raise ModelLoadError(f"{path}: not a safetensors file (header of {n} bytes in a file of {size})")
            raw = json.loads(fh.read(n))
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a safetensors file (bad header: {exc})") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: not a safetensors file (header is not an object)")
    data_start = 8 + n
    metadata = raw.pop("__metadata__", None) or {}
    entries: dict[str, TensorEntry] = {}
    for key, info in raw.items():
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"{path}: tensor {key!r} has a malformed header entry") from None
        if dtype not in DTYPES:
            raise ModelLoadError(f"{path}: tensor {key!r} has dtype {dtype}, which this reader does not know")
        entry = TensorEntry(key, path, dtype, shape, data_start + begin, end - begin)
        if min(shape, default=0) < 0 or entry.nbytes != entry.numel * entry.itemsize or begin < 0:
            raise ModelLoadError(f"{path}: tensor {key!r}: {entry.nbytes} bytes do not hold shape {list(shape)} of {dtype}")
        if data_start + end > size:
            raise ModelLoadError(
                f"{path}: tensor {key!r} ends at byte {data_start + end}, past the end of the file ({size}): truncated"
            )
        entries[key] = entry
    return entries, {str(k): str(v) for k, v in metadata.items()}


class CheckpointFiles:
    """The safetensors tensors of a model directory: one file, or shards named by an index."""

    def __init__(self, directory: Path, entries: dict[str, TensorEntry]) -> None:
        self.directory = directory
        self.entries = entries

    @classmethod
    def find(cls, directory: str | Path) -> CheckpointFiles | None:
        """The directory's safetensors checkpoint, or None when it has none (another format)."""
        directory = Path(directory)
        index = directory / INDEX_FILE
        if index.is_file():
            return cls(directory, _read_index(index))
        single = directory / SINGLE_FILE
        if single.is_file():
            return cls(directory, read_header(single)[0])
        return None

    def files(self) -> list[Path]:
        return sorted({e.path for e in self.entries.values()})

    def reader(self) -> ChunkReader:
        return ChunkReader()


def _read_index(index: Path) -> dict[str, TensorEntry]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelLoadError(f"{index}: not a safetensors index (no weight_map)") from None
    shards: dict[str, dict[str, TensorEntry]] = {}
    for name in sorted(set(weight_map.values())):
        path = index.parent / str(name)
        if Path(str(name)).name != str(name):
            raise ModelLoadError(f"{index}: shard name {name!r} is not a file name in the model directory")
        if not path.is_file():
            raise ModelLoadError(f"missing shard {path} (named by {index.name})")
        shards[name] = read_header(path)[0]
    entries: dict[str, TensorEntry] = {}
    for key, name in weight_map.items():
        if key not in shards[name]:
            raise ModelLoadError(f"{index.parent / name}: does not hold tensor {key!r}, which {index.name} places there")
        entries[key] = shards[name][key]
    return entries


class ChunkReader:
    """Reads tensors chunk by chunk into one buffer it reuses; each chunk is valid until the next read."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._buffer = bytearray(chunk_bytes)
        self._path: Path | None = None
        self._fh = None

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = self._path = None

    def _file(self, path: Path):
        if self._path != path:
            self.close()
            try:
                self._fh = open(path, "rb", buffering=0)
            except OSError as exc:
                raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None
            self._path = path
        return self._fh

    def chunks(self, entry: TensorEntry) -> Iterator[tuple[int, torch.Tensor]]:
        """(first element, 1-d tensor) over the entry; the tensor is a view of the reused buffer."""
        per = max(1, len(self._buffer) // entry.itemsize)
        fh = self._file(entry.path)
        done = 0
        while done < entry.numel:
            n = min(per, entry.numel - done)
            view = memoryview(self._buffer)[: n * entry.itemsize]
            fh.seek(entry.start + done * entry.itemsize)
            got = 0
            while got < len(view):
                k = fh.readinto(view[got:])
                if not k:
                    raise ModelLoadError(f"{entry.path}: tensor {entry.key!r} ends early (file truncated while reading)")
                got += k
            yield done, torch.frombuffer(view, dtype=entry.torch_dtype)
            done += n

    def read(self, entry: TensorEntry) -> torch.Tensor:
        """A whole (small) tensor, copied out of the buffer, in its shape."""
        out = torch.empty(entry.numel, dtype=entry.torch_dtype)
        for first, chunk in self.chunks(entry):
            out[first : first + chunk.numel()] = chunk
        return out.view(entry.shape)


# -- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class SafetensorsWriter:
    """One file whose header is written first; the tensors' bytes follow in declared order, in
    as many pieces as the caller likes."""

    def __init__(self, path: str | Path, specs: Sequence[TensorSpec], metadata: dict[str, str] | None = None) -> None:
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for s in specs:
            header[s.key] = {"dtype": NAMES[s.dtype], "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
            offset += s.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the reference writer leaves it
        self.path = Path(path)
        self._fh = open(self.path, "wb")
        self._fh.write(len(raw).to_bytes(8, "little") + raw)
        self._left = [(s.key, s.dtype, s.nbytes) for s in specs]
        self._in_current = 0
        self._skip_empty()

    def _skip_empty(self) -> None:
        while self._left and self._left[0][2] == 0:  # empty tensors have no bytes to wait for
            self._left.pop(0)

    def write(self, piece: torch.Tensor) -> None:
        """The next bytes of the current tensor (dtype as declared)."""
        if piece.numel() == 0:
            return
        if not self._left:
            raise ValueError(f"{self.path}: every declared tensor is already written")
        key, dtype, nbytes = self._left[0]
        if piece.dtype != dtype:
            raise ValueError(f"{key}: got {piece.dtype}, declared {dtype}")
        data = piece.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy()
        if self._in_current + data.nbytes > nbytes:
            raise ValueError(f"{key}: more bytes than its shape holds")
        self._fh.write(memoryview(data))
        self._in_current += data.nbytes
        if self._in_current == nbytes:
            self._left.pop(0)
            self._in_current = 0
            self._skip_empty()

    def abort(self) -> None:
        """Close without the completeness check (the caller failed midway and removes the file)."""
        self._fh.close()

    def close(self) -> None:
        if self._left:
            self._fh.close()
            raise ValueError(f"{self.path}: tensor {self._left[0][0]!r} was not written in full")
        self._fh.close()


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Tensors in order, cut into files of at most ``max_shard_bytes`` (a larger tensor gets a file of its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_index(directory: Path, shards: Sequence[Sequence[TensorSpec]], names: Sequence[str]) -> None:
    weight_map = {s.key: name for shard, name in zip(shards, names) for s in shard}
    total = sum(s.nbytes for shard in shards for s in shard)
    (directory / INDEX_FILE).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    )
