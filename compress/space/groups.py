"""From coupled atoms to named channel groups.

A channel group is a run of union-find classes that always appear together and
in the same order wherever they appear: a conv's output coupled by residual adds
to three other convs' outputs is one group; a conv whose output is added to a
concat of two others splits into two groups at the concat boundary. Slimming a
group to width k keeps its first k classes everywhere they appear.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from compress.space.atoms import CouplingResult


@dataclass
class ChannelGroup:
    """Channels that must be kept or cut together.

    Attributes:
        name: the group's name in configs (the first layer that produces it).
        width: full number of channels.
        divisor: widths must be multiples of this many channels (or the full width).
        members: "layer:dim" strings of every tensor dim that holds these channels.
        frozen_reason: why the group cannot be slimmed, or None if it can.
        min_width: smallest width a config may give it, in channels (rounded up to the divisor).
    """

    name: str
    width: int
    divisor: int
    members: list[str] = field(default_factory=list)
    frozen_reason: str | None = None
    min_width: int = 1

    @property
    def frozen(self) -> bool:
        return self.frozen_reason is not None

    def allowed_widths(self) -> list[int]:
        """Every width a config may give this group, ascending."""
        if self.frozen:
            return [self.width]
        start = max(self.divisor, -(-self.min_width // self.divisor) * self.divisor)
        ws = list(range(start, self.width + 1, self.divisor))
        if not ws or ws[-1] != self.width:
            ws.append(self.width)
        return ws

    def to_dict(self) -> dict:
        return {"name": self.name, "width": self.width, "divisor": self.divisor, "min_width": self.min_width,
                "members": self.members, "frozen_reason": self.frozen_reason}


@dataclass
class GroupAssignment:
    """Groups plus, for every atom, its group number and index inside the group."""

    groups: list[ChannelGroup]
    atom_group: np.ndarray
    atom_index: np.ndarray


def build_groups(res: CouplingResult, divisor: int) -> GroupAssignment:
    """Split the classes of ``res`` into maximal runs that move together."""
    parent = res.parent
    occ: dict[int, list[tuple[int, int]]] = defaultdict(list)
    src_classes = []
    for s, src in enumerate(res.sources):
        cls = parent[src.atoms]
        src_classes.append(cls)
        for pos, c in enumerate(cls.tolist()):
            occ[c].append((s, pos))
    # a fixed channel slice x[:, a:b] counts as one more place its channels appear, so groups end at a and b
    # and each side of the slice is slimmed on its own (never emptied)
    for j, (_dim, start, stop, atoms) in enumerate(res.channel_slices.values()):
        for pos, c in enumerate(parent[atoms[start:stop]].tolist()):
            occ[c].append((len(res.sources) + j, pos))
    occ_set = {c: frozenset(v) for c, v in occ.items()}

    def shifted(c: int) -> frozenset:
        """Where the class after ``c`` in a group must appear: one position on, or, where ``c`` fills a run of
        r positions (a depthwise conv with a channel multiplier r repeats each channel), r positions on."""
        by_src: dict[int, list[int]] = defaultdict(list)
        for s, q in occ_set[c]:
            by_src[s].append(q)
        out = set()
        for s, qs in by_src.items():
            step = len(qs) if max(qs) - min(qs) + 1 == len(qs) else 1
            out.update((s, q + step) for q in qs)
        return frozenset(out)

    def linked(c1: int, c2: int) -> bool:
        if (c1 in res.frozen_reason) != (c2 in res.frozen_reason):
            return False
        if res.divisor_of.get(c1, 1) != res.divisor_of.get(c2, 1):
            return False
        return shifted(c1) == occ_set[c2]

    class_group: dict[int, tuple[int, int]] = {}
    groups: list[ChannelGroup] = []
    names: set[str] = set()
    for s, src in enumerate(res.sources):
        cls = src_classes[s].tolist()
        pos = 0
        while pos < len(cls):
            if cls[pos] in class_group:
                pos += 1
                continue
            end = pos + 1
            while end < len(cls) and cls[end] not in class_group and linked(cls[end - 1], cls[end]):
                end += 1
            gid = len(groups)
            for i, c in enumerate(cls[pos:end]):
                class_group[c] = (gid, i)
            label = src.label if (pos == 0 and end == len(cls)) else f"{src.label}[{pos}:{end}]"
            name = label
            k = 2
            while name in names:
                name, k = f"{label}#{k}", k + 1
            names.add(name)
            first = cls[pos]
            group_div = math.lcm(divisor, res.divisor_of.get(first, 1))
            reason = res.frozen_reason.get(first)
            width = end - pos
            if reason is None and width < group_div:
                reason = f"width {width} is below the divisor {group_div}"
            groups.append(ChannelGroup(name, width, group_div, frozen_reason=reason))
            pos = end
    atom_group = np.array([class_group[c][0] for c in parent.tolist()], dtype=np.int64)
    atom_index = np.array([class_group[c][1] for c in parent.tolist()], dtype=np.int64)
    return GroupAssignment(groups, atom_group, atom_index)


def _blocks_aligned(ga: GroupAssignment, atoms: np.ndarray, block: int) -> bool:
    """Whether every run of ``block`` atoms lies in one group at indices b*block .. b*block + block - 1."""
    g, i = ga.atom_group[atoms], ga.atom_index[atoms]
    blocks_g, blocks_i = g.reshape(-1, block), i.reshape(-1, block)
    return bool((blocks_g == blocks_g[:, :1]).all() and (blocks_i[:, 0] % block == 0).all()
                and (np.diff(blocks_i, axis=1) == 1).all())


def misaligned_grouped_convs(res: CouplingResult, ga: GroupAssignment) -> list[tuple[str, np.ndarray]]:
    """Grouped convs whose conv-groups would be cut through by first-k slimming."""
    return [(name, atoms) for name, gs, atoms in res.grouped_convs if not _blocks_aligned(ga, atoms, gs)]


def misaligned_tied_blocks(res: CouplingResult, ga: GroupAssignment) -> list[tuple[str, np.ndarray]]:
    """Tied runs of channels (``res.tied_blocks``: a PixelShuffle's sub-pixels, a view's H*W features) that
    first-k slimming would cut through: (the reason to freeze them, their atoms) for each."""
    return [(f"{name}: reads its input in runs of {block} channels (one output channel each) that no channel "
             "group holds whole and aligned (its output is coupled channel by channel to channels not in runs, "
             "e.g. added to another layer's output)", atoms)
            for name, block, atoms in res.tied_blocks if not _blocks_aligned(ga, atoms, block)]


def keep_split_parts_nonempty(res: CouplingResult, ga: GroupAssignment) -> None:
    """Raise group minimum widths so that no part of a channel split can lose all its channels.

    A split part holding only the tail of its groups (e.g. the second half after
    a channel shuffle) would become empty at small widths; for each such part
    the group that needs the smallest raise gets a minimum width reaching into it.
    """
    sliced = [[atoms[start:stop]] for _dim, start, stop, atoms in res.channel_slices.values()]
    for parts in [parts for _dim, parts in res.splits.values()] + sliced:
        for atoms in parts:
            g, i = ga.atom_group[atoms], ga.atom_index[atoms]
            groups = ga.groups
            if any(groups[x].frozen for x in set(g.tolist())):
                continue
            best = None
            for gid in set(g.tolist()):
                need = int(i[g == gid].min()) + 1
                grp = groups[gid]
                need = min(grp.width, -(-need // grp.divisor) * grp.divisor)
                if grp.min_width >= need:
                    best = None
                    break
                if best is None or need / grp.width < best[1] / groups[best[0]].width:
                    best = (gid, need)
            if best is not None:
                groups[best[0]].min_width = best[1]
