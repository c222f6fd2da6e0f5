"""The packages' import graph has no cycle.

Read from the source with `ast`, nothing imported. A module-level import (also under `if` or
`try`, or in a class body) runs when the module loads, so a loop of them is a cycle. An import
inside a function, or a module named by string and loaded with importlib (the suites' and the
methods' "module:Class" tables, the CLI's subcommands), is the lazy way to reach upward and is not
an edge here; `if TYPE_CHECKING:` imports never run and are not edges either. Two places where
laziness alone would hide the old cycles get their own tests: the method registry names its
methods only by string, and nothing imports the command line back.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("harness", "d2o", "baselines")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may load: `from P import N` may load P.N or only P."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_edges(*, inside_functions: bool) -> dict[str, set[str]]:
    """module -> the modules of the packages it imports (module level, or at any level)."""
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for module, path in modules.items():
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST) -> None:
            for child in ast.iter_child_nodes(node):
                if _is_type_checking_block(child):
                    continue
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not inside_functions:
                    continue
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    names = _imported_names(child, module, is_package)
                    # `from P import N` is an edge to P.N when N is a module, else to P.
                    exact = [name for name in names if name in modules]
                    targets = exact[:1] if isinstance(child, ast.ImportFrom) and exact else names
                    for target in filter(None, map(owner, targets)):
                        if target != module:
                            edges[module].add(target)
                visit(child)

        visit(ast.parse(path.read_text(), filename=str(path)))
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import loop as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = walk(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def test_the_graph_reads_the_imports():
    edges = import_edges(inside_functions=False)
    assert "harness.errors" in edges["harness.config"]
    assert "d2o.loss" in edges["d2o.methods"]
    assert "harness.pipeline" not in edges["harness.cli"]  # imported inside a function only
    assert "harness.pipeline" in import_edges(inside_functions=True)["harness.cli"]


def test_find_cycle_names_the_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_level_import_cycle():
    cycle = find_cycle(import_edges(inside_functions=False))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_method_registry_names_its_methods_only_by_string():
    edges = import_edges(inside_functions=True)
    plugins = sorted(target for target in edges["harness.registry"] if target.split(".")[0] in ("d2o", "baselines"))
    assert not plugins, f"harness.registry imports {', '.join(plugins)}; name methods in its METHODS table instead"


def test_nothing_imports_the_command_line_back():
    edges = import_edges(inside_functions=True)
    importers = sorted(module for module, targets in edges.items()
                       if "harness.cli" in targets and module != "harness.__main__")
    assert not importers, f"{', '.join(importers)} import harness.cli, which dispatches to them"


def _folder(module: str) -> str:
    """The module's package folder below the top package (harness.suites.real_data ->
    harness.suites), or the module itself when it sits at the top (harness.config)."""
    parts = module.split(".")
    if parts[0] != "harness":
        return parts[0]
    folder = ".".join(parts[:2])
    return folder if (ROOT / "harness" / parts[1] if len(parts) > 1 else ROOT).is_dir() else module


def test_no_cycle_between_folders():
    """A folder is a layer (suites above instruments, instruments above scoring): a module-level
    import from one folder into another must not be answered by one coming back."""
    folder_edges: dict[str, set[str]] = {}
    for module, targets in import_edges(inside_functions=False).items():
        source = _folder(module)
        folder_edges.setdefault(source, set())
        for target in targets:
            folder_edges[source].add(_folder(target))
            folder_edges.setdefault(_folder(target), set())
    for folder, targets in folder_edges.items():
        targets.discard(folder)
    cycle = find_cycle(folder_edges)
    assert cycle is None, f"folders import each other: {' -> '.join(cycle)}"
