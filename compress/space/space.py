"""The channel space: named groups, their widths, and the configs over them.

A config is a plain ``dict`` from group name to width (JSON-ready). Groups left
out of a config stay at full width; frozen groups can only be at full width.
"""

from __future__ import annotations

import difflib
import json
from typing import Iterable, Mapping

import numpy as np

from compress.errors import InvalidConfigError, check_parameter
from compress.space.groups import ChannelGroup

# A channel config: group name -> width in channels (a type alias, so it cannot carry a docstring; see above).
Config = dict[str, int]


class ChannelSpace:
    """The slimmable channel groups of one traced model, and the configs over them.

    Which channels are coupled (must be cut together) is the problem DepGraph solves for structural pruning
    (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning"; the Torch-Pruning library);
    ``compress.space`` solves it per channel, by union-find over the traced graph (``atoms``, ``propagate``).

    Args:
        groups: every channel group of the model (:class:`ChannelGroup`), slimmable and frozen.

    Raises:
        InvalidConfigError: from ``widths`` (and everything that validates a config with it): a config that is not
            a dict, names unknown groups, or gives a width that is not an int, not a multiple of the divisor, out of
            [min_width, width], or not full for a frozen group. The constructor itself raises nothing.
        InvalidParameterError: from ``uniform_config``: a ratio outside (0, 1].

    Example:
        >>> net = compress.SlimmableNetwork(model, torch.randn(1, 3, 64, 64))
        >>> space = net.space
        >>> cfg = space.random_config(seed=0)
        >>> json.loads(json.dumps(cfg)) == cfg
        True
    """

    def __init__(self, groups: list[ChannelGroup]) -> None:
        self.groups = groups
        self.index = {g.name: i for i, g in enumerate(groups)}
        self.free = [g for g in groups if not g.frozen]
        self.frozen = [g for g in groups if g.frozen]
        self.full_widths = np.array([g.width for g in groups], dtype=np.int64)
        self._divisor = np.array([g.divisor for g in groups], dtype=np.int64)
        self._min_width = np.array([g.allowed_widths()[0] for g in groups], dtype=np.int64)
        self._frozen = np.array([g.frozen for g in groups], dtype=bool)

    def __len__(self) -> int:
        return len(self.free)

    def __repr__(self) -> str:
        return f"ChannelSpace({len(self.free)} slimmable groups, {len(self.frozen)} frozen)"

    # ---- configs -------------------------------------------------------------------
    def max_config(self) -> Config:
        """Every group at full width."""
        return {g.name: g.width for g in self.free}

    def min_config(self) -> Config:
        """Every group at its smallest allowed width."""
        return {g.name: g.allowed_widths()[0] for g in self.free}

    def uniform_config(self, ratio: float) -> Config:
        """Every group at ``ratio`` of its width, rounded to its divisor (at least one divisor)."""
        check_parameter(isinstance(ratio, (int, float)) and 0 < ratio <= 1, "ratio", "uniform_config",
                        "a float in (0, 1]", ratio)
        cfg = {}
        for g in self.free:
            w = int(round(ratio * g.width / g.divisor)) * g.divisor
            cfg[g.name] = g.width if w >= g.width else max(g.allowed_widths()[0], w)
        return cfg

    def random_config(self, seed: int | None = None, min_ratio: float = 0.0) -> Config:
        """Each group at a width drawn uniformly from its allowed widths >= ``min_ratio`` of full."""
        rng = np.random.default_rng(seed)
        cfg = {}
        for g in self.free:
            ws = [w for w in g.allowed_widths() if w >= min_ratio * g.width] or [g.width]
            cfg[g.name] = int(rng.choice(ws))
        return cfg

    def widths(self, config: Mapping[str, int] | None) -> np.ndarray:
        """Validate ``config`` and return the width of every group (frozen ones at full)."""
        k = self.full_widths.copy()
        if config is None:
            return k
        if not isinstance(config, Mapping):
            raise InvalidConfigError(
                f"A channel config must be a dict from group name to width. Got {type(config).__name__} instead.")
        unknown = [name for name in config if name not in self.index]
        if unknown:
            hints = {u: difflib.get_close_matches(str(u), self.index, n=1) for u in unknown[:3]}
            hint = "; ".join(f"{u!r} (did you mean {h[0]!r}?)" if h else repr(u) for u, h in hints.items())
            raise InvalidConfigError(
                f"The config names {len(unknown)} group(s) this space does not have: {hint}. "
                f"Use names from space.max_config() ({len(self.free)} slimmable groups).")
        index = self.index
        for name, w in config.items():
            if type(w) is not int and (isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, np.integer))):
                raise InvalidConfigError(f"The width of group {name!r} must be an int. Got {w!r} instead.")
            k[index[name]] = w
        full = self.full_widths
        ok = (k == full) | (~self._frozen & (k >= self._min_width) & (k <= full) & (k % self._divisor == 0))
        if not ok.all():
            g = self.groups[int(np.flatnonzero(~ok)[0])]
            w = int(k[self.index[g.name]])
            if g.frozen:
                raise InvalidConfigError(
                    f"Group {g.name!r} is frozen at width {g.width} ({g.frozen_reason}). Got width {w}; "
                    "leave it out of the config.")
            raise InvalidConfigError(
                f"Width {w} of group {g.name!r} is not allowed: widths are multiples of {g.divisor} in "
                f"[{g.allowed_widths()[0]}, {g.width}], or the full width {g.width}.")
        return k

    def config_from_widths(self, k: Iterable[int]) -> Config:
        k = list(k)
        return {g.name: int(k[i]) for i, g in enumerate(self.groups) if not g.frozen}

    # ---- reporting -----------------------------------------------------------------
    def summary(self, max_rows: int = 20, slimmable_share: float | None = None) -> str:
        """A readable table of the groups (slimmable first, then frozen with reasons).

        Args:
            max_rows: most rows listed per section.
            slimmable_share: 1 - FLOPs(smallest config) / FLOPs(full), printed in the first line when given
                (``SlimmableNetwork.summary`` passes it; the space alone does not know FLOPs).
        """
        lines = [repr(self) if slimmable_share is None else
                 f"{self!r}: slimmable share {slimmable_share:.3f} (1 - FLOPs at the smallest config / full)"]
        for g in self.free[:max_rows]:
            lines.append(f"  {g.name:<40} width {g.width:>5}  divisor {g.divisor:>3}  members {len(g.members)}")
        if len(self.free) > max_rows:
            lines.append(f"  ... {len(self.free) - max_rows} more slimmable groups")
        reasons: dict[str, int] = {}
        for g in self.frozen:
            reasons[g.frozen_reason] = reasons.get(g.frozen_reason, 0) + 1
        for r, c in sorted(reasons.items(), key=lambda kv: -kv[1])[:max_rows]:
            lines.append(f"  frozen x{c}: {r}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"groups": [g.to_dict() for g in self.groups]}, indent=1)
