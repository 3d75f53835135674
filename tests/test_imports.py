"""The library's imports run one way: no module of minidiff (the top and every subpackage, at any
depth) imports, even inside a function, one that imports it back; the core (the top-level
equations and network) imports nothing of the lab below it; and sampling never loads the trainer."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minidiff"
CORE = {"schedules", "objectives", "samplers", "solvers", "guidance", "unet"}
# What the core may import besides the standard library and itself (DESIGN.md: the core installs
# with torch, torchvision, einops, tqdm and matplotlib alone).
CORE_THIRD_PARTY = {"torch", "torchvision", "einops", "tqdm", "matplotlib"}


# ------------------------------------------------------------------------------------------------
# The import graph: module names are dotted paths (minidiff.training.train; a package is its
# __init__, named minidiff.training)
# ------------------------------------------------------------------------------------------------


def package_modules(package: Path) -> dict[str, Path]:
    """Every module under `package` (recursively) by dotted name; a package's __init__.py is
    named for the package."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _package_of(name: str, path: Path) -> str:
    """The package a module's relative imports start from: itself for an __init__, else its parent."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _targets(node, name: str, path: Path, root: str) -> list[str]:
    """The dotted names one import statement asks for, inside package `root` only (may name a
    module, a package, or something that does not exist)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == root]
    if node.level:
        base = _package_of(name, path).split(".")
        if node.level - 1 >= len(base):
            raise ValueError(f"{path}:{node.lineno}: relative import beyond the top-level package")
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    elif (node.module or "").split(".")[0] == root:
        target = node.module
    else:
        return []
    # `from P import x` imports the module P.x when there is one, else the name x from P itself.
    return [f"{target}.{alias.name}" for alias in node.names] + [target]


def imports_of(name: str, path: Path, modules: dict[str, Path], root: str = "minidiff") -> tuple[set[str], set[str]]:
    """(modules of `modules` that the module `name` at `path` imports anywhere in its text, at the
    top or inside a function; names under `root` that it imports and that are no module)."""
    found, missing = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = _targets(node, name, path, root)
        if isinstance(node, ast.ImportFrom) and targets:
            package = targets[-1]
            for alias, sub in zip(node.names, targets[:-1]):
                if sub in modules:
                    found.add(sub)
                elif package in modules:
                    found.add(package)
                else:
                    missing.add(package)
        else:
            for target in targets:
                (found if target in modules else missing).add(target)
    return found - {name}, missing


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules of the package it imports (dotted names)."""
    modules = package_modules(package)
    return {name: imports_of(name, path, modules, package.name)[0] for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
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


# ------------------------------------------------------------------------------------------------
# The graph builder and the cycle finder, on small fake packages
# ------------------------------------------------------------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A fake package `pkg` under root: files maps paths inside it to their text."""
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_cycle_finder_finds_a_cycle_and_passes_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no cycle
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_graph_names_modules_by_dotted_path(tmp_path):
    pkg = write_package(tmp_path, {"__init__.py": "", "top.py": "", "sub/__init__.py": "", "sub/deep/__init__.py": "",
                                   "sub/deep/leaf.py": "", "sub/__main__.py": ""})
    assert set(package_modules(pkg)) == {"pkg", "pkg.top", "pkg.sub", "pkg.sub.deep", "pkg.sub.deep.leaf",
                                         "pkg.sub.__main__"}


def test_the_graph_sees_every_kind_of_import_at_any_depth(tmp_path):
    pkg = write_package(tmp_path, {
        "__init__.py": "from .core import thing\n",
        "core.py": "import os\nimport torch\n",
        "other.py": "",
        "training/__init__.py": "",
        "training/data.py": "",
        "training/recipe.py": "",
        "training/deep/__init__.py": "X = 1\n",
        "training/deep/leaf.py": (
            "from . import sibling\n"                   # level 1, a module of this package
            "from .. import recipe\n"                   # level 2, a module
            "from ..data import y\n"                    # level 2 with a module name
            "from ...core import thing\n"               # level 3: the top
            "from ... import other\n"
            "def f():\n"
            "    from pkg.training import data\n"       # absolute, a module named as an attribute
            "    import pkg.training.recipe\n"
            "    from pkg.training.deep import X\n"     # a name of the package's __init__
            "    from pkg import thing\n"               # a name of the top __init__
            "    from torch.nn import functional\n"),   # outside the package: not an edge
        "training/deep/sibling.py": "",
    })
    modules = package_modules(pkg)
    found, missing = imports_of("pkg.training.deep.leaf", modules["pkg.training.deep.leaf"], modules, "pkg")
    assert found == {"pkg.training.deep.sibling", "pkg.training.recipe", "pkg.training.data", "pkg.core", "pkg.other",
                     "pkg.training.deep", "pkg"}
    assert not missing
    graph = import_graph(pkg)
    assert graph["pkg"] == {"pkg.core"} and graph["pkg.core"] == set()


def test_the_graph_finds_a_cycle_through_two_level_relative_imports_inside_functions(tmp_path):
    files = {"__init__.py": "", "a/__init__.py": "", "b/__init__.py": "",
             "a/one.py": "def f():\n    from ..b.two import g\n",
             "b/two.py": "def g():\n    from ..a import one\n"}
    cycle = find_cycle(import_graph(write_package(tmp_path / "with", files)))
    assert cycle is not None and set(cycle) == {"pkg.a.one", "pkg.b.two"}
    files["b/two.py"] = "def g():\n    import os\n"
    assert find_cycle(import_graph(write_package(tmp_path / "without", files))) is None


def test_the_graph_finds_a_cycle_through_a_package_init(tmp_path):
    files = {"__init__.py": "from .core import x\n", "core.py": "from pkg import y\n"}
    assert find_cycle(import_graph(write_package(tmp_path, files))) == ["pkg", "pkg.core", "pkg"]


def test_the_graph_reports_an_import_of_no_module(tmp_path):
    pkg = write_package(tmp_path, {"__init__.py": "", "a.py": "from .gone import x\nimport pkg.vanished\n"})
    modules = package_modules(pkg)
    assert imports_of("pkg.a", modules["pkg.a"], modules, "pkg") == (set(), {"pkg.gone", "pkg.vanished"})
    with pytest.raises(ValueError, match="beyond the top-level package"):
        (pkg / "a.py").write_text("from ... import x\n")
        imports_of("pkg.a", modules["pkg.a"], modules, "pkg")


# ------------------------------------------------------------------------------------------------
# The library itself
# ------------------------------------------------------------------------------------------------


def test_no_import_cycle_anywhere_in_the_package():
    graph = import_graph()
    assert {"minidiff.training.train", "minidiff.training.sample", "minidiff.training.runtime",
            "minidiff.course.core", "minidiff"} <= set(graph)
    assert "minidiff.training.runtime" in graph["minidiff.training.sample"]
    assert "minidiff.schedules" in graph["minidiff"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_import_of_the_package_names_one_of_its_modules():
    """After files move, an import of the old path (even inside a function) is caught here."""
    modules = package_modules(PACKAGE)
    missing = {name: sorted(gone) for name, path in modules.items() if (gone := imports_of(name, path, modules)[1])}
    assert not missing, f"imports of no module: {missing}"


def core_leaks(package: Path, core_names=CORE) -> dict[str, set[str]]:
    """core module -> what it imports beyond the core: other modules of the package (a subpackage,
    the package's own __init__) and top-level packages other than the standard library and
    CORE_THIRD_PARTY."""
    modules = package_modules(package)
    core = {f"{package.name}.{name}" for name in core_names}
    assert core <= set(modules), f"core modules missing: {core - set(modules)}"
    graph = import_graph(package)
    allowed = set(sys.stdlib_module_names) | CORE_THIRD_PARTY | {package.name}
    leaks = {}
    for name in sorted(core):
        bad = graph[name] - core
        for node in ast.walk(ast.parse(modules[name].read_text())):
            if isinstance(node, ast.Import):
                bad |= {alias.name.split(".")[0] for alias in node.names} - allowed
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                bad |= {node.module.split(".")[0]} - allowed
        if bad:
            leaks[name] = bad
    return leaks


def test_the_core_leak_finder_sees_a_subpackage_the_init_and_a_foreign_package(tmp_path):
    pkg = write_package(tmp_path, {"__init__.py": "from .eq import f\n", "eq.py": "import math\nimport torch\n",
                                   "net.py": "from .eq import f\ndef g():\n    from .lab.train import h\n",
                                   "glue.py": "from pkg import f\nimport scipy.stats\n",
                                   "lab/__init__.py": "", "lab/train.py": "from ..eq import f\n"})
    assert core_leaks(pkg, {"eq", "net", "glue"}) == {"pkg.net": {"pkg.lab.train"}, "pkg.glue": {"pkg", "scipy"}}
    assert core_leaks(pkg, {"eq"}) == {}


def test_the_core_imports_nothing_below_it():
    """The top-level equations and network import only each other, the standard library, and
    torch/torchvision/einops/tqdm/matplotlib: no subpackage, not even the package's own __init__."""
    leaks = core_leaks(PACKAGE)
    assert not leaks, f"the core imports beyond itself and its dependencies: {leaks}"


def uses_torch_distributed(text: str) -> bool:
    """Whether the code imports or reaches torch.distributed in any spelling: `import
    torch.distributed`, `from torch import distributed`, `from torch.distributed import x`, or
    the attribute `torch.distributed` (which loads it)."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.distributed") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            if (node.module or "").startswith("torch.distributed"):
                return True
            if node.module == "torch" and any(a.name == "distributed" for a in node.names):
                return True
        if isinstance(node, ast.Attribute) and node.attr == "distributed" and \
                isinstance(node.value, ast.Name) and node.value.id == "torch":
            return True
    return False


def test_the_torch_distributed_detector_sees_every_spelling():
    for text in ("import torch.distributed as dist\n", "from torch import distributed\n",
                 "from torch.distributed import all_reduce\n",
                 "import torch\ndef f(x):\n    if torch.distributed.is_initialized():\n        pass\n"):
        assert uses_torch_distributed(text), text
    assert not uses_torch_distributed("import torch\nimport torch.nn.functional as F\nx = torch.zeros(1)\n")


def test_no_core_file_uses_torch_distributed():
    """Multi-process training is the trainer's business (minidiff/training/), not the equations'."""
    uses = [name for name in sorted(CORE) if uses_torch_distributed((PACKAGE / f"{name}.py").read_text())]
    assert not uses, f"core files that use torch.distributed: {uses}"


def test_the_top_of_the_package_holds_at_most_ten_files():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, f"{len(top)} files at the top of minidiff/: {top}"
    assert {f"{name}.py" for name in CORE} | {"__init__.py"} <= set(top)


def test_the_core_is_importable_from_the_package():
    code = ("from minidiff import Schedule, q_sample, diffusion_loss, make_timesteps, sample, cfg, UNet\n"
            "import minidiff.samplers, minidiff.guidance, minidiff.unet\n"
            "assert sample is minidiff.samplers.sample and cfg is minidiff.guidance.cfg and UNet is minidiff.unet.UNet\n"
            "import sys\n"
            "below = sorted(m for m in sys.modules if m.startswith('minidiff.') and m.split('.')[1] not in "
            f"{sorted(CORE)!r})\n"
            "assert not below, f'importing the core loaded {below}'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_importing_the_sampling_command_does_not_import_the_trainer():
    code = ("import sys, minidiff.training.sample\n"
            "assert 'minidiff.training.train' not in sys.modules, 'minidiff.training.train was imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_library_file_reads_in_one_sitting():
    """No file in minidiff/ is over 450 lines (issue 19: split along the ideas, not at a line count)."""
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"files over 450 lines: {long}"
