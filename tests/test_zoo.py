"""The torchvision zoo: every independent check of compress.verify on real models nobody here wrote.

The default run covers one model per family; `make test-slow` runs every model
except the largest (the same list as tools/zoo_coverage.py). Detection models: their backbone + neck
(``zoo_model`` gives ``model.backbone``); the full detector is refused by name.
"""

import pytest
import torch
import torchvision

import compress
from compress.slim.network import SlimmableNetwork
from compress.subnet.extract import extract_subnet

from compress.verify import verify_model, zoo_model

FAST = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "densenet121", "googlenet",
        "inception_v3", "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf", "resnext50_32x4d", "convnext_tiny",
        "squeezenet1_1", "mnasnet0_5", "alexnet", "vgg11_bn", "swin_t", "vit_b_32", "lraspp_mobilenet_v3_large"]
SKIP = {"vit_h_14", "regnet_y_128gf"}  # regnet_y_128gf passes (docs) but takes ~10 min
DETECTION = torchvision.models.list_models(module=torchvision.models.detection)
ALL = [n for n in torchvision.models.list_models(module=torchvision.models)
       + torchvision.models.list_models(module=torchvision.models.segmentation) + DETECTION if n not in SKIP]


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


@pytest.mark.parametrize("name, cls", [("fasterrcnn_mobilenet_v3_large_320_fpn", "FasterRCNN"),
                                       ("ssdlite320_mobilenet_v3_large", "SSD")])
def test_detection_model_is_refused_by_name(name, cls):
    torch.manual_seed(0)
    detector = torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()
    with pytest.raises(compress.UnsupportedModelError) as info:
        SlimmableNetwork(detector, torch.randn(1, 3, 64, 64))
    message = str(info.value)
    assert message.startswith(f"{cls} cannot be traced as a whole: it is a torchvision detection model"), message
    assert "NMS" in message and "compress.SlimmableNetwork(model.backbone, torch.randn(1, 3, H, W))" in message
    assert isinstance(info.value, compress.TraceError)


def test_detection_backbone_and_neck_slim():
    backbone, x = zoo_model("fasterrcnn_mobilenet_v3_large_320_fpn")  # the coverage table's row
    assert type(backbone).__name__ == "BackboneWithFPN"
    net = SlimmableNetwork(backbone, x)
    assert net.slimmable_share() >= 0.7, net.summary()
    cfg = net.space.min_config()
    with torch.no_grad():
        ref = backbone(x)
        net.set_config(cfg)
        dyn = net(x)
        out = extract_subnet(net, cfg)(x)
    assert list(out) == list(ref) == ["0", "1", "pool"]  # the FPN's feature maps, at full width for the heads
    for key in ref:
        assert out[key].shape == ref[key].shape
        assert float((out[key] - dyn[key]).abs().max()) <= 1e-5 * max(1.0, float(dyn[key].abs().max()))


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
