"""The differentiable top-k of DMS (Differentiable Model Scaling, ICML 2024).

For N elements (channels of a group, or residual blocks of a stage) with importances c, ranks normalised to
c'_i = (r_i + 1/2) / N with r_i the number of elements less important than i (evenly spread on [0, 1], each at the
middle of its 1/N bin), and a learnable pruning ratio a in [0, 1], the soft mask is

    m_i = sigmoid(lambda * (c'_i - a)),   lambda = N,

so the k = round((1 - a) N) most important elements (those with c'_i >= a) have m_i >= 0.5, and all but about six
elements are within 0.05 of 0 or 1. The importance is the Taylor importance: an exponential moving
average (decay 0.99) of (m_i * dL/dm_i)^2, updated outside the optimizer after each backward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from compress.errors import check_parameter


class DifferentiableTopK(nn.Module):
    """Soft top-k mask over ``n`` elements with a learnable pruning ratio ``a``.

    Args:
        n: number of elements.
        min_keep: never keep fewer than this many (a is clamped to at most 1 - min_keep / n).
        decay: decay of the importance moving average.
        init_ratio: initial pruning ratio (0: keep everything).
        hard_forward: the forward value is the hard top-k mask (0/1) and the gradient the soft mask's (straight
            through). For few elements (residual blocks: n = 2..4, so lambda = n is too soft to polarise) this keeps
            the network and its cost exact while a still learns.
    """

    def __init__(self, n: int, min_keep: int = 1, decay: float = 0.99, init_ratio: float = 0.0,
                 hard_forward: bool = False) -> None:
        super().__init__()
        check_parameter(isinstance(n, int) and n >= 1, "n", "DifferentiableTopK", "an int >= 1", n)
        check_parameter(isinstance(min_keep, int) and 0 <= min_keep <= n, "min_keep", "DifferentiableTopK",
                        f"an int in [0, {n}]", min_keep)
        self.n, self.min_keep, self.decay = n, min_keep, decay
        self.a = nn.Parameter(torch.tensor(float(init_ratio)))
        # a tiny descending tie-break: with equal importances the first elements rank highest (first-k slicing)
        self.register_buffer("importance", torch.zeros(n))
        self.register_buffer("_tiebreak", -torch.arange(n, dtype=torch.float32) * 1e-12)
        self.lam = float(n)
        self.hard_forward = hard_forward
        self._mask: torch.Tensor | None = None
        self._soft: torch.Tensor | None = None

    @property
    def max_ratio(self) -> float:
        return 1.0 - self.min_keep / self.n

    def ratio(self) -> torch.Tensor:
        """The pruning ratio a, clamped to [0, 1 - min_keep / n]; the gradient passes the bounds unchanged, so a
        ratio sitting at 0 can still be pushed up (searches also project ``a`` back into range after each step)."""
        return self.a + (self.a.clamp(0.0, self.max_ratio) - self.a).detach()

    @torch.no_grad()
    def project_(self) -> None:
        """Put ``a`` back into [0, 1 - min_keep / n]."""
        self.a.clamp_(0.0, self.max_ratio)

    def ranks(self) -> torch.Tensor:
        """c'_i = (r_i + 1/2) / n, r_i = the number of elements less important than element i."""
        order = torch.argsort(self.importance + self._tiebreak, stable=True)
        r = torch.empty(self.n, dtype=torch.float32, device=order.device)
        r[order] = torch.arange(self.n, dtype=torch.float32, device=order.device)
        return (r + 0.5) / self.n

    def forward(self, record: bool = True) -> torch.Tensor:
        """The soft mask m. With ``record``, it is kept (gradient retained) for the next importance update: record
        the mask the network runs with, not the ones a cost model evaluates."""
        m = torch.sigmoid(self.lam * (self.ranks() - self.ratio()))
        soft = m.detach()
        if self.hard_forward:
            hard = torch.zeros_like(m)
            hard[self.kept()] = 1.0
            m = hard + (m - soft)  # exactly the hard mask forward, the soft mask's gradient backward
        if record:
            if m.requires_grad:
                m.retain_grad()
            self._mask, self._soft = m, soft
        return m

    @torch.no_grad()
    def update_importance(self) -> None:
        """Fold (m * dL/dm)^2 of the last forward/backward into the importance average."""
        m = self._mask
        if m is None or m.grad is None:
            return
        self.importance.mul_(self.decay).add_((1 - self.decay) * (self._soft * m.grad) ** 2)
        self._mask = None

    def k(self) -> int:
        """How many elements the hard mask keeps: those with c'_i >= a, i.e. round((1 - a) n)."""
        a = float(self.ratio().detach())
        return max(self.min_keep, self.n - math.ceil(a * self.n - 0.5 - 1e-9))

    def kept(self) -> torch.Tensor:
        """Indices of the kept elements, most important first."""
        order = torch.argsort(self.importance + self._tiebreak, descending=True, stable=True)
        return order[:self.k()]
