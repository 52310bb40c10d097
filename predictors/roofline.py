"""A parametric kernel time: fixed cost + time per multiply-accumulate + time per byte moved, per kernel class.

Tree ensembles predict a constant outside the shapes they were fitted on, so a kernel larger or smaller than any
in the table gets the time of the nearest one seen. This model extrapolates the way kernels scale (linearly in work
and traffic, fitted separately for dense kxk, pointwise, depthwise and grouped convolutions and for matrix
products); the trees then only learn its residual (``LatencyPredictor``), which is bounded wherever they are.
"""

from __future__ import annotations

import numpy as np

CONV_CLASSES = ("dense", "pointwise", "depthwise", "grouped")
BYTES_PER_ELEMENT = 4.0


def conv_terms(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class index, [1, MACs, bytes]) of conv kernels from raw rows in ``features.CONV_RAW`` order."""
    cin, cout, hin, win, hout, wout, kh, kw, groups, has_sum = (raw[:, i].astype(np.float64) for i in range(10))
    # (the activation column, 10, is left to the trees)
    cin_g = cin / np.maximum(groups, 1)
    macs = hout * wout * cout * cin_g * kh * kw
    nbytes = BYTES_PER_ELEMENT * (cin * hin * win + cout * hout * wout * (1 + has_sum) + cout * cin_g * kh * kw)
    depthwise = (cin_g == 1) & (groups > 1)
    pointwise = (kh * kw == 1) & (groups == 1)
    cls = np.where(depthwise, 2, np.where(groups > 1, 3, np.where(pointwise, 1, 0)))
    return cls, np.column_stack([np.ones_like(macs), macs / 1e6, nbytes / 1e6])


def gemm_terms(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, fin, fout = (raw[:, i].astype(np.float64) for i in range(3))
    macs = rows * fin * fout
    nbytes = BYTES_PER_ELEMENT * (rows * fin + rows * fout + fin * fout)
    return np.zeros(len(rows), dtype=np.int64), np.column_stack([np.ones_like(macs), macs / 1e6, nbytes / 1e6])


TERMS = {"conv": conv_terms, "gemm": gemm_terms}


def _nnls_relative(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error (each row divided by its target)."""
    from scipy.optimize import nnls

    w = 1.0 / np.maximum(y, 1e-9)
    coef, _ = nnls(A * w[:, None], y * w)
    return coef


class RooflineModel:
    """Per kernel family and class: time (us) = c0 + c1 * MACs (M) + c2 * bytes (MB), non-negative.

    A class with fewer than ``min_rows`` kernels in the tables uses the coefficients fitted on the whole family.
    """

    def __init__(self, coef: dict[str, dict[int, list[float]]] | None = None) -> None:
        self.coef = coef or {}

    @classmethod
    def fit(cls, raw_by_family: dict[str, np.ndarray], us_by_family: dict[str, np.ndarray],
            min_rows: int = 8) -> "RooflineModel":
        coef: dict[str, dict[int, list[float]]] = {}
        for fam, raw in raw_by_family.items():
            y = np.asarray(us_by_family[fam], dtype=np.float64)
            kind, A = TERMS[fam](np.asarray(raw))
            every = _nnls_relative(A, y)
            coef[fam] = {-1: every.tolist()}
            for k in np.unique(kind):
                sel = kind == k
                coef[fam][int(k)] = _nnls_relative(A[sel], y[sel]).tolist() if sel.sum() >= min_rows \
                    else every.tolist()
        return cls(coef)

    def predict(self, family: str, raw: np.ndarray) -> np.ndarray:
        """Kernel times (us) of raw rows of ``family``; never below a microsecond."""
        kind, A = TERMS[family](np.asarray(raw))
        table = self.coef[family]
        C = np.array([table.get(int(k), table[-1]) for k in kind]).reshape(len(kind), -1)
        return np.maximum((A * C).sum(axis=1), 1.0)

    def to_dict(self) -> dict:
        return {fam: {str(k): v for k, v in d.items()} for fam, d in self.coef.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "RooflineModel":
        return cls({fam: {int(k): list(v) for k, v in t.items()} for fam, t in d.items()})
