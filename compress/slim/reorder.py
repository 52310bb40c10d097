"""Sort each group's channels by importance so that "first k" keeps the best ones.

Reordering permutes every tensor dim that holds a group's channels in the same
way, so the full-width function does not change; only which channels a narrow
config keeps does. Needed when slimming starts from a trained model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from compress.errors import check_parameter
from compress.slim.network import SITE_KINDS, SlimmableNetwork


def _l1_rows(mod: nn.Module) -> torch.Tensor:
    w = mod.weight.detach()
    return w.abs().reshape(w.shape[0], -1).sum(1)


def _bn_scale(mod: nn.Module) -> torch.Tensor | None:
    return mod.weight.detach().abs() if getattr(mod, "weight", None) is not None else None


# importance name -> (module dim role, score per channel of that dim)
IMPORTANCES: dict[str, tuple[str, Callable[[nn.Module], torch.Tensor | None]]] = {
    "l1": ("out", _l1_rows),
    "bn": ("feat", _bn_scale),
}


def _complete_groups(net: SlimmableNetwork) -> set[int]:
    """Groups that every dim holds whole (each index equally often): safe to permute."""
    ga = net.assignment
    ok = {i for i, g in enumerate(ga.groups) if not g.frozen}
    for _name, block, atoms in net.coupling.grouped_convs:  # channels in blocks (grouped conv, GroupNorm):
        if block > 1:  # a permutation across blocks would change which channels are computed together
            ok -= set(np.unique(ga.atom_group[atoms]).tolist())
    for site in net.sites:
        g, i = ga.atom_group[site.atoms], ga.atom_index[site.atoms]
        for gid in np.unique(g).tolist():
            if gid not in ok:
                continue
            counts = np.bincount(i[g == gid], minlength=ga.groups[gid].width)
            if counts.min() != counts.max():
                ok.discard(gid)
    return ok


def reorder_channels_(net: SlimmableNetwork, importance: str = "bn") -> dict[str, list[int]]:
    """Permute channels of every slimmable group, most important first (in place).

    Args:
        net: the slimmable network (its weights are permuted).
        importance: "bn" (|gamma| of the group's norm layers, falling back to "l1" for
            groups where that does not rank channels) or "l1" (L1 norm of the producing
            layers' filters).

    Returns:
        For every reordered group, the old channel index now at each position.

    Example:
        >>> reorder_channels_(net, "bn")
        >>> net.set_config(net.space.uniform_config(0.5))  # keeps the larger-gamma half
    """
    check_parameter(importance in IMPORTANCES, "importance", "reorder_channels_",
                    f"one of {sorted(IMPORTANCES)}", importance)
    ga = net.assignment
    modules = dict(net.graph_module.named_modules())
    scores = {gid: np.zeros(ga.groups[gid].width) for gid in _complete_groups(net)}
    for name in dict.fromkeys([importance, "l1"]):
        role, fn = IMPORTANCES[name]
        for site in net.sites:
            if site.kind != "module" or site.role != role:
                continue
            s = fn(modules[site.module])
            if s is None:
                continue
            g, i = net.positions(site.atoms)
            for gid in scores:
                if name == "l1" and importance != "l1" and np.ptp(scores[gid]) > 0:
                    continue  # the chosen importance already ranks this group
                sel = g == gid
                np.add.at(scores[gid], i[sel], s.numpy()[sel])
    perms = {gid: np.argsort(-sc, kind="stable") for gid, sc in scores.items()}
    return permute_groups_(net, perms)


def permutable_groups(net: SlimmableNetwork) -> set[int]:
    """Ids of the groups whose channels can be permuted (every dim holds the group whole)."""
    return _complete_groups(net)


def permute_groups_(net: SlimmableNetwork, perms: dict[int, np.ndarray]) -> dict[str, list[int]]:
    """Permute the channels of groups in place: ``perms[gid][j]`` is the old index put at position j.

    Only groups from :func:`permutable_groups` may be given. Returns group name -> permutation.
    """
    ga = net.assignment
    bad = set(perms) - _complete_groups(net)
    check_parameter(not bad, "perms", "permute_groups_", "permutations of permutable groups only",
                    sorted(ga.groups[g].name for g in bad))
    modules = dict(net.graph_module.named_modules())
    with torch.no_grad():
        for site in net.sites:  # each site kind moves its own tensors (SITE_KINDS; a layer: its LayerKind)
            src = _source_positions(*net.positions(site.atoms), perms)
            if src is None:
                continue
            SITE_KINDS[site.kind].permute(net.graph_module, modules[site.module], site, torch.from_numpy(src))
    return {ga.groups[gid].name: np.asarray(p).tolist() for gid, p in perms.items()}


def _source_positions(g: np.ndarray, i: np.ndarray, perms: dict[int, np.ndarray]) -> np.ndarray | None:
    """For each position, the position whose content moves there: same group and
    occurrence, index perm[i]."""
    if not any(gid in perms for gid in np.unique(g).tolist()):
        return None
    n = len(g)
    order = np.lexsort((np.arange(n), i, g))
    occ = np.zeros(n, np.int64)
    sg, si = g[order], i[order]
    same = np.concatenate([[False], (sg[1:] == sg[:-1]) & (si[1:] == si[:-1])])
    run = np.cumsum(~same) - 1
    starts = np.flatnonzero(~same)
    occ[order] = np.arange(n) - starts[run]
    lookup = {(a, b, c): p for p, (a, b, c) in enumerate(zip(g.tolist(), i.tolist(), occ.tolist()))}
    new_i = np.array([perms[a][b] if a in perms else b for a, b in zip(g.tolist(), i.tolist())], dtype=np.int64)
    return np.array([lookup[(a, b, c)] for a, b, c in zip(g.tolist(), new_i.tolist(), occ.tolist())],
                    dtype=np.int64)

