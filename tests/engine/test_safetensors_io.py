"""Reading and writing safetensors piece by piece: byte-compatible with the reference library."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from seedfed.client.engine.errors import ModelLoadError
from seedfed.client.engine.safetensors_io import (
    CheckpointFiles,
    ChunkReader,
    SafetensorsWriter,
    TensorSpec,
    plan_shards,
    read_header,
    shard_names,
    write_index,
)

TENSORS = {
    "a": torch.randn(7, 5, generator=torch.Generator().manual_seed(0)),
    "b": torch.randn(300, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16),
    "empty": torch.zeros(0, 3),
    "ids": torch.arange(11, dtype=torch.int64),
    "half": torch.linspace(-2, 2, 9, dtype=torch.float16),
}


def test_reader_matches_the_reference_library(tmp_path):
    save_file(TENSORS, tmp_path / "model.safetensors", metadata={"format": "pt"})
    entries, meta = read_header(tmp_path / "model.safetensors")
    assert meta == {"format": "pt"} and set(entries) == set(TENSORS)
    with ChunkReader(chunk_bytes=16) as reader:  # chunks of 4 fp32 / 8 bf16 values
        for key, t in TENSORS.items():
            got = reader.read(entries[key])
            assert got.dtype == t.dtype and torch.equal(got, t)
            pieces = list(reader.chunks(entries[key]))
            assert sum(c.numel() for _, c in pieces) == t.numel()


def test_writer_output_is_read_by_the_reference_library(tmp_path):
    specs = [TensorSpec(k, t.dtype, tuple(t.shape)) for k, t in TENSORS.items()]
    writer = SafetensorsWriter(tmp_path / "w.safetensors", specs)
    for t in TENSORS.values():
        flat = t.reshape(-1)
        for i in range(0, flat.numel(), 4):
            writer.write(flat[i : i + 4])
    writer.close()
    raw = (tmp_path / "w.safetensors").read_bytes()
    assert (8 + int.from_bytes(raw[:8], "little")) % 8 == 0
    back = load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(back[k], t) for k, t in TENSORS.items())


def test_writer_refuses_too_much_too_little_and_the_wrong_dtype(tmp_path):
    w = SafetensorsWriter(tmp_path / "x.safetensors", [TensorSpec("a", torch.float32, (2,))])
    with pytest.raises(ValueError, match="declared"):
        w.write(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="more bytes"):
        w.write(torch.zeros(3))
    w.write(torch.zeros(1))
    with pytest.raises(ValueError, match="not written in full"):
        w.close()


def test_shards_and_index_are_read_back_as_one_checkpoint(tmp_path):
    specs = [TensorSpec(k, t.dtype, tuple(t.shape)) for k, t in TENSORS.items()]
    shards = plan_shards(specs, 100)
    assert len(shards) > 2 and [s.key for shard in shards for s in shard] == list(TENSORS)
    names = shard_names(len(shards))
    for shard, name in zip(shards, names):
        w = SafetensorsWriter(tmp_path / name, shard)
        for s in shard:
            w.write(TENSORS[s.key])
        w.close()
    write_index(tmp_path, shards, names)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(s.nbytes for s in specs)
    files = CheckpointFiles.find(tmp_path)
    with files.reader() as reader:
        assert all(torch.equal(reader.read(files.entries[k]), t) for k, t in TENSORS.items())
    assert shard_names(1) == ["model.safetensors"]


def test_header_lies_are_refused(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(ModelLoadError, match="12 bytes do not hold shape"):
        CheckpointFiles.find(tmp_path)
    header = json.dumps({"a": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(ModelLoadError, match="dtype Q4"):
        CheckpointFiles.find(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        CheckpointFiles.find(tmp_path)
