"""A differentiable stand-in for the device latency predictor, in the expected channel counts of DMS.

latency_ms ~ intercept + sum_k w_k * FLOPs_k, with FLOPs_k the FLOPs of op kind k (dense kxk conv, 1x1 conv,
grouped / depthwise conv, linear, norm, element-wise, pooling) and w_k >= 0, fitted by non-negative least squares
on the predictor's outputs for random configs. Under DMS masks the FLOPs per kind are differentiable (blocks gate
their ops), so the surrogate is too. Its error against the predictor on configs it was not fitted on is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls


@dataclass
class LatencySurrogate:
    """intercept + features @ weights (ms); ``holdout_rel_err`` is the median |error| / predictor on unseen configs."""

    weights: np.ndarray
    intercept: float
    holdout_rel_err: float
    holdout_max_rel_err: float

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(torch.float64).matmul(torch.from_numpy(self.weights)).float() + self.intercept


def fit_latency_surrogate(dms, predict_ms, n: int = 300, seed: int = 0) -> LatencySurrogate:
    """Fit on ``n`` random configs of the DMS network's space (``predict_ms``: list of configs -> ms)."""
    space = dms.net.space
    rng = np.random.default_rng(seed)
    configs = [space.random_config(int(rng.integers(1 << 31)), min_ratio=0.2) for _ in range(n)]
    configs[:2] = [space.max_config(), space.uniform_config(0.25)]
    widths = np.stack([space.widths(c) for c in configs])
    X = dms.features_of_widths(widths)
    y = np.asarray(predict_ms(configs), dtype=np.float64)
    scale = X.max(0) + 1e-9
    A = np.concatenate([X / scale, np.ones((n, 1))], axis=1)
    fit, hold = np.arange(n) % 4 != 3, np.arange(n) % 4 == 3
    coef, _ = nnls(A[fit], y[fit])
    rel = np.abs(A[hold] @ coef - y[hold]) / y[hold]
    coef, _ = nnls(A, y)  # final fit on everything
    return LatencySurrogate(coef[:-1] / scale, float(coef[-1]), float(np.median(rel)), float(rel.max()))
