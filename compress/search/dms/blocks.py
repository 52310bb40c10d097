"""Residual blocks a network can drop: ``x + f(x)`` adds in the traced graph, grouped into stages.

A block is an add whose one operand (the skip) is an ancestor of the other (the branch); removing it replaces
the add by its skip. Consecutive blocks form a stage when each block's skip is the previous block's output,
directly or through one element-wise op (the ReLU after a ResNet block). Blocks with a projection on the skip
(a downsampling block) are not of this form and are never removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from compress.subnet.depth import ADD_TARGETS, ancestors, is_add, remove_blocks_

__all__ = ["ADD_TARGETS", "Block", "BlockGate", "find_blocks", "group_stages", "insert_gates", "remove_blocks_"]


@dataclass
class Block:
    add: str          # name of the add node
    branch: str       # the branch output feeding the add
    skip: str         # the skip input of the add
    nodes: set[str] = field(default_factory=set)  # nodes computed only for the branch


def find_blocks(gm: fx.GraphModule) -> list[Block]:
    """Every removable ``x + f(x)`` block of the graph, in graph order."""
    out = []
    for n in gm.graph.nodes:
        if not is_add(n):
            continue
        a, b = n.args
        for branch, skip in ((a, b), (b, a)):
            inner = ancestors(branch, skip)
            if inner is not None and branch is not skip:
                # only nodes that feed nothing outside the branch can go with it
                if all(all(u in inner or u is n for u in x.users) for x in inner):
                    out.append(Block(n.name, branch.name, skip.name, {x.name for x in inner}))
                break
    return out


def group_stages(gm: fx.GraphModule, blocks: list[Block]) -> list[list[Block]]:
    """Consecutive blocks whose skip is the previous block's output (possibly after one element-wise op)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    stages: list[list[Block]] = []
    for blk in blocks:
        skip = nodes[blk.skip]
        prev = stages[-1][-1] if stages else None
        chained = prev is not None and (blk.skip == prev.add or (
            len(skip.all_input_nodes) == 1 and skip.all_input_nodes[0].name == prev.add))
        if chained:
            stages[-1].append(blk)
        else:
            stages.append([blk])
    return stages


class BlockGate(nn.Module):
    """Multiplies a residual branch by a scalar gate during the depth search (identity when ``value`` is None)."""

    removed_at_export = True  # dropped by remove_blocks_; the latency predictor sees through it too

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.value is None else x * self.value


def insert_gates(gm: fx.GraphModule, blocks: list[Block]) -> dict[str, BlockGate]:
    """Put a BlockGate between each block's branch and its add (in place); returns add name -> gate."""
    nodes = {n.name: n for n in gm.graph.nodes}
    gates = {}
    for i, blk in enumerate(blocks):
        name = f"_dms_gate_{i}"
        gate = BlockGate()
        gm.add_submodule(name, gate)
        branch, add = nodes[blk.branch], nodes[blk.add]
        with gm.graph.inserting_after(branch):
            g = gm.graph.call_module(name, (branch,))
        add.replace_input_with(branch, g)
        gates[blk.add] = gate
    gm.graph.lint()
    gm.recompile()
    return gates
