"""Silent wrong results, one class per test group, each on small models written from the patterns users report in
peers' bug trackers. Every test here failed before its fix (the value it checks was wrong without an error)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.cost import flops as flops_module


def smallest_flops_agree(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(analytic, counted) FLOPs at the smallest config: net.flops vs fvcore on the extracted subnet."""
    net = compress.SlimmableNetwork(model.eval(), x)
    cfg = net.space.min_config()
    return net.flops(cfg), compress.count_flops(compress.extract_subnet(net, cfg), x).total


# ---- analytic FLOPs follow the op's arguments, as fvcore does ----------------------------------------------
class NormThenConv(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.c1, self.norm, self.c2 = nn.Conv2d(3, 16, 3, padding=1), norm, nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.c2(F.relu(self.norm(self.c1(x)))).mean((2, 3))


@pytest.mark.parametrize("norm", [
    nn.BatchNorm2d(16), nn.BatchNorm2d(16, track_running_stats=False),
    nn.BatchNorm2d(16, affine=False, track_running_stats=False), nn.BatchNorm2d(16, affine=False)],
    ids=["stats", "no-stats", "no-stats-no-affine", "no-affine"])
def test_batch_norm_flops_with_and_without_running_statistics(norm):
    analytic, counted = smallest_flops_agree(NormThenConv(norm), torch.randn(2, 3, 16, 16))
    assert analytic == counted


class Resize(nn.Module):
    def __init__(self, module: bool, **kw) -> None:
        super().__init__()
        self.kw = kw
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.up = nn.Upsample(**kw) if module else None

    def forward(self, x):
        y = F.relu(self.c1(x))
        y = self.up(y) if self.up is not None else F.interpolate(y, **self.kw)
        return self.c2(y).mean((2, 3))


RESIZES = [dict(scale_factor=2, mode="nearest"), dict(scale_factor=2, mode="nearest-exact"),
           dict(scale_factor=2, mode="bilinear"), dict(scale_factor=2, mode="bilinear", align_corners=True),
           dict(scale_factor=2, mode="bicubic"), dict(scale_factor=2, mode="area"), dict(size=(5, 7), mode="area"),
           dict(scale_factor=0.5, mode="bilinear", antialias=True)]


@pytest.mark.parametrize("module", [False, True], ids=["F.interpolate", "nn.Upsample"])
@pytest.mark.parametrize("kw", RESIZES, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_resize_flops_in_every_mode(kw, module):
    if module and kw.get("antialias"):
        pytest.skip("nn.Upsample has no antialias argument")
    analytic, counted = smallest_flops_agree(Resize(module, **kw), torch.randn(2, 3, 16, 16))
    assert analytic == counted


def test_a_drifting_formula_is_a_named_error_naming_the_op(monkeypatch):
    wrong = dict(flops_module.FLOP_FORMULAS)
    wrong["batch_norm"] = lambda op, s: flops_module.numel_poly(op.inputs[0], s) * 3
    monkeypatch.setattr(flops_module, "FLOP_FORMULAS", wrong)
    net = compress.SlimmableNetwork(NormThenConv(nn.BatchNorm2d(16)).eval(), torch.randn(2, 3, 16, 16))
    with pytest.raises(compress.FlopsMismatchError, match=r"batch_norm 'norm' \(.* vs fvcore's .*\)") as e:
        net.flops()
    assert "ignore=" in str(e.value)
