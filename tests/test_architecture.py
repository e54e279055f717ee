"""The run core's shape: imports point down only, and nothing below the CLI reaches the entry points.

Every ``import`` statement of the package counts, including those inside functions: a lazy
import is still a dependency, only a later one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "recbole_perpeft"
# The command line and the entry points it calls; everything else is "below the CLI".
CLI_SIDE = {"cli", "quick_start", "launcher", "tune", "recommend"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in the file)."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"  # the package imports absolutely
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "recbole_perpeft.run" in graph["recbole_perpeft.quick_start"]
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_below_the_cli_imports_the_entry_points():
    graph = import_graph()
    entry_points = {f"recbole_perpeft.{name}" for name in CLI_SIDE}
    below = {name: targets & entry_points for name, targets in graph.items() if name not in entry_points}
    assert {name: sorted(reached) for name, reached in below.items() if reached} == {}
    assert not any("recbole_perpeft.cli" in targets for targets in graph.values())


# Where "model" names a foundation model (Hugging Face's), whose optional attributes are probed.
FOUNDATION_SIDE = {"encoders", "peft_backends"}
MODEL_NAMES = re.compile(r"model|\bnet\b|recommender", re.IGNORECASE)


def attribute_probes(tree: ast.AST) -> list[tuple[int, str]]:
    """``hasattr``/``getattr`` calls whose object reads as a recommender: (line, call source)."""
    probes = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in {"hasattr", "getattr"} and node.args
                and MODEL_NAMES.search(ast.unparse(node.args[0]))):
            probes.append((node.lineno, ast.unparse(node)))
    return probes


def test_no_code_outside_model_probes_a_models_attributes():
    """Generic code asks a model through recbole_perpeft.model.protocol, never by probing it."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0]
        if part == "model" or part in FOUNDATION_SIDE:
            continue
        probes = attribute_probes(ast.parse(path.read_text(encoding="utf-8")))
        if probes:
            found[str(path.relative_to(REPO))] = probes
    assert found == {}


def test_the_probe_walk_finds_a_probe():
    tree = ast.parse("if hasattr(self.model, 'group_of_user'):\n    x = getattr(net, 'items', None)\n"
                     "y = getattr(config, 'dataset', None)")
    assert [line for line, _ in attribute_probes(tree)] == [1, 2]


def test_benchmarks_monkeypatch_nothing_in_the_package():
    """A benchmark extends the plugin through its registries, never by assigning into its modules."""
    patched = {}
    for path in (REPO / "benchmarks").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package_aliases = {
            alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
            for alias in node.names if alias.name.startswith("recbole_perpeft")
        } | {
            alias.asname or alias.name for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recbole_perpeft")
            for alias in node.names
        }
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and ast.unparse(target).split(".")[0] in package_aliases:
                    patched.setdefault(str(path.relative_to(REPO)), []).append(ast.unparse(target))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                    and node.args and ast.unparse(node.args[0]).split(".")[0] in package_aliases):
                patched.setdefault(str(path.relative_to(REPO)), []).append(ast.unparse(node))
    assert patched == {}
