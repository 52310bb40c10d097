"""The differentiable top-k: polarised masks, k = round((1 - a) N), gradient with respect to a."""

import numpy as np
import pytest
import torch

from compress.search.dms.topk import DifferentiableTopK
from compress.errors import InvalidParameterError


def _topk(n, a, seed=0):
    t = DifferentiableTopK(n)
    with torch.no_grad():
        t.a.fill_(a)
        t.importance.copy_(torch.rand(n, generator=torch.Generator().manual_seed(seed)))
    return t


@pytest.mark.parametrize("n", [16, 64, 256])
def test_mask_is_polarised_and_keeps_the_most_important(n):
    for a in np.linspace(0.05, 0.9, 9):
        frac = 0.2 if int(a * 100) % 2 else 0.8  # a * n away from the half-integer boundaries
        t = _topk(n, (int(a * n) + frac) / n)
        m = t().detach()
        undecided = ((m > 0.05) & (m < 0.95)).sum().item()
        assert undecided <= 6, (n, a, undecided)
        k = t.k()
        assert k == round((1 - t.a.item()) * n)
        assert (m >= 0.5).sum().item() == k
        top = set(torch.argsort(t.importance, descending=True)[:k].tolist())
        assert set(torch.nonzero(m >= 0.5).flatten().tolist()) == top == set(t.kept().tolist())


def test_gradient_of_a_matches_finite_differences():
    torch.manual_seed(0)
    n = 32
    t = _topk(n, 0.37)
    w = torch.randn(n)
    loss = (t() * w).sum()
    loss.backward()
    analytic = t.a.grad.item()
    eps = 1e-3
    with torch.no_grad():
        t.a.fill_(0.37 + eps)
        up = (t() * w).sum().item()
        t.a.fill_(0.37 - eps)
        down = (t() * w).sum().item()
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-3)


def test_taylor_importance_is_an_average_of_squared_mask_times_gradient():
    t = DifferentiableTopK(4, decay=0.99)
    w = torch.tensor([1.0, -2.0, 3.0, 0.0])
    m = t()
    (m * w).sum().backward()
    expect = 0.01 * (m.detach() * w) ** 2
    t.update_importance()
    torch.testing.assert_close(t.importance, expect)
    # the largest |m * grad| becomes the most important, and keeps its rank when a rises
    assert t.kept()[0].item() == 2


def test_equal_importance_keeps_the_first_elements_and_min_keep_holds():
    t = DifferentiableTopK(10, min_keep=3)
    with torch.no_grad():
        t.a.fill_(0.95)
    assert t.k() == 3 and t.kept().tolist() == [0, 1, 2]
    assert t.ratio().item() == pytest.approx(0.7)
    with pytest.raises(InvalidParameterError, match="min_keep"):
        DifferentiableTopK(4, min_keep=5)


def test_hard_forward_is_the_exact_top_k_with_the_soft_gradient():
    """For residual blocks (n = 3): the forward mask is 0/1 keeping the k most important, d/da is the soft one's."""
    hard, soft = DifferentiableTopK(3, min_keep=0, hard_forward=True), DifferentiableTopK(3, min_keep=0)
    for t in (hard, soft):
        t.importance.copy_(torch.tensor([0.2, 0.9, 0.5]))
        with torch.no_grad():
            t.a.fill_(0.4)
    m = hard()
    assert m.tolist() == [0.0, 1.0, 1.0] and hard.k() == 2
    w = torch.tensor([1.0, 2.0, 3.0])
    (m * w).sum().backward()
    (soft() * w).sum().backward()
    assert hard.a.grad is not None and torch.allclose(hard.a.grad, soft.a.grad)
    hard.update_importance()  # uses the soft mask value: a removed element keeps a non-zero importance update
    assert hard.importance[0] > 0.99 * 0.2


def test_reading_k_off_a_trainable_ratio_warns_nothing():
    """k() reads the ratio as a number while ``a`` requires grad: no 'converting a tensor with requires_grad'
    warning in every step of a search."""
    import warnings

    t = _topk(32, 0.25)
    assert t.a.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert t.k() == 24
