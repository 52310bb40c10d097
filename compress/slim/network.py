"""SlimmableNetwork: a traced model that runs at any config of its channel space.

Building one traces a deep copy of the model, propagates channels through the
op table, groups them, rewrites the few ops whose behaviour depends on channel
counts (chunk/split, channel shuffle, parameters read straight from the graph)
and makes every weight layer slimmable. ``set_config`` then only computes which
channels each layer keeps; the forward slices the shared full-width weights.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn

from compress.space.atoms import CouplingResult
from compress.space.propagate import propagate
from compress.cost.flops import FlopsModel
from compress.errors import InvalidParameterError, check_parameter
from compress.space.groups import GroupAssignment, build_groups, keep_split_parts_nonempty, misaligned_grouped_convs
from compress.slim.layers import AttrSlice, ChannelPermute, ChannelSplit, Selection, make_slimmable
from compress.space.space import ChannelSpace, Config
from compress.space.trace import as_input_tuple, trace_model


def _selection(live: np.ndarray) -> Selection:
    n = int(live.sum())
    if n == len(live):
        return None
    if live[:n].all():
        return n
    return torch.from_numpy(np.flatnonzero(live).astype(np.int64))


class SlimmableNetwork(nn.Module):
    """A model whose channel groups can be narrowed in place, by real weight slicing.

    Args:
        model: any CNN (left untouched; a deep copy is traced).
        example_inputs: a tensor or tuple of tensors the model accepts.
        divisor: widths are multiples of this (grouped convs raise it to their group width).
        ignore: names of modules whose channels must not be cut (kept whole and frozen).

    Raises:
        InputShapeError, TraceError: the model does not run or cannot be traced.
        InvalidParameterError: bad ``divisor`` or an ``ignore`` entry that names no module.

    Example:
        >>> net = SlimmableNetwork(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> net.set_config(net.space.uniform_config(0.5))
        >>> y = net(torch.randn(2, 3, 64, 64))
    """

    def __init__(self, model: nn.Module, example_inputs: Any, divisor: int = 8,
                 ignore: Sequence[str] = ()) -> None:
        super().__init__()
        check_parameter(isinstance(model, nn.Module), "model", "SlimmableNetwork", "a torch.nn.Module", type(model))
        check_parameter(isinstance(divisor, int) and divisor >= 1, "divisor", "SlimmableNetwork",
                        "an int >= 1", divisor)
        inputs = as_input_tuple(example_inputs)
        names = {n for n, _ in model.named_modules() if n}
        for name in ignore:
            if name not in names:
                close = difflib.get_close_matches(str(name), names, n=3)
                raise InvalidParameterError(
                    f"The 'ignore' entry {name!r} names no module of {type(model).__name__}. "
                    f"Closest module names: {close or 'none'}. Use names from model.named_modules().")
        gm = trace_model(model, inputs, leaf_names=ignore)
        res, prop = propagate(gm, inputs, frozen_modules=set(ignore))
        ga = build_groups(res, divisor)
        for _ in range(10):  # freeze grouped convs that first-k slimming would cut through
            bad = misaligned_grouped_convs(res, ga)
            if not bad:
                break
            for name, atoms in bad:
                for r in res.parent[atoms].tolist():
                    res.frozen_reason.setdefault(r, f"{name}: conv groups not aligned with channel groups")
            ga = build_groups(res, divisor)
        keep_split_parts_nonempty(res, ga)
        self.example_inputs = tuple(t.detach().clone() for t in inputs)
        self.divisor = divisor
        self.ignore = tuple(ignore)
        self.coupling: CouplingResult = res
        self.assignment: GroupAssignment = ga
        self.graph_module = gm
        self.tensor_metas = prop.metas  # fx node -> TMeta (shape, channel atoms) of every traced tensor
        self._dims: dict[tuple, np.ndarray] = {}
        self._rewrite(gm, res, prop.values)
        self._index_dims()
        self.space = ChannelSpace(ga.groups)
        self._describe_members()
        self.config: Config = self.space.max_config()
        self._flops_model = None
        self.eval()

    # ---- building --------------------------------------------------------------------
    def _rewrite(self, gm: fx.GraphModule, res: CouplingResult, values: dict) -> None:
        nodes = {n.name: n for n in gm.graph.nodes}
        graph = gm.graph
        self._perms: dict[str, np.ndarray] = {}
        for i, (node_name, (dim, parts)) in enumerate(res.splits.items()):
            n = nodes[node_name]
            mod_name = f"_slim_split_{i}"
            gm.add_submodule(mod_name, ChannelSplit(dim, [len(p) for p in parts]))
            with graph.inserting_after(n):
                new = graph.call_module(mod_name, (n.args[0],))
            n.replace_all_uses_with(new)
            graph.erase_node(n)
            self._dims.update({("split", mod_name, j): p for j, p in enumerate(parts)})
        for i, (origin, end, dim, perm, atoms) in enumerate(res.permutes):
            mod_name = f"_slim_permute_{i}"
            gm.add_submodule(mod_name, ChannelPermute(dim, torch.from_numpy(perm)))
            with graph.inserting_after(end):
                new = graph.call_module(mod_name, (origin,))
            end.replace_all_uses_with(new)
            self._dims[("permute", mod_name)] = atoms
            self._perms[mod_name] = perm
        i = 0
        for n in list(graph.nodes):
            if n.op == "get_attr" and str(n.target) in res.attr_dims:
                dim, atoms = res.attr_dims[str(n.target)]
                mod_name = f"_slim_attr_{i}"
                i += 1
                gm.add_submodule(mod_name, AttrSlice(dim))
                with graph.inserting_after(n):
                    new = graph.call_module(mod_name, (n,))
                n.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
                self._dims[("attr", mod_name, str(n.target))] = atoms
        graph.eliminate_dead_code()
        graph.lint()
        gm.recompile()
        modules = dict(gm.named_modules())
        for name, roles in res.module_dims.items():
            make_slimmable(modules[name])
            for role, atoms in roles.items():
                self._dims[("module", name, role)] = atoms

    def _index_dims(self) -> None:
        """Concatenate the group/index of every sliced dim for one-shot liveness per config."""
        ga = self.assignment
        keys = list(self._dims)
        sizes = [len(self._dims[k]) for k in keys]
        atoms = np.concatenate([self._dims[k] for k in keys]) if keys else np.zeros(0, np.int64)
        self._dim_keys = keys
        self._dim_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._pos_group = ga.atom_group[atoms]
        self._pos_index = ga.atom_index[atoms]

    def _describe_members(self) -> None:
        ga = self.assignment
        for key, atoms in self._dims.items():
            label = f"{key[1]}:{key[2]}" if key[0] == "module" else f"{key[1]}"
            for gid in np.unique(ga.atom_group[atoms]).tolist():
                self.space.groups[gid].members.append(label)

    def positions(self, atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group number and index within the group of each atom."""
        return self.assignment.atom_group[atoms], self.assignment.atom_index[atoms]

    # ---- running -------------------------------------------------------------------------
    def live_masks(self, config: Mapping[str, int] | None) -> dict[tuple, np.ndarray]:
        """For every sliced dim, which of its full-width positions a config keeps."""
        k = self.space.widths(config)
        live = self._pos_index < k[self._pos_group]
        off = self._dim_offsets
        return {key: live[off[i]:off[i + 1]] for i, key in enumerate(self._dim_keys)}

    def set_config(self, config: Mapping[str, int] | None) -> None:
        """Put the network at ``config`` in place (None or a partial dict: missing groups at full).

        Raises:
            InvalidConfigError: unknown group names or widths the group cannot take.
        """
        masks = self.live_masks(config)
        modules = dict(self.graph_module.named_modules())
        for key, live in masks.items():
            kind, name = key[0], key[1]
            mod = modules[name]
            if kind == "module":
                mod._slim[key[2]] = _selection(live)
            elif kind == "split":
                mod.sizes[key[2]] = int(live.sum())
            elif kind == "attr":
                mod.sel = _selection(live)
            elif kind == "permute":
                rank = np.cumsum(live) - 1
                perm = self._perms[name]
                keep = live[perm]
                mod.index = torch.from_numpy(rank[perm[keep]].astype(np.int64))
        self.config = {name: int(w) for name, w in self.space.config_from_widths(self.space.widths(config)).items()}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.graph_module(*args, **kwargs)

    # ---- costs ---------------------------------------------------------------------------
    def flops(self, config: Mapping[str, int] | None = None) -> int:
        """FLOPs of the subnet at ``config`` (equals ``count_flops`` of the extracted subnet)."""
        return int(self.flops_model().flops_batch([config if config is not None else self.config])[0])

    def flops_model(self):
        """The analytic FLOPs model of this space (built on first use)."""
        if self._flops_model is None:
            self._flops_model = FlopsModel(self)
        return self._flops_model
