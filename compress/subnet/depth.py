"""Depth on an extracted subnet: drop residual blocks (``x + f(x)`` adds of the traced graph) by name.

A block is an add whose one operand (the skip) is an ancestor of the other (the branch); removing it replaces the
add by its skip and lets dead-code elimination drop the branch. The DMS depth search (``compress.search.dms``)
decides which blocks go; this module only applies that decision, so a saved result can be rebuilt without the
search (``SlimResult.load``). Modules marked ``removed_at_export`` (the search's block gates) are dropped too.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from compress.space.inplace import eliminate_dead_code

ADD_TARGETS = {operator.add, operator.iadd, torch.add}


def is_add(n: fx.Node) -> bool:
    """An add of two graph values (``x + y``, ``torch.add(x, y)``, ``x.add(y)``)."""
    return ((n.op == "call_function" and n.target in ADD_TARGETS) or (n.op == "call_method" and n.target == "add")) \
        and len(n.args) == 2 and all(isinstance(a, fx.Node) for a in n.args)


def ancestors(n: fx.Node, stop: fx.Node) -> set[fx.Node] | None:
    """Nodes between ``stop`` (exclusive) and ``n`` (inclusive), or None if ``stop`` is not an ancestor."""
    seen, stack, found = set(), [n], False
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        if x is stop:
            found = True
            continue
        seen.add(x)
        stack.extend(a for a in x.all_input_nodes)
    return seen if found else None


def remove_blocks_(gm: fx.GraphModule, removed: set[str]) -> int:
    """In a (copied) graph module: drop every gate, and replace each removed block's add by its skip.

    Args:
        gm: an extracted subnet (changed in place and recompiled).
        removed: names of the add nodes of the blocks to drop (``SlimResult.removed_blocks``); a name that is not
            an add of ``gm`` is skipped.

    Returns the number of blocks removed.
    """
    count = 0
    modules = dict(gm.named_modules())
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and getattr(modules.get(n.target), "removed_at_export", False):
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
    for n in list(gm.graph.nodes):
        if n.name in removed and is_add(n):
            a, b = n.args
            skip = b if ancestors(a, b) is not None else a
            n.replace_all_uses_with(skip)
            gm.graph.erase_node(n)
            count += 1
    if count:  # an in-place activation that followed a removed add would now overwrite the shared skip tensor
        for m in gm.modules():
            if getattr(m, "inplace", False) is True:
                m.inplace = False
    eliminate_dead_code(gm)  # an in-place op whose result is unused still acts on its input: kept
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return count
