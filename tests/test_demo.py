"""`make demo` end to end on the shipped model and data, with a few supernet steps (slow: about a minute)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _demo():
    spec = importlib.util.spec_from_file_location("autoslim_demo", ROOT / "examples" / "autoslim_cifar.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_the_demo_default_is_shipped():
    shipped = sorted((ROOT / "data" / "weights").glob("*.pt"))
    assert _demo().DEFAULT_WEIGHTS in shipped


@pytest.mark.slow
def test_the_demo_runs_from_the_shipped_weights(tmp_path, capsys):
    demo = _demo()
    out = tmp_path / "demo"
    assert demo.main(["--epochs", "0.02", "--search", '{"eval_batches": 1, "calib_batches": 1}',
                      "--finetune-epochs", "0.02", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] == str(demo.DEFAULT_WEIGHTS) and summary["model_kwargs"] == {"width": 1.5}
    assert summary["autoslim"]["measured_ms"] <= summary["budget_ms"] and summary["finetune_epochs"] == 0.02
    assert summary["autoslim"]["seconds"].get("finetune", 0) > 0  # both subnets fine-tuned, AutoSlim's in autoslim
    assert (out / "autoslim.onnx").stat().st_size > 0 and (out / "autoslim_frontier.png").stat().st_size > 0
    text = capsys.readouterr().out
    assert "full model (trained)" in text and "uniform x" in text


def test_the_search_scores_on_every_held_out_image_unless_told():
    demo = _demo()
    assert demo.search_settings("{}", 4).eval_batches == 4  # all 1,000 held-out images (4 batches of 256)
    assert demo.search_settings('{"eval_batches": 1, "calib_batches": 2}', 4).eval_batches == 1
    assert demo.search_settings('{"calib_batches": 2}', 4).calib_batches == 2


def test_the_demo_names_a_bad_weights_file(tmp_path):
    from compress.errors import WeightsFileError
    with pytest.raises(WeightsFileError, match="No trained-weights file"):
        _demo().main(["--weights", str(tmp_path / "nothing.pt"), "--out", str(tmp_path / "o")])
