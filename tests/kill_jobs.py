"""Tiny resumable jobs run as real processes by tests/test_kill_resume.py, to be killed (SIGKILL) or interrupted
(SIGINT) at chosen points and run again in the same work directory:

    python tests/kill_jobs.py supernet|greedy|dms|profile <work_dir> [bundle]
    python tests/kill_jobs.py serve     # reads "<job> <work_dir> <log> [bundle]" lines, forks one process each

Each prints one line per unit of work as it finishes it ("stepped": an optimizer step is done, "saved N": the
search path holds N points on disk, "[i/N] ...": the board profiler finished model i), so the parent can pick the
kill point and count repeated work, and ends by writing ``<work_dir>/final.json`` with a digest of what the job
produced (weights, path, chosen subnet, profiled models). Exit code 0 done, 130 interrupted.

``serve`` imports torch once and forks a fresh process per job (fork, then the job: no import per run), printing
"pid <pid>" when it starts one and "exit <pid> <code>" when it ends (code -9: SIGKILL); the job's output goes to
``<log>``. The profiler job is tools/profile_device.py's own ``main``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import torch

warnings.simplefilter("ignore")
torch.set_num_threads(1)

import compress  # noqa: E402
from compress.search import greedy  # noqa: E402
from compress.search.objectives import FlopsCost  # noqa: E402
from compress.settings import DMSSettings, SearchSettings, TrainSettings  # noqa: E402
from compress.train.data import ImageSet, TensorLoader  # noqa: E402
from compress.train.evaluate import CalibratedScorer, take_batches  # noqa: E402
from compress.train.models import cifar_resnet  # noqa: E402

def say(line: str) -> None:
    print(line, flush=True)


def data(train: bool) -> TensorLoader:
    g = torch.Generator().manual_seed(1 if train else 2)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.arange(64) % 4
    return TensorLoader(ImageSet(images, labels, ["a", "b", "c", "d"]), 16, train=train)


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return cifar_resnet(8, num_classes=4)


def digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(name.encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def count_steps(optimizer_class: type) -> None:
    """Print "stepped" after every step of this optimizer class: the step is then done (it runs under
    ``deferred_interrupt`` with the step counter, so SIGINT cannot split them)."""
    original = optimizer_class.step

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        say("stepped")
        return out
    optimizer_class.step = step


def supernet(work: Path) -> dict:
    count_steps(torch.optim.SGD)
    net = compress.SlimmableNetwork(model(), torch.randn(1, 3, 16, 16))
    settings = TrainSettings(epochs=3, lr=0.05, warmup_epochs=0, num_subnets=3, checkpoint_every=2, seed=0)
    history = compress.train_supernet(net, data(True), settings, checkpoint=work / "supernet.pt", progress=False)
    return {"weights": digest(net.state_dict()), "steps": history["steps"]}


def greedy_search(work: Path) -> dict:
    net = compress.SlimmableNetwork(model(), torch.randn(1, 3, 16, 16))
    original = greedy.save_json

    def save_json(obj, path, *args, **kwargs):
        out = original(obj, path, *args, **kwargs)
        say(f"saved {len(obj['path'])}")
        return out
    greedy.save_json = save_json
    scorer = CalibratedScorer(net, take_batches(data(True), 2, "train"), take_batches(data(False), 2, "val"))
    cost = FlopsCost(net)
    target = 0.3 * float(cost([net.space.max_config()])[0])
    path = greedy.greedy_slim(net, scorer, cost, target, SearchSettings(step_ratio=0.25, cuts_when_far=1),
                              path_file=work / "path.json", progress=False)
    kept = [{k: p[k] for k in ("step", "config", "cost", "flops", "top1", "loss")} for p in path]
    return {"path": hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest(), "points": len(path)}


def dms(work: Path) -> dict:
    from compress.search.dms import search

    count_steps(torch.optim.Adam)  # the structure optimizer: one step per search step
    search.CHECKPOINT_EVERY = 3  # a SIGKILL resumes from inside the search, not from its start
    x = torch.randn(1, 3, 16, 16)
    full = compress.count_flops(model().eval(), x).total
    result = compress.dms(model(), flops=0.5 * full, train_loader=data(True), val_loader=data(False),
                          settings=DMSSettings(epochs=3, lr=0.05, pipeline="pretrained", train_epochs=0.0, seed=0),
                          work_dir=work, progress=False, log=lambda line: None)
    return {"config": result.config, "removed": result.removed_blocks, "flops": result.flops,
            "subnet": digest(result.subnet.state_dict())}


def profile(work: Path, bundle: str) -> dict:
    from devices import profile_device as pd

    out = work / "board.json"
    code = pd.main([bundle, "--out", str(out), "--batch", "1", "--min-runs", "5"])
    if code == 130:
        raise KeyboardInterrupt
    assert code == 0, code
    records = json.loads(out.read_text())["records"]
    return {"models": [r["model"] for r in records], "kernels": [[k["op"] for k in r["kernels"]] for r in records]}


JOBS = {"supernet": supernet, "greedy": greedy_search, "dms": dms, "profile": profile}


def run(job: str, work: Path, *extra: str) -> int:
    work.mkdir(parents=True, exist_ok=True)
    try:
        final = JOBS[job](work, *extra)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    (work / "final.json").write_text(json.dumps(final, sort_keys=True))
    say("done")
    return 0


def serve() -> None:
    import os
    import signal

    for line in sys.stdin:
        job, work, log, *extra = line.split()
        pid = os.fork()
        if pid == 0:  # the job's process: default Ctrl-C behaviour, output to its log
            signal.signal(signal.SIGINT, signal.default_int_handler)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 1
            try:
                code = run(job, Path(work), *extra)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        say(f"pid {pid}")
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        say(f"exit {pid} {code}")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        sys.exit(run(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:]))
