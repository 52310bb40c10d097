"""Catalogue, parameters of the one-call entry points: arguments of the wrong kind are refused at the boundary,
before anything is trained or measured, naming the argument, what it must be and what was received."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compress
from compress.settings import AutoSlimSettings, DMSSettings


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def batches(n: int = 2, size: int = 8, channels: int = 3, classes: int = 4) -> list:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, channels, size, size, generator=g), torch.randint(0, classes, (4,), generator=g))
            for _ in range(n)]


CALLS = {"autoslim": compress.autoslim, "dms": compress.dms}


def call(fn: str, **kw):
    args = {"model": tiny_model(), "flops": 1e12, "train_loader": batches(), "val_loader": batches(),
            "progress": False, "log": lambda line: None, **kw}
    return CALLS[fn](**args)


@pytest.mark.parametrize("fn", CALLS)
@pytest.mark.parametrize("kwargs, match", [
    ({"log": 5}, r"'log' parameter of {fn} must be a callable taking one line of text \(e\.g\. print\)\. Got 5"),
    ({"progress": "yes"}, r"'progress' parameter of {fn} must be a bool \(True or False\)\. Got 'yes'"),
    ({"timer": "full.onnx"}, r"'timer' parameter of {fn} must be None or a compress\.deploy\.timing\.ReferenceTimer\. "
                             r"Got 'full\.onnx'"),
    ({"predictor": "board.predictor.json"}, r"'predictor' parameter of {fn} must be None or a fitted predictors\."
                                            r"LatencyPredictor \(load a saved one with predictors\.LatencyPredictor\."
                                            r"load\(path\)\)\. Got 'board\.predictor\.json'"),
    ({"device": 3}, r"'device' parameter of {fn} must be a device name \(one of board, cpu, .*\) or a device object "
                    r"with fingerprint\(\)"),
    ({"work_dir": 5}, r"'work_dir' parameter of {fn} must be a folder path \(str or Path\) or None\. Got 5"),
    ({"train_loader": None}, r"The train loader must be an iterable of \(inputs, labels\) batches, e\.g\. a torch "
                             r"DataLoader\. Got NoneType"),
    ({"val_loader": torch.randn(4, 3, 8, 8)}, r"The val loader must be an iterable of \(inputs, labels\) batches.*"
                                              r"Got Tensor"),
])
def test_arguments_of_the_wrong_kind(fn, kwargs, match):
    with pytest.raises(compress.InvalidParameterError, match=match.format(fn=fn)):
        call(fn, **kwargs)


@pytest.mark.parametrize("fn, settings, match", [
    ("autoslim", DMSSettings(), r"'settings' parameter of autoslim must be a compress\.AutoSlimSettings or None\. "
                                r"Got DMSSettings\("),
    ("autoslim", {"divisor": 4}, r"'settings' parameter of autoslim must be a compress\.AutoSlimSettings or None\. "
                                 r"Got \{'divisor': 4\}"),
    ("dms", AutoSlimSettings(), r"'settings' parameter of dms must be a compress\.DMSSettings or None"),
])
def test_settings_of_the_other_call(fn, settings, match):
    with pytest.raises(compress.InvalidParameterError, match=match):
        call(fn, settings=settings)


def test_train_flag_must_be_a_bool():
    with pytest.raises(compress.InvalidParameterError, match=r"'train' parameter of autoslim must be a bool .*"
                                                             r"Got 'no'"):
        call("autoslim", train="no")


def test_a_used_up_generator_loader_says_why_it_is_empty():
    gen = (b for b in batches())
    assert len(list(gen)) == 2  # read once already (as a search reads its loaders more than once)
    with pytest.raises(compress.InvalidParameterError, match=r"The val loader yielded no batch; .*a generator is used "
                                                             r"up after one pass: pass a DataLoader or a list"):
        call("autoslim", val_loader=gen)
