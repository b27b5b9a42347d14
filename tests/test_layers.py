"""The floors of the house, read from the code's imports: every arrow points down, none runs in a
circle.

``FLOORS`` is the one place the order is written, lowest first. A module may import modules of
its own package and of any package on a lower floor; packages on the same floor do not import
each other, and nothing imports ``cai``. Imports inside functions count as much as those at the
top of a module; only imports under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FLOORS: tuple[tuple[str, ...], ...] = (
    ("core",),               # shared settings, the options idiom, the logging setup
    ("streams",),            # the wire contract: topics, records, stream settings
    ("serving",),            # the engine, Triton model repository, inference client, publish
    ("scoring",),            # prompt sets and splits, the decline classifier, evaluation
    ("agents", "trainer"),   # the Faust stages; the live trainer
    ("stack",),              # the local services and child processes
    ("benchmarks",),         # figures, not tests
    ("cai",),                # the command line and the operations on top
)
FLOOR = {package: level for level, packages in enumerate(FLOORS) for package in packages}


def packages() -> list[str]:
    return sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests")


def modules() -> dict[str, Path]:
    found = {}
    for package in packages():
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imported_names(tree: ast.AST, module: str, is_package: bool):
    """(name, line) of every import that runs, at any depth."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*parent, base] if base else parent)
            yield from ((f"{base}.{alias.name}", node.lineno) for alias in node.names)
            yield base, node.lineno
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {project module it imports: line}."""
    known = modules()
    graph: dict[str, dict[str, int]] = {}
    for module, path in known.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, line in _imported_names(tree, module, path.name == "__init__.py"):
            parts = name.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            target = ".".join(parts)
            if target and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def test_every_package_has_a_floor():
    assert set(packages()) == set(FLOOR), "place each new package in FLOORS"


def test_every_import_points_down():
    graph, paths = import_graph(), modules()
    wrong = []
    for module, edges in graph.items():
        mine = module.split(".")[0]
        for target, line in edges.items():
            theirs = target.split(".")[0]
            if theirs != mine and FLOOR[theirs] >= FLOOR[mine]:
                where = paths[module].relative_to(ROOT)
                wrong.append(f"{where}:{line}: {module} imports {target} "
                             f"({mine} is not above {theirs})")
    assert not wrong, "imports that do not point down:\n" + "\n".join(sorted(wrong))


def test_no_import_circle():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        on_stack.append(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = on_stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not circles, f"modules that import each other in a circle: {circles}"


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "serving.textgen" in graph["scoring.evaluate"]  # imported inside answer()
    assert "streams.settings" not in graph["streams.topics"]  # only under TYPE_CHECKING
