"""A tree ensemble that is fitted with scikit-learn and saved as plain JSON arrays.

No pickles: the fitted trees are stored as their node arrays and evaluated with
numpy, vectorised over rows, which is also what makes batch queries fast.
"""

from __future__ import annotations

import numpy as np

from predictors.errors import CorruptTableError


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
    def from_dict(cls, d: dict, n_features: int | None = None) -> "ForestModel":
        """Rebuild from ``to_dict``'s arrays, validated: a file can be passed around, so nothing in it is trusted.

        Every tree's arrays have one length; a split node's children lie after it and inside the tree (so every
        walk ends, in at most as many steps as the tree has nodes); a leaf has both children -1; a split's
        feature is in ``[0, n_features)``; thresholds and values are finite.

        Raises:
            CorruptTableError: names the tree and the field that is wrong.
        """
        types = {"left": np.int32, "right": np.int32, "feature": np.int32, "threshold": np.float64,
                 "value": np.float64}
        if not isinstance(d, dict) or not isinstance(d.get("trees"), list):
            raise CorruptTableError("A forest must be {'trees': [...]}; got "
                                    f"{type(d).__name__ if not isinstance(d, dict) else sorted(d)}.")
        trees = []
        for i, t in enumerate(d["trees"]):
            try:
                tree = {k: np.asarray(t[k], dtype=types[k]) for k in types}
            except (KeyError, TypeError, ValueError) as e:
                raise CorruptTableError(f"Tree {i} of the forest lacks or has a malformed field: {e}.") from None
            check_tree(tree, i, n_features)
            trees.append(tree)
        return cls(trees)


def check_tree(t: dict[str, np.ndarray], index: int, n_features: int | None) -> None:
    """Raise :class:`CorruptTableError` unless the node arrays describe a finite tree (see ``from_dict``)."""
    n = len(t["left"])
    if n == 0 or any(v.ndim != 1 or len(v) != n for v in t.values()):
        raise CorruptTableError(f"Tree {index}: its node arrays must be 1-d and of one non-zero length; got "
                                f"{ {k: v.shape for k, v in t.items()} }.")
    left, right, nodes = t["left"], t["right"], np.arange(n)
    leaf = left == -1
    if np.any(leaf != (right == -1)):
        raise CorruptTableError(f"Tree {index}: a node has exactly one child (left and right must both be -1 at "
                                f"a leaf), at node {int(np.flatnonzero(leaf != (right == -1))[0])}.")
    split = ~leaf
    bad = split & ((left <= nodes) | (right <= nodes) | (left >= n) | (right >= n))
    if np.any(bad):
        raise CorruptTableError(f"Tree {index}: node {int(np.flatnonzero(bad)[0])} points to a child that is not "
                                f"after it inside the tree (a loop or out of range; children must be in ({0}, {n})).")
    feat = t["feature"][split]
    if np.any(feat < 0) or (n_features is not None and np.any(feat >= n_features)):
        raise CorruptTableError(f"Tree {index}: a split reads feature {int(feat.min() if np.any(feat < 0) else feat.max())}, "
                                f"outside [0, {n_features if n_features is not None else 'n_features'}).")
    if not (np.all(np.isfinite(t["threshold"][split])) and np.all(np.isfinite(t["value"]))):
        raise CorruptTableError(f"Tree {index}: a threshold or value is not a finite number.")
