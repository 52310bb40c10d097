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

    def __init__(self, gm: fx.GraphModule, frozen_modules: dict[str, str]) -> None:
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


def propagate(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...],
              frozen_modules: dict[str, str]) -> tuple[CouplingResult, Propagator]:
    """Run the propagation pass over ``gm`` and return what it learned.

    ``frozen_modules`` maps the modules kept whole (ignored by the user, or not traceable) to the reason, which
    their frozen channels carry."""
    prop = Propagator(gm, frozen_modules)
    with torch.no_grad():
        prop.run(*inputs)
    freeze_shared_parameters(gm, prop.ctx)
    return prop.ctx.result(), prop


def freeze_shared_parameters(gm: fx.GraphModule, ctx: CouplingContext) -> None:
    """Freeze every channel of a layer whose parameters are also used outside its own call: read straight from
    the graph (``F.conv2d(y, self.conv.weight)``, ``F.normalize(fc.weight)``) or tied to another layer's
    (``fc.weight = embed.weight``). Slicing the layer would leave the other use reading a tensor of the wrong
    width (the extracted subnet would crash) and a permutation would change what it computes."""
    owner_of: dict[int, list[str]] = {}  # id(parameter) -> layers (modules with channel dims) holding it
    modules = dict(gm.named_modules())
    for name in ctx.module_dims:
        for t in [*modules[name].parameters(recurse=False), *modules[name].buffers(recurse=False)]:
            owner_of.setdefault(id(t), []).append(name)
    for layers in owner_of.values():
        if len(layers) > 1:
            for name in layers:
                for atoms in ctx.module_dims[name].values():
                    ctx.freeze(atoms, f"{name}: a parameter is tied to {sorted(set(layers) - {name})}")
    for n in gm.graph.nodes:
        if n.op != "get_attr":
            continue
        owner, _, leaf = str(n.target).rpartition(".")
        if owner in ctx.module_dims:
            for atoms in ctx.module_dims[owner].values():
                ctx.freeze(atoms, f"{owner}: its {leaf} is also read outside the layer at node {n.name!r}")


__all__ = ["Propagator", "propagate"]
