"""Memory: what each way of holding the weights needs, what the machine has, and the choice.

The exact state always costs its int32 master (4 bytes per parameter).
Resident compute weights add a full float buffer (2 or 4 bytes per
parameter); streamed compute weights add only the scratch of the largest
block. On a GPU the master may live on the device or in pinned host memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seedfed.client.engine.errors import ModelLoadError

WEIGHT_MODES = ("auto", "resident", "streamed")
MASTER_PLACES = ("auto", "device", "host")
RESIDENT_SHARE = 0.25  # auto: resident when the float buffer takes at most this share of the free memory
# ... and, on the CPU, only for models this small: streamed probes measured as fast as resident ones at GPT-2 124M
# (bench/probe.py), so a larger buffer would cost memory and buy nothing.
RESIDENT_MAX_PARAMETERS = 256_000_000
DEVICE_MASTER_SHARE = 0.5  # auto on a GPU: the master on the device when it takes at most this share of its free memory


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def available_bytes(device: torch.device | str) -> int | None:
    """Free memory where ``device`` allocates: MemAvailable for the host, the driver's free bytes
    for a CUDA device; None where the machine does not say."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _where(device: torch.device) -> str:
    return "host" if device.type == "cpu" else f"{device} device"


def require_memory(nbytes: int, device: torch.device | str, what: str, available: int | None = None) -> None:
    """ModelLoadError naming ``what``, the bytes it needs and the bytes free, if it cannot fit."""
    device = torch.device(device)
    free = available_bytes(device) if available is None else available
    if free is not None and nbytes > free:
        raise ModelLoadError(f"{what} needs {gib(nbytes)} ({nbytes:,} bytes) of {_where(device)} memory; {gib(free)} available")


@dataclass(frozen=True)
class Layout:
    weights: str  # "resident" | "streamed"
    master_device: torch.device
    compute_device: torch.device
    dtype: torch.dtype

    @property
    def pin(self) -> bool:
        """A host master serving a GPU lives in pinned memory, so block copies run asynchronously."""
        return self.master_device.type == "cpu" and self.compute_device.type == "cuda"


def plan_layout(
    total: int,
    compute_device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    weights: str = "auto",
    master: str = "auto",
    *,
    host_available: int | None = None,
    device_available: int | None = None,
) -> Layout:
    """Where the master lives and how compute weights are held for a model of ``total`` parameters.
    ``auto`` picks resident weights where their buffer fits comfortably, and on a GPU the device
    for the master where it fits; an explicit choice that cannot fit raises ModelLoadError."""
    if weights not in WEIGHT_MODES:
        raise ModelLoadError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
    if master not in MASTER_PLACES:
        raise ModelLoadError(f"master must be one of {MASTER_PLACES}, got {master!r}")
    compute = torch.device(compute_device)
    cpu = torch.device("cpu")
    master_bytes = 4 * total
    buffer_bytes = dtype.itemsize * total
    host_free = available_bytes(cpu) if host_available is None else host_available
    if compute.type == "cpu":
        master_device, free = cpu, host_free
    else:
        dev_free = available_bytes(compute) if device_available is None else device_available
        if master == "auto":
            fits = (
                dev_free is None
                or master_bytes + (buffer_bytes if weights == "resident" else 0) <= DEVICE_MASTER_SHARE * dev_free
            )
            master = "device" if fits or weights == "resident" else "host"
        if master == "host":
            if weights == "resident":
                raise ModelLoadError("resident compute weights need the master on the compute device (use --master device)")
            require_memory(master_bytes, cpu, f"the int32 master of {total:,} parameters", host_free)
            return Layout("streamed", cpu, compute, dtype)
        master_device, free = compute, dev_free
    require_memory(master_bytes, master_device, f"the int32 master of {total:,} parameters", free)
    if weights == "auto":
        small = total <= RESIDENT_MAX_PARAMETERS or compute.type != "cpu"  # measured on the CPU only
        weights = "resident" if small and (free is None or buffer_bytes <= RESIDENT_SHARE * free) else "streamed"
    if weights == "resident":
        require_memory(
            master_bytes + buffer_bytes,
            master_device,
            f"the int32 master and resident {str(dtype).removeprefix('torch.')} weights of {total:,} parameters",
            free,
        )
    return Layout(weights, master_device, compute, dtype)
