"""The closed loop walks the search path by measurement: over budget goes on, far under budget comes back up."""

from types import SimpleNamespace

import pytest

import compress.deploy.closed_loop as cl
from compress.deploy.closed_loop import BudgetNotMetError, closed_loop


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
    # under means <= 98% of the budget (5.88 ms, the 2% headroom): the first point predicted under it is 5.0
    # (4.5 ms, 75%); with the measured/predicted ratio the loop comes back up to the largest point that fits:
    # 6.4 -> 5.76 ms (96%). 6.6 would measure 5.94 ms, under the budget but inside the headroom.
    assert calls == [5.0, 6.4] and index == 2 and measured[index].median_ms == pytest.approx(5.76)
    calls.clear()
    index, _ = closed_loop(NET, path, 6.0, None, timer=timer_for(0.9), log=lambda s: None, headroom=0.0)
    assert calls == [6.0, 6.6] and index == 1  # without headroom: 99% of the budget


def test_min_use_decides_when_to_stop(fake_device):
    timer_for, calls = fake_device
    path = _path([10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    index, _ = closed_loop(NET, path, 6.0, None, timer=timer_for(0.8), min_use=0.6, log=lambda s: None)
    assert calls == [5.0] and index == 5  # 4.0 ms, 67% of the budget: enough here
    calls.clear()
    index, _ = closed_loop(NET, path, 6.0, None, timer=timer_for(0.8), log=lambda s: None)
    # the default 95%: back up to 5.6 ms (93%); the larger points tried (bisection) all measure over
    assert calls[:2] == [5.0, 7.0] and index == 3 and all(c * 0.8 > 6.0 for c in calls[2:])


def test_over_budget_everywhere_is_a_named_error(fake_device):
    timer_for, _ = fake_device
    with pytest.raises(BudgetNotMetError, match="No subnet on the search path measured under the budget"):
        closed_loop(NET, _path([10.0, 9.0, 8.0]), 6.0, None, timer=timer_for(2.0), log=lambda s: None)
