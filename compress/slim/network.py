"""SlimmableNetwork: a traced model that runs at any config of its channel space.

Building one traces a deep copy of the model, propagates channels through the
op table, groups them, rewrites the few ops whose behaviour depends on channel
counts (chunk/split, channel shuffle, parameters read straight from the graph)
and makes every weight layer slimmable (its entry of ``compress.slim.layers.LAYER_KINDS``).
``set_config`` then only computes which channels each layer keeps; the forward
slices the shared full-width weights.

Every tensor dim that holds channels of the space is a :class:`Site` of
``net.sites`` (a weight layer's channel role, a split part, a parameter read from
the graph, a channel shuffle); ``SITE_KINDS`` says, per site kind, how a config
narrows it in place (``set_config``), how extraction makes that permanent and how
channel reordering permutes it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn

from compress.space.atoms import CouplingResult
from compress.space.propagate import propagate
from compress.cost.flops import FlopsModel
from compress.errors import InvalidParameterError, UnsupportedOpError, check_parameter, is_int
from compress.space.inplace import eliminate_dead_code
from compress.space.groups import (GroupAssignment, build_groups, keep_split_parts_nonempty, misaligned_grouped_convs,
                                   misaligned_tied_blocks)
from compress.slim.layers import (AttrSlice, ChannelPermute, ChannelSlice, ChannelSplit, NormShape, find_layer_kind,
                                  make_slimmable, selection_of, set_slim_selection, slim_kind, slim_selection, take,
                                  unmake_slimmable)
from compress.space.space import ChannelSpace, Config
from compress.space.trace import as_input_tuple, trace_model


@dataclass(frozen=True)
class Site:
    """One tensor dim of the network that holds channels of the space and is narrowed with them.

    Attributes:
        kind: what narrows it: "module" (a weight layer's channel role), "split" (one part of a
            ``ChannelSplit``), "attr" (a parameter read straight from the graph, cut by an ``AttrSlice``),
            "permute" (the channels a ``ChannelPermute`` shuffles), "slice" (the input channels of a
            ``ChannelSlice``, a fixed ``x[:, a:b]``) or "norm_shape" (the channels a functional layer norm
            normalises over, counted by a ``NormShape``).
        module: name of the module that applies it, in ``net.graph_module``.
        role: for "module" the channel role ("in", "out", "feat", see ``compress.slim.layers.LayerKind``); for
            "split" the part index (int); for "attr" the parameter's target in the graph (e.g.
            "features.1.0.layer_scale"); None for "permute", "slice" and "norm_shape".
        atoms: (n,) int64 channel atom of each position along the dim (``net.positions(atoms)`` gives the group
            and the index within the group). Not part of equality: a site is identified by kind, module, role.
    """

    kind: str
    module: str
    role: str | int | None
    atoms: np.ndarray = field(compare=False, repr=False)

    @property
    def label(self) -> str:
        """How the site is listed in its groups' ``members``: "module:role" for a layer, else the module."""
        return f"{self.module}:{self.role}" if self.kind == "module" else self.module


@dataclass(frozen=True)
class SiteKind:
    """How one kind of site takes a config: one entry of ``SITE_KINDS``.

    Attributes:
        apply: ``apply(net, module, site, live)`` narrows the site's module to the (n,) bool mask ``live`` of
            the site's positions, reversibly (``set_config``, and extraction on its copy).
        make_permanent: ``make_permanent(graph_module, module_name)``, on an extracted copy after ``apply``:
            turn the module into what a standalone network of that width has (called once per module).
        permute: ``permute(graph_module, module, site, index)`` reorders the full-width tensors the site
            covers: position j takes old position ``index[j]`` (LongTensor).
    """

    apply: Callable[["SlimmableNetwork", nn.Module, Site, np.ndarray], None]
    make_permanent: Callable[[fx.GraphModule, str], None]
    permute: Callable[[fx.GraphModule, nn.Module, Site, torch.Tensor], None]


def _nothing(*args: Any) -> None:
    return None


def _apply_module(net: "SlimmableNetwork", mod: nn.Module, site: Site, live: np.ndarray) -> None:
    set_slim_selection(mod, site.role, selection_of(live))


def _module_permanent(gm: fx.GraphModule, name: str) -> None:
    mod = gm.get_submodule(name)
    slim_kind(mod).slice(mod, slim_selection(mod))
    unmake_slimmable(mod)


def _module_permute(gm: fx.GraphModule, mod: nn.Module, site: Site, idx: torch.Tensor) -> None:
    slim_kind(mod).permute(mod, site.role, idx)


def _apply_split(net: "SlimmableNetwork", mod: nn.Module, site: Site, live: np.ndarray) -> None:
    mod.sizes[site.role] = int(live.sum())


def _apply_attr(net: "SlimmableNetwork", mod: nn.Module, site: Site, live: np.ndarray) -> None:
    mod.sel = selection_of(live)


def _attr_owner(gm: fx.GraphModule, target: str) -> tuple[nn.Module, str]:
    owner_name, _, leaf = target.rpartition(".")
    return (gm.get_submodule(owner_name) if owner_name else gm), leaf


def _attr_permanent(gm: fx.GraphModule, name: str) -> None:
    """Slice the parameter itself and drop the AttrSlice from the graph."""
    slicer = gm.get_submodule(name)
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and n.target == name:
            attr_node = n.args[0]
            owner, leaf = _attr_owner(gm, str(attr_node.target))
            old = getattr(owner, leaf)
            new = take(old, slicer.dim, slicer.sel).detach().clone()
            setattr(owner, leaf, nn.Parameter(new, requires_grad=old.requires_grad)
                    if isinstance(old, nn.Parameter) else new)
            n.replace_all_uses_with(attr_node)
            gm.graph.erase_node(n)
    gm.delete_submodule(name)


def _attr_permute(gm: fx.GraphModule, mod: nn.Module, site: Site, idx: torch.Tensor) -> None:
    owner, leaf = _attr_owner(gm, site.role)
    t = getattr(owner, leaf)
    t.data = t.data.index_select(mod.dim, idx)


def _apply_slice(net: "SlimmableNetwork", mod: nn.Module, site: Site, live: np.ndarray) -> None:
    """The live channels in full-width positions [a, b) sit at [live[:a].sum(), live[:b].sum()) once slimmed."""
    start, stop = net.slice_bounds(site.module)
    mod.start, mod.stop = int(live[:start].sum()), int(live[:stop].sum())


def _apply_permute(net: "SlimmableNetwork", mod: nn.Module, site: Site, live: np.ndarray) -> None:
    rank = np.cumsum(live) - 1
    perm = net.permutation(site.module)
    mod.index = torch.from_numpy(rank[perm[live[perm]]].astype(np.int64))


def _apply_norm_shape(net: "SlimmableNetwork", mod: nn.Module, site: Site, live: np.ndarray) -> None:
    mod.size = int(live.sum())


# site kind -> how it is narrowed in place, made permanent, permuted. Splits and permutes are already what a
# standalone network has once applied, and they move no weights when channels are reordered.
SITE_KINDS: dict[str, SiteKind] = {
    "module": SiteKind(_apply_module, _module_permanent, _module_permute),
    "split": SiteKind(_apply_split, _nothing, _nothing),
    "attr": SiteKind(_apply_attr, _attr_permanent, _attr_permute),
    "permute": SiteKind(_apply_permute, _nothing, _nothing),
    "slice": SiteKind(_apply_slice, _nothing, _nothing),
    "norm_shape": SiteKind(_apply_norm_shape, _nothing, _nothing),
}


class SlimmableNetwork(nn.Module):
    """A model whose channel groups can be narrowed in place, by real weight slicing.

    A slimmable network in the sense of Yu et al. 2019, "Universally Slimmable Networks and Improved Training
    Techniques": one set of weights, any width per group, a narrower layer using the first k channels. The groups
    that must be cut together are found by tracing the model and coupling channels through every op (the problem
    DepGraph solves, Fang et al. 2023, "DepGraph: Towards Any Structural Pruning"; here by union-find over
    per-channel atoms, see ``compress.space``).

    Args:
        model: any CNN (left untouched; a deep copy is traced).
        example_inputs: a tensor (e.g. 1 x C x H x W) or tuple of tensors the model accepts; kept (cloned) as
            ``net.example_inputs``.
        divisor: widths are multiples of this many channels (grouped convs raise it to their group width).
        ignore: names of modules whose channels must not be cut (kept whole and frozen). A submodule torch.fx
            cannot trace is kept whole the same way, without being named here (its frozen channels say
            "not traceable: <cause> at <file>:<line>").

    Raises:
        InputShapeError, TraceError: the model does not run or its own forward cannot be traced (the message names
            the module, file:line and cause); ``UnsupportedModelError`` (a TraceError) for a torchvision detector,
            naming the part to slim instead (``model.backbone``).
        UnsupportedOpError: an op's channel handler failed, or a layer has channels but no layer kind slices it.
        InvalidParameterError: ``model`` is not an ``nn.Module``, bad ``divisor``, or an ``ignore`` entry that
            names no module.

    Example:
        >>> net = SlimmableNetwork(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> net.set_config(net.space.uniform_config(0.5))
        >>> y = net(torch.randn(2, 3, 64, 64))
    """

    def __init__(self, model: nn.Module, example_inputs: Any, divisor: int = 8,
                 ignore: Sequence[str] = ()) -> None:
        super().__init__()
        check_parameter(isinstance(model, nn.Module), "model", "SlimmableNetwork", "a torch.nn.Module", type(model))
        check_parameter(is_int(divisor) and divisor >= 1, "divisor", "SlimmableNetwork",
                        "an int >= 1", divisor)
        inputs = as_input_tuple(example_inputs)
        names = {n for n, _ in model.named_modules() if n}
        check_parameter(not isinstance(ignore, (str, bytes)) and all(isinstance(n, str) for n in ignore), "ignore",
                        "SlimmableNetwork", "a list of module names (e.g. ['fc']), not one string", ignore)
        for name in ignore:
            if name not in names:
                close = difflib.get_close_matches(str(name), names, n=3)
                raise InvalidParameterError(
                    f"The 'ignore' entry {name!r} names no module of {type(model).__name__}. "
                    f"Closest module names: {close or 'none'}. Use names from model.named_modules().")
        gm = trace_model(model, inputs, leaf_names=ignore)
        kept_whole = {**{name: "ignored by the user" for name in ignore}, **gm.meta.get("opaque_modules", {})}
        res, prop = propagate(gm, inputs, frozen_modules=kept_whole)
        ga = build_groups(res, divisor)
        for _ in range(10):  # freeze grouped convs that first-k slimming would cut through
            bad = [(f"{name}: conv groups not aligned with channel groups", atoms)
                   for name, atoms in misaligned_grouped_convs(res, ga)] + misaligned_tied_blocks(res, ga)
            if not bad:
                break
            for reason, atoms in bad:
                for r in res.parent[atoms].tolist():
                    res.frozen_reason.setdefault(r, reason)
            ga = build_groups(res, divisor)
        keep_split_parts_nonempty(res, ga)
        self.example_inputs = tuple(t.detach().clone() for t in inputs)
        self.divisor = divisor
        self.ignore = tuple(ignore)
        self.coupling: CouplingResult = res
        self.assignment: GroupAssignment = ga
        self.graph_module = gm
        self.tensor_metas = prop.metas  # fx node -> TMeta (shape, channel atoms) of every traced tensor
        self._rewrite(gm, res, prop.values)
        self._index_sites()
        self.space = ChannelSpace(ga.groups)
        self._describe_members()
        self.config: Config = self.space.max_config()
        self._flops_model = None
        self.eval()

    # ---- building --------------------------------------------------------------------
    def _rewrite(self, gm: fx.GraphModule, res: CouplingResult, values: dict) -> None:
        nodes = {n.name: n for n in gm.graph.nodes}
        graph = gm.graph
        self._permutations: dict[str, np.ndarray] = {}
        sites: list[Site] = []
        for i, (node_name, (dim, parts)) in enumerate(res.splits.items()):
            n = nodes[node_name]
            mod_name = f"_slim_split_{i}"
            gm.add_submodule(mod_name, ChannelSplit(dim, [len(p) for p in parts]))
            with graph.inserting_after(n):
                new = graph.call_module(mod_name, (n.args[0],))
            n.replace_all_uses_with(new)
            graph.erase_node(n)
            sites += [Site("split", mod_name, j, p) for j, p in enumerate(parts)]
        for i, (origin, end, dim, perm, atoms) in enumerate(res.permutes):
            mod_name = f"_slim_permute_{i}"
            gm.add_submodule(mod_name, ChannelPermute(dim, torch.from_numpy(perm)))
            with graph.inserting_after(end):
                new = graph.call_module(mod_name, (origin,))
            end.replace_all_uses_with(new)
            sites.append(Site("permute", mod_name, None, atoms))
            self._permutations[mod_name] = perm
        self._slice_bounds: dict[str, tuple[int, int]] = {}
        for i, (node_name, (dim, start, stop, atoms)) in enumerate(res.channel_slices.items()):
            n = nodes[node_name]
            mod_name = f"_slim_slice_{i}"
            gm.add_submodule(mod_name, ChannelSlice(dim, start, stop))
            with graph.inserting_after(n):
                new = graph.call_module(mod_name, (n.args[0],))
            n.replace_all_uses_with(new)
            graph.erase_node(n)
            sites.append(Site("slice", mod_name, None, atoms))
            self._slice_bounds[mod_name] = (start, stop)
        for node_name, (dim, sizes) in res.unflattens.items():  # (B, C*H*W) -> (B, C, H, W) with C following
            n = nodes[node_name]
            with graph.inserting_after(n):
                new = graph.call_method("unflatten", (n.args[0], dim, sizes))
            n.replace_all_uses_with(new)
            graph.erase_node(n)
        for i, (node_name, atoms) in enumerate(res.norm_shapes.items()):  # F.layer_norm(x, (C,)): C follows
            n = nodes[node_name]
            mod_name = f"_slim_norm_shape_{i}"
            gm.add_submodule(mod_name, NormShape(len(atoms)))
            with graph.inserting_before(n):
                shape = graph.call_module(mod_name, ())
            if len(n.args) > 1:
                n.update_arg(1, shape)
            else:
                n.update_kwarg("normalized_shape", shape)
            sites.append(Site("norm_shape", mod_name, None, atoms))
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
                sites.append(Site("attr", mod_name, str(n.target), atoms))
        eliminate_dead_code(gm)  # keeps in-place ops whose result is unused (they act on their input)
        graph.lint()
        gm.recompile()
        modules = dict(gm.named_modules())
        for name, roles in res.module_dims.items():
            mod = modules[name]
            kind = find_layer_kind(mod)
            unknown_roles = sorted(set(roles) - set(kind.roles)) if kind is not None else sorted(roles)
            if unknown_roles:
                what = f"layer kind {kind.name!r} has roles {list(kind.roles)}" if kind is not None else \
                    "no entry of compress.slim.layers.LAYER_KINDS matches it"
                raise UnsupportedOpError(
                    f"Module {name!r} ({type(mod).__name__}) has channels the op table tracks in roles "
                    f"{sorted(roles)}, but it cannot be sliced: {what}. Register a layer kind for it with "
                    f"compress.slim.layers.register_layer_kind(...), or pass ignore=[{name!r}] to keep it whole.")
            make_slimmable(mod)
            sites += [Site("module", name, role, atoms) for role, atoms in roles.items()]
        self.sites: tuple[Site, ...] = tuple(sites)

    def _index_sites(self) -> None:
        """Concatenate the group/index of every site's positions for one-shot liveness per config."""
        ga = self.assignment
        sizes = [len(s.atoms) for s in self.sites]
        atoms = np.concatenate([s.atoms for s in self.sites]) if self.sites else np.zeros(0, np.int64)
        self._site_index = {(s.kind, s.module, s.role): s for s in self.sites}
        self._site_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._pos_group = ga.atom_group[atoms]
        self._pos_index = ga.atom_index[atoms]

    def _describe_members(self) -> None:
        ga = self.assignment
        for site in self.sites:
            for gid in np.unique(ga.atom_group[site.atoms]).tolist():
                self.space.groups[gid].members.append(site.label)

    # ---- reading the sites -------------------------------------------------------------------
    def positions(self, atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group number and index within the group of each atom ((n,) int arrays each)."""
        return self.assignment.atom_group[atoms], self.assignment.atom_index[atoms]

    def site(self, kind: str, module: str, role: str | int | None = None) -> Site:
        """The site narrowed by ``module``, e.g. ``net.site("module", "layer1.0.conv1", "out")``.

        Args:
            kind: "module", "split", "attr" or "permute" (see :class:`Site`).
            module: the module name in ``net.graph_module``.
            role: the channel role, split part index or parameter target (None for "permute").

        Raises:
            InvalidParameterError: no such site (the message lists the closest ones).
        """
        found = self._site_index.get((kind, module, role))
        if found is None:
            known = [f"{s.kind} {s.module} {s.role}" for s in self.sites]
            close = difflib.get_close_matches(f"{kind} {module} {role}", known, n=3)
            check_parameter(False, "(kind, module, role)", "SlimmableNetwork.site",
                            f"a site of this network (closest: {close or 'none'})", (kind, module, role))
        return found

    def permutation(self, module: str) -> np.ndarray:
        """The full-width channel permutation of a ``ChannelPermute`` (a channel shuffle): output position j
        holds input position ``perm[j]``; an (n,) int64 array (a read-only view).

        Raises:
            InvalidParameterError: ``module`` is not a ChannelPermute of this network.
        """
        check_parameter(module in self._permutations, "module", "SlimmableNetwork.permutation",
                        f"one of {sorted(self._permutations)}", module)
        view = self._permutations[module].view()
        view.flags.writeable = False
        return view

    def slice_bounds(self, module: str) -> tuple[int, int]:
        """Full-width bounds (a, b) of a ``ChannelSlice`` (a fixed ``x[:, a:b]`` of the traced model).

        Raises:
            InvalidParameterError: ``module`` is not a ChannelSlice of this network.
        """
        check_parameter(module in self._slice_bounds, "module", "SlimmableNetwork.slice_bounds",
                        f"one of {sorted(self._slice_bounds)}", module)
        return self._slice_bounds[module]

    # ---- running -------------------------------------------------------------------------
    def live_masks(self, config: Mapping[str, int] | None) -> dict[Site, np.ndarray]:
        """For every site, which of its full-width positions a config keeps: site -> (n,) bool array.

        Raises:
            InvalidConfigError: unknown group names or widths the group cannot take.
        """
        k = self.space.widths(config)
        live = self._pos_index < k[self._pos_group]
        off = self._site_offsets
        return {site: live[off[i]:off[i + 1]] for i, site in enumerate(self.sites)}

    def apply_masks(self, masks: Mapping[Site, np.ndarray], graph_module: fx.GraphModule | None = None) -> None:
        """Narrow every site to its live mask through ``SITE_KINDS`` (reversible; does not set ``config``).

        Args:
            masks: from :meth:`live_masks`.
            graph_module: where to apply them: this network's graph (default) or a deep copy of it (extraction).
        """
        gm = self.graph_module if graph_module is None else graph_module
        modules = dict(gm.named_modules())
        for site, live in masks.items():
            SITE_KINDS[site.kind].apply(self, modules[site.module], site, live)

    def set_config(self, config: Mapping[str, int] | None) -> None:
        """Put the network at ``config`` in place (None or a partial dict: missing groups at full).

        Raises:
            InvalidConfigError: unknown group names or widths the group cannot take.
        """
        self.apply_masks(self.live_masks(config))
        self.config = {name: int(w) for name, w in self.space.config_from_widths(self.space.widths(config)).items()}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.graph_module(*args, **kwargs)

    # ---- costs ---------------------------------------------------------------------------
    def slimmable_share(self) -> float:
        """1 - FLOPs(smallest config) / FLOPs(full): how much of the cost slimming can remove (0 when every
        group is frozen)."""
        full = self.flops(self.space.max_config())
        return 1.0 - self.flops(self.space.min_config()) / full if full else 0.0

    def summary(self, max_rows: int = 20) -> str:
        """The channel space's table of groups, headed by the slimmable share (see :meth:`slimmable_share`)."""
        return self.space.summary(max_rows, slimmable_share=self.slimmable_share())

    def flops(self, config: Mapping[str, int] | None = None) -> int:
        """FLOPs of the subnet at ``config`` (equals ``count_flops`` of the extracted subnet)."""
        return int(self.flops_model().flops_batch([config if config is not None else self.config])[0])

    def flops_model(self):
        """The analytic FLOPs model of this space (built on first use)."""
        if self._flops_model is None:
            self._flops_model = FlopsModel(self)
        return self._flops_model
