"""The peer benchmark (benchmarks/bench_peers_cifar.py, peers_tp.py, peers_report.py): precondition, margins, budget
check, the Torch-Pruning latency bisection."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
peers = pytest.importorskip("bench_peers_cifar")  # needs torch_pruning, as its two modules do
report = pytest.importorskip("peers_report")
peers_tp = pytest.importorskip("peers_tp")
recipe = pytest.importorskip("peers_recipe")


def row(method, frac, seeds, ratio=None, width=None):
    r = {"method": method, "budget_fraction": frac, "seeds": {str(i): v for i, v in enumerate(seeds)}}
    if ratio is not None:
        r["ratio"] = ratio
    if width is not None:
        r["width"] = width
    return r


ROWS = {"b50_uniform": row("uniform", 0.5, [80.0, 80.4], 0.49, width=0.7),
        "b35_uniform": row("uniform", 0.35, [75.0, 75.2], 0.34, width=0.55),
        "b50_dms": row("dms", 0.5, [82.0, 82.2], 0.48), "b35_dms": row("dms", 0.35, [77.0, 77.4], 0.345),
        "b50_autoslim": row("autoslim", 0.5, [81.0, 81.0], 0.47),
        "b50_tp-l1-global": row("tp", 0.5, [81.5, 81.3], 0.49), "b35_tp-l1-global": row("tp", 0.35, [76.5, 76.7], 0.36)}


def test_precondition_holds_only_with_the_full_model_on_top_and_uniform_falling():
    ok, lines = report.precondition(ROWS, 90.0)
    assert ok and "above" in lines[0] and "falls monotonically" in lines[1]
    assert not report.precondition(ROWS, 81.0)[0]  # a subnet (DMS 82.1) above the full model: not capacity-bound
    rising = dict(ROWS, b35_uniform=row("uniform", 0.35, [81.0, 81.0], 0.34, width=0.55))
    assert not report.precondition(rising, 90.0)[0]
    assert not report.precondition({k: v for k, v in ROWS.items() if k != "b35_uniform"}, 90.0)[0]
    only35 = {k: v for k, v in ROWS.items() if k.startswith("b35")}  # a run of one budget needs its own row only
    assert report.precondition(only35, 90.0, [0.35])[0] and not report.precondition(only35, 90.0)[0]


def test_verdict_is_the_better_of_ours_minus_the_best_peer_with_per_seed_values():
    lines = report.verdicts(ROWS, [0.5, 0.35])
    assert "dms, 82.10%" in lines[0] and "tp-l1-global, 81.40%" in lines[0] and "+0.70 points" in lines[0]
    assert "target >= +0.5: met" in lines[0] and "seed 0: +0.50, seed 1: +0.90" in lines[0]
    assert "+0.60 points" in lines[1] and "target >= +1.0: NOT met" in lines[1]


def test_report_names_every_file_over_its_budget(tmp_path):
    full = {"full_top1": 90.0}
    args = SimpleNamespace(model="m", train_per_class=1, held_per_class=1, test_per_class=1, epochs=3.0,
                           supernet_epochs=0.5, dms_search=0.5, tp_steps=5, divisor=8, lr=0.01, budgets=[0.5, 0.35], headroom=0.02,
                           tp_criteria=["l1"], seeds=[0, 1])
    rows = {k: dict(v, flops=1e6, params=1e3, pre_ft_top1=10.0, search_s=1.0, search_epochs=0.0, ft_epochs=3.0)
            for k, v in ROWS.items()}
    assert report.rows_over_budget(rows) == ["b35_tp-l1-global"]
    rows["b50_autoslim"]["earlier_ratios"] = [0.49, 0.507]  # over in an earlier check, under now (0.47)
    assert report.over_budget_earlier(rows) == ["b50_autoslim (0.507)"]
    assert report.rows_over_budget(rows) == ["b35_tp-l1-global"]  # the last check decides
    full["replaced"] = {"b50_dms": [dict(rows["b50_dms"], ratio=0.503, earlier_ratios=[0.499])]}
    lines = report.write_report(rows, full, 1.0, 10**6, 10**4, {"weights": "w.pt", "pretrain_top1": 90.0,
                                                               "pretrain_epochs": 30}, "cmd", tmp_path / "r", args)
    latency = next(x for x in lines if x.startswith("- latency"))
    assert "6 of 7" in latency and "b35_tp-l1-global (0.360)" in latency
    assert any(x.startswith("- earlier final checks") and "b50_autoslim (0.507)" in x for x in lines)
    again = next(x for x in lines if x.startswith("- b50_dms was chosen again"))
    assert "measured 0.499, 0.503 in the final checks, top-1 82.00 / 82.20" in again
    by_hand = {k: v for k, v in rows["b50_dms"].items() if k not in ("ratio", "seeds")}  # before any check
    full["replaced"] = {"b50_dms": [dict(by_hand, closed_loop_ratio=0.428, reason="a closed-loop fix")]}
    lines = report.write_report(rows, full, 1.0, 10**6, 10**4, {"weights": "w.pt", "pretrain_top1": 90.0,
                                                               "pretrain_epochs": 30}, "cmd", tmp_path / "r", args)
    again = next(x for x in lines if x.startswith("- b50_dms was chosen again"))
    assert "an earlier choice at 0.428 of the full model (a closed-loop fix), top-1 not fine-tuned" in again
    # a uniform row has no closed-loop ratio, a failed row no ratio at all: both can be chosen again by hand
    assert report.replaced_text({"closed_loop_ratio": None, "reason": "x", "seeds": {}}) == \
        "an earlier choice (x), top-1 not fine-tuned"
    assert report.replaced_text({"failed": "BudgetNotMetError", "reason": "y"}) == "an earlier choice (y), top-1 not fine-tuned"
    assert (tmp_path / "r.md").exists() and (tmp_path / "r.png").exists()


def test_report_says_where_rows_were_chosen_and_timed_and_warns_when_the_cpus_differ():
    same = {"a": {"chosen_on": "X", "ratio_cpu": "X", "budget_fraction": 0.5},
            "b": {"chosen_on": "X", "ratio_cpu": "X", "budget_fraction": 0.35},
            "w75_uniform": {"chosen_on": "Z", "ratio_cpu": "Z", "budget_fraction": None}}  # not a budget row
    assert report.devices_text(same) == " (rows chosen: 2 on X; final check: 2 on X)"
    mixed = {"a": {"chosen_on": "X", "ratio_cpu": "Y", "budget_fraction": 0.5},
             "b": {"chosen_on": "X", "budget_fraction": 0.5}}
    text = report.devices_text(mixed)
    assert "rows chosen: 2 on X; final check: 1 on Y" in text and "latency ratios differ between CPUs" in text
    assert report.devices_text({"a": {}}) == ""


def test_rows_under_use_and_a_rechoice_that_lands_where_the_old_one_started():
    rows = {"b50_a": row("tp", 0.5, [80.0], ratio=0.41), "b50_b": row("tp", 0.5, [80.0], ratio=0.46),
            "b35_c": row("dms", 0.35, [80.0], ratio=0.36), "w75_uniform": row("uniform", None, [85.0])}
    assert report.rows_under_use(rows, 0.85) == ["b50_a"]  # 82% of 0.5; 92% and an over-budget row are not
    old = {"arch": {"kind": "slim", "config": {"a": 8}}, "pre_ft_top1": 71.2, "seeds": {"0": 80.0},
           "ft_s": {"0": 300.0}}
    assert peers.same_start({"arch": {"kind": "slim", "config": {"a": 8}}, "pre_ft_top1": 71.2}, old) is old
    assert peers.same_start({"arch": {"kind": "slim", "config": {"a": 16}}, "pre_ft_top1": 71.2}, old) is None
    assert peers.same_start({"arch": old["arch"], "pre_ft_top1": 70.0}, old) is None  # other pruned weights
    assert peers.same_start({"arch": old["arch"], "pre_ft_top1": 71.2}, dict(old, seeds={})) is None


def test_summary_has_one_line_per_model_and_budget_with_the_margin(tmp_path):
    summary = pytest.importorskip("peers_summary")
    state = {"full_top1": 90.0, "full_ms": 1.0, "rows": ROWS}
    lines = summary.summary_lines({"m1": state, "m2": dict(state, full_top1=81.0)})
    table = [x for x in lines if x.startswith(("| m1", "| m2"))]
    assert len(table) == 4
    m1_50 = next(x for x in table if x.startswith("| m1 | 50%"))
    assert "82.10 (82.00 / 82.20) @0.480" in m1_50 and "l1-global: 81.40" in m1_50 and "+0.70 (+0.5: met)" in m1_50
    m1_35 = next(x for x in table if x.startswith("| m1 | 35%"))
    assert "| - |" in m1_35 and "+0.60 (+1.0: NOT met)" in m1_35  # no AutoSlim row at 35%: "-"
    assert all(x.endswith("| - |") for x in table if x.startswith("| m2"))  # not capacity-bound: no margins
    assert any("m2" in x and "NOT capacity-bound" in x for x in lines)
    assert any("6 of 7 exported files" in x and "b35_tp-l1-global (0.360)" in x for x in lines)
    again = summary.summary_lines({"m1": dict(state, replaced={"b50_dms": [dict(ROWS["b50_dms"], ratio=0.503)]})})
    assert any("chosen again: b50_dms (an earlier choice" in x and "measured 0.503 in the final checks" in x
               for x in again)
    path = tmp_path / "s.json"
    path.write_text(__import__("json").dumps(dict(state, identity={"model": "m1"})))
    assert summary.main([str(path), "--out", str(tmp_path / "s.md")]) == 0
    assert "| m1 | 50%" in (tmp_path / "s.md").read_text()
    with pytest.raises(SystemExit, match="not a peer benchmark result"):
        summary.main([str(tmp_path / "s.md"), "--out", str(tmp_path / "t.md")])


def test_recipe_comparison_refuses_runs_and_rows_it_cannot_fine_tune(tmp_path):
    import json

    with pytest.raises(peers_tp.PeerBenchmarkError, match="no peer-benchmark result at"):
        recipe.load_run(str(tmp_path / "nothing"), ["b35_dms"])
    (tmp_path / "other.json").write_text(json.dumps({"rows": {}}))
    with pytest.raises(peers_tp.PeerBenchmarkError, match="not a peer-benchmark result"):
        recipe.load_run(str(tmp_path / "other"), ["b35_dms"])
    run = {"args": {}, "rows": {"b35_dms": {"weights": str(tmp_path / "gone.pt")}, "b35_uniform": {"failed": "x"}}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    with pytest.raises(peers_tp.PeerBenchmarkError, match=r"no chosen row 'b35_uniform'; chosen rows: \['b35_dms'\]"):
        recipe.load_run(str(tmp_path / "run"), ["b35_uniform"])
    with pytest.raises(peers_tp.PeerBenchmarkError, match="pruned weights .*gone.pt are missing"):
        recipe.load_run(str(tmp_path / "run"), ["b35_dms"])


def test_recipe_page_gives_each_recipes_margin_and_checks_the_runs_own_top1():
    state = {"args": {"model": "m", "lr": 0.01}, "full_top1": 88.0,
             "rows": {"a": {"ft_epochs": 2.5, "seeds": {"0": 84.0}}, "b": {"ft_epochs": 3.0, "seeds": {"0": 83.0}},
                      "c": {"ft_epochs": 3.0, "seeds": {}}}}
    results = {"a": {"labels": {"0": 84.0, "1": 84.4}, "kd": {"0": 85.0}},
               "b": {"labels": {"0": 83.5}, "kd": {"0": 84.1}}, "c": {"labels": {"0": 83.9}}}
    args = SimpleNamespace(run="r", keys=["a", "b", "c"], recipes=["labels", "kd"])
    text = "\n".join(recipe.page(results, state, args, "cmd"))
    assert "| a | 2.50 | 84.20 (84.00 / 84.40) | 85.00 (85.00) | 84.00 |" in text
    assert "| c | 3.00 | 83.90 (83.90) | - | - |" in text
    assert "- labels: a minus the best other row (c) = +0.30 points" in text
    assert "- kd: a minus the best other row (b) = +0.90 points" in text
    assert "- a, labels: equals the run's own top-1 for seeds ['0']" in text
    assert "- b, labels: DIFFERS from the run's own top-1 for seeds ['0']" in text


@pytest.mark.slow
def test_smoke_run_end_to_end_then_a_fresh_clone_without_work_files_and_rows_chosen_again(tmp_path):
    """The whole script on the shipped subset (about 4 min); then, as in a fresh clone holding the committed JSON
    but not out/: a uniform row with a seed left gets its pruned weights made again from the pretrained model and
    its fine-tune gives the recorded top-1 again (deterministic); a DMS row with a seed left (its weights come from a
    search) is chosen again; a finished row's ONNX file is rebuilt from its architecture for the latency check. And
    with --rechoose-over-budget / --rechoose-under-use the rows outside the band are chosen again, the old ones kept."""
    import json
    import subprocess

    script = Path(peers.__file__)
    cmd = [sys.executable, str(script), "--smoke", "--threads", "1", "--work", str(tmp_path / "w")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "w" / "peers_cifar_cifar_resnet20.json"
    state = json.loads(out.read_text())
    assert (tmp_path / "w" / "peers_cifar_cifar_resnet20.md").exists()

    def first(methods):  # a row of these methods that was chosen (a smoke row can fail on a loaded machine)
        return next(k for k, r in state["rows"].items() if r["method"] in methods and "weights" in r
                    and r["budget_fraction"])

    uni, searched, done_tp = first(["uniform"]), first(["dms", "autoslim"]), first(["tp"])
    uniform_top1 = state["rows"][uni]["seeds"]["0"]
    # the recipe comparison fine-tunes rows again: its labels-only recipe must give the run's own top-1 back
    again = subprocess.run([sys.executable, str(Path(recipe.__file__)), "--run", str(out)[:-len(".json")],
                            "--keys", uni, done_tp, "--recipes", "labels", "kd", "--out", str(tmp_path / "recipe")],
                           capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"- {uni}, labels: equals the run's own top-1 for seeds ['0']" in again.stdout
    assert f"- kd: {uni} minus the best other row ({done_tp})" in again.stdout
    for key, keep_seeds in ((uni, False), (searched, False), (done_tp, True)):
        Path(state["rows"][key]["weights"]).unlink()
        Path(state["rows"][key]["onnx"]).unlink()
        if not keep_seeds:
            state["rows"][key]["seeds"] = {}
    Path(state["rows"]["w75_uniform"]["onnx"]).unlink()  # its weights are still there: exported from them
    special = (uni, searched, done_tp)
    over = next(k for k, r in state["rows"].items() if "onnx" in r and r.get("budget_fraction") and k not in special)
    under = next(k for k, r in state["rows"].items()
                 if "onnx" in r and r.get("budget_fraction") and k not in (*special, over))
    for k, r in state["rows"].items():  # a loaded machine can read a smoke row over: only `over` is, here
        if "ratio" in r and r.get("budget_fraction"):
            r["ratio"] = {over: 0.99, under: 0.3 * r["budget_fraction"]}.get(k, min(r["ratio"],
                                                                                   0.9 * r["budget_fraction"]))
    out.write_text(json.dumps(state))
    second = subprocess.run(cmd + ["--rechoose-over-budget", "--rechoose-under-use", "0.5", "--choose-only"],
                            capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{uni}: pruned weights made again from the pretrained model" in second.stdout
    assert f"{searched}: its pruned weights" in second.stdout and "choosing it again" in second.stdout
    assert f"{done_tp}: ONNX file rebuilt from its recorded architecture" in second.stdout
    assert f"{over}: its exported file measured 0.990" in second.stdout
    assert f"{under}: its exported file measured" in second.stdout and "under 50% of the budget" in second.stdout
    chosen = json.loads(out.read_text())["rows"]
    assert chosen[searched]["seeds"] == {}  # --choose-only: no fine-tune
    # ... unless the row chosen again starts where the old one did: its (deterministic) fine-tunes are kept
    assert chosen[over]["seeds"] == {} or "the earlier fine-tunes kept" in chosen[over]["note"]
    assert "onnx_rebuilt" in chosen[done_tp] and "onnx_rebuilt" not in chosen[uni]
    assert Path(chosen["w75_uniform"]["onnx"]).exists() and "onnx_rebuilt" not in chosen["w75_uniform"]
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert third.returncode == 0, third.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["rows"][uni]["seeds"]["0"] == uniform_top1
    assert Path(result["rows"][searched]["weights"]).exists() and "0" in result["rows"][searched]["seeds"]
    assert result["replaced"][over][0]["ratio"] == 0.99 and result["rows"][over]["rechosen"] == 1
    assert result["rows"][under]["rechosen"] == 1 and result["rows"][under]["seeds"]
    assert result["rows"][over]["ratio"] < 0.99 and result["rows"][over]["seeds"]
    page = (tmp_path / "w" / "peers_cifar_cifar_resnet20.md").read_text()
    assert f"{over} was chosen again" in page and "1 of those files were rebuilt" in page
    # rows chosen on another CPU: choosing a row here would mix devices in one table, so the run stops and says so
    here = result["rows"][under]["chosen_on"]
    for r in result["rows"].values():
        r["chosen_on"] = "Another CPU"
    del result["rows"][over]
    out.write_text(json.dumps(result))
    fourth = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert fourth.returncode != 0 and "were chosen on Another CPU" in fourth.stderr
    assert f"{under}" in json.loads(out.read_text())["rows"]  # nothing saved before it stopped
    # the same CPU name, but the full model ran 3x faster where the budgets were set: another host, or this one loaded
    for r in result["rows"].values():
        r["chosen_on"] = here
    result["full_ms"] /= 3
    out.write_text(json.dumps(result))
    fifth = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert fifth.returncode != 0 and "the full model measures" in fifth.stderr and "more than 1.25x" in fifth.stderr
    assert over not in json.loads(out.read_text())["rows"]


def _latency(r):
    """Latency / full model after pruning a fraction r of the channels: a fixed part plus conv cost ~ (1 - r)^2."""
    return 0.1 + 0.9 * (1 - r) ** 2


@pytest.mark.parametrize("frac", [0.5, 0.35])
def test_bisect_ratio_lands_in_the_band_under_the_budget(frac):
    found = peers_tp.bisect_ratio(_latency, frac, 8, 0.75, log=lambda s: None)
    assert peers_tp.MIN_USE * frac <= found["latency_ratio"] <= (1 - peers_tp.HEADROOM) * frac
    assert found["latency_ratio"] == _latency(found["ratio"]) and len(found["probes"]) <= 8


def test_bisect_ratio_times_a_glitch_again_and_does_not_keep_it():
    """The first probe's timing reads 40% of the truth once: it passes as under the budget and contradicts no
    later probe (they prune less and measure slower), so only timing the choice again shows it; the ratio kept is
    judged on its median."""
    calls = []

    def measure(r):
        calls.append(r)
        return _latency(r) * (0.4 if len(calls) == 1 else 1.0)

    logs = []
    found = peers_tp.bisect_ratio(measure, 0.5, 8, 0.75, log=logs.append)
    assert any("more times" in line for line in logs) and calls.count(calls[0]) >= 3
    assert found["latency_ratio"] == pytest.approx(_latency(found["ratio"]))
    assert found["latency_ratio"] <= (1 - peers_tp.HEADROOM) * 0.5
    assert peers_tp.bisect_ratio(lambda r: 0.9, 0.5, 4, 0.75, log=lambda s: None)["ratio"] is None


def test_bisect_ratio_goes_on_when_the_confirmation_reads_the_choice_low():
    """A probe that truly measures 93% of a 0.5 budget reads 97% (in the band) on its first timing only,
    as MobileNetV2's TP row did (0.465, then a median of 0.436): timing it again puts it under MIN_USE, so the
    bisection tries between it and the largest ratio over, as compress's closed loop does, instead of keeping 87%
    (the peer would get less of the budget than ours)."""
    glitched = {}

    def measure(r):
        true = _latency(r) - (0.02 if r > 0.33 else 0.0)  # a small latency step at ratio 0.33
        if r > 0.33 and not glitched:  # the first probe past it: truly 0.466 (93%), read 0.485 (97%) once
            glitched[r] = true
            return 0.485
        return true

    found = peers_tp.bisect_ratio(measure, 0.5, 8, 0.75, log=lambda s: None)
    assert glitched and found["ratio"] != next(iter(glitched))
    assert peers_tp.MIN_USE * 0.5 <= found["latency_ratio"] <= 0.98 * 0.5, found
    assert len(found["probes"]) <= 8 + 4


def test_final_ratios_of_a_file_against_itself_and_a_heavier_one(tmp_path):
    """The final latency check on real ONNX files: the full model against itself reads ~1, a model doing about 4x
    the work reads clearly more."""
    import torch
    from torch import nn

    from compress import export_onnx

    x = (torch.zeros(1, 16, 32, 32),)
    light, heavy = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 64, 3, padding=1)
    export_onnx(light.eval(), x, tmp_path / "full.onnx")
    export_onnx(heavy.eval(), x, tmp_path / "heavy.onnx")
    same, more = peers.final_ratios(tmp_path / "full.onnx", [tmp_path / "full.onnx", tmp_path / "heavy.onnx"],
                                    repeats=3, pause_s=0.0)
    assert 0.8 < same["ratio"] < 1.25 and more["ratio"] > 1.5
    assert more["ratio_min"] <= more["ratio"] <= more["ratio_max"]
    assert report.ratio_cell(more) == f"{more['ratio']:.3f} ({more['ratio_min']:.3f}-{more['ratio_max']:.3f})"
    assert more["interleaved_ms"] > 0 and more["interleaved_full_ms"] > 0
