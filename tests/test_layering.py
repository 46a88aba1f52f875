"""The package's import graph: layers depend only on those below them (docs/architecture.md) and
no modules import each other in a circle. Imports inside functions count too: hiding an import
does not change what depends on what."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import llmauction_sim

PACKAGE = Path(llmauction_sim.__file__).parent

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def documented_layers() -> dict[str, float]:
    """Module prefix -> layer, read from the layer table of docs/architecture.md ("1b" is 1.5):
    the document is the layer map, so the table and the import graph cannot drift apart."""
    layers = {}
    for line in ARCHITECTURE.read_text().splitlines():
        match = re.match(r"\| (\d)(b?)\. [^|]+\| ([^|]+) \|", line)
        if not match:
            continue
        rank = int(match[1]) + (0.5 if match[2] else 0.0)
        for path in re.findall(r"`([^`]+)`", match[3]):
            if path.endswith((".py", "/")) and not path.startswith(("experiments", "notebooks")):
                module = path.removeprefix("llmauction_sim/").removesuffix("/")
                layers[module.removesuffix(".py").replace("/", ".")] = rank
    assert layers, f"no layer table found in {ARCHITECTURE}"
    return layers


LAYERS = documented_layers()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def layer(module: str) -> float:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len,
               default=None)
    if best is None:
        raise AssertionError(f"llmauction_sim.{module} has no layer: add it to LAYERS and to "
                             "docs/architecture.md")
    return LAYERS[best]


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" or \
        isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"


def imports(path: Path, modules: set[str]) -> set[str]:
    """Internal modules `path` imports (module level or inside functions), TYPE_CHECKING aside."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("llmauction_sim."):
                        found.add(alias.name.removeprefix("llmauction_sim."))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".") if package else []
                    base = base[:len(base) - child.level + 1]
                    target = ".".join([*base, *(child.module or "").split(".")]).strip(".")
                elif child.module and child.module.startswith("llmauction_sim"):
                    target = child.module.removeprefix("llmauction_sim").lstrip(".")
                else:
                    continue
                for alias in child.names:
                    sub = f"{target}.{alias.name}".strip(".")
                    found.add(sub if sub in modules else target)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard("")
    return {m for m in found if m != me and m in modules}


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths} - {""}
    return {module_name(p): imports(p, modules) for p in paths if module_name(p)}


def test_every_module_has_a_layer() -> None:
    for module in graph():
        layer(module)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [f"llmauction_sim.{a} (layer {layer(a):g}) imports llmauction_sim.{b} "
              f"(layer {layer(b):g})"
              for a, targets in graph().items() for b in sorted(targets) if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()  # an edge into a package is an edge into its __init__
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_graph_sees_relative_and_function_level_imports(tmp_path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    source = ("from . import b\nfrom .c import thing\n"
              "def f():\n    from llmauction_sim.lm import base\n"
              "if TYPE_CHECKING:\n    import llmauction_sim.market\n")
    (pkg / "a.py").write_text(source)
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        found = imports(pkg / "a.py", {"pkg.a", "pkg.b", "pkg.c", "lm.base", "lm", "market"})
    finally:
        PACKAGE = saved
    assert found == {"pkg.b", "pkg.c", "lm.base"}
