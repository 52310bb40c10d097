"""The public surface is documented, and stays documented.

Public surface: every name in ``compress.__all__``, ``devices.__all__`` and ``predictors.__all__``, plus the
extension points in ``EXTRA``. Docstrings are Google style (``Args:``, ``Returns:``, ``Raises:``, ``Attributes:``
sections, one entry per line ``name: text``, continuation lines indented further). The rules, checked per name:

* Exception classes: a docstring of their own whose first line says what the error means (nothing more).
* Functions:
    - ``Args:`` names every parameter (``a, b:`` and ``a / b:`` entries document several at once);
    - ``Returns:`` when the function returns something: its return annotation is not None, or (unannotated) its
      body has a ``return <value>``;
    - ``Raises:`` always (a function that raises nothing says so with an entry starting "Nothing").
* Classes:
    - dataclasses: ``Attributes:`` names every field (the fields are the constructor's arguments);
    - other classes with constructor arguments: ``Args:`` names every one;
    - ``Raises:`` when the class writes its own constructor (``__init__``, or a dataclass's ``__post_init__``):
      a class documents its constructor's errors (and may add those of its methods).
* Every ``Raises:`` entry names real exception classes (of ``compress.errors``, ``devices.errors``,
  ``predictors.errors``, ``devices.profile_device`` or builtins), or is "Nothing ...".
* The pragmatic "follow calls" rule: every exception class the function (for a class: its constructor) raises
  by name in its own body (``raise SomeError(...)``, nested callbacks included) and does not catch there itself
  (``try``/``except`` around it), and InvalidParameterError wherever it calls
  ``check_parameter`` directly or a method of its own class that raises by name, must be listed under
  ``Raises:``. Deeper callees are the writer's job (read them one level down), not this test's.
* Algorithms cite the paper or source they follow, and FLOPs say what one FLOP is (``CITATIONS``).

Constants and type aliases cannot carry a docstring of their own; they are listed in ``NOT_DOCSTRING_HOLDERS``
(documented by comments beside them), and any other non-callable public name fails the test.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import inspect
import re
import textwrap
import warnings

import pytest

import compress
import compress.errors
import compress.slim.layers
import compress.space
import compress.verify
import devices
import devices.errors
import devices.profile_device
import predictors
import predictors.errors

EXTRA = {
    "compress.space.register_module": compress.space.register_module,
    "compress.space.register_function": compress.space.register_function,
    "compress.space.register_method": compress.space.register_method,
    "compress.slim.layers.register_layer_kind": compress.slim.layers.register_layer_kind,
    "compress.verify.verify_model": compress.verify.verify_model,
}

# public names that are values, not functions or classes: documented by the comment beside their definition
NOT_DOCSTRING_HOLDERS = {
    "compress.Config",          # type alias dict[str, int] (compress/space/space.py)
    "devices.MODEL_KINDS",      # tuple constant (devices/capabilities.py)
    "devices.NO_CAPABILITIES",  # Capabilities constant (devices/capabilities.py)
}

# name -> words its docstring must contain: the paper/source an algorithm follows, or the unit convention
CITATIONS: dict[str, tuple[str, ...]] = {
    "compress.autoslim": ("AutoSlim: Towards One-Shot Architecture Search for Channel Numbers",
                          "Universally Slimmable Networks", "AlphaNet", "nn-Meter"),
    "compress.train_supernet": ("Universally Slimmable Networks", "sandwich rule", "inplace distillation",
                                "AlphaNet"),
    "compress.TrainSettings": ("Universally Slimmable Networks", "AlphaNet"),
    "compress.SearchSettings": ("AutoSlim: Towards One-Shot Architecture Search for Channel Numbers",),
    "compress.dms": ("Differentiable Model Scaling using Differentiable Topk", "ICML 2024", "nn-Meter"),
    "compress.DMSSettings": ("Differentiable Model Scaling using Differentiable Topk",),
    "compress.SlimmableNetwork": ("Universally Slimmable Networks", "DepGraph"),
    "compress.ChannelSpace": ("DepGraph", "Fang et al. 2023"),
    "compress.count_flops": ("fused multiply-add is one FLOP",),
    "compress.FlopReport": ("fused multiply-add is one FLOP",),
    "predictors.LatencyPredictor": ("nn-Meter", "Zhang et al. 2021"),
    "predictors.profile_configs": ("nn-Meter",),
    "predictors.profile_family": ("nn-Meter",),
}

ERROR_NAMESPACES = (compress.errors, devices.errors, predictors.errors, devices.profile_device, builtins)
ENTRY = re.compile(r"^\**([A-Za-z_][\w.]*(?:\s*[,/]\s*\**[A-Za-z_][\w.]*)*)\s*:(?:\s|$)")


def public_names() -> dict[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = {f"{pkg.__name__}.{n}": getattr(pkg, n) for pkg in (compress, devices, predictors)
                 for n in pkg.__all__}
        for n, module in compress.LAZY.items():  # the function itself: once the compress.dms package is imported,
            names[f"compress.{n}"] = getattr(importlib.import_module(module), n)  # the name holds the package
    return {**names, **EXTRA}


def is_exception(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseException)


def own_doc(obj: object) -> str | None:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if doc else None


def section(doc: str, title: str) -> list[str] | None:
    """The entries of a Google-style section (continuation lines joined), or None when there is no section."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == title:
            indent = len(line) - len(line.lstrip())
            body = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                body.append(nxt)
            body = textwrap.dedent("\n".join(body)).splitlines()
            entries: list[str] = []
            for b in body:
                if b.strip() and not b[0].isspace():
                    entries.append(b.strip())
                elif b.strip() and entries:
                    entries[-1] += " " + b.strip()
            return entries
    return None


def entry_names(entries: list[str]) -> list[list[str]]:
    """Names each entry documents: ``a, b: ...`` -> [a, b]; free text -> []."""
    out = []
    for e in entries:
        m = ENTRY.match(e)
        out.append([n.strip().lstrip("*") for n in re.split(r"[,/]", m.group(1))] if m else [])
    return out


def resolve_error(name: str) -> type | None:
    short = name.rsplit(".", 1)[-1]
    for ns in ERROR_NAMESPACES:
        obj = getattr(ns, short, None)
        if is_exception(obj):
            return obj
    return None


def function_ast(fn) -> ast.FunctionDef | None:
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return None
    node = ast.parse(src).body[0]
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def caught_by(handlers: list[ast.ExceptHandler], name: str) -> bool:
    """Whether one of ``handlers`` catches exception class ``name`` (a bare ``except:`` catches everything)."""
    cls = resolve_error(name)
    for h in handlers:
        if h.type is None:
            return True
        types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        for t in types:
            caught = resolve_error(t.id if isinstance(t, ast.Name) else getattr(t, "attr", ""))
            if cls is not None and caught is not None and issubclass(cls, caught):
                return True
    return False


def raised_names(fn, cls: type | None = None) -> set[str]:
    """Exception classes ``fn`` raises by name and does not catch itself, InvalidParameterError for a direct
    ``check_parameter`` call, and the named raises of methods of ``cls`` it calls as ``self.method(...)`` (one
    level down). Nested defs count: callbacks such as export_onnx's ``write`` run inside the function."""
    node = function_ast(fn)
    if node is None:
        return set()
    names: set[str] = set()

    def visit(n: ast.AST, handlers: list[ast.ExceptHandler]) -> None:
        found: set[str] = set()
        if isinstance(n, ast.Raise) and n.exc is not None:
            target = n.exc.func if isinstance(n.exc, ast.Call) else n.exc
            if isinstance(target, ast.Name) and resolve_error(target.id) is not None:
                found.add(target.id)
        elif isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Name) and f.id == "check_parameter":
                found.add("InvalidParameterError")
            elif (cls is not None and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                  and f.value.id == "self" and callable(getattr(cls, f.attr, None))):
                found |= raised_names(getattr(cls, f.attr), None)
        names.update(x for x in found if not caught_by(handlers, x))
        if isinstance(n, ast.Try):
            for child in n.body:
                visit(child, handlers + list(n.handlers))
            for child in [*n.handlers, *n.orelse, *n.finalbody]:
                visit(child, handlers)
        else:
            for child in ast.iter_child_nodes(n):
                visit(child, handlers)

    visit(node, [])
    return names


def returns_value(fn) -> bool:
    ann = inspect.signature(fn).return_annotation
    if ann is not inspect.Signature.empty:
        return ann not in (None, "None")
    node = function_ast(fn)
    if node is None:
        return False
    stack = list(node.body)
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Return) and n.value is not None:
            return True
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(n))
    return False


def parameters(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.name not in ("self", "cls")]


def check_raises(doc: str, raised: set[str], required: bool) -> list[str]:
    problems = []
    entries = section(doc, "Raises:")
    if entries is None:
        if required or raised:
            problems.append(f"no Raises: section (raises {sorted(raised)})" if raised else "no Raises: section")
        return problems
    if not entries:
        problems.append("an empty Raises: section")
    documented = set()
    for entry, names in zip(entries, entry_names(entries)):
        if entry.startswith("Nothing"):
            continue
        for name in names:
            if resolve_error(name) is None:
                problems.append(f"Raises: names {name!r}, which is no exception class of this project or builtins")
            documented.add(name.rsplit(".", 1)[-1])
    missing = sorted(raised - documented)
    if missing:
        problems.append(f"raises {missing} in its body without listing them under Raises:")
    return problems


def check_function(fn) -> list[str]:
    doc = own_doc(fn)
    if not doc:
        return ["no docstring"]
    problems = []
    params = parameters(fn)
    args = section(doc, "Args:")
    if params:
        if args is None:
            problems.append("no Args: section")
        else:
            documented = {n for names in entry_names(args) for n in names}
            missing = [p for p in params if p not in documented]
            if missing:
                problems.append(f"Args: does not document {missing}")
    if returns_value(fn) and section(doc, "Returns:") is None:
        problems.append("returns a value but has no Returns: section")
    problems += check_raises(doc, raised_names(fn), required=True)
    return problems


def check_class(cls: type) -> list[str]:
    doc = own_doc(cls)
    if not doc:
        return ["no docstring"]
    problems = []
    if dataclasses.is_dataclass(cls):
        fields = [f.name for f in dataclasses.fields(cls)]
        attrs = section(doc, "Attributes:")
        if fields and attrs is None:
            problems.append("a dataclass without an Attributes: section")
        elif fields:
            documented = {n for names in entry_names(attrs) for n in names}
            missing = [f for f in fields if f not in documented]
            if missing:
                problems.append(f"Attributes: does not document the fields {missing}")
        ctor = cls.__dict__.get("__post_init__")
    else:
        ctor = cls.__dict__.get("__init__")
        params = parameters(cls) if ctor is not None else []
        args = section(doc, "Args:")
        if params and args is None:
            problems.append("constructor arguments but no Args: section")
        elif params:
            documented = {n for names in entry_names(args) for n in names}
            missing = [p for p in params if p not in documented]
            if missing:
                problems.append(f"Args: does not document {missing}")
    if ctor is not None:
        problems += check_raises(doc, raised_names(ctor, cls), required=True)
    elif section(doc, "Raises:") is not None:
        problems += check_raises(doc, set(), required=False)
    return problems


def check(obj: object) -> list[str]:
    if is_exception(obj):
        doc = own_doc(obj)
        return [] if doc and doc.splitlines()[0].strip() else ["an exception class without a one-line docstring"]
    if isinstance(obj, type):
        return check_class(obj)
    return check_function(obj)


PUBLIC = public_names()


@pytest.mark.parametrize("name", sorted(set(PUBLIC) - NOT_DOCSTRING_HOLDERS))
def test_public_name_is_documented(name):
    problems = check(PUBLIC[name])
    assert not problems, f"{name}: " + "; ".join(problems)


def test_only_known_values_lack_docstrings():
    values = {n for n, obj in PUBLIC.items() if not (isinstance(obj, type) or inspect.isroutine(obj))}
    assert values == NOT_DOCSTRING_HOLDERS


@pytest.mark.parametrize("name", sorted(CITATIONS))
def test_algorithm_cites_its_source(name):
    doc = " ".join(own_doc(PUBLIC[name]).split())  # line breaks inside a title do not count
    missing = [w for w in CITATIONS[name] if w not in doc]
    assert not missing, f"{name}'s docstring does not mention {missing}"


# ---- the checker itself fails where it should ------------------------------------------------------------------
def _undocumented_raise(x: int) -> int:
    """Doubles x.

    Args:
        x: a number.

    Returns:
        2 x.

    Raises:
        Nothing: never.
    """
    if x < 0:
        raise compress.errors.InvalidParameterError("x < 0")  # attribute form: not followed
    if x > 10:
        raise OverflowError("x > 10")
    return 2 * x


def _invented_error(x: int) -> None:
    """Does nothing.

    Args:
        x: a number.

    Raises:
        NoSuchError: made up.
    """


def _caught_inside(x: int) -> None:
    """Checks x, reporting instead of raising.

    Args:
        x: a number.

    Raises:
        Nothing: the AssertionError is caught here.
    """
    try:
        if x < 0:
            raise AssertionError("x < 0")
    except (RuntimeError, AssertionError):
        pass


def _no_returns(x):
    """Returns x.

    Args:
        x: a number.

    Raises:
        Nothing: never.
    """
    return x


class _Settings:
    """Settings.

    Args:
        a: a number.
    """

    def __init__(self, a: int, b: int) -> None:
        self._check(a)

    def _check(self, a: int) -> None:
        if a < 0:
            raise ValueError("a < 0")  # one level down, through self._check


@dataclasses.dataclass
class _Record:
    """A record.

    Attributes:
        value_ms: latency in ms.
    """

    value_ms: float
    runs: int


def test_checker_finds_each_kind_of_gap():
    assert check_function(_undocumented_raise) == [
        "raises ['OverflowError'] in its body without listing them under Raises:"]
    assert check_function(_invented_error) == [
        "Raises: names 'NoSuchError', which is no exception class of this project or builtins"]
    assert check_function(_caught_inside) == []
    assert check_function(_no_returns) == ["returns a value but has no Returns: section"]
    assert check_class(_Settings) == ["Args: does not document ['b']", "no Raises: section (raises ['ValueError'])"]
    assert check_class(_Record) == ["Attributes: does not document the fields ['runs']"]
    assert check(compress.errors.CompressError) == []


def test_section_parser_joins_continuations_and_splits_names():
    doc = inspect.cleandoc("""Summary.

    Raises:
        InvalidParameterError / MislabelledDataError: one
            continued.
        InputShapeError, TraceError: two.
    Returns:
        x.
    """)
    entries = section(doc, "Raises:")
    assert entries == ["InvalidParameterError / MislabelledDataError: one continued.",
                       "InputShapeError, TraceError: two."]
    assert entry_names(entries) == [["InvalidParameterError", "MislabelledDataError"],
                                    ["InputShapeError", "TraceError"]]
