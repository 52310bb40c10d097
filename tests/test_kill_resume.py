"""Kill and resume: SIGKILL and SIGINT at random points of supernet training, greedy search, DMS and the board
profiler, each followed by a run of the same command in the same folder; the resumed run ends equal to an
uninterrupted one (weights digest, search path, chosen subnet; for the profiler the models and their kernels, since
timings differ by nature), and after SIGINT no finished unit of work is done again.

Real processes: tests/kill_jobs.py forks one per run from a process that imported torch once (an import costs
more than a run on a shared machine). 6 kill points per job, 24 in all, alternating SIGINT and SIGKILL; the point
is drawn at random (seeded) among the job's units of work.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import warnings

import pytest
import torch
from torch import nn

import compress
import devices

ROOT = Path(__file__).resolve().parents[1]
JOBS_SCRIPT = ROOT / "tests" / "kill_jobs.py"
KILLS_PER_JOB = 6
# the line a job prints when a unit of work is finished; the number of units of an uninterrupted run
UNIT = {"supernet": re.compile(r"^stepped$"), "dms": re.compile(r"^stepped$"), "greedy": re.compile(r"^saved \d+$"),
        "profile": re.compile(r"^\[\d+/\d+\] ")}


class Server:
    """tests/kill_jobs.py serve: starts a job, hands back its process id, reports how it ended."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(JOBS_SCRIPT), "serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT)))

    def start(self, job: str, work: Path, log: Path, *extra: str) -> int:
        self.proc.stdin.write(" ".join([job, str(work), str(log), *extra]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.startswith("pid "), line
        return int(line.split()[1])

    def ended(self, pid: int) -> int:
        line = self.proc.stdout.readline()
        assert line.startswith(f"exit {pid} "), line
        return int(line.split()[2])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def units(log: Path, job: str) -> list[str]:
    text = log.read_text() if log.exists() else ""
    return [line for line in text.splitlines() if UNIT[job].match(line)]


def run(server: Server, job: str, work: Path, log: Path, extra: tuple, kill_after: int | None = None,
        sig: int = signal.SIGKILL) -> int:
    """Run a job; with ``kill_after``, send ``sig`` once it has finished that many units of work."""
    pid = server.start(job, work, log, *extra)
    if kill_after is not None:
        deadline = time.time() + 300
        while len(units(log, job)) < kill_after and time.time() < deadline:
            time.sleep(0.005)
        os.kill(pid, sig)
    return server.ended(pid)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle")
    paths = {}
    for i, width in enumerate((8, 16, 24, 32, 40, 48)):
        model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 8, 3, padding=1))
        paths[f"m{i}"] = folder / f"m{i}.onnx"
        compress.export_onnx(model.eval(), torch.randn(1, 3, 32, 32), paths[f"m{i}"])
    return str(devices.write_bundle(paths, {"input": [1, 3, 32, 32]}, folder / "bundle.zip"))


def final(work: Path) -> dict:
    return json.loads((work / "final.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("job", ["supernet", "greedy", "dms", "profile"])
def test_killed_and_interrupted_runs_resume_to_the_uninterrupted_result(tmp_path, bundle, job):
    extra = (bundle,) if job == "profile" else ()
    server = Server()
    try:
        ref = tmp_path / "ref"
        assert run(server, job, ref, tmp_path / "ref.log", extra) == 0
        total = len(units(tmp_path / "ref.log", job))
        assert total >= 6, total
        expected = final(ref)
        rng = random.Random(f"kill-{job}")
        for k in range(KILLS_PER_JOB):
            sig = signal.SIGINT if k % 2 == 0 else signal.SIGKILL
            at = rng.randint(1, total - 1)
            work, first, second = tmp_path / f"w{k}", tmp_path / f"w{k}.1.log", tmp_path / f"w{k}.2.log"
            code = run(server, job, work, first, extra, kill_after=at, sig=sig)
            done_before = len(units(first, job))
            assert code == (130 if sig == signal.SIGINT else -9), (k, sig, code, first.read_text()[-800:])
            assert run(server, job, work, second, extra) == 0, second.read_text()[-800:]
            got = final(work)
            if job == "profile":  # timings differ by nature: the same models, in order, with the same kernels
                assert got["models"] == expected["models"] and got["kernels"] == expected["kernels"], (k, got)
            else:
                assert got == expected, (k, sig, at)
            redone = done_before + len(units(second, job)) - total
            if sig == signal.SIGINT:
                assert redone == 0, (k, at, done_before, redone)  # no finished step repeated after Ctrl-C
            else:
                assert redone >= 0
    finally:
        server.close()


def test_a_dms_search_checkpoint_is_resumed_only_by_the_same_search(tmp_path):
    """A finished search's checkpoint ends a rerun with no step done and the same weights; one written for another
    budget is replaced with a warning (a fresh search), never resumed towards the old target."""
    from compress.search.dms.masked import DMSNetwork
    from compress.search.dms.search import dms_search
    from compress.settings import DMSSettings
    from compress.train.data import ImageSet, TensorLoader
    from compress.train.models import cifar_resnet

    g = torch.Generator().manual_seed(1)
    loader = TensorLoader(ImageSet(torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=g),
                                   torch.arange(32) % 4, list("abcd")), 16, train=True)

    def search(budget: float, **settings):
        torch.manual_seed(0)
        net = compress.SlimmableNetwork(cifar_resnet(8, num_classes=4), torch.randn(1, 3, 16, 16))
        dmsnet = DMSNetwork(net, 0.25, True)
        log = dms_search(dmsnet, loader, dmsnet.soft_flops, budget * float(dmsnet.soft_flops()),
                         DMSSettings(epochs=2, seed=0, **settings), progress=False,
                         checkpoint=tmp_path / "dms_search.pt", identity={"budget": budget})
        return log, {k: v.clone() for k, v in dmsnet.state_dict().items()}

    log, weights = search(0.5)
    assert torch.load(tmp_path / "dms_search.pt", weights_only=True)["step"] == 4
    again_log, again = search(0.5)  # resumed at its end: nothing moves
    assert again_log == log and all(torch.equal(weights[k], again[k]) for k in weights)
    # settings used only after the search (closed loop, fine-tune) do not make it another search
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again_log, again = search(0.5, max_measurements=20, min_budget_use=0.9, latency_headroom=0.05,
                                  train_epochs=3.0)
    assert again_log == log and all(torch.equal(weights[k], again[k]) for k in weights)
    with pytest.warns(UserWarning, match="was written for another search .* starting this search from its first step"):
        other_log, _ = search(0.3)
    assert other_log[-1]["target"] != log[-1]["target"]
