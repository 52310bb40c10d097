"""Which graph nodes change a tensor in place, and dead-code removal that keeps them.

torch.fx removes a node whose result nobody reads, unless it is a known side effect; it does not know that
``x.mul_(g)``, ``torch.relu_(x)``, ``F.relu(x, inplace=True)``, ``x += y`` or ``nn.ReLU(inplace=True)(x)``
change ``x``. A model may call such an op for its effect alone (timm's NF-Net: ``out.mul_(self.skipinit_gain)``,
the result dropped, ``out`` read afterwards), and removing it silently changes what the network computes. Every
graph rewrite here removes dead code with :func:`eliminate_dead_code`, which keeps them.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

from torch import fx, nn

# Python's augmented assignments: on tensors they write into the left operand.
INPLACE_OPERATORS = frozenset({
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor, operator.ilshift,
    operator.irshift, operator.setitem,
})


def _inplace_name(name: str) -> bool:
    """``mul_``, ``relu_``, ``copy_``: PyTorch's convention for ops that write into their first operand."""
    return name.endswith("_") and not name.startswith("_")


def _inplace_argument(fn: Any, args: tuple, kwargs: dict) -> bool:
    """``F.relu(x, True)`` / ``F.relu(x, inplace=True)``: a Python function with an ``inplace`` parameter."""
    if kwargs.get("inplace") is True:
        return True
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):  # a builtin without a signature, or arguments it does not bind
        return False
    return bound.arguments.get("inplace") is True


def mutates_input(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` writes into one of its input tensors (an in-place op).

    Args:
        node: a node of a traced graph.
        modules: the graph module's ``dict(named_modules())`` (for ``call_module`` nodes).

    Returns:
        True for in-place tensor methods and functions (a name ending in one ``_``), augmented assignments and
        ``setitem``, calls with ``inplace=True``, and layers whose ``inplace`` attribute is True.
    """
    if node.op == "call_method":
        return _inplace_name(str(node.target)) or node.kwargs.get("inplace") is True
    if node.op == "call_function":
        if node.target in INPLACE_OPERATORS:
            return True
        return _inplace_name(getattr(node.target, "__name__", "")) or \
            _inplace_argument(node.target, node.args, dict(node.kwargs))
    if node.op == "call_module":
        return getattr(modules.get(str(node.target)), "inplace", False) is True
    return False


def eliminate_dead_code(gm: fx.GraphModule) -> bool:
    """Remove the nodes of ``gm.graph`` whose results are unused, keeping every node that changes a tensor in
    place (:func:`mutates_input`) and every node fx itself considers impure. The caller recompiles.

    Args:
        gm: the graph module (changed in place).

    Returns:
        Whether any node was removed.
    """
    modules = dict(gm.named_modules())
    return gm.graph.eliminate_dead_code(
        is_impure_node=lambda n: n.is_impure() or mutates_input(n, modules))


__all__ = ["INPLACE_OPERATORS", "eliminate_dead_code", "mutates_input"]
