"""The error catalogue, read from the source with ast: every error class lives in its package's errors module, is
raised somewhere and is exported from its package; a failing op handler is an UnsupportedOpError."""

import ast
import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

import compress

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "devices", "predictors")
ERRORS_MODULES = {pkg: ROOT / pkg / "errors.py" for pkg in PACKAGES}

# Error classes that may be defined outside an errors module, with the reason.
EXEMPT_PLACE = {
    ("devices/profile_device.py", "ProfileInputError"):
        "the standalone board script runs with the standard library, numpy and onnxruntime only: it cannot import "
        "the packages' errors modules",
}
# Error classes of an errors module that nothing raises bare, with the reason.
NOT_RAISED = {
    "CompressError": "the base of every named error: callers catch it, code raises its subclasses",
}


def _sources():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def _is_exception_class(node: ast.ClassDef, known: set[str]) -> bool:
    names = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases}
    return any(n.endswith(("Error", "Exception")) or n in known for n in names)


def _catalogue():
    """{(relative path, class name): package} of every exception class defined in the three packages."""
    classes, known = {}, set()
    for _ in range(2):  # twice, so classes deriving from our own ones are found whatever the file order
        for path, tree in _sources():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and _is_exception_class(node, known):
                    known.add(node.name)
                    rel = path.relative_to(ROOT).as_posix()
                    classes[(rel, node.name)] = rel.split("/")[0]
    return classes


def _raised_names() -> set[str]:
    """Names of classes raised anywhere: ``raise X``, ``raise X(...)``, ``raise mod.X(...)``."""
    raised = set()
    for _, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name):
                    raised.add(exc.id)
                elif isinstance(exc, ast.Attribute):
                    raised.add(exc.attr)
    return raised


CATALOGUE = _catalogue()
IN_ERRORS_MODULES = {name: pkg for (rel, name), pkg in CATALOGUE.items() if rel == f"{pkg}/errors.py"}


def test_the_scan_finds_the_catalogue():
    # the scan must see what we know is there, or the checks below would pass vacuously
    assert {"CompressError", "WriteError", "BudgetNotMetError", "UnknownDeviceError",
            "CorruptTableError"} <= set(IN_ERRORS_MODULES)
    assert ("devices/profile_device.py", "ProfileInputError") in CATALOGUE
    assert len(IN_ERRORS_MODULES) >= 20


def test_every_error_class_is_defined_in_an_errors_module():
    misplaced = {key for key, pkg in CATALOGUE.items() if key[0] != f"{pkg}/errors.py"} - set(EXEMPT_PLACE)
    assert not misplaced, f"move these into their package's errors.py: {sorted(misplaced)}"
    assert set(EXEMPT_PLACE) <= set(CATALOGUE), "an exemption names a class that no longer exists there"


def test_every_error_class_is_raised_somewhere():
    raised = _raised_names()
    never = {name for name in IN_ERRORS_MODULES if name not in raised} - set(NOT_RAISED)
    assert not never, f"raise these where they belong, or delete them: {sorted(never)}"
    assert set(NOT_RAISED) <= set(IN_ERRORS_MODULES)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_error_class_is_exported_from_its_package(pkg):
    module = importlib.import_module(pkg)
    errors = importlib.import_module(f"{pkg}.errors")
    for name, owner in IN_ERRORS_MODULES.items():
        if owner != pkg:
            continue
        assert name in module.__all__, f"{pkg}.__all__ misses {name}"
        assert getattr(module, name) is getattr(errors, name)


def test_moved_errors_keep_their_old_import_paths():
    from compress.deploy.closed_loop import BudgetNotMetError
    from compress.search.greedy import SearchResumeError
    from compress.search.objectives import PredictorUnavailableError
    from compress.search.prepare import BudgetUnreachableError, MislabelledDataError, NothingToSlimError
    from compress.train.supernet import CheckpointMismatchError

    moved = [BudgetNotMetError, SearchResumeError, PredictorUnavailableError, BudgetUnreachableError,
             MislabelledDataError, NothingToSlimError, CheckpointMismatchError]
    assert all(cls.__module__ == "compress.errors" and getattr(compress, cls.__name__) is cls for cls in moved)
    assert issubclass(MislabelledDataError, compress.InvalidParameterError)


class Doubler(nn.Module):
    def forward(self, x):
        return torch.cat([x, x], dim=1)


class WithDoubler(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.dup = Doubler()

    def forward(self, x):
        return self.dup(self.conv(x))


def test_a_failing_op_handler_is_an_unsupported_op_error():
    from compress.space import ops

    def broken(p, n, mod, args, kwargs, value):
        raise IndexError("handler bug")

    ops.register_module(Doubler, broken)
    key = f"{Doubler.__module__}.{Doubler.__qualname__}"
    try:
        with pytest.raises(compress.UnsupportedOpError, match=r"node 'dup'.*IndexError: handler bug") as info:
            compress.SlimmableNetwork(WithDoubler(), torch.randn(1, 3, 4, 4))
        assert isinstance(info.value, compress.TraceError) and isinstance(info.value.__cause__, IndexError)
    finally:
        ops.MODULE_HANDLERS.pop(key, None)
        ops.EXTRA_LEAF_MODULES.discard(key)
    net = compress.SlimmableNetwork(WithDoubler(), torch.randn(1, 3, 4, 4))  # unregistered again: frozen, no error
    assert net(torch.randn(1, 3, 4, 4)).shape == (1, 8, 4, 4)
