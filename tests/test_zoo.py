"""The torchvision zoo: every independent check of compress.verify on real models nobody here wrote.

The default run covers one model per family; `make test-slow` runs every model
except the largest (the same list as tools/zoo_coverage.py).
"""

import pytest
import torchvision

from compress.verify import verify_model, zoo_model

FAST = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "densenet121", "googlenet",
        "inception_v3", "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf", "resnext50_32x4d", "convnext_tiny",
        "squeezenet1_1", "mnasnet0_5", "alexnet", "vgg11_bn", "swin_t", "vit_b_32"]
SKIP = {"vit_h_14", "regnet_y_128gf"}  # regnet_y_128gf passes (docs) but takes ~10 min
ALL = [n for n in torchvision.models.list_models(module=torchvision.models) if n not in SKIP]


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
