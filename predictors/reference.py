"""The reference model timed beside every profiled batch, to correct for a drifting machine.

A shared machine speeds up and slows down by 10-20% over minutes (docs/measurement_noise.md). Timing one
fixed model in every batch, interleaved with the others, turns each measurement into a ratio to it;
``corrected_ms`` maps it back to milliseconds at one common reference latency.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

REFERENCE_INPUT = [1, 3, 64, 64]


def reference_model() -> nn.Module:
    """A small fixed CNN (same weights every time: the seed is fixed)."""
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1, groups=32), nn.ReLU(),
                      nn.Conv2d(32, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval()


def export_reference(path: str | os.PathLike) -> Path:
    from compress.export import export_onnx

    export_onnx(reference_model(), torch.zeros(REFERENCE_INPUT), path)
    return Path(path)


def corrected_ms(record: dict, reference_ms: float) -> float:
    """A record's median latency at the common reference latency (unchanged if it has no reference)."""
    ref = record.get("reference_ms")
    return record["median_ms"] * reference_ms / ref if ref else record["median_ms"]
