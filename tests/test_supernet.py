"""Slimmable supernet training: sandwich rule, learning, checkpoint/resume, and DDP under torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress import SlimmableNetwork, TrainSettings, train_supernet
from compress.train.data import SHIPPED_CIFAR, TensorLoader, load_image_folder
from compress.train.evaluate import evaluate
from compress.train.models import cifar_resnet
from compress.train.supernet import CheckpointMismatchError, sandwich_configs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_data():
    return load_image_folder(SHIPPED_CIFAR, "test").subset(20)  # 200 real images


def _net(seed=0):
    torch.manual_seed(seed)
    return SlimmableNetwork(cifar_resnet(8), torch.zeros(1, 3, 32, 32))


def test_sandwich_configs():
    net = _net()
    s = TrainSettings(num_subnets=5, min_ratio=0.5)
    cfgs = sandwich_configs(net.space, s, step=7)
    assert len(cfgs) == 5
    assert cfgs[0] == net.space.max_config() and cfgs[1] == net.space.uniform_config(0.5)
    widths = {g.name: g.width for g in net.space.free}
    for c in cfgs[2:]:
        assert all(widths[k] * 0.5 <= v <= widths[k] for k, v in c.items())
    assert sandwich_configs(net.space, s, 7) == cfgs  # every rank draws the same subnets
    assert sandwich_configs(net.space, s, 8)[2:] != cfgs[2:]


def test_training_lowers_the_loss_of_largest_and_smallest(small_data):
    net = _net()
    loader = TensorLoader(small_data, 50, train=True)
    batches = [(x, y) for x, y in TensorLoader(small_data, 100)]
    before = {}
    for name, cfg in (("max", net.space.max_config()), ("min", net.space.uniform_config(0.25))):
        net.set_config(cfg)
        before[name] = evaluate(net, batches)["loss"]
    net.set_config(None)
    hist = train_supernet(net, loader, TrainSettings(epochs=10, lr=0.4, warmup_epochs=0), progress=False)
    assert hist["steps"] == 40 and len(hist["epochs"]) == 10
    assert net.config == net.space.max_config()  # left at full width
    for name, cfg in (("max", net.space.max_config()), ("min", net.space.uniform_config(0.25))):
        net.set_config(cfg)
        net.train()  # batch statistics: the shared running stats are not meant for any one width
        with torch.no_grad():
            loss = sum(torch.nn.functional.cross_entropy(net(x), y).item() for x, y in batches) / len(batches)
        assert loss < before[name] * 0.95, (name, loss, before[name])


class _Interrupt(Exception):
    pass


class _StopAfter:
    """A loader that raises after ``n`` batches in total (a Ctrl-C stand-in)."""

    def __init__(self, loader, n):
        self.loader, self.n, self.count = loader, n, 0

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, e):
        self.loader.set_epoch(e)

    def __iter__(self):
        for b in self.loader:
            if self.count >= self.n:
                raise _Interrupt
            self.count += 1
            yield b


@pytest.mark.parametrize("distill", ["kl", "alpha"])
def test_interrupted_training_resumes_to_identical_weights(small_data, tmp_path, distill):
    settings = TrainSettings(epochs=2, lr=0.05, checkpoint_every=3, distill=distill)
    ref = _net()
    train_supernet(ref, TensorLoader(small_data, 50, train=True), settings, progress=False)

    net = _net()
    ck = tmp_path / "ck.pt"
    with pytest.raises(_Interrupt):
        train_supernet(net, _StopAfter(TensorLoader(small_data, 50, train=True), 5), settings, checkpoint=ck,
                       progress=False)
    assert ck.exists() and not list(tmp_path.glob(".*tmp"))
    resumed = _net()  # built as before (another init is refused: tests/test_work_dir_identity.py)
    counted = _StopAfter(TensorLoader(small_data, 50, train=True), 10**6)
    hist = train_supernet(resumed, counted, settings, checkpoint=ck, progress=False)
    assert hist["steps"] == 8
    assert counted.count == 4  # resumed at the end of epoch 0 (saved at the epoch's end): only epoch 1 is run
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_checkpoint_from_other_settings_is_refused(small_data, tmp_path):
    ck = tmp_path / "ck.pt"
    train_supernet(_net(), TensorLoader(small_data, 100, train=True), TrainSettings(epochs=1), checkpoint=ck,
                   progress=False)
    with pytest.raises(CheckpointMismatchError, match=r"ck\.pt' does not fit this run: the training settings "
                                                      r"differ \(epochs: 1 in the file, 2 now\)\. Delete"):
        train_supernet(_net(), TensorLoader(small_data, 100, train=True), TrainSettings(epochs=2), checkpoint=ck,
                       progress=False)


def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    """torchrun, 2 CPU processes, gloo: both ranks hold the same weights after training, and they moved."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tools" / "train_supernet.py"), "--model", "cifar_resnet20", "--depth", "8",
           "--per-class", "8", "--batch-size", "16", "--epochs", "2", "--out", str(tmp_path / "ck.pt"),
           "--rank-weights", str(tmp_path / "w")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "w" / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "w" / "rank1.pt", weights_only=True)
    init = _net().state_dict()
    moved = 0
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=1e-6, msg=k)
        if w0[k].is_floating_point() and not torch.allclose(w0[k], init[k]):
            moved += 1
    assert moved > 10
    assert (tmp_path / "ck.pt").exists()
