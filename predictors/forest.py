"""A tree ensemble that is fitted with scikit-learn and saved as plain JSON arrays.

No pickles: the fitted trees are stored as their node arrays and evaluated with
numpy, vectorised over rows, which is also what makes batch queries fast.
"""

from __future__ import annotations

import numpy as np


class ForestModel:
    """Average of regression trees (``fit`` uses sklearn's ExtraTreesRegressor), evaluated in numpy.

    The per-kernel regressor of an nn-Meter-style predictor (Zhang et al. 2021, "nn-Meter: Towards Accurate
    Latency Prediction of Deep-Learning Model Inference on Diverse Edge Devices", which fits random forests per
    kernel type); extremely randomised trees as in Geurts et al. 2006, "Extremely randomized trees". Stored as
    plain arrays (``to_dict``/``from_dict``, JSON-able; no pickles).

    Args:
        trees: one dict per tree with arrays "left", "right" (child node indices, -1 at leaves), "feature"
            (feature index), "threshold" (go left when feature <= threshold) and "value" (the leaf prediction, in
            the unit of the fitted target); None or [] for an empty forest.

    Raises:
        Nothing in the constructor (the trees are taken as given); ``from_dict`` raises KeyError on a dict
        missing a tree array.
    """

    def __init__(self, trees: list[dict] | None = None) -> None:
        self.trees = trees or []

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, n_trees: int = 40, max_depth: int | None = 18,
            min_samples_leaf: int = 1, seed: int = 0, sample_weight: np.ndarray | None = None) -> "ForestModel":
        from sklearn.ensemble import ExtraTreesRegressor

        est = ExtraTreesRegressor(n_estimators=n_trees, max_depth=max_depth, min_samples_leaf=min_samples_leaf,
                                  random_state=seed, n_jobs=1).fit(X, y, sample_weight=sample_weight)
        trees = []
        for t in est.estimators_:
            tr = t.tree_
            trees.append({"left": tr.children_left.astype(np.int32), "right": tr.children_right.astype(np.int32),
                          "feature": tr.feature.astype(np.int32), "threshold": tr.threshold.astype(np.float64),
                          "value": tr.value[:, 0, 0].astype(np.float64)})
        return cls(trees)

    def predict_all(self, X: np.ndarray) -> np.ndarray:
        """(n_trees, n) predictions of every tree."""
        X = np.asarray(X, dtype=np.float64)
        out = np.empty((len(self.trees), X.shape[0]))
        rows = np.arange(X.shape[0])
        for i, t in enumerate(self.trees):
            node = np.zeros(X.shape[0], dtype=np.int64)
            left, right, feat, thr = t["left"], t["right"], t["feature"], t["threshold"]
            active = left[node] != -1
            while active.any():
                nd = node[active]
                go_left = X[rows[active], feat[nd]] <= thr[nd]
                node[active] = np.where(go_left, left[nd], right[nd])
                active = left[node] != -1
            out[i] = t["value"][node]
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_all(X).mean(axis=0)

    def to_dict(self) -> dict:
        return {"trees": [{k: v.tolist() for k, v in t.items()} for t in self.trees]}

    @classmethod
    def from_dict(cls, d: dict) -> "ForestModel":
        types = {"left": np.int32, "right": np.int32, "feature": np.int32, "threshold": np.float64,
                 "value": np.float64}
        return cls([{k: np.asarray(t[k], dtype=types[k]) for k in types} for t in d["trees"]])
