"""Tracing: shape-dependent branches and loops over chunk/split/unbind are traced at the example inputs' shapes
(guarded), a submodule torch.fx cannot trace is kept whole with the reason, and a failure in the model's own
forward names the module, the file:line and the cause."""

import inspect
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.space.trace import trace_model
from compress.verify import verify_model


def line_of(fn, text: str) -> str:
    """``file:line`` of the first line of ``fn``'s source that contains ``text``."""
    lines, start = inspect.getsourcelines(fn)
    offset = next(i for i, line in enumerate(lines) if text in line)
    return f"{inspect.getsourcefile(fn)}:{start + offset}"


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


# ---- shape-dependent control flow: timm's ConvMlp pre-logits head ------------------------------------------------
class ShapeBranchHead(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3):
        super().__init__()
        self.kernel_size = kernel_size
        self.fc1 = nn.Conv2d(c_in, c_out, kernel_size)
        self.act = nn.ReLU()

    def forward(self, x):
        if x.shape[-2] < self.kernel_size or x.shape[-1] < self.kernel_size:  # keep the input >= the kernel
            x = F.adaptive_avg_pool2d(x, (max(self.kernel_size, x.shape[-2]), max(self.kernel_size, x.shape[-1])))
        return self.act(self.fc1(x))


class ShapeBranchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, stride=2)
        self.body = conv_bn(16, 32, stride=2)
        self.pre_logits = ShapeBranchHead(32, 24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(self.pre_logits(self.body(self.stem(x))).mean((2, 3)))


def test_shape_dependent_branch_is_traced_and_slims():
    x = torch.randn(1, 3, 8, 8)  # 2 x 2 features: the branch that pools up to the kernel size is taken
    net = compress.SlimmableNetwork(ShapeBranchNet().eval(), x)
    assert not net.coupling.unknown_ops
    assert {g.name for g in net.space.free} >= {"stem.0", "body.0", "pre_logits.fc1"}
    rep = verify_model(ShapeBranchNet(), x, n_random=1, onnx=False)
    assert rep.ok, rep.error
    assert rep.slimmable_share > 0.7


def test_shape_branch_is_guarded_at_other_input_shapes():
    gm = trace_model(ShapeBranchNet(), (torch.randn(1, 3, 8, 8),))
    assert gm.meta["shape_guards"] >= 1 and gm.meta["opaque_modules"] == {}
    assert gm(torch.randn(2, 3, 8, 8)).shape == (2, 10)  # same spatial shape, other batch: same branch
    where = line_of(ShapeBranchHead.forward, "if x.shape[-2]")
    shapes = re.escape("traced at input shapes [(1, 3, 8, 8)], where the condition at ")
    with pytest.raises(AssertionError, match=rf"{shapes}{re.escape(where)} is True.*trace the model again"):
        gm(torch.randn(1, 3, 32, 32))  # 8 x 8 features: the traced branch would compute something else


# ---- YOLOv8's C2f: a list built from chunk, extended in a loop -------------------------------------------------------
class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = conv_bn(c, c), conv_bn(c, c)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 2):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = conv_bn(c1, 2 * self.c, 1)
        self.cv2 = conv_bn((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class UnbindSum(nn.Module):
    def forward(self, x):
        total = 0
        for part in x.unbind(2):  # a loop over unbind: one part per row, fixed by the shape
            total = total + part
        return total


class C2fNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.c2f = C2f(16, 32)
        self.rows = UnbindSum()
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.rows(self.c2f(self.stem(x))).mean(2))


def test_c2f_chunk_list_loop_is_traced_and_slims():
    x = torch.randn(1, 3, 8, 8)
    net = compress.SlimmableNetwork(C2fNet().eval(), x)
    assert net.graph_module.meta["opaque_modules"] == {}
    names = {g.name for g in net.space.free}
    assert {"c2f.cv1.0[0:16]", "c2f.cv1.0[16:32]", "c2f.m.0.cv1.0", "c2f.cv2.0"} <= names, names
    rep = verify_model(C2fNet(), x, n_random=1, onnx=False)
    assert rep.ok, rep.error
    assert rep.slimmable_share > 0.7  # 16-channel groups at divisor 8: each conv down to 1/4


# ---- control flow on tensor values --------------------------------------------------------------------------------
class ValueGate(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:  # data-dependent: no example shape decides it
            return y
        return -y


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.pre = conv_bn(c, c)
        self.gate = ValueGate(c)

    def forward(self, x):
        return self.gate(self.pre(x))


class GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.block = Block(16)
        self.mid = conv_bn(16, 32)
        self.head = conv_bn(32, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.head(self.mid(self.block(self.stem(x)))).mean((2, 3)))


def test_untraceable_submodule_is_kept_whole_with_the_reason_and_the_rest_slims():
    x = torch.randn(1, 3, 8, 8)
    net = compress.SlimmableNetwork(GatedNet().eval(), x)
    opaque = net.graph_module.meta["opaque_modules"]
    assert list(opaque) == ["block.gate"]  # the innermost module whose forward fails, not its parent "block"
    where = line_of(ValueGate.forward, "if y.mean() > 0")
    assert opaque["block.gate"] == (
        f"not traceable: Python control flow (if, while, and/or, bool()) on tensor values (data-dependent) at {where}")
    reasons = {g.frozen_reason for g in net.space.frozen}
    assert any("block.gate" in r and "not traceable" in r and where in r for r in reasons), reasons
    assert {"mid.0", "head.0"} <= {g.name for g in net.space.free}
    rep = verify_model(GatedNet(), x, n_random=1, onnx=False)
    assert rep.ok, rep.error
    assert rep.slimmable_share > 0.5


class RootValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            return y
        return -y


class RootTensorLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return torch.stack([self.conv(row[None])[0] for row in x])


@pytest.mark.parametrize("model_cls, text, cause", [
    (RootValueBranch, "if y.sum() > 0:", "Python control flow (if, while, and/or, bool()) on tensor values "
                                         "(data-dependent)"),
    (RootTensorLoop, "return torch.stack([self.conv(row[None])[0] for row in x])",
     "a Python loop, unpacking or len() over a tensor (its first dimension)"),
])
def test_failure_in_the_models_own_forward_names_module_line_and_cause(model_cls, text, cause):
    with pytest.raises(compress.TraceError) as info:
        compress.SlimmableNetwork(model_cls(), torch.randn(1, 3, 8, 8))
    message = str(info.value)
    where = line_of(model_cls.forward, text)
    assert message.startswith(f"torch.fx could not trace {model_cls.__name__}: {cause} in the forward of "
                              f"{model_cls.__name__} at {where} `{text}"), message
    assert message.endswith("into a submodule: a submodule torch.fx cannot trace is kept whole (its channels frozen) "
                            "and the rest still slims."), message
