"""Latency tables and predictors: files, errors, and the predictor against measurements."""

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import compress
import predictors
from predictors import LatencyPredictor, LatencyTable


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    torch.manual_seed(0)
    net = compress.SlimmableNetwork(torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32))
    configs = [net.space.max_config(), net.space.min_config()] + [net.space.random_config(s) for s in range(6)]
    path = tmp_path_factory.mktemp("lut") / "r18.json"
    table = predictors.profile_configs(net, configs, "resnet18", path, min_runs=20)
    return net, table, path


def test_table_round_trip_and_merge(profiled, tmp_path):
    _, table, path = profiled
    assert len(table) == 8 and all(r["meta"]["family"] == "resnet18" for r in table.records)
    # the reference model and the full model (the anchor) were timed in every batch: records carry ratios to both
    refs = [r["reference_ms"] for r in table.records]
    assert all(x > 0 for x in refs) and len(set(refs)) == 1  # 8 configs: one batch
    assert all(r["anchor"] == "resnet18" and r["anchor_ratio"] > 0 for r in table.records)
    full = table.records[0]  # the max config is the anchor itself, timed twice in the same rounds
    # The same network in two slots: 0.98-1.06 over repeated runs here since the round order rotates (an
    # alternating order gave 1.00-1.28 on this 0.3 ms model: the slot at the turn ran twice in a row).
    assert 0.8 < full["anchor_ratio"] < 1.25, full["anchor_ratio"]
    assert table.records[1]["anchor_ratio"] < full["anchor_ratio"]  # the min config is faster
    from predictors.reference import anchor_scales, corrected_ms
    anchors = anchor_scales(table.records)
    assert anchors == {"resnet18": full["anchor_reference_ratio"]}
    R = 0.5
    assert corrected_ms(full, R, anchors) == pytest.approx(full["anchor_ratio"] * anchors["resnet18"] * R)
    assert corrected_ms(full, R) == pytest.approx(full["reference_ratio"] * R)  # no anchor scale known
    legacy = {"median_ms": 3.0, "reference_ms": 2 * R}  # tables written before ratios were recorded
    assert corrected_ms(legacy, R) == 1.5 and corrected_ms({"median_ms": 3.0}, R) == 3.0
    again = LatencyTable.load(path)
    assert again.records == table.records and again.fingerprint == table.fingerprint
    other = LatencyTable(dict(table.fingerprint), [dict(table.records[0], model="extra")])
    assert len(table.merge(other)) == 9


def test_corrupt_and_foreign_tables(profiled, tmp_path):
    _, table, path = profiled
    text = path.read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(predictors.CorruptTableError, match="truncated"):
        LatencyTable.load(tmp_path / "cut.json")
    data = json.loads(text)
    data["schema_version"] = 7
    (tmp_path / "v7.json").write_text(json.dumps(data))
    with pytest.raises(predictors.SchemaVersionError, match="schema version 7"):
        LatencyTable.load(tmp_path / "v7.json")
    (tmp_path / "x.json").write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(predictors.CorruptTableError, match="not a latency table"):
        LatencyTable.load(tmp_path / "x.json")
    board = LatencyTable(dict(table.fingerprint, cpu="Cortex-A72", threads=4), [])
    with pytest.raises(predictors.FingerprintMismatchError, match="cpu: .*Cortex-A72"):
        table.merge(board)
    with pytest.raises(predictors.FingerprintMismatchError):
        board.check_device(table.fingerprint)


def test_json_forest_equals_sklearn():
    from sklearn.ensemble import ExtraTreesRegressor

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 5)), rng.normal(size=300)
    forest = predictors.ForestModel.fit(X, y, n_trees=7, max_depth=6, seed=3)
    ref = ExtraTreesRegressor(n_estimators=7, max_depth=6, random_state=3, n_jobs=1).fit(X, y)
    Xt = rng.normal(size=(50, 5))
    np.testing.assert_allclose(forest.predict(Xt), ref.predict(Xt), rtol=1e-12)
    back = predictors.ForestModel.from_dict(json.loads(json.dumps(forest.to_dict())))
    np.testing.assert_array_equal(back.predict(Xt), forest.predict(Xt))


def test_predictor_fits_saves_and_loads(profiled, tmp_path):
    net, table, _ = profiled
    with pytest.raises(predictors.NotFittedError, match="not fitted yet"):
        LatencyPredictor().predict_ms(net, [net.space.max_config()])
    pred = LatencyPredictor(n_trees=10).fit(table, nets={"resnet18": net})
    assert pred.reference_ms_ == pytest.approx(table.records[0]["reference_ms"])
    train = [r["meta"]["config"] for r in table.records]
    measured = np.array([r["median_ms"] for r in table.records])
    got = pred.predict_ms(net, train, family="resnet18")
    assert np.all(np.isfinite(got)) and np.all(got > 0)
    assert np.median(np.abs(got - measured) / measured) < 0.25  # in-sample sanity, not the accuracy benchmark
    path = tmp_path / "pred.json"
    pred.save(path)
    loaded = LatencyPredictor.load(path, fingerprint=table.fingerprint)
    fresh = [net.space.random_config(100 + s) for s in range(20)]
    np.testing.assert_allclose(loaded.predict_ms(net, fresh, family="resnet18"),
                               pred.predict_ms(net, fresh, family="resnet18"), rtol=1e-9)
    with pytest.raises(predictors.FingerprintMismatchError):
        LatencyPredictor.load(path, fingerprint=dict(table.fingerprint, threads=4))
    path.write_text(path.read_text()[:100])
    with pytest.raises(predictors.CorruptTableError):
        LatencyPredictor.load(path)


def test_fast_batch_queries_agree_with_single_ones(profiled):
    net, table, _ = profiled
    pred = LatencyPredictor(n_trees=10).fit(table, nets={"resnet18": net})
    configs = [net.space.random_config(1000 + s) for s in range(300)]
    batch = pred.predict_ms(net, configs, family="resnet18")
    single = np.array([pred.predict_ms(net, [c], family="resnet18")[0] for c in configs[:10]])
    np.testing.assert_allclose(batch[:10], single, rtol=1e-9)
    # smaller widths are predicted faster on average
    small = pred.predict_ms(net, [net.space.uniform_config(0.25)], family="resnet18")[0]
    full = pred.predict_ms(net, [net.space.max_config()], family="resnet18")[0]
    assert small < full


def test_ops_without_predictor_are_reported(profiled):
    _, table, _ = profiled

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 8, 1)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), 1))

    odd = compress.SlimmableNetwork(Odd(), torch.randn(1, 3, 16, 16))
    pred = LatencyPredictor(n_trees=5).fit(table)
    with pytest.warns(UserWarning, match=r"1 ops have no latency predictor.*cumsum"):
        pred.predict_ms(odd, [odd.space.max_config()])


def test_profiling_again_measures_only_new_configs(profiled, tmp_path):
    net, table, path = profiled
    out = tmp_path / "again.json"
    table.save(out)
    configs = [r["meta"]["config"] for r in table.records] + [net.space.random_config(999)]
    again = predictors.profile_configs(net, configs, "resnet18", out, min_runs=20)
    assert len(again) == 9
    by_name = {r["model"]: r for r in again.records}
    for r in table.records:  # finished measurements are kept, not repeated
        assert by_name[r["model"]]["median_ms"] == r["median_ms"]
    assert by_name["resnet18/0008"]["meta"]["config"] == configs[-1]
    assert not list(tmp_path.glob("*.part"))  # the in-progress file is gone once merged
    assert predictors.profile_configs(net, configs, "resnet18", out).records == again.records  # nothing to do


def test_fused_hardswish_is_annotated_from_the_graph(tmp_path):
    """onnxruntime names a conv with a fused HardSwish like a bare conv; the host reads it off the graph."""
    from torch import nn

    from devices import profile_device
    from predictors.features import raw_from_kernel
    from predictors.profiling import annotate_fused_activations

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Hardswish(), nn.Conv2d(16, 16, 3, padding=1))
    path = tmp_path / "m.onnx"
    compress.export_onnx(model.eval(), torch.randn(1, 3, 16, 16), path)
    kernels = profile_device.profile_kernels(str(path), {"input": [1, 3, 16, 16]})
    convs = [k for k in kernels if k["op"] in ("Conv", "FusedConv", "NchwcConv")]
    assert len(convs) == 2
    records = [{"model": "m", "kernels": kernels}]
    annotate_fused_activations(records, {"m": path})
    assert [k.get("activation") for k in convs] == ["HardSwish", None]
    assert raw_from_kernel(convs[0])[1][-1] == 4 and raw_from_kernel(convs[1])[1][-1] == 0


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_weight_count_equals_the_extracted_subnets_weights(name):
    """The overhead's weight term, computed from channel counts, against the parameters of the extracted subnet
    (conv and linear weights; no padding with block 1)."""
    from predictors.latency import NetKernels, weight_count

    torch.manual_seed(0)
    net = compress.SlimmableNetwork(getattr(torchvision.models, name)(num_classes=10), torch.randn(1, 3, 64, 64))
    configs = [net.space.max_config(), net.space.min_config(), net.space.random_config(3)]
    widths = np.stack([net.space.widths(c) for c in configs])
    raw, _, _ = NetKernels(net).raw(widths, block=1)
    for cfg, counted in zip(configs, weight_count(raw, len(configs))):
        sub = compress.extract_subnet(net, cfg)
        expected = sum(m.weight.numel() for m in sub.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        assert counted == expected


def test_a_cached_predictor_of_an_older_schema_is_refitted_from_its_table(profiled, tmp_path):
    """compress' cached predictor is a derived file: one written by an older version is refitted on the kept
    table (nothing re-measured) instead of stopping a search."""
    import shutil

    from compress.search.objectives import fit_latency_predictor
    from devices import get_device

    net, table, path = profiled
    shutil.copy(path, tmp_path / "resnet18.lut.json")
    from predictors.latency import PREDICTOR_KIND

    (tmp_path / "resnet18.predictor.json").write_text(json.dumps({"schema_version": 2, "kind": PREDICTOR_KIND}))
    pred = fit_latency_predictor(net, get_device("cpu", threads=1), "resnet18", tmp_path, n_configs=4,
                                 progress=False)
    # the first 4 configs were in the table and are not measured again (the one adaptive pick is new)
    before = {r["model"]: r["median_ms"] for r in table.records}
    after = {r["model"]: r["median_ms"] for r in LatencyTable.load(tmp_path / "resnet18.lut.json").records}
    assert all(after[f"resnet18/{i:04d}"] == before[f"resnet18/{i:04d}"] for i in range(4))
    assert json.loads((tmp_path / "resnet18.predictor.json").read_text())["schema_version"] == 3
    assert pred.predict_ms(net, [net.space.max_config()])[0] > 0
