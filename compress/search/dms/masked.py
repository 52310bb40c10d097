"""A slimmable network under DMS masks: a differentiable top-k per channel group and per stage of residual blocks.

Channel masks multiply the outputs of the normalisation layers of each group (after BN, so BN cannot undo them;
producers without a norm layer are masked at their output). Block masks gate the residual branch: x + f(x) m.
The soft cost (FLOPs) is the network's exact FLOPs polynomial evaluated at the expected channel counts, each
block's ops weighted by its gate, so it is differentiable in every pruning ratio.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from compress.cost.flops import FLOP_FORMULAS, Poly
from compress.slim.reorder import block_order, channel_blocks, permutable_groups, permute_groups_, tied_groups
from compress.subnet.extract import extract_subnet
from compress.search.dms.blocks import BlockGate, find_blocks, group_stages, insert_gates, remove_blocks_
from compress.search.dms.topk import DifferentiableTopK

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def op_kind(op) -> str:
    """Cost family of a FLOPs op, for the latency surrogate: depthwise / grouped convs apart from dense ones."""
    if op.kind == "conv":
        k = op.params.get("kernel", 1)
        return ("conv_grouped" if op.params.get("gs") else "conv") + ("_1x1" if k == 1 else "")
    return op.kind


class DMSNetwork(nn.Module):
    """Wraps a SlimmableNetwork (at full width) with DMS channel and depth masks.

    Args:
        net: the slimmable network (its graph gets block gates inserted).
        min_ratio: no group keeps fewer than this fraction of its channels.
        depth: search the number of blocks per residual stage too.
    """

    def __init__(self, net, min_ratio: float = 0.25, depth: bool = True) -> None:
        super().__init__()
        self.net = net
        net.set_config(None)
        space, ga = net.space, net.assignment
        self._full = space.max_config()
        self.group_ids = [space.index[g.name] for g in space.free]
        self.permutable = permutable_groups(net)
        self.channel_topk = nn.ModuleList(
            DifferentiableTopK(g.width, min_keep=max(1, math.ceil(min_ratio * g.width))) for g in space.free)
        # where masks apply: (module name, flat positions into the concatenated mask vector)
        offsets = np.cumsum([0] + [g.width for g in space.free])
        slot = {gid: off for gid, off in zip(self.group_ids, offsets[:-1])}
        ones = int(offsets[-1])  # index of a constant 1 appended to the masks (frozen channels)
        modules = dict(net.graph_module.named_modules())
        norm_atoms, producers = [], []
        for site in net.sites:
            if site.kind == "module" and isinstance(modules[site.module], NORM_TYPES):
                norm_atoms.append(site.atoms)
                producers.append((site.module, site.atoms))
        covered = set(np.concatenate(norm_atoms).tolist()) if norm_atoms else set()
        for site in net.sites:
            if site.kind == "module" and site.role == "out" and not set(site.atoms.tolist()) <= covered:
                producers.append((site.module, site.atoms))
        self._apply: dict[str, torch.Tensor] = {}
        for name, atoms in producers:
            g, i = ga.atom_group[atoms], ga.atom_index[atoms]
            pos = np.array([slot[gg] + ii if gg in slot else ones for gg, ii in zip(g.tolist(), i.tolist())])
            if (pos != ones).any():
                self._apply[name] = torch.from_numpy(pos.astype(np.int64))
        self._masks: torch.Tensor | None = None
        self._hooks = [modules[name].register_forward_hook(self._hook(name)) for name in self._apply]
        # depth: residual blocks grouped into stages, each stage a top-k over its blocks
        self.stages = group_stages(net.graph_module, find_blocks(net.graph_module)) if depth else []
        self.stages = [s for s in self.stages if len(s) >= 1]
        blocks = [b for s in self.stages for b in s]
        self.gates = insert_gates(net.graph_module, blocks) if blocks else {}
        self.block_topk = nn.ModuleList(DifferentiableTopK(len(s), min_keep=0, hard_forward=True) for s in self.stages)
        self._build_cost(slot, ones)

    # ---- masks ------------------------------------------------------------------------------------------------
    def _hook(self, name: str):
        def hook(mod, inputs, out):
            if self._masks is None:
                return out
            m = self._masks[self._apply[name]]
            shape = [1] * out.dim()
            shape[1 if out.dim() > 2 else -1] = -1
            return out * m.view(shape)
        hook._dms_mask = True  # extraction drops these hooks from its copy
        return hook

    def compute_masks(self) -> None:
        """Evaluate every top-k once (call before each forward while searching)."""
        parts = [t() for t in self.channel_topk] + [torch.ones(1)]
        self._masks = torch.cat(parts)
        for stage, topk in zip(self.stages, self.block_topk):
            m = topk()
            for j, blk in enumerate(stage):
                self.gates[blk.add].value = m[j]

    def clear_masks(self) -> None:
        self._masks = None
        for gate in self.gates.values():
            gate.value = None

    def forward(self, *args):
        if self.net.config != self._full:
            self.net.set_config(None)  # masks act on the full-width network
        self.compute_masks()
        return self.net(*args)

    def update_importance(self) -> None:
        for t in list(self.channel_topk) + list(self.block_topk):
            t.update_importance()

    def topk_state(self) -> dict:
        """Pruning ratios and importances of every top-k (to come back to a searched structure)."""
        return {"channels": self.channel_topk.state_dict(), "blocks": self.block_topk.state_dict()}

    def load_topk_state(self, state: dict) -> None:
        self.channel_topk.load_state_dict(state["channels"])
        self.block_topk.load_state_dict(state["blocks"])

    def project_ratios_(self) -> None:
        for t in list(self.channel_topk) + list(self.block_topk):
            t.project_()

    def structure_modules(self) -> list:
        """Every top-k of the search: one per channel group, then one per stage of residual blocks."""
        return list(self.channel_topk) + list(self.block_topk)

    def structure_parameters(self) -> list[nn.Parameter]:
        return [t.a for t in list(self.channel_topk) + list(self.block_topk)]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    # ---- soft cost ----------------------------------------------------------------------------------------------
    def _build_cost(self, slot: dict, ones: int) -> None:
        fm = self.net.flops_model()
        counter = fm.counter
        gate_of = {}
        for s, stage in enumerate(self.stages):
            for j, blk in enumerate(stage):
                for name in blk.nodes | {blk.add}:  # the add goes with the block
                    gate_of[name] = (s, j)
        terms = []  # (coef, spec u or -1, spec v or -1, gate (s, j) or None, index of its op in feature_ops)
        self.feature_ops: list[str] = []  # one cost feature per FLOPs op: its FLOPs
        self.feature_kinds: list[str] = []  # and the op's cost family (op_kind)
        for op in self.net.coupling.flop_ops:
            poly: Poly = FLOP_FORMULAS[op.kind](op, counter.spec)
            g = gate_of.get(op.node.name)
            live = [(k, c) for k, c in poly.terms.items() if c]
            if not live:
                continue
            for k, c in live:
                terms.append((c, k[0] if len(k) > 0 else -1, k[1] if len(k) > 1 else -1, g, len(self.feature_ops)))
            self.feature_ops.append(op.node.name)
            self.feature_kinds.append(op_kind(op))
        n_specs = len(counter.runs)
        total_pos = ones + 1
        S = torch.zeros(n_specs + 1, total_pos)  # row n_specs: the constant 1
        for sid, (rg, ra, rl, rm) in enumerate(counter.runs):
            for g, a, l, m in zip(rg.tolist(), ra.tolist(), rl.tolist(), rm.tolist()):
                if g in slot:
                    S[sid, slot[g] + a: slot[g] + a + l] += m
                else:
                    S[sid, ones] += m * l
        S[n_specs, ones] = 1.0
        self._S = S
        self._coef = torch.tensor([t[0] for t in terms], dtype=torch.float64)
        self._u = torch.tensor([t[1] if t[1] >= 0 else n_specs for t in terms])
        self._v = torch.tensor([t[2] if t[2] >= 0 else n_specs for t in terms])
        stage_index = {(s, j): s * 1000 + j for s, st in enumerate(self.stages) for j in range(len(st))}
        self._gate = [stage_index[t[3]] if t[3] is not None else -1 for t in terms]
        self._feature = torch.tensor([t[4] for t in terms])
        self.constant = float(fm.constant)
        self._counter = counter

    def _soft_terms(self) -> torch.Tensor:
        masks = torch.cat([t(record=False) for t in self.channel_topk] + [torch.ones(1)])
        counts = self._S @ masks
        val = self._coef.float() * counts[self._u] * counts[self._v]
        if self.stages:
            bm = [t(record=False) for t in self.block_topk]
            gates = torch.stack([bm[g // 1000][g % 1000] if g >= 0 else torch.ones(()) for g in self._gate])
            val = val * gates
        return val

    def soft_flops(self) -> torch.Tensor:
        """Expected FLOPs under the current soft masks (differentiable in every pruning ratio)."""
        return self._soft_terms().sum() + self.constant

    def soft_features(self) -> torch.Tensor:
        """Expected FLOPs of each op (``self.feature_ops``) under the current soft masks."""
        return torch.zeros(len(self.feature_ops)).index_add(0, self._feature, self._soft_terms())

    def features_of_widths(self, widths: np.ndarray, removed: list[str] = ()) -> np.ndarray:
        """FLOPs of each op (``self.feature_ops``) for an (n, groups) array of hard group widths, with the blocks
        whose add node is in ``removed`` dropped (default: all blocks kept)."""
        counts = self._counter.counts(np.asarray(widths, dtype=np.int64)).astype(np.float64)
        counts = np.concatenate([counts, np.ones((len(counts), 1))], axis=1)
        val = self._coef.numpy() * counts[:, self._u.numpy()] * counts[:, self._v.numpy()]
        if removed:
            gone = {s * 1000 + j for s, stage in enumerate(self.stages) for j, blk in enumerate(stage)
                    if blk.add in set(removed)}
            val = val * np.array([0.0 if g in gone else 1.0 for g in self._gate])
        out = np.zeros((len(counts), len(self.feature_ops)))
        np.add.at(out.T, self._feature.numpy(), val.T)
        return out

    # ---- the hard result --------------------------------------------------------------------------------------
    def hard_widths(self) -> dict[str, int]:
        """Each group's kept count rounded to the nearest width the group allows (a valid config of the space);
        the soft counts do not know the divisor, so rounding to nearest keeps hard and soft cost close."""
        cfg = {}
        for gid, t in zip(self.group_ids, self.channel_topk):
            g = self.net.space.groups[gid]
            k = t.k()
            allowed = np.array(g.allowed_widths())
            cfg[g.name] = int(allowed[np.argmin(np.abs(allowed - k) - 1e-6 * allowed)])
        return cfg

    def removed_blocks(self) -> list[str]:
        """Add nodes of the blocks the depth masks drop (the least important ones of each stage)."""
        out = []
        for stage, t in zip(self.stages, self.block_topk):
            keep = set(t.kept().tolist())
            out += [blk.add for j, blk in enumerate(stage) if j not in keep]
        return out

    def finalize_(self) -> tuple[dict[str, int], list[str]]:
        """Order channels by importance (kept ones first) in every permutable group, drop masks and hooks.

        Returns the config and the removed blocks; the wrapped network is left plain (gates inert).
        """
        perms = {}
        blocks, tied = channel_blocks(self.net), tied_groups(self.net)
        for gid, t in zip(self.group_ids, self.channel_topk):
            if gid in self.permutable:  # whole blocks (grouped convs; tied runs in their order) by summed importance
                scores = (t.importance + t._tiebreak).detach().numpy().astype(np.float64)
                perms[gid] = block_order(scores, blocks.get(gid, 1), keep_inner=gid in tied)
        cfg, removed = self.hard_widths(), self.removed_blocks()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.clear_masks()
        if perms:  # on the plain network: permute_groups_ checks that the full-width function is unchanged
            permute_groups_(self.net, perms)
        return cfg, removed


def extract_with_depth(net, config: dict, removed: list[str]):
    """The physically smaller subnet: channels sliced to ``config``, removed blocks replaced by their skip."""
    for m in net.graph_module.modules():
        if isinstance(m, BlockGate):
            m.value = None  # a search's gate values are not part of the subnet
    sub = extract_subnet(net, config)
    for m in sub.modules():
        for hid, fn in list(m._forward_hooks.items()):
            if getattr(fn, "_dms_mask", False):
                del m._forward_hooks[hid]
    remove_blocks_(sub, set(removed))
    return sub
