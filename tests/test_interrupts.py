"""Interrupts keep what they say they keep: Ctrl-C (SIGINT) in supernet training saves every finished step, and a
resume ends equal to an uninterrupted run with the same seed (real processes, kill points chosen by batch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compress
from compress.train.data import TensorLoader, load_image_folder, SHIPPED_CIFAR
from compress.train.models import cifar_resnet

SCRIPT = r"""
import sys, torch, warnings
warnings.simplefilter("ignore")
torch.set_num_threads(1)
import compress
from compress.train.data import TensorLoader, load_image_folder, SHIPPED_CIFAR
from compress.train.models import cifar_resnet

class Announcing:  # prints each batch it hands out, so the parent can interrupt at a chosen batch
    def __init__(self, loader): self.loader = loader
    def __len__(self): return len(self.loader)
    def set_epoch(self, e): self.loader.set_epoch(e)
    @property
    def start_batch(self): return self.loader.start_batch
    @start_batch.setter
    def start_batch(self, v): self.loader.start_batch = v
    def __iter__(self):
        for batch in self.loader:
            print("batch", flush=True)
            yield batch

torch.manual_seed(0)
net = compress.SlimmableNetwork(cifar_resnet(8), torch.randn(2, 3, 32, 32))
data = load_image_folder(SHIPPED_CIFAR, "train").subset(12)
settings = compress.TrainSettings(epochs=3, checkpoint_every=1000, seed=0)
try:
    compress.train_supernet(net, Announcing(TensorLoader(data, 24, train=True)), settings, checkpoint=sys.argv[1],
                            progress=False)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
print("done", flush=True)
"""


def _train(checkpoint: Path, interrupt_at: int | None) -> int:
    # SIGINT back to its default in the child: a test run started in the background (``make test &``) ignores it
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(checkpoint)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = 0
    for line in proc.stdout:
        if line.strip() == "batch":
            seen += 1
            if interrupt_at is not None and seen == interrupt_at:
                proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=600)


def _weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=True)


def test_an_ignored_sigint_stays_ignored_during_a_step():
    """A process started in the background ignores SIGINT; holding Ctrl-C back during a step must not turn it into
    a KeyboardInterrupt."""
    from compress.train.supernet import deferred_interrupt

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("interrupt_at", [3, 8])
def test_sigint_in_supernet_training_repeats_no_step_and_resumes_to_the_same_weights(tmp_path, interrupt_at):
    ref = tmp_path / "ref.pt"
    assert _train(ref, None) == 0
    ck = tmp_path / "ck.pt"
    assert _train(ck, interrupt_at) == 130
    saved = _weights(ck)
    assert saved["step"] >= interrupt_at - 1  # every finished step is on disk (checkpoint_every is 1000)
    assert _train(ck, None) == 0  # resume
    a, b = _weights(ref), _weights(ck)
    assert a["step"] == b["step"] == 15
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
