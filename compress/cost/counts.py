"""Live channel counts of tensor dims, for many configs at once.

A *spec* is a tensor dim described by the group and index of each of its
positions; its live count at a config is the number of positions whose index
is below its group's width. Specs are compressed into runs, so a batch of
configs costs a few numpy operations. FLOPs and latency features are built on
these counts.
"""

from __future__ import annotations

import numpy as np


def compress_runs(g: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Compress (group, index) positions into runs (group, start, length, multiplicity)."""
    if len(g) == 0:
        return (np.zeros(0, np.int64),) * 4
    key = g.astype(np.int64) * (1 << 32) + i
    uniq, mult = np.unique(key, return_counts=True)
    ug, ui = uniq >> 32, uniq & ((1 << 32) - 1)
    brk = np.flatnonzero((np.diff(ug) != 0) | (np.diff(ui) != 1) | (np.diff(mult) != 0)) + 1
    starts = np.concatenate([[0], brk])
    ends = np.concatenate([brk, [len(uniq)]])
    return ug[starts], ui[starts], ends - starts, mult[starts]


class SpecCounter:
    """Registers tensor dims (by their atoms) and counts their live positions per config."""

    def __init__(self, atom_group: np.ndarray, atom_index: np.ndarray) -> None:
        self._group, self._index = atom_group, atom_index
        self._ids: dict[bytes, int] = {}
        self.runs: list[tuple[np.ndarray, ...]] = []
        self._compiled = False

    def spec(self, atoms: np.ndarray) -> int:
        """Id of the spec of a dim with these atoms (equal dims share an id)."""
        g, i = self._group[atoms], self._index[atoms]
        key = g.tobytes() + b"|" + i.tobytes()
        if key not in self._ids:
            self._ids[key] = len(self.runs)
            self.runs.append(compress_runs(g, i))
            self._compiled = False
        return self._ids[key]

    def __len__(self) -> int:
        return len(self.runs)

    def _compile(self) -> None:
        runs = self.runs
        empty = np.zeros(0, np.int64)
        self._rg = np.concatenate([r[0] for r in runs]) if runs else empty
        self._ra = np.concatenate([r[1] for r in runs]) if runs else empty
        self._rl = np.concatenate([r[2] for r in runs]) if runs else empty
        self._rm = np.concatenate([r[3] for r in runs]) if runs else empty
        spec_of_run = np.concatenate([np.full(len(r[0]), s) for s, r in enumerate(runs)]) if runs else empty
        self._nonempty = np.array([len(r[0]) > 0 for r in runs], dtype=bool)
        self._first = np.searchsorted(spec_of_run, np.arange(len(runs)))[self._nonempty]
        self._compiled = True

    def counts(self, widths: np.ndarray) -> np.ndarray:
        """(n_configs, n_specs) live counts for an (n_configs, n_groups) width array."""
        if not self._compiled:
            self._compile()
        kept = np.clip(widths[:, self._rg] - self._ra, 0, self._rl) * self._rm
        out = np.zeros((widths.shape[0], len(self.runs)), dtype=np.int64)
        if kept.shape[1]:
            out[:, self._nonempty] = np.add.reduceat(kept, self._first, axis=1)
        return out
