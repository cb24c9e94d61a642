"""One SPSA / MeZO probe: the projected gradient along z(seed) from two forward passes.

The compute weights are perturbed from W (w = W * unit +- eps * z), never by
adding and subtracting in float, and re-derived afterwards: the state is
never touched, so any number of probes leaves its digest unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from seedfed.client.engine.state import ComputeWeights


@dataclass(frozen=True)
class ProbeResult:
    g: float  # (L(w + eps z) - L(w - eps z)) / (2 eps)
    loss_plus: float
    loss_minus: float


def probe(weights: ComputeWeights, seed: int, eps: float, loss_fn: Callable[[], float | torch.Tensor]) -> ProbeResult:
    """``loss_fn`` runs a forward pass of the bound module on a fixed batch and returns the loss.
    Weights that can run both passes together (streamed weights with ``dual`` set) do so; the
    losses are the same either way."""
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    if getattr(weights, "dual", False):
        loss_plus, loss_minus = weights.probe_pair(seed, eps, loss_fn)
        return ProbeResult((loss_plus - loss_minus) / (2.0 * eps), loss_plus, loss_minus)
    try:
        with torch.no_grad():
            weights.perturb(seed, eps)
            loss_plus = float(loss_fn())
            weights.perturb(seed, -eps)
            loss_minus = float(loss_fn())
    finally:
        weights.refresh()  # also after an exception: the module never keeps perturbed weights
    return ProbeResult((loss_plus - loss_minus) / (2.0 * eps), loss_plus, loss_minus)
