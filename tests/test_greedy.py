"""Greedy slimming on a torchvision model's channel space, with an exact FLOPs cost and a known score."""

import json

import numpy as np
import pytest
import torch
import torchvision

from compress import SlimmableNetwork
from compress.search.greedy import SearchResumeError, candidate_cuts, cheapest_useful_cuts, greedy_slim
from compress.search.objectives import FlopsCost
from compress.settings import SearchSettings


@pytest.fixture(scope="module")
def net():
    return SlimmableNetwork(torchvision.models.resnet18(num_classes=10), torch.zeros(1, 3, 32, 32))


class KnownScore:
    """top1 = 100 - sum_g weight_g * removed fraction of g: the harmless groups are known in advance."""

    def __init__(self, net, fail_after=None):
        self.widths = {g.name: g.width for g in net.space.free}
        names = sorted(self.widths)
        self.weight = {n: 1.0 + 10.0 * i for i, n in enumerate(names)}
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, cfg):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        lost = sum(self.weight[n] * (1 - cfg[n] / w) for n, w in self.widths.items())
        return {"top1": 100.0 - lost, "loss": lost}


def test_candidate_cuts_respect_divisor_and_floor(net):
    s = SearchSettings(step_ratio=0.1, min_ratio=0.25)
    full = net.space.max_config()
    cuts = candidate_cuts(net.space, full, s)
    assert len(cuts) == len(net.space.free)
    for name, steps in cuts:
        g = net.space.groups[net.space.index[name]]
        ws = [c[name] for c in steps]
        assert ws == sorted(ws, reverse=True) and ws[0] < g.width
        assert all(w % g.divisor == 0 and w >= 0.25 * g.width for w in ws)
        assert all({k: v for k, v in c.items() if k != name} == {k: v for k, v in full.items() if k != name}
                   for c in steps)


def test_block_padded_cost_skips_to_a_cut_that_helps(net):
    """A cost that only changes every 16 channels (like a runtime's NCHWc blocks): one-bin cuts of 8 gain
    nothing, so the cut grows to the next block."""
    def blocky(configs):
        return np.array([sum(-(-v // 16) * 16 for v in c.values()) for c in configs], float)

    full = net.space.max_config()
    cuts = cheapest_useful_cuts(net.space, full, blocky([full])[0], blocky, SearchSettings(step_ratio=0.01))
    assert cuts and all(full[name] - cfg[name] == 16 for name, cfg, _ in cuts)


def test_greedy_path_cuts_the_harmless_groups_first(net):
    cost = FlopsCost(net)
    full = cost([net.space.max_config()])[0]
    score = KnownScore(net)
    s = SearchSettings(fast_factor=100.0, overshoot=1.0)  # one cut per step
    path = greedy_slim(net, score, cost, 0.6 * full, s, progress=False)
    costs = [p["cost"] for p in path]
    assert all(b < a for a, b in zip(costs, costs[1:]))
    assert costs[-1] <= 0.6 * full < costs[-2]
    assert all(p["flops"] == p["cost"] for p in path)
    first = min(score.weight, key=score.weight.get)
    changed = [k for k in path[1]["config"] if path[1]["config"][k] != path[0]["config"][k]]
    assert changed == [first]
    assert net.config == net.space.max_config()


def test_far_from_target_takes_several_cuts_per_step(net):
    cost = FlopsCost(net)
    full = cost([net.space.max_config()])[0]
    one = greedy_slim(net, KnownScore(net), cost, 0.5 * full, SearchSettings(fast_factor=100.0), progress=False)
    many = greedy_slim(net, KnownScore(net), cost, 0.5 * full, SearchSettings(cuts_when_far=3), progress=False)
    assert len(many) < len(one)
    assert many[-1]["cost"] <= 0.85 * 0.5 * full


def test_interrupted_search_resumes_to_the_same_path(net, tmp_path):
    cost = FlopsCost(net)
    target = 0.5 * cost([net.space.max_config()])[0]
    ref = greedy_slim(net, KnownScore(net), cost, target, progress=False)
    f = tmp_path / "path.json"
    with pytest.raises(KeyboardInterrupt):
        greedy_slim(net, KnownScore(net, fail_after=60), cost, target, path_file=f, progress=False)
    saved = json.loads(f.read_text())["path"]
    assert 1 < len(saved) < len(ref)
    again = greedy_slim(net, KnownScore(net), cost, target, path_file=f, progress=False)
    assert [p["config"] for p in again] == [p["config"] for p in ref]
    deeper = greedy_slim(net, KnownScore(net), cost, 0.4 * target, path_file=f, progress=False)  # another target
    assert [p["config"] for p in deeper[:len(again)]] == [p["config"] for p in again]  # goes on from the saved path
    assert deeper[-1]["cost"] <= 0.85 * 0.4 * target and len(deeper) > len(again)
    shallower = greedy_slim(net, KnownScore(net), cost, 0.9 * target, path_file=f, progress=False)
    assert shallower[-1]["cost"] <= 0.85 * 0.9 * target < shallower[-2]["cost"]  # cut after the first point below
    with pytest.raises(SearchResumeError, match="Delete it"):
        greedy_slim(net, KnownScore(net), cost, target, SearchSettings(step_ratio=0.2), path_file=f, progress=False)


def test_damage_per_cost_prefers_cuts_that_buy_more_cost(net):
    """Two harmless-looking groups: the per-cost criterion cuts the one whose removal saves the most FLOPs."""
    cost = FlopsCost(net)
    full_cfg = net.space.max_config()
    full = cost([full_cfg])[0]

    class EqualDamage:
        def __call__(self, cfg):  # every cut costs the same loss, whatever it saves
            lost = sum(1.0 for k in cfg if cfg[k] != full_cfg[k])
            return {"top1": 100.0 - lost, "loss": lost}

    s = SearchSettings(criterion="score_per_cost", fast_factor=100.0)
    path = greedy_slim(net, EqualDamage(), cost, 0.9 * full, s, progress=False)
    first = [k for k in path[1]["config"] if path[1]["config"][k] != full_cfg[k]][0]
    cuts = cheapest_useful_cuts(net.space, full_cfg, full, cost, s)
    assert first == min(cuts, key=lambda c: c[2])[0]  # the cut with the lowest resulting cost


def test_a_path_searched_on_other_weights_is_not_resumed(tmp_path):
    """autoslim puts the supernet's weights digest in the path identity: BN recalibration leaves it alone, any
    trained parameter changes it, and a path file written for other weights is a named error, not reused."""
    from compress.subnet.bn import recalibrate_bn
    from compress.io import weights_digest

    torch.manual_seed(0)
    net = SlimmableNetwork(torchvision.models.resnet18(num_classes=10), torch.zeros(1, 3, 32, 32))
    before = weights_digest(net)
    recalibrate_bn(net, [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))])
    assert weights_digest(net) == before
    with torch.no_grad():
        next(net.parameters())[0].add_(1e-3)
    after = weights_digest(net)
    assert after != before
    cost = FlopsCost(net)
    target = 0.6 * cost([net.space.max_config()])[0]
    f = tmp_path / "path.json"
    greedy_slim(net, KnownScore(net), cost, target, path_file=f, identity={"weights": before}, progress=False)
    with pytest.raises(SearchResumeError, match=rf"what differs: the supernet's weights \(digest\): '{before}' in "
                                                rf"the file, '{after}' now\. Delete it"):
        greedy_slim(net, KnownScore(net), cost, target, path_file=f, identity={"weights": after}, progress=False)
