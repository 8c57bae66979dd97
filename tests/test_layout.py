"""The package's shape holds: the stages are packages, no import cycle between bertc's modules nor between its
packages (imports inside functions count: they run when called), and the portable runtime (bertc/runtime/,
python -m bertc.runtime.serve) loads no TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import bertc

PACKAGE = Path(bertc.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_statements(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or inside a function (it runs when the function is called), but
    none under `if TYPE_CHECKING:` (it never runs)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for branch in node.orelse:
                yield from _import_statements(ast.Module([branch], []))
        else:
            yield from _import_statements(node)


def _imported(name: str, path: Path, modules: set[str]) -> set[str]:
    """The bertc modules `path` imports, when it is imported or when one of its functions runs."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for statement in _import_statements(ast.parse(path.read_text())):
        if isinstance(statement, ast.Import):
            found |= {alias.name for alias in statement.names}
        elif isinstance(statement, ast.ImportFrom):
            base = statement.module or ""
            if statement.level:
                base = ".".join(package[: len(package) - statement.level + 1] + ([base] if base else []))
            found |= {
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in statement.names
            }
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: _imported(name, path, set(paths)) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                found.append(stack[stack.index(other) :] + [other])
            elif other not in state:
                visit(other)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_no_import_cycle_between_bertc_modules():
    graph = import_graph()
    assert len(graph) > 40 and graph["bertc.driver.pipeline"], "the reader found the modules and their imports"
    assert cycles(graph) == [], "\n".join(" -> ".join(cycle) for cycle in cycles(graph))


STAGES = {"ir", "analysis", "frontends", "passes", "targets", "runtime", "driver", "run", "evaluate", "model"}
TOP_LEVEL = {
    "__init__.py",
    "__main__.py",
    "digest.py",
    "errors.py",
    "jsonfile.py",
    "schema.py",
}  # entry points, shared leaves


def package_of(module: str) -> str:
    """bertc.driver.plan -> bertc.driver; a module at the top (bertc.errors, bertc.__main__) is its own node."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, imported in graph.items():
        package = package_of(module)
        packages.setdefault(package, set()).update(package_of(other) for other in imported)
        packages[package].discard(package)
    return packages


# Package edges that close a cycle today, each with why it is there; they are left out of the cycle check, so
# that a cycle through any other edge fails. None today: a new one needs its reason here.
KNOWN_EDGES: dict[tuple[str, str], str] = {}


def test_the_stages_are_packages():
    assert {path.name for path in PACKAGE.glob("*.py")} == TOP_LEVEL, "a new module belongs in a stage's package"
    assert {path.parent.name for path in PACKAGE.glob("*/__init__.py")} == STAGES


def test_no_import_cycle_between_bertc_packages():
    packages = package_graph(import_graph())
    assert {f"bertc.{stage}" for stage in STAGES} <= set(packages) and packages["bertc.driver"]
    stale = [edge for edge in KNOWN_EDGES if edge[1] not in packages[edge[0]]]
    assert not stale, f"no longer imported, remove from KNOWN_EDGES: {stale}"
    for source, target in KNOWN_EDGES:
        packages[source].discard(target)
    assert cycles(packages) == [], "\n".join(" -> ".join(cycle) for cycle in cycles(packages))


def test_the_package_graph_sees_a_cycle_through_modules():
    graph = {"bertc.ir.graph": {"bertc.run.report"}, "bertc.run.report": {"bertc.errors"}, "bertc.errors": set()}
    graph["bertc.run.faults"] = {"bertc.ir.graph"}
    assert cycles(package_graph(graph)) == [["bertc.ir", "bertc.run", "bertc.ir"]]


def test_the_reader_counts_imports_in_functions_but_not_type_checking_ones():
    source = "import a\nif TYPE_CHECKING:\n    import b\nelse:\n    import c\ndef f():\n    from d import e\n"
    assert [ast.unparse(statement) for statement in _import_statements(ast.parse(source))] == [
        "import a",
        "import c",
        "from d import e",
    ]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_portable_runtime_loads_no_tensorflow():
    code = (
        "import sys, bertc.runtime.stablehlo, bertc.runtime.serve; "
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('tensorflow', 'keras', 'hydra')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_wheel_lists_every_package():
    """pyproject.toml names bertc's packages one by one (bertc.conf is the top-level conf/): a package missing there
    is missing from a non-editable install, which then fails at its first import of it."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(root).parts) for path in (root / "bertc").rglob("__init__.py")}
    assert found - listed == set(), "add them to [tool.setuptools] packages in pyproject.toml"
