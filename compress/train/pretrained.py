"""Trained weights of a built-in model: a state_dict (``<name>.pt``, read with ``weights_only=True``) and, beside
it, the JSON record ``benchmarks/pretrain_cifar.py`` writes (``<name>.json``: the built-in model and its keyword
arguments, the training recipe, the test top-1). The record says which network the weights belong to, so a caller
names one file, not the file and a matching architecture."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from compress.errors import CompressError, WeightsFileError
from compress.train.models import MODELS, build_model


def read_weights_record(weights: str | os.PathLike) -> dict:
    """The JSON record beside ``weights`` (``x.pt`` -> ``x.json``), checked: ``model`` names a built-in model and
    ``model_kwargs`` is a dict.

    Raises:
        WeightsFileError: the weights file or its record is missing, the record is not JSON, or its fields are
            not what ``benchmarks/pretrain_cifar.py`` writes (the message names the file and the field).
    """
    path = Path(weights)
    record_path = path.with_suffix(".json")
    if not path.is_file():
        raise WeightsFileError(f"No trained-weights file at {str(path)!r}. Train it with `make pretrain` "
                               "(benchmarks/pretrain_cifar.py) or pass the path of an existing one.")
    if not record_path.is_file():
        raise WeightsFileError(f"The weights {str(path)!r} have no record beside them ({record_path.name}: the "
                               "built-in model and its arguments, written by benchmarks/pretrain_cifar.py).")
    try:
        record = json.loads(record_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsFileError(f"The weights record {str(record_path)!r} is not readable JSON ({e}).") from e
    if not isinstance(record, dict) or record.get("model") not in MODELS:
        got = record.get("model") if isinstance(record, dict) else type(record).__name__
        raise WeightsFileError(f"The weights record {str(record_path)!r} must name a built-in model in 'model' "
                               f"({sorted(MODELS)}). Got {got!r}.")
    record.setdefault("model_kwargs", {})
    if not isinstance(record["model_kwargs"], dict):
        raise WeightsFileError(f"'model_kwargs' in {str(record_path)!r} must be a dict of the model's keyword "
                               f"arguments. Got {record['model_kwargs']!r}.")
    return record


def load_pretrained(weights: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The built-in model the record beside ``weights`` names, with those weights loaded.

    Args:
        weights: path of a state_dict ``.pt`` with its ``.json`` record beside it.

    Returns:
        (model in eval mode, the record: ``model``, ``model_kwargs``, the recipe, ``test_top1`` in %).

    Raises:
        WeightsFileError: a file is missing or corrupt, or the state_dict does not fit the recorded model
            (missing / unexpected / differently shaped tensors, the first few named).
    """
    record = read_weights_record(weights)
    try:
        model = build_model(record["model"], **record["model_kwargs"])
    except (CompressError, TypeError) as e:
        raise WeightsFileError(f"The record beside {str(weights)!r} does not build {record['model']!r}: {e}") from e
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise WeightsFileError(f"{str(weights)!r} is not a readable state_dict ({type(e).__name__}: {e}).") from e
    if not isinstance(state, dict):
        raise WeightsFileError(f"{str(weights)!r} holds a {type(state).__name__}, not a state_dict.")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and getattr(state[k], "shape", None) != own[k].shape]
    if missing or extra or shapes:
        parts = [f"{what}: {names[:3]}" for what, names in
                 (("missing", missing), ("unexpected", extra), ("other shapes", shapes)) if names]
        raise WeightsFileError(f"{str(weights)!r} does not fit {record['model']}({record['model_kwargs']}) "
                               f"named by its record ({'; '.join(parts)}).")
    model.load_state_dict(state)
    return model.eval(), record
