"""The parameter manifest: order, tied weights, offsets, canonical bytes."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_bert, tiny_gpt2

from seedfed.client.engine.manifest import Manifest, ManifestError, Slot


def test_order_offsets_and_tied_weights_once(gpt2):
    m = Manifest.from_module(gpt2)
    names = [s.name for s in m.slots]
    assert names == [n for n, _ in gpt2.named_parameters()]
    assert "lm_head.weight" not in names  # tied to transformer.wte.weight: counted once
    offset = 0
    for s in m.slots:
        assert s.offset == offset  # cumulative, no padding
        assert s.numel == int(torch.Size(s.shape).numel())
        offset += s.numel
    assert m.total == offset == sum(p.numel() for p in gpt2.parameters())


def test_digest_is_a_function_of_names_shapes_dtypes():
    a = Manifest.from_module(tiny_gpt2(0))
    assert a.digest() == Manifest.from_module(tiny_gpt2(1)).digest()  # values do not matter
    assert a.digest() != Manifest.from_module(tiny_bert()).digest()
    assert a.digest() != Manifest.from_module(tiny_gpt2().to(torch.bfloat16)).digest()
    renamed = Manifest(tuple(Slot(s.name + "x", s.shape, s.dtype, s.offset, s.numel) for s in a.slots))
    assert renamed.digest() != a.digest()
    assert len(a.digest()) == 64


def test_known_digest_of_a_fixed_manifest():
    # published: another implementation of the manifest encoding must reproduce this
    m = Manifest((Slot("a.weight", (2, 3), "float32", 0, 6), Slot("b", (4,), "bfloat16", 6, 4)))
    assert m.canonical_bytes().startswith(b"seedfed-manifest-v1\0")
    assert m.digest() == KNOWN_DIGEST


KNOWN_DIGEST = "4a78831b0a96a0226c3ddeca21d11a4e4b2f020bf41395a7a8fe6f3443ead785"


def test_json_round_trip(gpt2):
    m = Manifest.from_module(gpt2)
    assert Manifest.from_json(m.to_json()) == m


def test_check_module(gpt2, bert):
    m = Manifest.from_module(gpt2)
    assert list(m.check_module(gpt2)) == [s.name for s in m.slots]
    with pytest.raises(ManifestError):
        m.check_module(bert)
    with pytest.raises(ManifestError, match="shape"):
        m.check_module(tiny_gpt2(n_embd=64))


def test_module_without_parameters_is_refused():
    with pytest.raises(ManifestError):
        Manifest.from_module(torch.nn.ReLU())
