"""The library's structure, checked from its source: no import cycle among mtdp's modules, the
core never imports evaluation, the installed package never imports the speed benchmarks'
(``benchmarks/mtdp_bench``) or the studies' (``research/mtdp_studies``) code, each policy has one
home, and no file or function outgrows what a reader can hold in mind."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "platform" / "mtdp"
SCRIPTS = [p for d in ("jobs", "tune", "serve", "benchmarks", "research")
           for p in (ROOT / d).glob("*.py")]
#: Code outside the wheel held to the library's limits.
OUTSIDE = [p for d in ("benchmarks/mtdp_bench", "research/mtdp_studies")
           for p in (ROOT / d).glob("*.py")]
MAX_FILE, MAX_FUNCTION, MAX_SCRIPT = 450, 60, 120


def _module(path: Path) -> str:
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """mtdp modules ``path`` imports anywhere: module level, inside functions and under
    ``if TYPE_CHECKING:`` (annotations are a dependency a reader follows too)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def target(base: str, sub: str | None) -> str | None:
        full = f"{base}.{sub}" if sub else base
        for cand in (full, base):
            if cand in modules:
                return cand
        return None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("mtdp"):
                        found.add(target(a.name, None) or a.name)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{base}.{child.module}" if child.module else base
                else:
                    base = child.module or ""
                if base.startswith("mtdp"):
                    for a in child.names:
                        found.add(target(base, a.name) or base)
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    files = sorted(LIB.rglob("*.py"))
    modules = {_module(p) for p in files}
    return {_module(p): _imports(p, modules) for p in files}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path of modules), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt in graph and not state.get(nxt):
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for n in sorted(graph):
        if not state.get(n):
            found = dfs(n)
            if found:
                return found
    return None


def test_cycle_detection_finds_a_cycle() -> None:
    """The checker itself: a planted cycle is found, a DAG passes."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle() -> None:
    graph = _graph()
    assert len(graph) > 40 and graph["mtdp.embed"], "the import graph was not built"
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_core_never_imports_evaluation() -> None:
    """Only evaluation itself and the CLI (``mtdp data fetch``) import ``mtdp.evaluate``."""
    graph = _graph()
    assert "mtdp.evaluate.runner" in graph, "the evaluation package moved"
    bad = {m: sorted(t for t in deps if t.startswith("mtdp.evaluate"))
           for m, deps in graph.items() if not m.startswith(("mtdp.evaluate", "mtdp.cli"))}
    assert not {m: d for m, d in bad.items() if d}


def test_package_never_imports_code_outside_the_wheel() -> None:
    outside = ("mtdp_bench", "mtdp_studies")
    bad = {m: sorted(t for t in deps if t.startswith(outside)) for m, deps in _graph().items()}
    assert not {m: d for m, d in bad.items() if d}
    assert not list(LIB.glob("benchmarks")) and not list(LIB.glob("experiments"))


@pytest.mark.parametrize("needle, home", [
    ("ray.init(", {"mtdp/runtime.py"}),
    ("os.replace(", {"mtdp/io.py", "mtdp/download.py"}),  # download: a verified .part
    ('"MTDP_DATA_DIR"', {"mtdp/io.py", "mtdp/runtime.py"}),
    ('"runs:/"', {"mtdp/models/registry.py"}),
    ("mkstemp(", {"mtdp/io.py"}),
    ("def truncate(", {"mtdp/sequences.py"}),
])
def test_each_policy_has_one_home(needle: str, home: set[str]) -> None:
    where = {str(p.relative_to(LIB.parent)) for p in LIB.rglob("*.py") if needle in p.read_text()}
    where |= {str(p.relative_to(ROOT)) for p in SCRIPTS if needle in p.read_text()}
    assert where <= home, f"{needle} appears in {sorted(where - home)}; its home is {home}"


def _long_functions(path: Path, limit: int) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_files_and_functions_stay_small() -> None:
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p in LIB.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_FILE]
    big += [f"{p.relative_to(ROOT)} ({n} lines)" for p in SCRIPTS
            if (n := len(p.read_text().splitlines())) > MAX_SCRIPT]
    big += [f"{p.relative_to(ROOT)} ({n} lines)" for p in OUTSIDE
            if (n := len(p.read_text().splitlines())) > MAX_FILE]
    long = [f for p in [*LIB.rglob("*.py"), *OUTSIDE] for f in _long_functions(p, MAX_FUNCTION)]
    long += [f for p in SCRIPTS for f in _long_functions(p, MAX_FUNCTION)]
    assert not big, f"files over {MAX_FILE} (library) / {MAX_SCRIPT} (scripts) lines: {big}"
    assert not long, f"functions over {MAX_FUNCTION} lines: {long}"
