"""Configs: max/min/uniform/random, JSON round trip, and clear errors for bad configs."""

import json

import pytest

import compress


def test_configs_round_trip_through_json(resnet18_net):
    _, _, net = resnet18_net
    space = net.space
    for cfg in (space.max_config(), space.min_config(), space.uniform_config(0.5), space.random_config(7)):
        assert json.loads(json.dumps(cfg)) == cfg
        net.set_config(json.loads(json.dumps(cfg)))
        assert net.config == cfg
    net.set_config(None)


def test_config_generators(resnet18_net):
    _, _, net = resnet18_net
    space = net.space
    assert space.uniform_config(1.0) == space.max_config()
    assert space.random_config(3) == space.random_config(3)
    assert space.random_config(3) != space.random_config(4)
    for g in space.free:
        assert space.min_config()[g.name] == g.divisor
        assert space.uniform_config(0.5)[g.name] == g.width // 2
        assert space.random_config(1, min_ratio=0.5)[g.name] >= g.width // 2


def test_partial_config_keeps_other_groups_full(resnet18_net):
    _, _, net = resnet18_net
    net.set_config({"layer1.0.conv1": 16})
    assert net.config["layer1.0.conv1"] == 16
    assert all(w == net.space.max_config()[n] for n, w in net.config.items() if n != "layer1.0.conv1")
    net.set_config(None)


@pytest.mark.parametrize("cfg, match", [
    ({"layer1.0.conv": 16}, r"does not have: 'layer1.0.conv' \(did you mean 'layer1.0.conv1'\?\)"),
    ({"layer1.0.conv1": 12}, r"Width 12 of group 'layer1.0.conv1' is not allowed: widths are multiples of 8 in \[8, 64\]"),
    ({"layer1.0.conv1": 72}, r"Width 72 .* not allowed"),
    ({"layer1.0.conv1": 0}, r"Width 0 .* not allowed"),
    ({"layer1.0.conv1": 16.0}, r"must be an int. Got 16.0"),
    ([("layer1.0.conv1", 16)], r"must be a dict"),
])
def test_bad_configs_are_named_errors(resnet18_net, cfg, match):
    _, _, net = resnet18_net
    with pytest.raises(compress.InvalidConfigError, match=match):
        net.set_config(cfg)
    with pytest.raises(ValueError):  # named errors refine the built-in ones
        net.set_config(cfg)


def test_space_summary_and_json(resnet18_net):
    _, _, net = resnet18_net
    text = net.space.summary()
    assert "slimmable groups" in text and "frozen" in text
    data = json.loads(net.space.to_json())
    assert {g["name"] for g in data["groups"]} == {g.name for g in net.space.groups}
