"""A differentiable stand-in for the device latency predictor, in the expected channel counts of DMS.

latency_ms ~ intercept + sum_op w_op * FLOPs_op with w_op >= 0, fitted by non-negative least squares on the
predictor's outputs for random configs. Two ways to tie the weights are fitted and the one with the lower error
on held-out configs is kept: one weight per op kind (dense kxk conv, 1x1 conv, grouped / depthwise conv, linear,
norm, element-wise, pooling: few weights, robust on large nets) or one per op (layers of one kind run at different
speeds: a 3x3 conv on a 1 x 1 map streams weights, one on 56 x 56 is compute bound). Under DMS masks the FLOPs of
every op are differentiable (blocks gate their ops), so the surrogate is too. Its held-out error is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls

TYING = ("kind", "op")  # how the per-op weights are tied: one per op kind, or one per op


@dataclass
class LatencySurrogate:
    """intercept + features @ weights (ms), features the FLOPs of each op (``DMSNetwork.feature_ops``);
    ``holdout_rel_err`` is the median |error| / predictor on configs it was not fitted on, ``tying`` the kept
    weight tying (``TYING``)."""

    weights: np.ndarray
    intercept: float
    holdout_rel_err: float
    holdout_max_rel_err: float
    tying: str = "op"

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(torch.float64).matmul(torch.from_numpy(self.weights)).float() + self.intercept


def _tie(dms, tying: str) -> np.ndarray:
    """(ops, weights) 0/1 matrix: which shared weight each op's FLOPs get."""
    keys = dms.feature_kinds if tying == "kind" else dms.feature_ops
    names, index = np.unique(keys, return_inverse=True)
    T = np.zeros((len(keys), len(names)))
    T[np.arange(len(keys)), index] = 1.0
    return T


def fit_latency_surrogate(dms, predict_ms, n: int = 300, seed: int = 0) -> LatencySurrogate:
    """Fit on ``n`` random configs of the DMS network's space (``predict_ms``: list of configs -> ms)."""
    space = dms.net.space
    rng = np.random.default_rng(seed)
    configs = [space.random_config(int(rng.integers(1 << 31)), min_ratio=0.2) for _ in range(n)]
    configs[:2] = [space.max_config(), space.uniform_config(0.25)]
    X_ops = dms.features_of_widths(np.stack([space.widths(c) for c in configs]))
    y = np.asarray(predict_ms(configs), dtype=np.float64)
    fit, hold = np.arange(n) % 4 != 3, np.arange(n) % 4 == 3
    best = None
    for tying in TYING:
        T = _tie(dms, tying)
        X = X_ops @ T
        scale = X.max(0) + 1e-9
        A = np.concatenate([X / scale, np.ones((n, 1))], axis=1)
        coef, _ = nnls(A[fit], y[fit])
        rel = np.abs(A[hold] @ coef - y[hold]) / y[hold]
        if best is None or np.median(rel) < best[1]:
            coef, _ = nnls(A, y)  # final fit on everything
            best = (tying, float(np.median(rel)), float(rel.max()), T @ (coef[:-1] / scale), float(coef[-1]))
    tying, med, worst, weights, intercept = best
    return LatencySurrogate(weights, intercept, med, worst, tying)
