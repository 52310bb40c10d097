"""The package structure, enforced: every import (module level or inside a function) goes to the same layer or a
lower one, there is no import cycle between modules, and no module imports or reads another module's private
(``_``-prefixed) names; tests are held to the last rule too.

Layers, lowest first (a module belongs to the first prefix that matches its name):
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("compress", "devices", "predictors")

LAYERS: list[tuple[str, ...]] = [
    ("compress.errors", "compress.io", "compress.settings", "compress.moved"),
    ("compress.space",),
    ("compress.cost",),
    ("compress.slim",),
    ("compress.subnet",),
    ("devices",),
    ("predictors",),
    ("compress.train",),
    ("compress.deploy",),
    ("compress.result",),
    ("compress.search",),
    ("compress.api", "compress.dms", "compress.verify"),
    ("compress",),  # the facade: compress/__init__.py
]
__doc__ += "\n".join(f"    {i}: {', '.join(names)}" for i, names in enumerate(LAYERS))


def layer_of(module: str) -> int | None:
    """Index of the module's layer: the longest matching prefix wins (``compress.space.ops`` -> compress.space)."""
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    return best


@dataclass
class ModuleInfo:
    name: str
    path: Path
    is_package: bool
    imports: list[tuple[str, int]] = field(default_factory=list)        # (imported module, line)
    private_uses: list[tuple[str, int]] = field(default_factory=list)   # ("module:name", line)
    private_defs: set[str] = field(default_factory=set)        # _attributes and _methods this module defines
    private_reads: list[tuple[str, int]] = field(default_factory=list)  # obj._name read, obj not self/cls


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def resolve(info: ModuleInfo, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = info.name.split(".")
    if not info.is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def scan(path: Path, root: Path, known: set[str]) -> ModuleInfo:
    """Imports of our packages and private names taken from them, found with ``ast`` (function bodies included)."""
    name, is_package = module_name(path, root)
    info = ModuleInfo(name, path, is_package)
    tree = ast.parse(path.read_text(), str(path))
    aliases: dict[str, str] = {}  # local name -> our module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    info.imports.append((a.name, node.lineno))
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(info, node.level, node.module)
            if target.split(".")[0] not in PACKAGES:
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in known:  # "from compress.space import ops": the submodule
                    info.imports.append((sub, node.lineno))
                    aliases[a.asname or a.name] = sub
                else:
                    info.imports.append((target, node.lineno))
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        info.private_uses.append((f"{target}:{a.name}", node.lineno))
    def private(attr: str) -> bool:
        return attr.startswith("_") and not attr.startswith("__")

    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):  # methods and class attributes
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and private(item.name):
                    info.private_defs.add(item.name)
                elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                    for t in (item.targets if isinstance(item, ast.Assign) else [item.target]):
                        if isinstance(t, ast.Name) and private(t.id):
                            info.private_defs.add(t.id)
        if isinstance(node, ast.Attribute) and private(node.attr):
            base = node.value
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                info.private_defs.add(node.attr)  # obj._x = ...: this module owns _x
            elif isinstance(base, ast.Name) and base.id in aliases:  # alias._private through a module
                info.private_uses.append((f"{aliases[base.id]}:{node.attr}", node.lineno))
            elif not (isinstance(base, ast.Name) and base.id in ("self", "cls")):
                info.private_reads.append((node.attr, node.lineno))
    return info


def collect(root: Path, packages=PACKAGES, extra: tuple[Path, ...] = ()) -> dict[str, ModuleInfo]:
    files = [p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))]
    names = {module_name(p, root)[0] for p in files}
    return {info.name: info for info in (scan(p, root, names) for p in [*files, *extra])}


def upward_imports(mods: dict[str, ModuleInfo]) -> list[str]:
    bad = []
    for info in mods.values():
        mine = layer_of(info.name)
        for target, line in info.imports:
            theirs = layer_of(target)
            if mine is None or theirs is None:
                bad.append(f"{info.path}:{line}: {info.name} or {target} is in no layer (add it to LAYERS)")
            elif theirs > mine:
                bad.append(f"{info.path}:{line}: {info.name} (layer {mine}) imports {target} (layer {theirs})")
    return bad


def cycles(mods: dict[str, ModuleInfo]) -> list[list[str]]:
    """Import cycles between modules (a package's ``__init__`` counts as the module of that package name)."""
    graph = {m: sorted({t for t, _ in info.imports if t in mods and t != m}) for m, info in mods.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def private_imports(mods: dict[str, ModuleInfo]) -> list[str]:
    """Private names imported from, or read through, another of our modules; and ``obj._x`` read where ``_x``
    is an attribute or method that only other modules of ours define (``net._dims`` outside its class)."""
    bad = []
    owners: dict[str, set[str]] = {}
    for info in mods.values():
        for name in info.private_defs:
            owners.setdefault(name, set()).add(info.name)
    for info in mods.values():
        for use, line in info.private_uses:
            owner = use.split(":")[0]
            if owner != info.name:
                bad.append(f"{info.path}:{line}: {info.name} uses private {use}")
        for name, line in info.private_reads:
            if name in owners and info.name not in owners[name]:
                bad.append(f"{info.path}:{line}: {info.name} reads {name}, private to {sorted(owners[name])}")
    return bad


def test_every_import_goes_down_the_layers():
    assert upward_imports(collect(ROOT)) == []


def test_no_import_cycles():
    assert cycles(collect(ROOT)) == []


def test_no_private_names_across_modules_tests_included():
    tests = tuple(sorted((ROOT / "tests").glob("*.py")))
    mods = collect(ROOT, extra=tests)
    assert private_imports(mods) == []


# ---- the checks fail where they should: a fixture package with each fault --------------------------------
def _fixture(tmp_path: Path, files: dict[str, str]) -> dict[str, ModuleInfo]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return collect(tmp_path)


def test_an_upward_import_inside_a_function_is_caught(tmp_path):
    mods = _fixture(tmp_path, {
        "compress/__init__.py": "",
        "compress/space/__init__.py": "",
        "compress/space/ops.py": "def f():\n    from compress.search.greedy import greedy_slim\n",
        "compress/search/__init__.py": "",
        "compress/search/greedy.py": "from compress.space import ops\n",
    })
    bad = upward_imports(mods)
    assert len(bad) == 1 and "compress.space.ops (layer 1) imports compress.search.greedy (layer 10)" in bad[0]


def test_a_cycle_hidden_in_a_function_is_caught(tmp_path):
    mods = _fixture(tmp_path, {
        "compress/__init__.py": "",
        "compress/space/__init__.py": "",
        "compress/space/atoms.py": "def run():\n    from .ops import handle\n",
        "compress/space/ops.py": "from compress.space.atoms import Meta\n",
    })
    assert cycles(mods) == [["compress.space.atoms", "compress.space.ops"]]


def test_a_private_name_from_another_module_is_caught(tmp_path):
    mods = _fixture(tmp_path, {
        "compress/__init__.py": "",
        "compress/slim/__init__.py": "",
        "compress/slim/network.py": "def _selection(x):\n    return x\n",
        "compress/subnet/__init__.py": "",
        "compress/slim/layers.py": "class Net:\n    def __init__(self):\n        self._dims = {}\n",
        "compress/subnet/__init__.py": "",
        "compress/subnet/extract.py": "from compress.slim.network import _selection\n"
                                      "import compress.slim.network as nw\nnw._selection(1)\n"
                                      "def f(net):\n    return net._dims\n",
    })
    bad = private_imports(mods)
    assert len(bad) == 3 and sum("compress.slim.network:_selection" in b for b in bad) == 2
    assert "reads _dims, private to ['compress.slim.layers']" in bad[2]


def test_every_module_is_in_a_layer():
    missing = [m for m in collect(ROOT) if layer_of(m) is None]
    assert missing == []


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize("first", ["devices", "predictors", "compress.errors", "devices.board", "predictors.latency",
                                   "compress.dms", "compress"])
def test_any_package_can_be_imported_first(first):
    """No import cycle at run time either: each package imports on its own, in a fresh interpreter."""
    import subprocess
    code = f"import {first}; import compress; assert callable(compress.dms) and callable(compress.autoslim)"
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
