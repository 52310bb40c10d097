"""The reference model timed beside every profiled batch, to correct for a drifting machine.

A shared machine speeds up and slows down by 10-20% over minutes (docs/measurement_noise.md). Timing one
fixed model in every batch, interleaved with the others, turns each measurement into a ratio to it;
``corrected_ms`` maps it back to milliseconds at one common reference latency. A small unrelated reference
reacts to the host's slow phases differently from a large model (ratios to it repeat within 4-13%), so bundles
profiling subnets of one model also time an *anchor*, the full model: ratios to it repeat within 1-3%, and the
anchor's own ratio to the reference, pooled over every batch, puts all records on the common scale.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

REFERENCE_INPUT = [1, 3, 64, 64]  # of the "small" reference


def _seeded(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval()


def _small() -> nn.Module:
    return _seeded(nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1, groups=32),
                                 nn.ReLU(), nn.Conv2d(32, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)))


def _resnet18_112() -> nn.Module:
    import torchvision

    return _seeded(torchvision.models.resnet18())


# name -> (builder, input shape). "small" (0.25 ms here) is cheap beside small models; "resnet18-112" (10 ms)
# tracks the host's slow phases far better across model families (docs/measurement_noise.md): use it for tables
# that must share one scale across families (kernel suite, cross-model predictors).
REFERENCES = {"small": (_small, REFERENCE_INPUT), "resnet18-112": (_resnet18_112, [1, 3, 112, 112])}


def reference_model(name: str = "small") -> nn.Module:
    """A fixed reference CNN (same weights every time: the seed is fixed)."""
    return REFERENCES[_known(name)][0]()


def reference_input(name: str = "small") -> list[int]:
    return list(REFERENCES[_known(name)][1])


def _known(name: str) -> str:
    if name not in REFERENCES:
        raise ValueError(f"Unknown reference model {name!r}; known: {sorted(REFERENCES)}.")
    return name


def export_reference(path: str | os.PathLike, name: str = "small") -> Path:
    from compress.subnet.export import export_onnx

    export_onnx(reference_model(name), torch.zeros(reference_input(name)), path)
    return Path(path)


def anchor_scales(records: Iterable[dict]) -> dict[str, float]:
    """Each anchor's latency in units of the reference: the median, over the batches that timed it, of its
    round-by-round ratio to the reference. Pool the records of every table that shares an anchor."""
    per: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.get("anchor") and r.get("anchor_reference_ratio"):
            per[r["anchor"]].append(r["anchor_reference_ratio"])
    return {name: statistics.median(v) for name, v in per.items()}


def corrected_ms(record: dict, reference_ms: float, anchors: Mapping[str, float] | None = None) -> float:
    """A record's latency at the common reference latency ``reference_ms``.

    Best first: its ratio to its anchor x the anchor's scale (``anchor_scales``) x ``reference_ms``; its
    round-by-round ratio to the reference x ``reference_ms``; its median x ``reference_ms`` / the reference's
    median of its batch; its median alone (no reference timed)."""
    if anchors and record.get("anchor") in anchors and record.get("anchor_ratio"):
        return record["anchor_ratio"] * anchors[record["anchor"]] * reference_ms
    if record.get("reference_ratio"):
        return record["reference_ratio"] * reference_ms
    ref = record.get("reference_ms")
    return record["median_ms"] * reference_ms / ref if ref else record["median_ms"]
