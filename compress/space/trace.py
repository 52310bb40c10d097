"""Trace a model into a torch.fx graph.

Why torch.fx and not torch.export: slimming needs the graph at the level of the
user's modules (``layer1.0.conv1``), so that the weights we slice keep their
names and the state dict of the slimmed network matches the original. fx keeps
``call_module`` nodes for leaf layers and runs in milliseconds, while
torch.export lowers everything to aten ops with functionalised parameters and
takes seconds per model. torchvision keeps its models fx-traceable (its feature
extractor is built on fx), which is the zoo we must cover. The price is that
data-dependent Python control flow cannot be traced. Tracing goes in three steps:

1. plain torch.fx (the graph works at any input shape);
2. if that fails, shape-specialised tracing (``compress.space.concrete``): branches and loops that depend on
   shapes only are resolved at the example inputs' shapes and guarded in the graph;
3. if that fails inside a submodule, the innermost module whose forward fails is kept whole (an opaque
   ``call_module`` whose channels are frozen, reason "not traceable: <cause> at <file>:<line>") and tracing is
   retried, so the rest of the network still slims; ``gm.meta["opaque_modules"]`` maps each such module to its
   reason. Only a failure in the model's own forward is a TraceError, naming the module, file:line and cause.
"""

from __future__ import annotations

import copy
import linecache
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import fx, nn

from compress.errors import InputShapeError, TraceError, UnsupportedModelError, UnsupportedOpError
from compress.space.concrete import (CAUSE_DATA_DEPENDENT, CAUSE_NOT_COMPUTED, CAUSE_TENSOR_LOOP,
                                     ConcreteValuesMixin, user_frame_of)

# Modules outside torch.nn that we treat as single layers because the channel
# handlers know their semantics (keyed by "module.qualname" so that importing
# torchvision stays optional).
EXTRA_LEAF_MODULES: set[str] = {
    "torchvision.models.convnext.LayerNorm2d",
    "torchvision.ops.stochastic_depth.StochasticDepth",
}


def class_key(module: nn.Module) -> str:
    """Return the "module.qualname" key of a module's class."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


_DETECTOR = ("a torchvision detection model: its forward takes a list of images, resizes and batches them, and "
             "decodes a number of boxes that depends on the data (anchors, score thresholds, NMS), which torch.fx "
             "cannot record in a graph")
_PASS_BACKBONE = ("Slim its backbone and neck instead: compress.SlimmableNetwork(model.backbone, "
                  "torch.randn(1, 3, H, W)) traces the feature extractor and FPN (it returns the feature maps as an "
                  "OrderedDict; their channels stay at full width, so the heads still fit), then put the extracted "
                  "subnet back as model.backbone")
# Models refused up front, by class (subclasses included; keyed by "module.qualname", so nothing is imported):
# class -> (why torch.fx cannot trace it, what to pass instead).
UNTRACEABLE_MODELS: dict[str, tuple[str, str]] = {
    # Faster, Mask and Keypoint R-CNN
    "torchvision.models.detection.generalized_rcnn.GeneralizedRCNN": (_DETECTOR, _PASS_BACKBONE),
    "torchvision.models.detection.retinanet.RetinaNet": (_DETECTOR, _PASS_BACKBONE),
    "torchvision.models.detection.fcos.FCOS": (_DETECTOR, _PASS_BACKBONE),
    "torchvision.models.detection.ssd.SSD": (_DETECTOR, _PASS_BACKBONE),  # SSD and SSDlite
}


def refuse_untraceable_model(model: nn.Module) -> None:
    """Refuse a model whose class (or a base class) is in ``UNTRACEABLE_MODELS``, naming the part to pass instead.

    Args:
        model: the model about to be traced.

    Raises:
        UnsupportedModelError: the model is of a kind listed in ``UNTRACEABLE_MODELS``.
    """
    for cls in type(model).__mro__:
        entry = UNTRACEABLE_MODELS.get(f"{cls.__module__}.{cls.__qualname__}")
        if entry is not None:
            why, instead = entry
            raise UnsupportedModelError(f"{type(model).__name__} cannot be traced as a whole: it is {why}. {instead}.")


class _ChannelTracer(fx.Tracer):
    """fx.Tracer with our leaf modules, which remembers the innermost module whose forward failed."""

    def __init__(self, leaf_names: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.leaf_names = leaf_names
        self.failed_in: tuple[BaseException, str] | None = None  # (exception, module path) where it was raised

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or class_key(m) in EXTRA_LEAF_MODULES:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            if self.failed_in is None or self.failed_in[0] is not exc:  # the innermost module sees it first
                try:
                    path = self.path_of_module(m)
                except NameError:  # a module that is not an attribute of the model: blame its caller
                    path = None
                if path is not None and not self.is_leaf_module(m, path):  # a leaf's call fails in its caller
                    self.failed_in = (exc, path)
            raise


class _ShapeSpecialisingTracer(ConcreteValuesMixin, _ChannelTracer):
    """Our tracer with shape-dependent control flow resolved at the example inputs (``compress.space.concrete``)."""


# Causes of torch.fx's own errors, said in terms of the model's code (the first matching message wins).
FX_CAUSES: tuple[tuple[str, str], ...] = (
    ("symbolically traced variables cannot be used as inputs to control flow", CAUSE_DATA_DEPENDENT),
    ("Proxy object cannot be iterated", CAUSE_TENSOR_LOOP),
    ("'len' is not supported", CAUSE_TENSOR_LOOP),
)
# What to do about each cause, when the model's own forward holds it (no module left to keep whole).
ADVICE: dict[str, str] = {
    CAUSE_DATA_DEPENDENT: "Rewrite the branch with tensor ops (torch.where) or move it into a submodule",
    CAUSE_TENSOR_LOOP: "Loop over a tuple of tensors (x.unbind(0), x.chunk(n)) or move the loop into a submodule",
    CAUSE_NOT_COMPUTED: "Check that the forward runs on the example inputs, or move the code into a submodule",
}
DEFAULT_ADVICE = "Move that code into a submodule, or trace a part of the model that is traceable (e.g. its backbone)"
MAX_OPAQUE_MODULES = 64


@dataclass(frozen=True)
class TraceFailure:
    """Where and why torch.fx stopped: the module path ("" for the model itself), its class, the model code's
    file:line with the line's text, and the cause in the model's terms."""

    module: str
    module_type: str
    location: str
    code: str
    cause: str

    def describe(self) -> str:
        where = f"module {self.module!r} ({self.module_type})" if self.module else f"the forward of {self.module_type}"
        code = f" `{self.code}`" if self.code else ""
        return f"{self.cause} in {where} at {self.location}{code}"


def _failure(exc: BaseException, tracer: _ChannelTracer, root: nn.Module) -> TraceFailure:
    path = tracer.failed_in[1] if tracer.failed_in is not None and tracer.failed_in[0] is exc else ""
    message = str(exc)
    cause = next((c for pattern, c in FX_CAUSES if pattern in message), None)
    if cause is None:
        cause = message if isinstance(exc, fx.proxy.TraceError) else f"{type(exc).__name__}: {message}"
    frame = user_frame_of(exc)
    location = f"{frame.filename}:{frame.lineno}" if frame is not None else "unknown location"
    code = (frame.line or linecache.getline(frame.filename, frame.lineno or 0)).strip() if frame is not None else ""
    module_type = type(root.get_submodule(path)).__name__
    return TraceFailure(path, module_type, location, code[:120], cause)


def flatten_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a model output, in a fixed order: tensors, lists, tuples (named ones too), dicts (by key
    order) and dataclass-like objects (by ``vars``), nested to any depth."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flatten_tensors(v)]
    if hasattr(value, "__dict__") and not isinstance(value, (type, nn.Module)):
        return [t for v in vars(value).values() for t in flatten_tensors(v)]
    return []


CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _unbatched_message(model_name: str, seen: tuple, shapes: list, where: str) -> str:
    name, kind, ndim = seen
    first = shapes[0] if shapes else ()
    return (f"{model_name} got unbatched inputs{' for ' + where if where else ''}: inputs of shape {shapes} "
            f"reach {name!r} ({kind}) as a {ndim}-D tensor, which it reads as one sample without a batch dimension. "
            f"Add the batch dimension: x.unsqueeze(0) (shape {(1, *first)}), or pass a batch of N samples.")


def run_on_inputs(model: nn.Module, inputs: tuple[torch.Tensor, ...], where: str = "", name: str | None = None) -> Any:
    """Run ``model(*inputs)`` without gradients and return the output; a failing forward is a named error.

    Unbatched inputs (a C x H x W image where N x C x H x W is expected) are refused by name: a convolution that
    receives a tensor with no batch dimension (``torch.nn.Conv2d`` runs on it, and what follows fails or, worse,
    does not) is seen by temporary forward pre-hooks, removed before this returns.

    Args:
        model: the module to run.
        inputs: its positional inputs.
        where: what the inputs are, for the message (e.g. "count_flops").
        name: the model's name in the message (default: its class name).

    Raises:
        InputShapeError: the model does not run on these inputs, or receives them unbatched (names their shapes,
            the layer or the forward's error, and what to pass).
    """
    model_name = name or type(model).__name__
    shapes = [tuple(t.shape) for t in inputs]
    ranks = {len(s) for s in shapes}  # only inputs given without a batch dimension are refused: a model that
    seen: list[tuple] = []            # runs its convs on one sample at a time on purpose is left alone

    def spot_unbatched(name: str):
        def hook(mod: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if not seen and isinstance(x, torch.Tensor) and x.dim() == len(mod.kernel_size) + 1 and x.dim() in ranks:
                seen.append((name, type(mod).__name__, x.dim()))
        return hook

    handles = [m.register_forward_pre_hook(spot_unbatched(n)) for n, m in model.named_modules()
               if isinstance(m, CONV_LAYERS)]
    try:
        with torch.no_grad():
            out = model(*inputs)
    except Exception as exc:  # the user's forward failed on the inputs given
        if seen:
            raise InputShapeError(_unbatched_message(model_name, seen[0], shapes, where)) from exc
        raise InputShapeError(
            f"{model_name} does not run on {'the inputs of ' + where if where else 'example inputs'} of "
            f"shape {shapes}: {type(exc).__name__}: {exc}. Pass inputs the model accepts, e.g. "
            f"torch.randn(1, 3, 224, 224).") from exc
    finally:
        for h in handles:
            h.remove()
    if seen:
        raise InputShapeError(_unbatched_message(model_name, seen[0], shapes, where))
    return out


class _NodeLocator(fx.Interpreter):
    """Runs a graph node by node; the first node that fails is named in an UnsupportedOpError."""

    def __init__(self, gm: fx.GraphModule, where: str) -> None:
        super().__init__(gm)
        self.where = where

    def run_node(self, n: fx.Node) -> Any:
        try:
            return super().run_node(n)
        except Exception as exc:
            op = f"{type(self.module.get_submodule(n.target)).__name__} {n.target!r}" if n.op == "call_module" \
                else f"{getattr(n.target, '__name__', n.target)}"
            raise UnsupportedOpError(
                f"{self.where}, the network fails at node {n.name!r} ({n.op} {op}): {type(exc).__name__}: {exc}. "
                "The inputs are fine (the full-width network runs on them): an op there does not follow the "
                "narrower channel widths, e.g. a channel count fixed in the model's code or a channel handler "
                "that does not fit the op. Pass the layer around it in `ignore=` to keep it at full width, and "
                "please report it with the model.") from exc


def run_graph(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], where: str) -> Any:
    """Run a traced graph (e.g. a slimmable network at a narrower config) without gradients; a failure names the
    node where it happened.

    Args:
        gm: the graph module.
        inputs: its positional inputs (ones the full-width network runs on).
        where: how the message starts, e.g. "At the smallest config".

    Returns:
        The graph's output.

    Raises:
        UnsupportedOpError: a node of the graph failed (names the node, its op and the error).
    """
    with torch.no_grad():
        try:
            return gm(*inputs)
        except Exception:  # noqa: BLE001 - run again node by node to name the op that fails
            pass
        return _NodeLocator(gm, where).run(*inputs)


def as_input_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """Normalise example inputs (a tensor or a sequence of tensors) to a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Sequence) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise InputShapeError(
        "example_inputs must be a tensor or a tuple of tensors, e.g. torch.randn(1, 3, 224, 224). "
        f"Got {type(example_inputs).__name__} instead."
    )


def trace_model(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], leaf_names: Sequence[str] = ()
) -> fx.GraphModule:
    """Deep-copy ``model`` (left untouched), put the copy in eval mode and trace it (the steps: module doc).

    Modules named in ``leaf_names`` are kept whole (not traced into); the channel analysis then treats them as
    opaque and freezes their channels. So are the modules whose forward cannot be traced, listed with the reason
    in ``gm.meta["opaque_modules"]`` (module name -> "not traceable: <cause> at <file>:<line>").

    Args:
        model: the network.
        example_inputs: its positional inputs.
        leaf_names: names of modules not to trace into.

    Returns:
        The traced graph module (eval mode). ``gm.meta["shape_guards"]`` counts the shape-dependent branches
        resolved at the example inputs' shapes (0: the graph runs at any input shape).

    Raises:
        UnsupportedModelError: a kind of model refused up front (``UNTRACEABLE_MODELS``: torchvision detectors),
            with the part to pass instead.
        InputShapeError: the model does not run on ``example_inputs``.
        TraceError: torch.fx cannot trace the model's own forward; the message names the module, the model code's
            file:line and the cause.
    """
    refuse_untraceable_model(model)
    model = copy.deepcopy(model).eval()
    run_on_inputs(model, example_inputs)
    leaves = frozenset(leaf_names)
    tracer: _ChannelTracer = _ChannelTracer(leaves)
    try:
        graph = tracer.trace(model)
    except Exception:  # noqa: BLE001 - retried below with shapes known, then with modules kept whole
        graph = None
    opaque: dict[str, str] = {}
    while graph is None:
        tracer = _ShapeSpecialisingTracer(leaves | set(opaque), example_inputs=example_inputs)
        try:
            graph = tracer.trace(model)
        except Exception as exc:  # any error of the forward under tracing is located and named
            failure = _failure(exc, tracer, model)
            if not failure.module or failure.module in opaque or len(opaque) >= MAX_OPAQUE_MODULES:
                advice = ADVICE.get(failure.cause, DEFAULT_ADVICE)
                kept = f" ({len(opaque)} module(s) kept whole before: {sorted(opaque)[:5]})" if opaque else ""
                raise TraceError(
                    f"torch.fx could not trace {type(model).__name__}: {failure.describe()}{kept}. {advice}: a "
                    "submodule torch.fx cannot trace is kept whole (its channels frozen) and the rest still slims."
                ) from exc
            opaque[failure.module] = f"not traceable: {failure.cause} at {failure.location}"
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.meta["opaque_modules"] = opaque
    gm.meta["shape_guards"] = getattr(tracer, "guards", 0)
    gm.eval()
    return gm
