"""The package's shape: no module over 500 lines, no import cycle between its modules (imports
inside functions count), and every part but the napari plugin free of Qt."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "napari_hggep"
MAX_LINES = 500
QT = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt")
QT_FREE = ("cli", "evaluation", "inference", "training", "io", "model", "data", "records")  # never import Qt
# the package's parts from the top down (as its __init__ docstring lists them): each imports only
# parts further down
LAYERS = ("cli", "_napari", "evaluation", "inference", "training", "io", "model", "data", "records", "distributed",
          "devices", "_atomic", "_log", "_version")


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its ``__init__.py``)."""
    out = {}
    for f in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, known, relative_only: bool = False) -> list[tuple[str, int]]:
    """``(module, line)`` for every import in the file, at any depth (inside functions too).
    ``from pkg import x`` counts as importing ``pkg.x`` when that is a module, otherwise ``pkg``."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import) and not relative_only:
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.level or not relative_only):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.append((sub if sub in known else mod, node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    """The package's modules and, for each, the package modules it imports (itself excluded)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for mod, _ in _imports(name, path, mods):
            while mod and mod not in mods and "." in mod:  # `import a.b.c` of a name inside a.b
                mod = mod.rsplit(".", 1)[0]
            if mod in mods and mod != name:
                targets.add(mod)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(SRC)): n for p in (SRC / PACKAGE).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (imports inside functions count): " + "; ".join(" <-> ".join(c) for c in found)


def test_parts_import_only_parts_further_down():
    rank = {part: i for i, part in enumerate(LAYERS)}
    bad, unknown = [], set()
    for name, targets in import_graph().items():
        part = name.split(".")[1] if "." in name else None
        if part is None:  # the package's own __init__: a facade over everything
            continue
        unknown |= {p for p in [part, *(t.split(".")[1] for t in targets if "." in t)] if p not in rank}
        bad += [f"{name} imports {t}" for t in sorted(targets)
                if "." in t and t.split(".")[1] in rank and part in rank and t.split(".")[1] != part
                and rank[t.split(".")[1]] < rank[part]]
    assert not unknown, f"parts missing from LAYERS (add them where they belong): {sorted(unknown)}"
    assert not bad, "imports against the layer order (LAYERS, top down): " + "; ".join(bad)


def test_every_relative_import_names_a_module_of_the_package():
    mods = modules()
    bad = [f"{path.relative_to(SRC)}:{line} imports {mod}" for name, path in mods.items()
           for mod, line in _imports(name, path, mods, relative_only=True) if mod not in mods]
    assert not bad, "relative imports of modules that do not exist: " + "; ".join(bad)


def test_every_part_but_the_napari_plugin_imports_no_qt():
    mods = modules()
    bad = []
    for name, path in mods.items():
        rel = name.split(".")[1:]
        if not rel or rel[0] not in QT_FREE:
            continue
        for mod, line in _imports(name, path, mods):
            if mod.split(".")[0] in QT:
                bad.append(f"{path.relative_to(SRC)}:{line} imports {mod}")
    assert not bad, "Qt / napari imports below the GUI layer: " + "; ".join(bad)


def test_no_private_name_is_imported_across_modules():
    """A name starting with ``_`` is its module's own: another module that needs it gets a public
    name (issue 34), so the 500-line cap never splits a file along a seam that is not one."""
    mods = modules()
    found = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PACKAGE)):
                found += [f"{name}:{node.lineno} {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "private names imported across modules: " + ", ".join(found)
