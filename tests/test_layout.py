"""The package's shape: no import cycles (counting imports inside functions, the usual way to
hide one), and nothing in the installed package imports test support or test-only libraries."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "iotmeter_tui"
TEST_ONLY = ("testsupport", "hypothesis", "pytest", "moto")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _runtime_imports(tree: ast.Module, module: str, is_package: bool) -> list[str]:
    """Every module named by an import statement, skipping `if TYPE_CHECKING:` blocks (never
    executed, so they cannot close a cycle)."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
            names.append(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = {owner(n) for n in _runtime_imports(tree, module, path.name == "__init__.py")}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_checker_sees_a_cycle_through_an_import_inside_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from x.y import z\nif TYPE_CHECKING:\n    import w\n")
    assert _runtime_imports(tree, "m", False) == ["x.y.z", "x.y"]


def test_the_package_has_no_import_cycle() -> None:
    graph = _graph()
    assert "iotmeter_tui.cli.commands" in graph  # the walk found the package
    assert _cycles(graph) == []


def test_store_ports_know_none_of_their_adapters() -> None:
    graph = _graph()
    for port, adapters in {
        "archive": ("archive_dir", "archive_s3"),
        "metadata": ("metadata_sql", "metadata_sqlite", "metadata_postgres"),
        "timeseries": ("timeseries_sqlite", "timeseries_influx"),
    }.items():
        imported = graph[f"iotmeter_tui.backend.stores.{port}"]
        assert not imported & {f"iotmeter_tui.backend.stores.{a}" for a in adapters}, port


def test_the_installed_package_imports_no_test_support() -> None:
    offenders = []
    for module, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name in _runtime_imports(tree, module, path.name == "__init__.py"):
            if name.split(".")[0] in TEST_ONLY:
                offenders.append(f"{module}: {name}")
    assert offenders == []
    assert not (PACKAGE / "testing").exists()


def test_the_backend_imports_no_front_end() -> None:
    front_ends = ("app", "screens", "widgets", "view", "cli", "api", "relay", "serve", "keymap",
                  "export")
    graph = _graph()
    # cli.args: argument types importing nothing of the project, which the simulator's own
    # command line (`python -m iotmeter_tui.backend.simulator`) shares with `iotmeter simulate`.
    shared = {"iotmeter_tui.cli.args"}
    offenders = [f"{module} -> {target}" for module, targets in graph.items()
                 if module.startswith("iotmeter_tui.backend")
                 for target in targets - shared
                 if target.partition(".")[2].split(".")[0] in front_ends]
    assert graph["iotmeter_tui.cli.args"] == set()
    assert offenders == []
