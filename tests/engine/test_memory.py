"""The layout chosen for a model: resident or streamed weights, the master on the device or the host."""

from __future__ import annotations

import pytest
import torch

from seedfed.client.engine.errors import ModelLoadError
from seedfed.client.engine.memory import available_bytes, plan_layout, require_memory

GIB = 2**30
CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_auto_on_cpu_keeps_small_models_resident_and_streams_large_ones():
    small = plan_layout(125_000_000, "cpu", torch.float32, host_available=20 * GIB)
    assert (small.weights, small.master_device) == ("resident", CPU)
    # a 1.1B bf16 buffer would fit in a quarter of 20 GiB, but streaming is as fast and needs no buffer
    assert plan_layout(1_100_000_000, "cpu", torch.bfloat16, host_available=20 * GIB).weights == "streamed"
    large = plan_layout(3_000_000_000, "cpu", torch.bfloat16, host_available=20 * GIB)
    assert (large.weights, large.master_device) == ("streamed", CPU)
    assert not large.pin


def test_explicit_choices_are_kept_when_they_fit():
    assert plan_layout(3_000_000_000, "cpu", torch.bfloat16, "resident", host_available=20 * GIB).weights == "resident"
    assert plan_layout(1000, "cpu", torch.float32, "streamed", host_available=20 * GIB).weights == "streamed"


def test_what_does_not_fit_is_refused_naming_the_bytes():
    with pytest.raises(ModelLoadError, match=r"master of 8,000,000,000 parameters needs 29.80 GiB .* host memory; 20.00 GiB"):
        plan_layout(8_000_000_000, "cpu", torch.bfloat16, host_available=20 * GIB)
    with pytest.raises(ModelLoadError, match=r"resident bfloat16 weights of 4,000,000,000 parameters needs 22.35 GiB"):
        plan_layout(4_000_000_000, "cpu", torch.bfloat16, "resident", host_available=20 * GIB)
    with pytest.raises(ModelLoadError, match="weights must be one of"):
        plan_layout(10, "cpu", weights="fast")
    with pytest.raises(ModelLoadError, match="master must be one of"):
        plan_layout(10, "cpu", master="disk")


def test_gpu_master_on_the_device_when_it_fits_else_pinned_host_memory():
    on_device = plan_layout(1_000_000_000, CUDA, torch.bfloat16, host_available=64 * GIB, device_available=80 * GIB)
    assert (on_device.weights, on_device.master_device, on_device.pin) == ("resident", CUDA, False)
    host = plan_layout(8_000_000_000, CUDA, torch.bfloat16, host_available=64 * GIB, device_available=24 * GIB)
    assert (host.weights, host.master_device, host.pin) == ("streamed", CPU, True)
    forced = plan_layout(1_000, CUDA, torch.bfloat16, master="host", host_available=GIB, device_available=80 * GIB)
    assert (forced.weights, forced.master_device) == ("streamed", CPU)
    middle = plan_layout(3_000_000_000, CUDA, torch.float32, host_available=64 * GIB, device_available=40 * GIB)
    assert (middle.weights, middle.master_device) == ("streamed", CUDA)
    with pytest.raises(ModelLoadError, match="need the master on the compute device"):
        plan_layout(1_000, CUDA, torch.bfloat16, "resident", "host", host_available=GIB, device_available=GIB)
    with pytest.raises(ModelLoadError, match=r"of cuda device memory; 24.00 GiB available"):
        plan_layout(8_000_000_000, CUDA, torch.bfloat16, master="device", host_available=64 * GIB, device_available=24 * GIB)
    with pytest.raises(ModelLoadError, match="of host memory"):
        plan_layout(8_000_000_000, CUDA, torch.bfloat16, host_available=16 * GIB, device_available=24 * GIB)


def test_available_memory_reads_the_machine():
    free = available_bytes("cpu")
    assert free is None or free > 0
    require_memory(1, "cpu", "one byte")
    with pytest.raises(ModelLoadError, match="the thing needs .* of host memory; 0.00 GiB available"):
        require_memory(10, "cpu", "the thing", available=5)
