"""Check a model end to end against independent references.

For a model and example inputs: the channel space builds; at max, min and random
configs the extracted subnet equals the in-place slimmed network, at max config
it equals the original model, its analytic FLOPs equal fvcore's count of the
extracted subnet, its ONNX export matches onnxruntime, and reordering channels by importance
leaves the full-width output unchanged (outputs of any structure: tuple, list, dict, nested). Used by the zoo test
and ``tools/zoo_coverage.py``; useful to users before they slim a new model.
"""

from __future__ import annotations

import inspect
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import CompressError
from compress.subnet.export import export_onnx
from compress.subnet.extract import extract_subnet
from compress.cost.flops import count_flops
from compress.slim.network import SlimmableNetwork
from compress.slim.reorder import ATOL as REORDER_ATOL, reorder_channels_
from compress.space.trace import as_input_tuple, flatten_tensors

MAX_ABS_DIFF = 1e-5


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_model` (``ok`` False comes with ``error``).

    Attributes:
        ok: every check passed.
        groups: slimmable channel groups of the model's space.
        frozen_groups: channel groups frozen at full width.
        configs_checked: configs whose extracted subnet passed every check (max, min and the random ones).
        max_vs_original: largest |slimmable network at max config - original model| over the outputs (output
            units).
        max_sub_vs_dynamic: largest |extracted subnet - in-place slimmed network| over the configs checked.
        flops_full: analytic FLOPs of the max config (1 fused multiply-add = 1 FLOP, fvcore's convention).
        flops_min: analytic FLOPs of the min config.
        onnx_max_abs_diff: largest |onnxruntime - torch| of the exported subnets (output units).
        reorder_max_diff: largest change of the full-width output from reordering channels (output units).
        seconds: wall-clock seconds the checks took.
        error: "ErrorClass: message" of the first failed check (at most 500 characters), or None.
        unknown_ops: up to 10 ops the channel analysis did not understand (their channels are frozen).
    """

    ok: bool
    groups: int = 0
    frozen_groups: int = 0
    configs_checked: int = 0
    max_vs_original: float = 0.0
    max_sub_vs_dynamic: float = 0.0
    flops_full: int = 0
    flops_min: int = 0
    slimmable_share: float = 0.0  # 1 - FLOPs(smallest config) / FLOPs(full): the part of the cost slimming reaches
    onnx_max_abs_diff: float = 0.0
    reorder_max_diff: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    unknown_ops: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference over every tensor of two outputs of the same structure (any nesting)."""
    ta, tb = flatten_tensors(a), flatten_tensors(b)
    if len(ta) != len(tb):
        raise AssertionError(f"outputs differ in structure: {len(ta)} vs {len(tb)} tensors")
    return max((float((x - y).abs().max()) for x, y in zip(ta, tb) if x.numel()), default=0.0)


def _scale(a: Any) -> float:
    return max((float(t.abs().max()) for t in flatten_tensors(a) if t.numel()), default=0.0)


def verify_model(model: nn.Module, example_inputs: Any, n_random: int = 3, onnx: bool = True,
                 divisor: int = 8, seed: int = 0) -> VerifyReport:
    """Run every independent check on ``model``; see the module docstring.

    Differences are compared relative to the output scale (random-init nets can
    have outputs in the hundreds): ``|a - b| <= 1e-5 * max(1, max|a|)``.

    Args:
        model: the network (put in eval mode).
        example_inputs: a tensor (e.g. 1 x C x H x W) or a tuple of tensors the model accepts.
        n_random: random configs checked besides the max and min configs.
        onnx: also export the min config's and the last random config's subnets to ONNX and compare with
            onnxruntime.
        divisor: channel divisor of the slimmable network built (channels).
        seed: seed of the random configs.

    Returns:
        A :class:`VerifyReport`. A failed check does not raise: a ``CompressError``, ``AssertionError`` or
        ``RuntimeError`` on the way ends the checks with ``ok=False`` and the error in ``report.error``.

    Raises:
        InputShapeError: ``example_inputs`` is not a tensor or a sequence of tensors (checked before the checks
            start). Errors of other classes than the three above (say a ``ValueError`` of the model's own code)
            propagate unchanged.
    """
    start = time.perf_counter()
    inputs = as_input_tuple(example_inputs)
    rep = VerifyReport(ok=False)
    try:
        model = model.eval()
        net = SlimmableNetwork(model, inputs, divisor=divisor)
        space = net.space
        rep.groups, rep.frozen_groups = len(space.free), len(space.frozen)
        rep.unknown_ops = sorted(set(net.coupling.unknown_ops.values()))[:10]
        with torch.no_grad():
            ref = model(*inputs)
            tol = MAX_ABS_DIFF * max(1.0, _scale(ref))
            net.set_config(space.max_config())
            rep.max_vs_original = _max_diff(net(*inputs), ref)
            if rep.max_vs_original > tol:
                raise AssertionError(f"max config differs from the original by {rep.max_vs_original:.3g}")
            configs = [space.max_config(), space.min_config()] + [space.random_config(seed + i)
                                                                 for i in range(n_random)]
            flops = net.flops_model().flops_batch(configs)
            rep.flops_full, rep.flops_min = int(flops[0]), int(flops[1])
            rep.slimmable_share = round(1.0 - rep.flops_min / rep.flops_full, 4) if rep.flops_full else 0.0
            for i, cfg in enumerate(configs):
                net.set_config(cfg)
                dyn = net(*inputs)
                sub = extract_subnet(net, cfg)
                out = sub(*inputs)
                d = _max_diff(out, dyn)
                rep.max_sub_vs_dynamic = max(rep.max_sub_vs_dynamic, d)
                if d > MAX_ABS_DIFF * max(1.0, _scale(dyn)):
                    raise AssertionError(f"extracted subnet differs from the dynamic one by {d:.3g} at config {i}")
                counted = count_flops(sub, inputs).total
                if counted != int(flops[i]):
                    raise AssertionError(f"analytic FLOPs {int(flops[i])} != fvcore {counted} at config {i}")
                if onnx and i in (1, len(configs) - 1):
                    with tempfile.TemporaryDirectory() as tmp:
                        r = export_onnx(sub, inputs, Path(tmp) / "sub.onnx")
                    rep.onnx_max_abs_diff = max(rep.onnx_max_abs_diff, r.max_abs_diff)
                rep.configs_checked += 1
            net.set_config(None)
            before = net(*inputs)
            reorder_channels_(net, "l1")  # raises ReorderError itself if the function changes; checked again here
            rep.reorder_max_diff = _max_diff(net(*inputs), before)
            # a permutation changes the order of every channel sum, so float32 rounding differs: the tolerance is
            # reorder's own (1e-4 of the output scale; efficientnetv2_rw_t: 8.7e-4 on outputs of 88 in float32,
            # 1.9e-12 in float64), not the 1e-5 of computations done in the same order
            if rep.reorder_max_diff > REORDER_ATOL * max(1.0, _scale(before)):
                raise AssertionError(f"reordering channels changed the full-width output by {rep.reorder_max_diff:.3g}")
        rep.ok = True
    except (CompressError, AssertionError, RuntimeError) as exc:
        rep.error = f"{type(exc).__name__}: {exc}"[:500]
    rep.seconds = round(time.perf_counter() - start, 2)
    return rep


# Input resolution per torchvision model for zoo checks: small where the model allows it.
ZOO_INPUTS: dict[str, dict[str, Any]] = {
    "inception_v3": {"resolution": 96},
    "maxvit_t": {"resolution": 224},
    **{f"vit_{v}": {"resolution": 64, "kwargs": {"image_size": 64}} for v in ("b_16", "b_32", "l_16", "l_32")},
    "vit_h_14": {"resolution": 56, "kwargs": {"image_size": 56}},
    "ssd300_vgg16": {"resolution": 300},  # its extra layers end in 3x3 convs without padding on 3x3 maps
}
DEFAULT_ZOO_RESOLUTION = 64


# Input resolution per timm model for zoo checks (64 where the model runs at 64x64).
TIMM_ZOO_INPUTS: dict[str, int] = {"inception_v3": 96, "inception_v4": 96, "inception_resnet_v2": 96}


def _takes_img_size(timm: Any, name: str) -> bool:
    """Whether the model's class is built for an input size (``img_size``: position tables, attention over a
    fixed feature size); built on the meta device, so nothing is allocated or initialised."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=10)
    except Exception:  # noqa: BLE001 - a model that cannot be built on the meta device is built as it is
        return False
    return "img_size" in inspect.signature(type(model).__init__).parameters


def timm_zoo_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A randomly initialised timm model (10 classes) and a small example input for it.

    Args:
        name: a name from ``timm.list_models()``.

    Returns:
        The model in eval mode and a 1 x 3 x H x W input (H = W = 64 unless ``TIMM_ZOO_INPUTS`` says otherwise);
        a model whose class takes ``img_size`` is built for that size.

    Raises:
        RuntimeError: timm knows no model of that name.
    """
    import timm

    res = TIMM_ZOO_INPUTS.get(name, DEFAULT_ZOO_RESOLUTION)
    kwargs = {"img_size": res} if _takes_img_size(timm, name) else {}
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    return model, torch.randn(1, 3, res, res)


def zoo_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A randomly initialised torchvision model and a small example input for it.

    A detection model gives its backbone and neck (``model.backbone``: the feature extractor and, for most, the FPN;
    it returns the feature maps as an OrderedDict): the full detector is refused by ``SlimmableNetwork`` with
    ``UnsupportedModelError`` (its box post-processing cannot be traced), and the backbone is what one slims.

    Args:
        name: a name from ``torchvision.models.list_models()`` (classification, segmentation and detection modules).

    Returns:
        The model (for detection: ``model.backbone``) in eval mode and a 1 x 3 x H x W input (H = W = 64 unless
        ``ZOO_INPUTS`` says otherwise).

    Raises:
        ValueError: torchvision knows no model of that name.
    """
    import torchvision

    spec = ZOO_INPUTS.get(name, {})
    kwargs = dict(spec.get("kwargs", {}))
    detection = name in torchvision.models.list_models(module=torchvision.models.detection)
    if detection or name in torchvision.models.list_models(module=torchvision.models.segmentation):
        kwargs.setdefault("weights_backbone", None)  # random init: nothing is downloaded
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    res = spec.get("resolution", DEFAULT_ZOO_RESOLUTION)
    return (model.backbone if detection else model), torch.randn(1, 3, res, res)
