"""What a search returns: the slimmed subnet, its numbers, the whole path, and deployment to verified ONNX."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from compress.io import save_json
from compress.subnet.export import ExportReport, export_onnx


@dataclass
class SlimResult:
    """The chosen subnet and how it was chosen.

    Attributes:
        subnet: the physically smaller network (BN recalibrated; fine-tuned if asked).
        config: its channel config (group name -> width).
        flops: its FLOPs (1 multiply-add = 1 FLOP).
        predicted_ms: the latency predictor's estimate (None for a FLOPs search without a predictor).
        measured_ms: median latency measured on the device (None if the device cannot be measured here); on
            onnxruntime/torch devices timed interleaved with the full model and scaled by the full model's median
            latency over the run (compress/timing.py), so a drifting host does not move it.
        top1: held-out top-1 accuracy (%) of the subnet after BN recalibration (and fine-tuning).
        budget: the budget searched for, and its unit ("ms" or "FLOPs").
        path: every step of the greedy search (config, cost, FLOPs, score): the accuracy/cost frontier.
        measurements: every closed-loop measurement (path index -> median, p25, p75 ms).
        full: the same numbers for the full-width network.
        supernet: the trained slimmable network the subnet was cut from (left at full width).
        removed_blocks: residual blocks a depth search dropped (add nodes of the traced graph).
        seconds: wall-clock seconds of each phase (for example supernet, search, closed_loop, finetune).
    """

    subnet: nn.Module
    config: dict
    flops: int
    predicted_ms: float | None
    measured_ms: float | None
    top1: float | None
    budget: float
    unit: str
    path: list[dict]
    example_inputs: tuple = field(repr=False)
    measurements: dict = field(default_factory=dict)
    full: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    supernet: Any = field(default=None, repr=False)
    removed_blocks: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def export_onnx(self, path: str | os.PathLike, **kwargs: Any) -> ExportReport:
        """Export the subnet to ONNX, checked with onnx.checker and compared with onnxruntime (atomic write)."""
        return export_onnx(self.subnet, self.example_inputs, path, **kwargs)

    def summary(self) -> dict:
        """Everything but the module and the path, as plain JSON-able values."""
        return {"config": self.config, "flops": self.flops, "predicted_ms": self.predicted_ms,
                "measured_ms": self.measured_ms, "top1": self.top1, "budget": self.budget, "unit": self.unit,
                "measurements": self.measurements, "full": self.full, "notes": self.notes,
                "removed_blocks": self.removed_blocks, "seconds": self.seconds}

    def save(self, path: str | os.PathLike) -> None:
        """Summary and path as JSON (atomic)."""
        save_json({**self.summary(), "path": self.path}, path)

    def __str__(self) -> str:
        pred = f"{self.predicted_ms:.3f} ms" if self.predicted_ms is not None else "n/a"
        meas = f"{self.measured_ms:.3f} ms" if self.measured_ms is not None else "n/a"
        top1 = f"{self.top1:.2f}%" if self.top1 is not None else "n/a"
        return (f"SlimResult(budget {self.budget:.4g} {self.unit}: FLOPs {self.flops / 1e6:.2f}M, predicted {pred}, "
                f"measured {meas}, top-1 {top1}, {len(self.path)} path points)")
