"""Binding compute weights to a module in the layout chosen for it (resident or streamed)."""

from __future__ import annotations

import torch

from seedfed.client.engine.memory import Layout
from seedfed.client.engine.state import ComputeWeights, FixedPointState
from seedfed.client.engine.streamed import StreamedWeights


def bind_weights(module: torch.nn.Module, state: FixedPointState, layout: Layout) -> ComputeWeights | StreamedWeights:
    """Resident: one flat float buffer the parameters view (the master must be on the compute
    device). Streamed: meta parameters, each block derived when it runs. Same losses either way."""
    if layout.weights == "resident":
        if state.device != layout.compute_device:
            raise ValueError(f"resident weights need the master on {layout.compute_device}, it is on {state.device}")
        return ComputeWeights.bind(module, state, layout.dtype)
    return StreamedWeights.bind(module, state, layout.dtype, layout.compute_device)
