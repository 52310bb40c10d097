"""Shared by the channel-rule tests: weights that make a wrong slice show, and the closeness they are judged by."""

from __future__ import annotations

import torch
from torch import nn


def randomize_norms(model: nn.Module) -> nn.Module:
    """Random norm statistics and scales (every 1-d float parameter and buffer), so that slicing the wrong channels
    shows in the output; the model is returned in eval mode."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.dtype.is_floating_point and t.ndim == 1:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "var" in name or "weight" in name
                        else torch.randn(t.shape, generator=g))
    return model.eval()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal within 1e-5 of ``b``'s scale (at least 1)."""
    return float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))
