"""Trace a model into a torch.fx graph.

Why torch.fx and not torch.export: slimming needs the graph at the level of the
user's modules (``layer1.0.conv1``), so that the weights we slice keep their
names and the state dict of the slimmed network matches the original. fx keeps
``call_module`` nodes for leaf layers and runs in milliseconds, while
torch.export lowers everything to aten ops with functionalised parameters and
takes seconds per model. torchvision keeps its models fx-traceable (its feature
extractor is built on fx), which is the zoo we must cover. The price is that
data-dependent Python control flow cannot be traced; we report the node or line
where tracing stopped.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import fx, nn

from compress.errors import InputShapeError, TraceError

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


class _ChannelTracer(fx.Tracer):
    def __init__(self, leaf_names: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.leaf_names = leaf_names

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or class_key(m) in EXTRA_LEAF_MODULES:
            return True
        return super().is_leaf_module(m, qualname)


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
    """Deep-copy ``model`` (left untouched), put the copy in eval mode and trace it.

    Modules named in ``leaf_names`` are kept whole (not traced into); the
    channel analysis then treats them as opaque and freezes their channels.

    Raises:
        InputShapeError: the model does not run on ``example_inputs``.
        TraceError: torch.fx cannot trace the model (the message names the node or line).
    """
    model = copy.deepcopy(model).eval()
    run_on_inputs(model, example_inputs)
    try:
        tracer = _ChannelTracer(frozenset(leaf_names))
        graph = tracer.trace(model)
    except Exception as exc:
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}. "
            "Data-dependent control flow (if/for on tensor values) cannot be traced; move it into a "
            "leaf module or pass that module's name in `ignore`."
        ) from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.eval()
    return gm
