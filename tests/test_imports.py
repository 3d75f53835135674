"""The library's imports run one way: no module of minidiff/ imports, even inside a function, one
that imports it back, and sampling never loads the trainer."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minidiff"


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` (names of minidiff/*.py) that `path` imports anywhere in its text:
    at the top, or inside a function (`from .x import`, `from . import x`, `from minidiff.x import`,
    `from minidiff import x`, `import minidiff.x`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.level == 0 and (node.module or "").split(".")[0] == "minidiff"):
                parts = (node.module or "").split(".")[1 if node.level == 0 else 0:]
                parts = [p for p in parts if p]
                names = [parts[0]] if parts else [alias.name for alias in node.names]
                found.update(n for n in names if n in modules)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "minidiff" and len(parts) > 1 and parts[1] in modules:
                    found.add(parts[1])
    return found


def import_graph() -> dict[str, set[str]]:
    files = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from .a import x\n\ndef f():\n    from . import b\n    from minidiff.c import y\n"
                      "    import minidiff.d\n    from .other_package import z\n")
    assert imported_modules(module, {"a", "b", "c", "d"}) == {"a", "b", "c", "d"}


def test_no_import_cycle_among_the_library_modules():
    graph = import_graph()
    assert {"train", "sample", "runtime"} <= set(graph) and "runtime" in graph["sample"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_importing_the_sampling_command_does_not_import_the_trainer():
    code = "import sys, minidiff.training.sample; assert 'minidiff.training.train' not in sys.modules, 'minidiff.training.train was imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_library_file_reads_in_one_sitting():
    """No file in minidiff/ is over 450 lines (issue 19: split along the ideas, not at a line count)."""
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"files over 450 lines: {long}"
