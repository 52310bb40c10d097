"""Distillation losses against direct numpy computations and their known limits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress.train.losses import adaptive_alpha_divergence, alpha_divergence_value, distill_loss, kl_distill
from compress.errors import InvalidParameterError


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _numpy_alpha(p, q, alpha, beta=np.inf):
    w = np.minimum((p / q) ** alpha, beta)
    return (q * (w - 1)).sum(1) / (alpha * (alpha - 1))


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 10, generator=g, dtype=torch.float64) * 2, torch.randn(16, 10, generator=g,
                                                                                 dtype=torch.float64) * 2


@pytest.mark.parametrize("alpha", [-1.0, -0.5, 0.5, 2.0])
def test_alpha_divergence_matches_numpy(logits, alpha):
    s, t = logits
    p, q = _softmax(t.numpy()), _softmax(s.numpy())
    got = alpha_divergence_value(F.log_softmax(t, 1), F.log_softmax(s, 1), alpha, beta=1e9).numpy()
    np.testing.assert_allclose(got, _numpy_alpha(p, q, alpha), rtol=1e-9)


def test_alpha_divergence_limits_are_kl(logits):
    s, t = logits
    p, q = _softmax(t.numpy()), _softmax(s.numpy())
    kl_pq = (p * np.log(p / q)).sum(1)
    kl_qp = (q * np.log(q / p)).sum(1)
    lp, lq = F.log_softmax(t, 1), F.log_softmax(s, 1)
    np.testing.assert_allclose(alpha_divergence_value(lp, lq, 1.0, 1e9).numpy(), kl_pq, rtol=1e-9)
    np.testing.assert_allclose(alpha_divergence_value(lp, lq, 0.0, 1e9).numpy(), kl_qp, rtol=1e-9)
    # the general formula approaches the limits continuously
    np.testing.assert_allclose(_numpy_alpha(p, q, 1 - 1e-6), kl_pq, rtol=1e-4)
    np.testing.assert_allclose(_numpy_alpha(p, q, 1e-6), kl_qp, rtol=1e-4)
    # and the KL distillation loss is the batch mean of KL(p || q)
    assert float(kl_distill(s, t)) == pytest.approx(kl_pq.mean(), rel=1e-9)


def test_adaptive_value_is_the_larger_divergence(logits):
    s, t = logits
    p, q = _softmax(t.numpy()), _softmax(s.numpy())
    w = np.minimum(p / q, 5.0)
    d_plus = (q * (w * np.log(w) - w + 1)).sum(1)  # alpha = 1 with the ratio clipped at 5 (KL when unclipped)
    d_minus = _numpy_alpha(p, q, -1.0, 5.0)
    got = float(adaptive_alpha_divergence(s, t, -1.0, 1.0, 5.0))
    assert got == pytest.approx(np.maximum(d_minus, d_plus).mean(), rel=1e-9)


def _mixed_batch():
    """Random rows (alpha = -1 wins) and rows where the teacher splits its mass over two classes while the
    student is sure of one (KL(p || q), alpha = 1, wins when unclipped)."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, 10, generator=g, dtype=torch.float64)
    t = torch.randn(6, 10, generator=g, dtype=torch.float64)
    t2 = torch.full((3, 10), -5.0, dtype=torch.float64)
    t2[:, :2] = 0.0
    s2 = torch.zeros(3, 10, dtype=torch.float64)
    s2[:, 0] = 7.0
    return torch.cat([s, s2]), torch.cat([t, t2])


def test_adaptive_picks_each_branch_per_sample():
    s, t = _mixed_batch()
    lp, lq = F.log_softmax(t, 1), F.log_softmax(s, 1)
    d = torch.stack([alpha_divergence_value(lp, lq, a, 1e9) for a in (-1.0, 1.0)])
    assert (d[0] > d[1]).any() and (d[1] > d[0]).any()
    assert float(adaptive_alpha_divergence(s, t, -1.0, 1.0, 1e9)) == pytest.approx(float(d.max(0).values.mean()))


@pytest.mark.parametrize("alpha_max", [1.0 + 1e-6, 2.0])
def test_adaptive_gradient_equals_exact_gradient_when_unclipped(alpha_max):
    s, t = _mixed_batch()
    s1 = s.clone().requires_grad_(True)
    adaptive_alpha_divergence(s1, t, -1.0, alpha_max, beta=1e9).backward()
    # direct differentiable formula, the larger alpha picked per sample
    s2 = s.clone().requires_grad_(True)
    lp, lq = F.log_softmax(t, 1), F.log_softmax(s2, 1)
    q = lq.exp()
    d = torch.stack([(q * (torch.exp(a * (lp - lq)) - 1)).sum(1) / (a * (a - 1)) for a in (-1.0, alpha_max)])
    d.max(0).values.mean().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-7, atol=1e-10)


def test_clipping_bounds_the_gradient():
    # a student far more confident than the teacher on one class: (q/p) is huge for alpha = -1
    t = torch.tensor([[0.0, 0.0, 0.0, -12.0]], dtype=torch.float64)
    s = torch.tensor([[0.0, 0.0, 0.0, 6.0]], dtype=torch.float64)
    grads = {}
    for beta in (1e9, 5.0):
        x = s.clone().requires_grad_(True)
        adaptive_alpha_divergence(x, t, -1.0, 1.0, beta).backward()
        grads[beta] = x.grad.abs().max().item()
    assert grads[5.0] < grads[1e9] / 100
    assert grads[5.0] <= 5.0 + 1e-9  # |dL/dz| <= max weight * ... bounded by beta


def test_bad_alphas_and_unknown_loss():
    s = torch.randn(2, 3)
    with pytest.raises(InvalidParameterError, match="alpha_min < 0 < alpha_max"):
        adaptive_alpha_divergence(s, s, 1.0, 2.0)
    with pytest.raises(InvalidParameterError, match="Known"):
        distill_loss("js")
