"""The parametric kernel model recovers known per-class costs and extrapolates with work and traffic."""

import numpy as np
import pytest

import predictors
from predictors.features import CONV_RAW
from predictors.roofline import RooflineModel, conv_terms


def _convs(rng, n, groups_of):
    rows = []
    for _ in range(n):
        cin = int(rng.choice([16, 32, 64, 128]))
        cout = cin if groups_of == "depthwise" else int(rng.choice([16, 32, 64, 128]))
        k = 1 if groups_of == "pointwise" else 3
        hw = int(rng.choice([7, 14, 28]))
        groups = cin if groups_of == "depthwise" else 1
        rows.append([cin, cout, hw, hw, hw, hw, k, k, groups, 0, 1])
    return np.array(rows, dtype=np.float64)


def test_recovers_class_costs_and_extrapolates():
    rng = np.random.default_rng(0)
    truth = {0: (5.0, 20.0, 1.0), 1: (3.0, 30.0, 2.0), 2: (2.0, 50.0, 6.0)}  # us, us per MMAC, us per MB
    raw = np.concatenate([_convs(rng, 30, "dense"), _convs(rng, 30, "pointwise"), _convs(rng, 30, "depthwise")])
    assert raw.shape[1] == len(CONV_RAW)

    def cost(r):
        cls, A = conv_terms(r)
        return np.array([A[i] @ truth[c] for i, c in enumerate(cls)])

    model = RooflineModel.fit({"conv": raw}, {"conv": cost(raw)})
    np.testing.assert_allclose(model.predict("conv", raw), cost(raw), rtol=1e-6)
    big = np.array([[512, 512, 56, 56, 56, 56, 3, 3, 1, 0, 1], [1024, 1024, 56, 56, 56, 56, 3, 3, 1024, 0, 2]], float)
    np.testing.assert_allclose(model.predict("conv", big), cost(big), rtol=1e-6)  # far outside the fitted shapes
    again = RooflineModel.from_dict(model.to_dict())
    np.testing.assert_allclose(again.predict("conv", raw), model.predict("conv", raw))


def test_tables_with_different_references_are_refused():
    fp = {"cpu": "x"}
    rec = {"model": "a", "median_ms": 1.0, "kernels": [], "reference_ms": 0.3}
    tables = [predictors.LatencyTable(fp, [dict(rec, reference="small")]),
              predictors.LatencyTable(fp, [dict(rec, model="b", reference="resnet18-112")])]
    with pytest.raises(predictors.ReferenceMismatchError, match="different reference models"):
        predictors.LatencyPredictor().fit(tables)


def test_fused_activation_is_read_from_kernels_and_from_the_model():
    import torch
    import torchvision

    import compress
    from predictors.features import fused_activation

    assert fused_activation("/features/features.1/conv/conv.0/conv.0.2/Clip_output_0_nchwc") == 2
    assert fused_activation("/layer1/layer1.0/relu/Relu_output_0_nchwc") == 1
    assert fused_activation("/conv2/Conv_output_0_nchwc") == 0
    assert fused_activation("output_nchwc", default="Relu") == 1  # a single-layer model: its meta says
    # the same codes from the traced model: mobilenet_v2 fuses ReLU6 (Clip), its projections nothing,
    # mobilenet_v3's squeeze-excitation Hardsigmoid and its Hardswish, resnet18's first convs ReLU and its
    # residual convs nothing
    codes = {}
    for name in ("mobilenet_v2", "mobilenet_v3_small", "resnet18"):
        net = compress.SlimmableNetwork(torchvision.models.get_model(name).eval(), torch.randn(1, 3, 64, 64))
        codes[name] = {c["act"] for c in predictors.LatencyPredictor().kernels_of(net).convs}
    assert codes["mobilenet_v2"] == {0, 2} and codes["mobilenet_v3_small"] >= {0, 1, 3, 4} and codes["resnet18"] == {0, 1}
