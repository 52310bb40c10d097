"""Old flat import paths (``compress.extract``, ``compress.dms.masked``, ...) kept working after the move to
layered subpackages: importing one returns the module at its new path and warns (``DeprecationWarning``) with
the new path. Removed in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old path -> new path
MOVED: dict[str, str] = {
    "compress.checkpoint": "compress.io",
    "compress.tracing": "compress.space.trace",
    "compress.coupling": "compress.space.atoms",
    "compress.handlers": "compress.space.ops",
    "compress.groups": "compress.space.groups",
    "compress.counts": "compress.cost.counts",
    "compress.flops": "compress.cost.flops",
    "compress.slim_layers": "compress.slim.layers",
    "compress.slimmable": "compress.slim.network",
    "compress.reorder": "compress.slim.reorder",
    "compress.extract": "compress.subnet.extract",
    "compress.bn": "compress.subnet.bn",
    "compress.export": "compress.subnet.export",
    "compress.data": "compress.train.data",
    "compress.models": "compress.train.models",
    "compress.losses": "compress.train.losses",
    "compress.schedule": "compress.train.schedule",
    "compress.evaluate": "compress.train.evaluate",
    "compress.finetune": "compress.train.finetune",
    "compress.supernet": "compress.train.supernet",
    "compress.timing": "compress.deploy.timing",
    "compress.closed_loop": "compress.deploy.closed_loop",
    "compress.prepare": "compress.search.prepare",
    "compress.objectives": "compress.search.objectives",
    "compress.greedy": "compress.search.greedy",
    "compress.baselines": "compress.search.baselines",
    "compress.dms.api": "compress.api.dms",
    "compress.dms.topk": "compress.search.dms.topk",
    "compress.dms.masked": "compress.search.dms.masked",
    "compress.dms.blocks": "compress.search.dms.blocks",
    "compress.dms.search": "compress.search.dms.search",
    "compress.dms.surrogate": "compress.search.dms.surrogate",
    "compress.dms.scale": "compress.search.dms.scale",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new path (one object, two names)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there ({spec.name} goes away in 0.3).",
                      DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        """Nothing to run: the module at the new path is already loaded."""


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
