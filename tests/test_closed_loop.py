"""The closed loop walks the search path by measurement: over budget goes on, far under budget comes back up."""

from types import SimpleNamespace

import pytest

import compress.closed_loop as cl
from compress.closed_loop import BudgetNotMetError, closed_loop


@pytest.fixture
def fake_device(monkeypatch):
    """Path configs are {"ms": predicted}; the "device" measures ``factor`` x the prediction."""
    monkeypatch.setattr(cl, "extract_subnet", lambda net, cfg: cfg)
    calls = []

    def timer_for(factor):
        def timer(cfg):
            calls.append(cfg["ms"])
            return SimpleNamespace(median_ms=cfg["ms"] * factor)
        return timer
    return timer_for, calls


def _path(costs):
    return [{"cost": c, "config": {"ms": c}} for c in costs]


NET = SimpleNamespace(example_inputs=None)


def test_the_predictor_running_high_leaves_budget_unused_until_the_loop_comes_back_up(fake_device):
    timer_for, calls = fake_device
    path = _path([7.0, 6.6, 6.4, 6.0, 5.0])  # the device runs at 0.9 x the prediction
    index, measured = closed_loop(NET, path, 6.0, None, timer=timer_for(0.9), log=lambda s: None)
    # first guess: point 3 (predicted 6.0) measures 5.4 = 90% of the budget, under the default min_use of 95%;
    # with the measured/predicted ratio the loop goes back up to the largest point that fits: 6.6 -> 5.94 ms
    assert calls == [6.0, 6.6] and index == 1 and measured[index].median_ms == pytest.approx(5.94)


def test_min_use_decides_when_to_stop(fake_device):
    timer_for, calls = fake_device
    path = _path([10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    index, _ = closed_loop(NET, path, 6.0, None, timer=timer_for(0.8), min_use=0.75, log=lambda s: None)
    assert calls == [6.0] and index == 4  # 80% of the budget is enough here


def test_over_budget_everywhere_is_a_named_error(fake_device):
    timer_for, _ = fake_device
    with pytest.raises(BudgetNotMetError, match="No subnet on the search path measured under the budget"):
        closed_loop(NET, _path([10.0, 9.0, 8.0]), 6.0, None, timer=timer_for(2.0), log=lambda s: None)
