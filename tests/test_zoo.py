"""The torchvision zoo: every independent check of compress.verify on real models nobody here wrote.

The default run covers one model per family; `make test-slow` runs every model
except the largest (the same list as tools/zoo_coverage.py).
"""

import pytest
import torch
import torchvision

from compress.slim.network import SlimmableNetwork
from compress.subnet.extract import extract_subnet

from compress.verify import verify_model, zoo_model

FAST = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "densenet121", "googlenet",
        "inception_v3", "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf", "resnext50_32x4d", "convnext_tiny",
        "squeezenet1_1", "mnasnet0_5", "alexnet", "vgg11_bn", "swin_t", "vit_b_32", "lraspp_mobilenet_v3_large"]
SKIP = {"vit_h_14", "regnet_y_128gf"}  # regnet_y_128gf passes (docs) but takes ~10 min
ALL = [n for n in torchvision.models.list_models(module=torchvision.models)
       + torchvision.models.list_models(module=torchvision.models.segmentation) if n not in SKIP]


def _check(name: str) -> None:
    model, x = zoo_model(name)
    rep = verify_model(model, x, n_random=3)
    assert rep.ok, rep.error
    assert rep.configs_checked == 5
    assert rep.groups > 0, f"{name}: nothing slimmable"
    assert rep.flops_min < rep.flops_full


@pytest.mark.parametrize("name", FAST)
def test_zoo_family(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in FAST])
def test_zoo_full(name):
    _check(name)


# ---- timm: one model per CNN family (tools/zoo_coverage.py --zoo timm, docs/zoo_coverage_timm.md) ----------
def _timm_families() -> dict[str, str]:
    import runpy
    from pathlib import Path

    return runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "zoo_coverage.py"))["TIMM_FAMILIES"]


# a spread of cheap families whose norm layers, layer scales, channel slices and partial residuals used to freeze
FAST_TIMM = ["mobilenetv3_small_050", "lcnet_035", "tinynet_e", "mobilenetv2_050", "mnasnet_small", "regnetx_002",
             "regnety_002", "ghostnet_050", "rexnet_100", "dpn48b", "convnext_atto", "ese_vovnet19b_dw",
             "efficientnet_b0", "resnet18d", "repghostnet_050"]


def _check_timm(name: str, n_random: int) -> None:
    from compress.verify import timm_zoo_model

    model, x = timm_zoo_model(name)
    rep = verify_model(model, x, n_random=n_random)
    assert rep.ok, rep.error
    assert rep.slimmable_share >= 0.7, (rep.slimmable_share, rep.unknown_ops)


def _quick_timm(name: str) -> None:
    """The default run's cheap check: the space builds, slims >= 0.7 of the FLOPs, and at the smallest config
    the extracted subnet equals the in-place network (building the FLOPs model compares the analytic count
    with fvcore's at that config; the full verify with ONNX runs in the slow list and the coverage tool)."""
    from compress.verify import timm_zoo_model

    model, x = timm_zoo_model(name)
    net = SlimmableNetwork(model, x)
    assert net.slimmable_share() >= 0.7, net.summary()
    cfg = net.space.min_config()
    with torch.no_grad():
        net.set_config(cfg)
        dyn = net(x)
        out = extract_subnet(net, cfg)(x)
    assert float((out - dyn).abs().max()) <= 1e-5 * max(1.0, float(dyn.abs().max()))


@pytest.mark.parametrize("name", FAST_TIMM)
def test_timm_family(name):
    pytest.importorskip("timm")
    _quick_timm(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(_timm_families().values()) - set(FAST_TIMM)))
def test_timm_family_full(name):
    pytest.importorskip("timm")
    _check_timm(name, n_random=3)
