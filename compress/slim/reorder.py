"""Sort each group's channels by importance so that "first k" keeps the best ones.

Reordering permutes every tensor dim that holds a group's channels in the same
way, so the full-width function does not change; only which channels a narrow
config keeps does. Needed when slimming starts from a trained model.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from compress.errors import ReorderError, check_parameter
from compress.slim.network import SITE_KINDS, SlimmableNetwork
from compress.space.trace import flatten_tensors

# |full-width output after - before| <= ATOL * max(1, max |before|): permutations only reorder float sums
ATOL = 1e-4


def _l1_rows(mod: nn.Module) -> torch.Tensor:
    """L1 norm of each output channel's filter (a transposed conv's weight is (in, out / groups, *kernel))."""
    w = mod.weight.detach()
    if isinstance(mod, nn.modules.conv._ConvTransposeNd):
        return w.abs().reshape(mod.groups, w.shape[0] // mod.groups, w.shape[1], -1).sum((1, 3)).reshape(-1)
    return w.abs().reshape(w.shape[0], -1).sum(1)


def _bn_scale(mod: nn.Module) -> torch.Tensor | None:
    return mod.weight.detach().abs() if getattr(mod, "weight", None) is not None else None


# importance name -> (module dim role, score per channel of that dim)
IMPORTANCES: dict[str, tuple[str, Callable[[nn.Module], torch.Tensor | None]]] = {
    "l1": ("out", _l1_rows),
    "bn": ("feat", _bn_scale),
}


def _complete_groups(net: SlimmableNetwork) -> set[int]:
    """Groups that every dim holds whole (each index equally often, or for a group in tied runs each run's first
    index equally often and no other: a dim past a PixelShuffle holds one channel per run) and whose channel order
    no op depends on (a Conv1d sliding over the channel axis, ``coupling.ordered``): safe to permute."""
    ga = net.assignment
    ok = {i for i, g in enumerate(ga.groups) if not g.frozen}
    for atoms, _reason in net.coupling.ordered:
        ok.difference_update(np.unique(ga.atom_group[atoms]).tolist())
    tied = tied_groups(net)
    for site in net.sites:
        g, i = ga.atom_group[site.atoms], ga.atom_index[site.atoms]
        for gid in np.unique(g).tolist():
            if gid not in ok:
                continue
            counts = np.bincount(i[g == gid], minlength=ga.groups[gid].width)
            b = tied.get(gid, 0)
            if b and len(counts) % b == 0:
                runs = counts.reshape(-1, b)
                if not runs[:, 1:].any() and runs[:, 0].min() == runs[:, 0].max():
                    continue  # the run heads only, each equally often
            if counts.min() != counts.max():
                ok.discard(gid)
    return ok


def tied_groups(net: SlimmableNetwork) -> dict[int, int]:
    """Group id -> size of the tied runs it holds (``net.coupling.tied_blocks``: a PixelShuffle's sub-pixels, a
    view's H*W features), which its permutations must move whole and in their order."""
    runs: dict[int, int] = {}
    for _, block, atoms in net.coupling.tied_blocks:
        for gid in np.unique(net.positions(atoms)[0]).tolist():
            runs[gid] = math.lcm(runs.get(gid, 1), block)
    return runs


def reorder_channels_(net: SlimmableNetwork, importance: str = "bn") -> dict[str, list[int]]:
    """Permute channels of every slimmable group, most important first (in place).

    Args:
        net: the slimmable network (its weights are permuted).
        importance: "bn" (|gamma| of the group's norm layers, falling back to "l1" for
            groups where that does not rank channels) or "l1" (L1 norm of the producing
            layers' filters).

    Channels are ranked so that slicing the first k keeps the most important ones (a slimmable network keeps
    the first k channels of a group); |BN gamma| as a channel's importance is the criterion of Liu et al. 2017,
    "Learning Efficient Convolutional Networks through Network Slimming". Channels held in blocks (a grouped
    conv's groups, a GroupNorm's groups) move as whole blocks. The full-width network computes the same function
    after the permutation (checked on ``net.example_inputs``).

    Returns:
        Group name -> permutation: for every reordered group, the old channel index now at each position.

    Raises:
        InvalidParameterError: ``importance`` is not "bn" or "l1".
        ReorderError: the permutation changed the full-width output on the example inputs (a layer constrains
            its channels in a way the op table does not know); the weights are restored first.

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
    blocks, tied = channel_blocks(net), tied_groups(net)
    perms = {gid: block_order(sc, blocks.get(gid, 1), keep_inner=gid in tied) for gid, sc in scores.items()}
    return permute_groups_(net, perms)


def channel_blocks(net: SlimmableNetwork) -> dict[int, int]:
    """Group id -> block size its permutations must keep together: the channels per group of every grouped conv
    (an output channel reads only its own block of input channels) and GroupNorm (statistics per block) it feeds,
    and its tied runs (:func:`tied_groups`)."""
    blocks: dict[int, int] = {}
    for _, gs, atoms in [*net.coupling.grouped_convs, *net.coupling.tied_blocks]:
        for gid in np.unique(net.positions(atoms)[0]).tolist():
            blocks[gid] = math.lcm(blocks.get(gid, 1), gs)
    return blocks


def block_order(scores: np.ndarray, block: int, keep_inner: bool = False) -> np.ndarray:
    """Most important first, moving whole blocks of ``block`` channels: blocks by their summed score, channels
    inside a block by their own (a block-preserving permutation keeps a grouped conv's function), or in their
    order with ``keep_inner`` (tied runs: a PixelShuffle's sub-pixels)."""
    if block <= 1:
        return np.argsort(-scores, kind="stable")
    nb = len(scores) // block
    by_block = scores[:nb * block].reshape(nb, block)
    order = np.argsort(-by_block.sum(1), kind="stable")
    inner = np.tile(np.arange(block), (nb, 1)) if keep_inner else np.argsort(-by_block, axis=1, kind="stable")
    perm = (order[:, None] * block + inner[order]).reshape(-1)
    return np.concatenate([perm, np.arange(nb * block, len(scores))])


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
    blocks, tied = channel_blocks(net), tied_groups(net)
    for gid, p in perms.items():
        b = blocks.get(gid, 1)
        p = np.asarray(p)
        ok = sorted(p.tolist()) == list(range(ga.groups[gid].width)) and \
            (b == 1 or bool(np.all(p.reshape(-1, b) // b == (p.reshape(-1, b)[:, :1] // b))))
        if ok and gid in tied:  # tied runs keep their inner order too
            ok = bool(np.all(p.reshape(-1, b) - p.reshape(-1, b)[:, :1] == np.arange(b)))
        what = "its tied runs, in their order" if gid in tied else "its grouped convs"
        check_parameter(ok, "perms", "permute_groups_",
                        f"a permutation of {ga.groups[gid].name!r} that moves whole blocks of {b} channels "
                        f"({what})" if b > 1 else "a permutation of the group's channels", p.tolist())
    modules = dict(net.graph_module.named_modules())
    saved = {k: v.clone() for k, v in net.graph_module.state_dict(keep_vars=False).items()}
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            config = dict(net.config)
            net.set_config(None)
            before = flatten_tensors(net(*net.example_inputs))
            _apply(net, modules, perms)
            after = flatten_tensors(net(*net.example_inputs))
            net.set_config(config)
        diff = max((float((a - b).abs().max()) for a, b in zip(after, before) if a.numel()), default=0.0)
        scale = max((float(b.abs().max()) for b in before if b.numel()), default=0.0)
        if diff > ATOL * max(1.0, scale):
            net.graph_module.load_state_dict(saved)
            raise ReorderError(
                f"Permuting the channels of {sorted(ga.groups[g].name for g in perms)} changed the full-width "
                f"output by {diff:.3g} (outputs up to {scale:.3g}); the weights are restored. A layer constrains "
                f"its channels in a way the op table does not know: name it in `ignore=` and report the model.")
    finally:
        net.train(was_training)
    return {ga.groups[gid].name: np.asarray(p).tolist() for gid, p in perms.items()}


def _apply(net: SlimmableNetwork, modules: dict, perms: dict[int, np.ndarray]) -> None:
    for site in net.sites:  # each site kind moves its own tensors (SITE_KINDS; a layer: its LayerKind)
        src = _source_positions(*net.positions(site.atoms), perms)
        if src is not None:
            SITE_KINDS[site.kind].permute(net.graph_module, modules[site.module], site, torch.from_numpy(src))


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

