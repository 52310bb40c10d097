"""The propagation pass: run the traced graph once and let the op table (``ops``) say how atoms flow.

Every channel a layer produces is an *atom* (``atoms.py``). The graph runs on the example inputs and, node by
node, an op handler couples, passes through or freezes the atoms of its operands. Atoms that end up in one
union-find class must be kept or cut together; ``groups.py`` turns the classes into channel groups.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from compress.space.atoms import CouplingContext, CouplingResult
from compress.space.ops import handle_node


class Propagator(fx.Interpreter):
    """Runs the graph on real inputs and lets the handler table propagate atoms."""

    def __init__(self, gm: fx.GraphModule, frozen_modules: set[str]) -> None:
        super().__init__(gm)
        self.ctx = CouplingContext()
        self.metas: dict[fx.Node, Any] = {}
        self.values: dict[fx.Node, Any] = {}
        self.frozen_modules = frozen_modules
        self.modules = dict(gm.named_modules())

    def meta_of(self, arg: Any) -> Any:
        """Meta of a node argument (recursing into lists); None for constants."""
        if isinstance(arg, fx.Node):
            return self.metas.get(arg)
        if isinstance(arg, (list, tuple)):
            return [self.meta_of(a) for a in arg]
        return None

    def run_node(self, n: fx.Node) -> Any:
        from compress.space.ops import handle_node  # the table lives in its own file

        value = super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        self.values[n] = value
        self.metas[n] = handle_node(self, n, args, kwargs, value)
        return value


def propagate(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], frozen_modules: set[str]) -> tuple[CouplingResult, Propagator]:
    """Run the propagation pass over ``gm`` and return what it learned."""
    prop = Propagator(gm, frozen_modules)
    with torch.no_grad():
        prop.run(*inputs)
    return prop.ctx.result(), prop


__all__ = ["Propagator", "propagate"]
