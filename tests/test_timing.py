"""Drift-free timing: candidates timed interleaved with the full model, scaled by its median latency over the run."""

import pytest
import torch
from torch import nn

from compress.deploy.timing import ReferenceTimer, can_measure
from devices import get_device


def _net(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 10)).eval()


@pytest.mark.parametrize("name", ["cpu", "torch-cpu"])
def test_reference_timer_scales_ratios_by_the_reference(name):
    dev = get_device(name, threads=1)
    x = (torch.zeros(1, 3, 32, 32),)
    full, small = _net(96), _net(16)
    timer = ReferenceTimer(dev, full, x)
    try:
        m_small = timer(small)
        ref_after_first = timer.reference_ms  # median of the first (alone) and the interleaved reference medians
        m_same = timer(_net(96))
        # the latency is the measured ratio times the reference's running median
        assert m_small.median_ms == pytest.approx(timer.history[0]["ratio"] * ref_after_first, rel=1e-9)
        assert m_small.median_ms < 0.7 * m_same.median_ms       # 16 channels vs 96: far cheaper
        assert 0.6 < timer.history[1]["ratio"] < 1.6            # the same architecture: about 1
        assert len(timer.history) == 2 and m_small.runs >= 50
    finally:
        timer.close()


def test_only_local_devices_can_be_timed():
    assert can_measure(get_device("cpu", threads=1)) and not can_measure(get_device("board"))


def test_a_pinned_reference_makes_latency_a_pure_ratio():
    dev = get_device("cpu", threads=1)
    x = (torch.zeros(1, 3, 32, 32),)
    timer = ReferenceTimer(dev, _net(96), x, reference_ms=10.0)
    try:
        m = timer(_net(16))
        assert timer.reference_ms == 10.0 and m.median_ms == pytest.approx(10.0 * timer.history[0]["ratio"])
    finally:
        timer.close()
    from compress.errors import InvalidParameterError
    with pytest.raises(InvalidParameterError, match="reference_ms"):
        ReferenceTimer(dev, _net(16), x, reference_ms=-1.0)
