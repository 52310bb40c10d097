"""Shape-specialised tracing: torch.fx with the example inputs' real value beside every node it records.

Plain torch.fx refuses Python control flow on traced values, and much of it depends on shapes only, which are
known once the example inputs are fixed: ``if x.shape[-2] < self.kernel_size:`` (timm's ConvMlp),
``if new_h != H:`` (MobileViT), ``y = list(self.cv1(x).chunk(2, 1))`` (YOLOv8's C2f). The mixin here runs every
node on the example inputs as it is recorded (one eager forward, node by node) and keeps, per node, whether its
value follows from shapes alone (sizes, ``ndim``, ``dtype``, ``device`` and constants) or from tensor values:

- ``bool()`` of a shape-only value takes the branch the example inputs take, and records a guard
  (``torch._assert``) in the graph: run on an input that would take the other branch, the graph fails with the
  file and line of the branch instead of computing something else;
- iterating over, or ``len()`` of, a tuple or list (``chunk``, ``split``, ``unbind``: a number of parts fixed by
  shapes) gives one ``getitem`` node per part.

Control flow on tensor values (``if x.sum() > 0:``) and loops over a tensor's first dimension stay refused, each
with its own cause (``CAUSE_*``); ``compress.space.trace`` then keeps the innermost module that holds it whole.
"""

from __future__ import annotations

import inspect
import operator
import os
import traceback
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import fx
from torch.fx.proxy import Attribute, Proxy, TraceError as FxTraceError

CAUSE_DATA_DEPENDENT = "Python control flow (if, while, and/or, bool()) on tensor values (data-dependent)"
CAUSE_TENSOR_LOOP = "a Python loop, unpacking or len() over a tensor (its first dimension)"
CAUSE_NOT_COMPUTED = "Python control flow on a value that could not be computed on the example inputs"

# Attributes and methods of a tensor whose value follows from its shape, dtype and device only.
SHAPE_ATTRIBUTES = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout", "is_sparse", "is_quantized"})
SHAPE_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement", "get_device", "is_floating_point",
                           "is_complex", "is_contiguous"})

_UNKNOWN = object()  # a node whose value could not be computed on the example inputs
_TORCH_DIR = str(Path(torch.__file__).resolve().parent) + os.sep
_OWN_DIR = str(Path(__file__).resolve().parent) + os.sep


def is_library_file(filename: str) -> bool:
    """True for files of torch itself and of this package's tracing code (never where a user's model is)."""
    path = str(Path(filename).resolve())
    return path.startswith(_TORCH_DIR) or path.startswith(_OWN_DIR)


def user_frame_of(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of ``exc``'s traceback that is model code (not torch, not this package's tracer)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not is_library_file(f.filename)]
    return frames[-1] if frames else None


def current_user_location() -> str:
    """``file:line`` of the innermost model code on the current call stack ("unknown location" if none)."""
    frame = inspect.currentframe()
    try:
        while frame is not None and is_library_file(frame.f_code.co_filename):
            frame = frame.f_back
        return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "unknown location"
    finally:
        del frame


def contains_tensor(value: Any) -> bool:
    """Whether ``value`` is a tensor or holds one (in lists, tuples and dict values, at any depth)."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(contains_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(contains_tensor(v) for v in value.values())
    return False


class _LenFromValue:
    """``len()`` of a proxy: the length of its concrete tuple or list (a tensor's length stays refused)."""

    tracer: Any
    node: fx.Node

    def __len__(self) -> int:
        return self.tracer.count_parts(self)

    def __getattr__(self, k: str) -> "ConcreteAttribute":
        return ConcreteAttribute(self, k)  # type: ignore[arg-type]


class ConcreteProxy(_LenFromValue, Proxy):
    """A proxy whose ``len()`` is its concrete value's when that is a tuple or list."""


class ConcreteAttribute(_LenFromValue, Attribute):
    """An attribute of a proxy (``x.shape``) with the same ``len()``."""


class ConcreteValuesMixin:
    """Mixed into an ``fx.Tracer``: evaluates every node on the example inputs while tracing (see the module doc).

    Args:
        example_inputs: the positional inputs of the traced forward (cloned: in-place ops must not touch the
            caller's tensors).
    """

    graph: fx.Graph
    root: torch.nn.Module

    def __init__(self, *args: Any, example_inputs: tuple[torch.Tensor, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.example_inputs = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in example_inputs)
        self.values: dict[fx.Node, Any] = {}
        self.shape_only: set[fx.Node] = set()
        self.guards = 0
        self._placeholders = 0
        self._evaluating = False  # running a node eagerly: fx's patched Module.__call__/__getattr__ step aside

    # ---- values beside the nodes -------------------------------------------------------------
    def create_node(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                    type_expr: Any = None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)  # type: ignore[misc]
        if kind != "output":
            self._evaluating = True
            try:
                with torch.no_grad():
                    value = self._evaluate(node)
            except Exception:  # the graph is still right; only control flow on this value is refused
                value = _UNKNOWN
            finally:
                self._evaluating = False
            self.values[node] = value
            if value is not _UNKNOWN and not contains_tensor(value) and (
                    self._reads_shape(node) or all(a in self.shape_only for a in node.all_input_nodes)):
                self.shape_only.add(node)
        return node

    def _evaluate(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            i, self._placeholders = self._placeholders, self._placeholders + 1
            if i < len(self.example_inputs):
                return self.example_inputs[i]
            return node.args[0] if node.args else _UNKNOWN  # a default argument of forward
        args = fx.node.map_arg(node.args, self._value_of)
        kwargs = fx.node.map_arg(node.kwargs, self._value_of)
        if node.op == "get_attr":
            return operator.attrgetter(str(node.target))(self.root)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if node.op == "call_module":
            return self.root.get_submodule(str(node.target))(*args, **kwargs)
        return _UNKNOWN

    def _value_of(self, node: fx.Node) -> Any:
        value = self.values.get(node, _UNKNOWN)
        if value is _UNKNOWN:
            raise LookupError(f"no value for node {node.name}")
        return value

    @staticmethod
    def _reads_shape(node: fx.Node) -> bool:
        if node.op == "call_function" and node.target is getattr:
            return len(node.args) > 1 and node.args[1] in SHAPE_ATTRIBUTES
        return node.op == "call_method" and node.target in SHAPE_METHODS

    def call_module(self, m: torch.nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        if self._evaluating:  # a leaf module run eagerly on real tensors: no node, no proxy
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)  # type: ignore[misc]

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if self._evaluating:  # the real parameter, not a get_attr proxy
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)  # type: ignore[misc]

    def proxy(self, node: fx.Node) -> Proxy:
        return ConcreteProxy(node, self)

    # ---- control flow --------------------------------------------------------------------------
    def to_bool(self, obj: Proxy) -> bool:
        """The branch the example inputs take, when the condition follows from shapes; a guard records it."""
        node = obj.node
        value = self.values.get(node, _UNKNOWN)
        if value is _UNKNOWN:
            raise FxTraceError(CAUSE_NOT_COMPUTED)
        if node not in self.shape_only:
            raise FxTraceError(CAUSE_DATA_DEPENDENT)
        taken = bool(value)
        where = current_user_location()
        shapes = [tuple(t.shape) for t in self.example_inputs if isinstance(t, torch.Tensor)]
        message = (f"this graph was traced at input shapes {shapes}, where the condition at {where} is {taken}; "
                   "on these inputs it is not: trace the model again at the input shape you run it at")
        create_proxy = self.create_proxy  # type: ignore[attr-defined]  # fx.Tracer's
        cond = obj if taken else create_proxy("call_function", operator.not_, (obj,), {})
        create_proxy("call_function", torch._assert, (cond, message), {})
        self.guards += 1
        return taken

    def count_parts(self, obj: Proxy) -> int:
        """The number of parts of a tuple or list value (chunk, split, unbind, a size), fixed by shapes."""
        value = self.values.get(obj.node, _UNKNOWN)
        if isinstance(value, (tuple, list)):
            return len(value)
        raise FxTraceError(CAUSE_TENSOR_LOOP if isinstance(value, torch.Tensor) else CAUSE_NOT_COMPUTED)

    def iter(self, obj: Proxy) -> Iterator:
        """One ``obj[i]`` proxy per part of a tuple or list value."""
        return iter([obj[i] for i in range(self.count_parts(obj))])


__all__ = ["CAUSE_DATA_DEPENDENT", "CAUSE_NOT_COMPUTED", "CAUSE_TENSOR_LOOP", "ConcreteAttribute", "ConcreteProxy",
           "ConcreteValuesMixin", "contains_tensor", "current_user_location", "is_library_file", "user_frame_of"]
