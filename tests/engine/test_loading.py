"""The streamed load: safetensors tensor by tensor into the int32 master, the same bytes as a full load."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers
from helpers import tiny_bert, tiny_gpt2
from model_files import empty_twin, full_load, save, save_bin, tiny_llama
from safetensors.torch import load_file, save_file

from seedfed.client.engine import safetensors_io
from seedfed.client.engine.errors import ModelLoadError
from seedfed.client.engine.loading import stream_state
from seedfed.client.engine.safetensors_io import CheckpointFiles
from seedfed.client.engine.state import FixedPointState, choose_unit_log2

TASK_SEED = 41


def full_state(directory, cls=None, unit_log2=None):
    model = full_load(directory, cls)
    return FixedPointState.from_module(model, choose_unit_log2(model) if unit_log2 is None else unit_log2, TASK_SEED)


def streamed_state(directory, cls=None, unit_log2=None, **kw):
    module = empty_twin(directory, cls)
    return module, stream_state(module, CheckpointFiles.find(directory), TASK_SEED, unit_log2, **kw)


CASES = {
    "gpt2-causal": (tiny_gpt2, transformers.AutoModelForCausalLM),
    "gpt2-bare": (tiny_gpt2, transformers.AutoModel),  # a causal checkpoint read into the bare model (prefix stripped)
    "bert": (tiny_bert, transformers.AutoModel),
    "llama-causal": (tiny_llama, transformers.AutoModelForCausalLM),
    "llama-bare": (tiny_llama, transformers.AutoModel),  # its untied lm_head is a task head: ignored, as a full load does
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_digest_and_unit_equal_the_full_load(tmp_path, case, dtype):
    make, cls = CASES[case]
    directory = save(make(), tmp_path / "m", dtype)
    want = full_state(directory, cls)
    module, got = streamed_state(directory, cls)
    assert got.unit_log2 == want.unit_log2
    assert got.manifest == want.manifest
    assert got.digest() == want.digest()
    assert all(p.is_meta for p in module.parameters())  # the module never held the weights


def test_sharded_checkpoint_equals_single_file(tmp_path, monkeypatch):
    model = tiny_gpt2()
    single = save(model, tmp_path / "one", torch.bfloat16)
    shards = save(model, tmp_path / "many", torch.bfloat16, shard_size="20KB")
    assert (shards / safetensors_io.INDEX_FILE).is_file() and len(list(shards.glob("*.safetensors"))) > 2
    monkeypatch.setattr(safetensors_io, "CHUNK_BYTES", 1000)  # many chunks per tensor, chunk edges inside rows
    assert streamed_state(shards)[1].digest() == streamed_state(single)[1].digest() == full_state(single).digest()


def test_given_unit_and_writing_into_an_existing_state(tmp_path):
    directory = save(tiny_bert(), tmp_path / "b")
    want = full_state(directory, transformers.AutoModel, unit_log2=-24)
    module, got = streamed_state(directory, transformers.AutoModel, unit_log2=-24)
    assert got.digest() == want.digest()
    got.apply({3: 1000})
    flat = got.flat
    stream_state(module, CheckpointFiles.find(directory), TASK_SEED, -24, out=got)
    assert got.flat is flat and got.digest() == want.digest()


def test_float64_values_round_through_float32_as_a_full_load(tmp_path):
    directory = save(tiny_gpt2(), tmp_path / "g", torch.float64)
    assert streamed_state(directory)[1].digest() == full_state(directory).digest()


def test_legacy_buffers_in_the_checkpoint_are_ignored(tmp_path):
    directory = save(tiny_bert(), tmp_path / "b")
    tensors = load_file(directory / "model.safetensors")
    tensors["embeddings.position_ids"] = torch.arange(32).unsqueeze(0)  # older BERT files carry it; it is no longer persistent
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    assert streamed_state(directory, transformers.AutoModel)[1].digest() == full_state(directory, transformers.AutoModel).digest()


class WithBuffer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("scale", torch.ones(2))

    def forward(self, x):
        return self.lin(x) * self.scale


def test_persistent_buffers_are_loaded_into_the_module(tmp_path):
    src = WithBuffer()
    with torch.no_grad():
        src.scale.fill_(3.0)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "model.safetensors")
    with torch.device("meta"):
        lin = torch.nn.Linear(3, 2)
    twin = WithBuffer()
    twin.lin = lin
    state = stream_state(twin, CheckpointFiles.find(tmp_path), 1)
    assert torch.equal(twin.scale, torch.full((2,), 3.0))
    assert state.digest() == FixedPointState.from_module(src, state.unit_log2, 1).digest()


# -- bad input: a clear error naming the file or tensor, before anything is built ------------------------


def edit_checkpoint(directory, change):
    path = directory / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return directory


def test_missing_shard_is_named(tmp_path):
    directory = save(tiny_gpt2(), tmp_path / "g", shard_size="20KB")
    victim = sorted(directory.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(ModelLoadError, match=f"missing shard .*{victim.name}"):
        CheckpointFiles.find(directory)


def test_shard_without_the_tensors_its_index_places_there(tmp_path):
    directory = save(tiny_gpt2(), tmp_path / "g", shard_size="20KB")
    index = json.loads((directory / safetensors_io.INDEX_FILE).read_text())
    key = sorted(index["weight_map"])[0]
    index["weight_map"][key] = sorted(set(index["weight_map"].values()) - {index["weight_map"][key]})[0]
    (directory / safetensors_io.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=f"does not hold tensor '{key}'"):
        CheckpointFiles.find(directory)


def test_missing_tensor_is_named(tmp_path):
    directory = edit_checkpoint(save(tiny_gpt2(), tmp_path / "g"), lambda t: t.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(ModelLoadError, match=r"no tensor for parameter 'transformer\.h\.1\.mlp\.c_fc\.weight'"):
        streamed_state(directory)


def test_unexpected_tensor_is_named(tmp_path):
    extra = {"transformer.h.7.ln_1.weight": torch.ones(32)}
    directory = edit_checkpoint(save(tiny_gpt2(), tmp_path / "g"), lambda t: t.update(extra))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: tensor 'transformer\.h\.7\.ln_1\.weight'.* not a parameter"):
        streamed_state(directory)


def test_shape_mismatch_is_named(tmp_path):
    directory = edit_checkpoint(save(tiny_gpt2(), tmp_path / "g"), lambda t: t.update({"transformer.ln_f.bias": torch.ones(33)}))
    with pytest.raises(ModelLoadError, match=r"'transformer\.ln_f\.bias' has shape \[33\].* needs \[32\]"):
        streamed_state(directory)


def test_integer_weights_are_refused(tmp_path):
    def quantise(t):
        t["transformer.wpe.weight"] = (t["transformer.wpe.weight"] * 100).to(torch.int8)

    directory = edit_checkpoint(save(tiny_gpt2(), tmp_path / "g"), quantise)
    with pytest.raises(ModelLoadError, match=r"'transformer\.wpe\.weight' is I8; .*dequantise"):
        streamed_state(directory)


def test_non_finite_weights_are_refused(tmp_path):
    def poison(t):
        t["transformer.h.0.attn.c_attn.bias"][3] = math.nan

    directory = edit_checkpoint(save(tiny_gpt2(), tmp_path / "g"), poison)
    with pytest.raises(ModelLoadError, match=r"'transformer\.h\.0\.attn\.c_attn\.bias'.*NaN or infinity"):
        streamed_state(directory)


def test_weights_beyond_the_unit_range_are_refused(tmp_path):
    directory = save(tiny_gpt2(), tmp_path / "g", torch.float64)
    with pytest.raises(ModelLoadError, match=r"does not fit the int32 master at unit 2\*\*-40"):
        streamed_state(directory, unit_log2=-40)


def test_truncated_file_is_named(tmp_path):
    directory = save(tiny_gpt2(), tmp_path / "g")
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="truncated"):
        CheckpointFiles.find(directory)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        CheckpointFiles.find(directory)


def test_a_master_larger_than_memory_is_refused_before_allocating(tmp_path, monkeypatch):
    from seedfed.client.engine import memory

    directory = save(tiny_gpt2(), tmp_path / "g")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    needs = r"int32 master of [\d,]+ parameters needs .* \([\d,]+ bytes\) of host memory; 0.00 GiB available"
    with pytest.raises(ModelLoadError, match=needs):
        streamed_state(directory)


def test_a_directory_without_safetensors_has_no_checkpoint_files(tmp_path):
    save_bin(tiny_gpt2(), tmp_path)
    assert CheckpointFiles.find(tmp_path) is None
