"""Distillation losses for inplace distillation: KL and AlphaNet's adaptive alpha-divergence.

For teacher probabilities p and student probabilities q over K classes,

    D_alpha(p || q) = 1 / (alpha (alpha - 1)) * sum_i q_i ((p_i / q_i)^alpha - 1)

with the limits KL(p || q) at alpha -> 1 and KL(q || p) at alpha -> 0. Its gradient with respect to the
student is -1/alpha * sum_i q_i (p_i / q_i)^alpha grad log q_i. AlphaNet clips the importance weight
(p_i / q_i)^alpha at beta so that the gradient stays bounded, and uses, per sample, the larger of the
divergences at a negative and a positive alpha (penalising both over- and under-estimated uncertainty).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from compress.errors import InvalidParameterError, check_parameter

_EPS = 1e-3


def kl_distill(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) over the batch; the teacher is detached."""
    p = F.softmax(teacher_logits.detach(), dim=1)
    log_q = F.log_softmax(student_logits, dim=1)
    return (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(1).mean()


def _weights(log_p: torch.Tensor, log_q: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Importance weights (p/q)^alpha, clipped at beta (no gradient)."""
    return torch.exp(alpha * (log_p - log_q)).clamp(max=beta)


def alpha_divergence_value(log_p: torch.Tensor, log_q: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Per-sample D_alpha(p || q) with the importance weight clipped at beta (exact limits at 0 and 1)."""
    q = log_q.exp()
    if abs(alpha - 1.0) < _EPS:
        ratio = (log_p - log_q).clamp(max=torch.log(torch.tensor(beta)).item())
        return (q * (ratio.exp() * ratio - ratio.exp() + 1)).sum(1)  # sum p log(p/q) when unclipped
    if abs(alpha) < _EPS:
        return (q * (log_q - log_p)).sum(1)
    w = _weights(log_p, log_q, alpha, beta)
    return (q * (w - 1)).sum(1) / (alpha * (alpha - 1))


def adaptive_alpha_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                              alpha_min: float = -1.0, alpha_max: float = 1.0, beta: float = 5.0) -> torch.Tensor:
    """AlphaNet's loss: per sample the larger of D_{alpha_min} and D_{alpha_max}, weights clipped at beta.

    The returned scalar has the value of that divergence (batch mean) and, through a surrogate, its clipped
    gradient -1/alpha * sum_i q_i w_i grad log q_i; the teacher is detached.
    """
    check_parameter(alpha_min < 0 < alpha_max, "alpha_min/alpha_max", "adaptive_alpha_divergence",
                    "alpha_min < 0 < alpha_max", (alpha_min, alpha_max))
    check_parameter(beta > 0, "beta", "adaptive_alpha_divergence", "a positive float", beta)
    log_p = F.log_softmax(teacher_logits.detach(), dim=1)
    log_q = F.log_softmax(student_logits, dim=1)
    with torch.no_grad():
        lq = log_q.detach()
        values = torch.stack([alpha_divergence_value(log_p, lq, a, beta) for a in (alpha_min, alpha_max)])
        pick_max = values[1] >= values[0]
        q = lq.exp()
        coef = torch.stack([q * _weights(log_p, lq, a, beta) / -a for a in (alpha_min, alpha_max)])
        coef = torch.where(pick_max.view(1, -1, 1), coef[1:2], coef[0:1])[0]
        value = torch.where(pick_max, values[1], values[0])
    surrogate = (coef * log_q).sum(1)
    return (value + surrogate - surrogate.detach()).mean()


DISTILL_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"kl": kl_distill, "alpha": adaptive_alpha_divergence}


def distill_loss(name: str) -> Callable[..., torch.Tensor]:
    """The inplace-distillation loss called ``name`` ("kl" or "alpha")."""
    if name not in DISTILL_LOSSES:
        raise InvalidParameterError(f"Unknown distillation loss {name!r}. Known: {sorted(DISTILL_LOSSES)}.")
    return DISTILL_LOSSES[name]
