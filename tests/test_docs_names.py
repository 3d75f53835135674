"""Every name a reader is shown exists: the files, the functions, classes and attributes, and the flags
that README.md and the pages of docs/ name in backticks.

What is checked, in the prose of each page (the code blocks: their `from minidiff import ...` lines,
and the names in parentheses of a ```text block, which copy a run's own output):

- a path (`minidiff/training/loss.py`, `tests/test_loss.py`, `docs/`, `train_cifar.py`, a bare
  `loss.py`) exists, relative to the repository, to the page, or to minidiff/; a bare file name
  exists somewhere in the repository. Outputs (`runs/...`, `checkpoint.pt`) are not files of the
  repository and are not checked, nor is `../shared/...`, which lies outside it.
- a dotted name (`minidiff.training.loss.LossPerLevel`, `loss.timestep_probabilities`,
  `Schedule.make`) resolves, its first words read as a module of minidiff (`loss` is
  minidiff/training/loss.py) or as a class or function defined in one; a call's keywords
  (`UNet(patch_size=2)`) are parameters of what it calls; a key (`PRESETS["small-patch2"]`) is in
  the dict; a bare call (`tau_grid(f, N)`) names a function of minidiff; a dotted name whose first
  word is no module (`recipe.timestep_probabilities`) but whose last is minidiff's is a moved name.
- "Write `f(a, b)`:" (an exercise) is the signature its starter file asks for.
- a name beside a file (`minidiff/training/loss.py` `recipe_loss`, `minidiff/samplers.py: ddim_step`,
  `BUILTIN` in `recipes.py`, `train.py`'s `drop_labels`) is defined in that file, not only imported.
- any other name written as code (snake_case with long parts, or CamelCase: `drop_labels`,
  `LossPerLevel`) is a word of the repository's Python; `x0_hat` and `alpha_bar_t` are mathematics.
- a flag shown with its command (`python train_cifar.py --lr-decay wsd`, `minidiff sample CKPT
  --steps 10`, `python benchmarks/quality.py --name x`) is one that command's parser accepts, and a
  value of a flag with choices is one of them (`{a,b}` lists them all); a flag written alone
  (`--ema-share`) is a flag of a command that the same page shows, in its prose or in a code block
  (the blocks' command lines get the same check; tests/test_commands.py also parses them whole).

Not checked: docs/archive/, which is history and names what the code was; a table row or paragraph
that sends the reader to `git checkout COMMIT`, which names that commit's code; git-ignored paths
(`benchmarks/wheels/`), which a reader makes.
"""

import argparse
import ast
import functools
import re
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minidiff"
SKIPPED = ("docs/archive/",)  # history: it names the code as it was
OUTPUT_DIRS = {"runs", "data", "out", "build", "shared"}  # written by runs, gitignored, or outside the repo
FILE_SUFFIX = re.compile(r"\.(py|md|json|jsonl|png|jpg|pt|npz|npy|html|txt|tmp|partial|toml|csv|zip|ipynb|"
                         r"safetensors|bin|ya?ml|gz|tar|pkl|log)$")
SPAN = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)")
FENCE = re.compile(r"^[ \t]*```([\w+-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_:]*$|^\.\.\.$|[<\[]")
SCRIPTS = {"train_cifar.py": ("train",), "train_latent.py": ("train-latent",)}


def pages() -> list[Path]:
    return [ROOT / "README.md", *(p for p in sorted((ROOT / "docs").rglob("*.md"))
                                  if not str(p.relative_to(ROOT)).startswith(SKIPPED))]


# ------------------------------------------------------------------------ minidiff's names, read from its source


class Module:
    """The top-level names of one file of minidiff, and those of its classes, read with ast (no import)."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path
        self.tree = ast.parse(path.read_text(encoding="utf-8"))
        self.defined: dict[str, ast.AST] = {}  # name -> the def, class or assigned value
        self.imported: dict[str, tuple[str, str | None]] = {}  # name -> (module, name in it or None)
        for node in self._top(self.tree.body):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.defined[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    for t in ast.walk(target):
                        if isinstance(t, ast.Name):
                            self.defined[t.id] = node.value
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.imported[alias.asname or alias.name.split(".")[0]] = (alias.name if alias.asname else
                                                                              alias.name.split(".")[0], None)
            elif isinstance(node, ast.ImportFrom):
                base = self._absolute(node)
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (base, alias.name)

    def _top(self, body):
        for node in body:  # a name defined under `if` or `try` at the top is still the module's
            if isinstance(node, (ast.If, ast.Try)):
                yield from self._top(node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
                                     + [s for h in getattr(node, "handlers", []) for s in h.body])
            else:
                yield node

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = self.name.split(".")
        package = parts if self.path.name == "__init__.py" else parts[:-1]
        package = package[:len(package) - node.level + 1]
        return ".".join(package + ([node.module] if node.module else []))


def class_members(cls: ast.ClassDef) -> set[str]:
    """Methods, class attributes, dataclass fields and self.X assignments of a class."""
    names = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    for node in ast.walk(cls):
        if isinstance(node, (ast.Attribute,)) and isinstance(node.ctx, ast.Store) \
                and isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
    return names


@functools.cache
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = Module(name, path)
    return found


@functools.cache
def module_suffixes() -> dict[str, list[str]]:
    """'loss' -> ['minidiff.training.loss'], 'training.sample' -> [...], 'minidiff' -> ['minidiff']."""
    out: dict[str, list[str]] = {}
    for name in modules():
        parts = name.split(".")
        for i in range(len(parts)):
            out.setdefault(".".join(parts[i:]), []).append(name)
    return out


@functools.cache
def defined_anywhere() -> dict[str, list[str]]:
    """A top-level name -> the modules of minidiff that define it (not import it)."""
    out: dict[str, list[str]] = {}
    for name, module in modules().items():
        for defined in module.defined:
            out.setdefault(defined, []).append(name)
    return out


@functools.cache
def python_words() -> frozenset:
    """Every identifier and word in a string of the repository's Python (minidiff, scripts, tests)."""
    words = set()
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "tests").rglob("*.py"),
                 *ROOT.glob("*.py")]:
        if path.resolve() == Path(__file__).resolve():
            continue  # this file plants wrong names
        words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", path.read_text(encoding="utf-8")))
    return frozenset(words)


class Unresolved(Exception):
    pass


def dynamic(module: str, parts: list[str]):
    """The object at module.parts by import, for what the source does not say plainly (inherited
    attributes, names made at import); Unresolved where it is not there."""
    import importlib

    try:
        obj = importlib.import_module(module)
    except ImportError as err:  # an optional extra not installed: the source is all there is
        raise Unresolved(f"{module} cannot be imported here ({err.name} missing)") from None
    for part in parts:
        if not hasattr(obj, part):
            raise Unresolved(f"{module}.{'.'.join(parts)} does not exist")
        obj = getattr(obj, part)
    return obj


def resolve(module: str, parts: list[str], defined_only: bool = False):
    """The ast node (or module name) that module.parts names; Unresolved if it names nothing.

    defined_only: the first part must be defined in the module itself, not imported into it."""
    node: object = module
    for i, part in enumerate(parts):
        if isinstance(node, str):  # a module of minidiff
            mod = modules().get(node)
            if mod is None:  # outside minidiff (torch, numpy): trust it
                return None
            if part in mod.defined:
                node = mod.defined[part]
            elif f"{node}.{part}" in modules() and not (defined_only and i == 0):
                node = f"{node}.{part}"
            elif part in mod.imported and not (defined_only and i == 0):
                source, name = mod.imported[part]
                node = source if name is None else None
                if name is not None:
                    if f"{source}.{name}" in modules():
                        node = f"{source}.{name}"
                    else:
                        return resolve(source, [name, *parts[i + 1:]])
            else:
                raise Unresolved(f"{module}.{'.'.join(parts[:i + 1])} does not exist")
        elif isinstance(node, ast.ClassDef):
            if part in class_members(node):
                node = next((n for n in node.body if getattr(n, "name", None) == part), None)
                if node is None:  # an attribute: nothing further to follow in the source
                    return None if i == len(parts) - 1 else dynamic(module, parts)
            else:
                dynamic(module, parts)  # inherited (a base's method), or raises Unresolved
                return None
        else:  # a function or a value: what lies beyond is known only at run time
            return dynamic(module, parts) and None
    return node


def parameters(node) -> tuple[set[str], bool] | None:
    """(the keyword names a call of node accepts, whether it takes **kwargs); None if unknown."""
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is not None:
            node = init
        elif any(getattr(d, "id", getattr(d, "attr", None)) == "dataclass" or
                 getattr(getattr(d, "func", None), "id", None) == "dataclass" for d in node.decorator_list):
            return {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)
                    and isinstance(n.target, ast.Name)}, False
        else:
            return None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    a = node.args
    return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}, a.kwarg is not None


def candidates(parts: list[str]) -> list[tuple[str, list[str]]]:
    """Where a dotted name may live: (module, the rest of the parts) for each way its first words
    read as a module of minidiff, or its first word as a name a module of minidiff defines."""
    out = []
    for i in range(len(parts), 0, -1):
        for module in module_suffixes().get(".".join(parts[:i]), []):
            out.append((module, parts[i:]))
    for module in defined_anywhere().get(parts[0], []):
        out.append((module, parts))
    return out


@functools.cache
def importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def dotted(node) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def looks_like_ours(name: str) -> bool:
    """snake_case with parts of 3+ letters (recipe_loss, not x0_hat), or CamelCase (LossPerLevel)."""
    parts = name.strip("_").split("_")
    if len(parts) > 1:
        return all(len(p) >= 3 for p in parts) and not name.isupper() or (name.isupper() and len(name) > 4)
    return bool(re.fullmatch(r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+|[A-Z]+[a-z]+[A-Z]\w*", name))


def check_expression(text: str) -> list[str]:
    """What is wrong with a name written as code (`loss.LossPerLevel`, `UNet(level_bias=50)`)."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return []
    call, key = None, None
    if isinstance(tree, ast.Call):
        call, tree = tree, tree.func
    if isinstance(tree, ast.Subscript):
        key = tree.slice.value if isinstance(tree.slice, ast.Constant) else None
        tree = tree.value
    while isinstance(tree, ast.Attribute) and isinstance(tree.value, (ast.Call, ast.Subscript)):
        if isinstance(tree.value, ast.Call):  # f(x).y: check f(x)
            call, tree = tree.value, tree.value.func
        else:
            tree = tree.value.value
    parts = dotted(tree)
    if not parts:
        return []
    places = candidates(parts)
    if not places:
        if len(parts) == 1 and looks_like_ours(parts[0]) and (call is not None or parts[0] not in python_words()):
            return [f"`{text}`: {parts[0]} is defined nowhere in minidiff" if call is not None else
                    f"`{text}`: no Python file of the repository has the word {parts[0]}"]
        if len(parts) > 1 and defined_anywhere().get(parts[-1]) and not importable(parts[0]):
            homes = ", ".join(defined_anywhere()[parts[-1]])
            return [f"`{text}`: minidiff has no module {parts[0]}; {parts[-1]} is defined in {homes}"]
        return []  # not minidiff's (torch.compile, os.replace, sqrt(a))
    errors = []
    for module, rest in places:
        try:
            node = resolve(module, rest)
        except Unresolved as err:
            errors.append(str(err))
            continue
        problems = []
        if call is not None:
            accepted = parameters(node)
            if accepted is not None and not accepted[1]:
                problems += [f"{kw.arg}= is not a parameter of {module}.{'.'.join(rest)}"
                             for kw in call.keywords if kw.arg and kw.arg not in accepted[0]]
        if isinstance(key, str):
            try:
                mapping = dynamic(module, rest)
            except Unresolved:
                mapping = None
            if isinstance(mapping, dict) and key not in mapping:
                problems.append(f"{module}.{'.'.join(rest)} has no key {key!r}")
        if not problems:
            return []
        errors += problems
    return [f"`{text}`: " + "; ".join(dict.fromkeys(errors))]


# ------------------------------------------------------------------------------------------------- files


def repo_files_named(name: str) -> list[Path]:
    return [p for p in ROOT.rglob(name) if not set(p.relative_to(ROOT).parts[:-1]) & (OUTPUT_DIRS | {".git"})]


@functools.cache
def ignored(path: str) -> bool:
    """Whether git ignores path (`benchmarks/wheels/`: a folder a user makes); False without git."""
    import subprocess

    try:
        return subprocess.run(["git", "check-ignore", "-q", path.rstrip("/") + "/x"], cwd=ROOT,
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def starter_signatures() -> frozenset:
    """`def f(a, b=1):` of each function a course exercise asks for, as its starter file writes it."""
    text = "".join(p.read_text(encoding="utf-8") for p in (PACKAGE / "course").glob("*.py"))
    return frozenset(" ".join(m.split()) for m in re.findall(r"def (\w+\([^()]*\)):", text))


def file_span(span: str) -> bool:
    """Whether a backticked span is a path of the repository the docs vouch for."""
    text = span.rstrip(":")
    if not re.fullmatch(r"[\w.\-/]+", text) or text.startswith(("../", "/", "~", "./")):
        return False
    first = text.split("/")[0]
    top = {p.name for p in ROOT.iterdir()} - OUTPUT_DIRS - {".git", ".pytest_cache", ".benchmarks"}
    if "/" in text.rstrip("/"):
        return first in top or (PACKAGE / first).is_dir()
    return first in top or text.endswith((".py", ".md")) and not text.startswith(".")


def find_file(span: str, page: Path) -> list[Path]:
    text = span.rstrip(":")
    if "/" not in text.rstrip("/") and not (ROOT / text).exists():
        return repo_files_named(text.rstrip("/"))
    return [p for p in (ROOT / text, page.parent / text, PACKAGE / text) if p.exists()]


def module_of(path: Path) -> str | None:
    try:
        parts = path.resolve().relative_to(ROOT).with_suffix("").parts
    except ValueError:
        return None
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return name if name in modules() else None


def check_defined_in(files: list[Path], name_text: str) -> list[str]:
    """What is wrong with `name_text` (`recipe_loss`, `Schedule.make`, `PRESETS["x"]`) as a name that
    one of files defines."""
    names = [n.strip() for n in name_text.split(",")]
    out = []
    for name in names:
        try:
            tree = ast.parse(name, mode="eval").body
        except SyntaxError:
            continue
        if isinstance(tree, ast.Call):
            tree = tree.func
        if isinstance(tree, ast.Subscript):
            tree = tree.value
        parts = dotted(tree)
        if not parts:
            continue
        where = [m for m in map(module_of, files) if m]
        if not where:
            where_words = set()
            for f in files:
                if f.suffix == ".py":
                    where_words.update(re.findall(r"\w+", f.read_text(encoding="utf-8")))
            if where_words and parts[0] not in where_words:
                out.append(f"{name} is not in {', '.join(str(f.relative_to(ROOT)) for f in files)}")
            continue
        reasons = []
        for module in where:
            try:
                resolve(module, parts, defined_only=True)
                break
            except Unresolved as err:
                reasons.append(str(err))
        else:
            files_ = ", ".join(modules()[m].path.relative_to(ROOT).as_posix() for m in where)
            out.append(f"{name} is not defined in {files_}")
    return out


# ------------------------------------------------------------------------------------------------- flags


class Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


@contextmanager
def capturing():
    def grab(self, args=None, namespace=None):
        raise Captured(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", grab), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", grab):
        yield


def static_parser(path: Path) -> argparse.ArgumentParser:
    """The flags that a file's add_argument calls name, for a module that cannot be imported here."""
    p = argparse.ArgumentParser(add_help=True)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")]
            if not flags or "-h" in flags or "--help" in flags:
                continue
            kw = {k.arg: k.value for k in node.keywords}
            kwargs = {}
            if isinstance(kw.get("choices"), (ast.List, ast.Tuple)):
                kwargs["choices"] = [e.value for e in kw["choices"].elts if isinstance(e, ast.Constant)]
            if "BooleanOptionalAction" in ast.unparse(kw.get("action", ast.Constant(None))):
                kwargs["action"] = argparse.BooleanOptionalAction
            p.add_argument(*flags, **kwargs)
    return p


@functools.cache
def parser_of(command: tuple) -> argparse.ArgumentParser:
    """The parser of ('train',), ('repro', 'brightness'), ('course',) or ('script', 'benchmarks/x.py')."""
    if command[0] == "script":
        sys.path.insert(0, str(ROOT / "tests"))
        from scripts import load_script

        try:
            module = load_script(command[1])
        except ImportError:
            return static_parser(ROOT / command[1])
        run = lambda: module.main([])  # noqa: E731
    else:
        from minidiff.__main__ import JOBS, job_function

        try:
            main = job_function(command[0])
        except ImportError:
            return static_parser(PACKAGE.parent / (JOBS[command[0]][0].split(":")[0].replace(".", "/") + ".py"))
        if command[0] == "repro":
            from minidiff.repro.__main__ import EXPERIMENTS

            try:
                run = lambda: main(list(command[1:]))  # noqa: E731
                with capturing():
                    run()
            except Captured as got:
                return got.parser
            except ImportError:
                return static_parser(ROOT / (EXPERIMENTS[command[1]].replace(".", "/") + ".py"))
        run = lambda: main(list(command[1:]))  # noqa: E731
    with capturing():
        try:
            run()
        except Captured as got:
            return got.parser
    raise AssertionError(f"{command}: no parser was built")


def flags_of(parser: argparse.ArgumentParser, path: list[str] = ()) -> dict[str, argparse.Action]:
    """flag -> action of a parser and, where path names a sub-command, of that sub-command's parser
    (all sub-commands where it names none)."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = [path[0]] if path and path[0] in action.choices else list(action.choices)
            for name in chosen:
                out.update(flags_of(action.choices[name], path[1:] if path and path[0] == name else []))
        for flag in action.option_strings:
            out[flag] = action
    return out


def command_of(tokens: list[str]) -> tuple[tuple | None, list[str], list[str]]:
    """(the command a line runs, its sub-command words, what is wrong) for `minidiff JOB ...`,
    `python train_cifar.py ...`, `python benchmarks/x.py ...`; (None, [], []) for anything else."""
    from minidiff.__main__ import JOBS

    if tokens[:2] in (["python", "-m"], ["python3", "-m"]) and len(tokens) > 2 and tokens[2] == "minidiff":
        tokens = ["minidiff", *tokens[3:]]
    if tokens and tokens[0] in ("python", "python3"):
        tokens = tokens[1:]
    if tokens and tokens[0] == "torchrun":  # torchrun --nproc_per_node 4 train_cifar.py ...
        tokens = [t for t in tokens if t.endswith(".py")][:1] + tokens[next(
            (i + 1 for i, t in enumerate(tokens) if t.endswith(".py")), len(tokens)):]
    if not tokens:
        return None, [], []
    head = tokens[0]
    if head == "minidiff":
        if len(tokens) < 2 or tokens[1].startswith("-") or PLACEHOLDER.search(tokens[1]):
            return None, [], []
        job = tokens[1]
        if job not in JOBS:
            return None, [], [f"minidiff has no job {job!r}"]
        words = [t for t in tokens[2:3] if not t.startswith("-")]
        if job == "repro":
            from minidiff.repro.__main__ import EXPERIMENTS

            if not words or PLACEHOLDER.search(words[0]):
                return None, [], []
            if words[0] not in EXPERIMENTS:
                return None, [], [f"minidiff repro has no experiment {words[0]!r}"]
            return ("repro", words[0]), [], []
        return (job,), words if job == "course" else [], []
    if Path(head).name in SCRIPTS and Path(head).name == head:
        return SCRIPTS[head], [], []
    if head.startswith("benchmarks/") and head.endswith(".py"):
        if not (ROOT / head).is_file():
            return None, [], [f"{head} does not exist"]
        words = [t for t in tokens[1:2] if not t.startswith("-")]
        return ("script", head), words, []
    return None, [], []


def split_flags(tokens: list[str]) -> list[tuple[str, str | None]]:
    """(flag, the word after it or None) for each --flag of a line; --a/--no-a gives both."""
    out = []
    if "--" in tokens:  # what follows -- is passed on to another command
        tokens = tokens[:tokens.index("--")]
    for i, token in enumerate(tokens):
        if not token.startswith("--"):
            continue
        token, _, inline = token.partition("=")
        value = inline or (tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") else None)
        for flag in token.split("/"):
            out.append((flag.rstrip(",.;:)"), value if flag == token.split("/")[0] else None))
    return out


def check_flags(tokens: list[str], parsers: list[tuple[str, dict]]) -> list[str]:
    """What is wrong with the flags of tokens, for a line that any of parsers (name, flags) may run."""
    out = []
    for flag, value in split_flags(tokens):
        if flag in ("--help", "-h"):
            continue
        actions = [(name, flags[flag]) for name, flags in parsers if flag in flags]
        if not actions:
            out.append(f"{flag} is not a flag of {' or '.join(name for name, _ in parsers)}")
            continue
        choices = [set(map(str, a.choices)) for _, a in actions if a.choices]
        if not choices or value is None or value.startswith("-") and not value.startswith("{") \
                or PLACEHOLDER.search(value.strip("{}")):
            continue
        if value.startswith("{") and value.endswith("}"):
            listed = set(value[1:-1].split(","))
            if not any(listed == c for c in choices):
                listed = " or ".join("{" + ",".join(sorted(c)) + "}" for c in choices)
                out.append(f"{flag} {value}: its choices are {listed}")
            continue
        for word in value.split("|"):
            if not any(word in c for c in choices):
                out.append(f"{flag} {word}: not one of {sorted(set().union(*choices))}")
    return out


def tokens_of(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=False)
    except ValueError:
        return text.split()


def command_name(command: tuple) -> str:
    if command[0] == "script":
        return f"python {command[1]}"
    return "minidiff " + " ".join(command)


# ------------------------------------------------------------------------------------------------- pages

COMMAND_LINE = re.compile(r"^(?: {4,}|\t)(?:\$ )?(?:python3?|minidiff|torchrun) .*$", re.M)
# in these pages, these words are the reader's variables, not modules of minidiff
VARIABLES = {"docs/exercises/": {"report"}}


def page_spans(text: str):
    """(line, span, start, end) for each backticked span of the prose; (line, lang, body) for each
    fenced block and each indented command line; the prose with the blocks blanked."""
    blocks, prose = [], text
    for m in FENCE.finditer(text):
        blocks.append((text.count("\n", 0, m.start(2)) + 1, m.group(1), m.group(2)))
        prose = prose[:m.start()] + re.sub(r"[^\n]", " ", m.group(0)) + prose[m.end():]
    for m in COMMAND_LINE.finditer(prose):  # an indented code block's command, \ continuations joined
        end = m.end()
        while prose[m.start():end].rstrip().endswith("\\") and "\n" in prose[end + 1:]:
            end = prose.index("\n", end + 1)
        blocks.append((prose.count("\n", 0, m.start()) + 1, "bash", prose[m.start():end]))
    spans = []
    for m in SPAN.finditer(prose):
        spans.append((prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()), m.start(), m.end()))
    return spans, blocks, prose


def shell_lines(body: str):
    lines, i = body.split("\n"), 0
    while i < len(lines):
        start, line = i, lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        yield start, line.removeprefix("$ ")


def unit_of(prose: str, position: int) -> str:
    """The table row, or else the paragraph, that holds position."""
    line_start = prose.rfind("\n", 0, position) + 1
    line_end = prose.find("\n", position) % (len(prose) + 1)
    if prose[line_start:line_end].lstrip().startswith("|"):
        return prose[line_start:line_end]
    start = prose.rfind("\n\n", 0, position) + 1
    end = prose.find("\n\n", position)
    return prose[start:end if end >= 0 else len(prose)]


def check_page(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    spans, blocks, prose = page_spans(text)
    where = page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else str(page)
    variables = set().union(*(v for folder, v in VARIABLES.items() if where.startswith(folder)))
    found = []

    def report(line, message):
        found.append(f"{where}:{line}: {message}")

    # the commands the page shows, which give a flag written alone its meaning
    commands: list[tuple[int, tuple, list[str], list[str]]] = []
    for line, span, start, _ in spans:
        if "git checkout" in unit_of(prose, start):
            continue
        command, words, errors = command_of(tokens_of(span))
        for error in errors:
            report(line, f"`{span}`: {error}")
        if command:
            commands.append((line, command, words, tokens_of(span)))
    for first, lang, body in blocks:
        if lang in ("bash", "sh", "shell", "console", ""):
            for offset, line in shell_lines(body):
                for part in re.split(r"\s(?:&&|\|\||;|\|)\s", line.split(" #")[0]):
                    tokens = tokens_of(part)
                    command, words, errors = command_of(tokens)
                    for error in errors:
                        report(first + offset, f"`{part}`: {error}")
                    if command:
                        commands.append((first + offset, command, words, tokens))
        elif lang == "python":
            try:
                tree = ast.parse(body)
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "minidiff":
                    for alias in node.names:
                        for problem in check_expression(f"{node.module}.{alias.name}"):
                            report(first + node.lineno - 1, f"from {node.module} import {alias.name}: {problem}")
        elif lang == "text":
            for offset, line in enumerate(body.split("\n")):
                for group in re.findall(r"\(([^()]*)\)", line):
                    for name in re.findall(r"\b[a-z_]\w*(?:\.[A-Za-z_]\w*)+\b", group):
                        for problem in check_expression(name):
                            report(first + offset, problem)

    for line, command, words, tokens in commands:
        if tokens[0] == "torchrun":  # its own flags, then the script's
            tokens = tokens[next(i for i, t in enumerate(tokens) if t.endswith(".py")):]
        flags = flags_of(parser_of(command), words)
        for problem in check_flags(tokens, [(command_name(command), flags)]):
            report(line, f"`{' '.join(tokens)}`: {problem}")

    shown = {c for _, c, _, _ in commands}
    context = [(command_name(c), flags_of(parser_of(c))) for c in sorted(shown)]
    file_before: tuple | None = None  # (end of the span, the files) of the last file named
    for i, (line, span, start, end) in enumerate(spans):
        if "git checkout" in unit_of(prose, start):
            file_before = None
            continue  # names the code of that commit, as the text says
        gap_before = prose[spans[i - 1][3]:start] if i else ""
        if span.startswith("--"):
            if context:
                for problem in check_flags(tokens_of(span), context):
                    report(line, f"`{span}`: {problem}")
            else:
                report(line, f"`{span}`: the page shows no command whose flag this is")
            continue
        path, _, names = span.partition(": ")
        if file_span(path) and (names or file_span(span)):
            files = find_file(path, page)
            if not files and not ignored(path):
                report(line, f"`{path}` does not exist")
            if not files:
                file_before = None
                continue
            if names:
                for problem in check_defined_in(files, names):
                    report(line, problem)
            # `BUILTIN` in `recipes.py`: the name before
            if i and re.fullmatch(r"\s+in\s+", gap_before) and not file_span(spans[i - 1][1]):
                for problem in check_defined_in(files, spans[i - 1][1]):
                    report(line, problem)
            file_before = (end, files) if path.endswith(".py") else None
            continue
        if FILE_SUFFIX.search(span) or "/" in span:
            file_before = None
            continue  # an output of a run (checkpoint.pt, runs/NAME), not a name
        if file_before and re.fullmatch(r"(?:'s)?[\s,]*(?:and|or)?\s*", prose[file_before[0]:start]):
            problems = check_defined_in(file_before[1], span)
            if problems and "." in span and candidates(span.split("(")[0].split("[")[0].split(".")) \
                    and not check_expression(span):
                problems = []  # a dotted name of its own (`loss.LossPerLevel`), not one of that file's
            for problem in problems:
                report(line, problem)
            file_before = (end, file_before[1])
            continue
        file_before = None
        if re.fullmatch(r"\w+\(.*\)", span) and re.search(r"\bWrite\s+$", prose[max(0, start - 10):start]):
            if " ".join(span.split()) not in starter_signatures():
                report(line, f"`{span}`: no exercise's starter file asks for `def {span}:`")
            continue
        if span.split(".")[0] in variables:
            continue
        command, _, _ = command_of(tokens_of(span))
        if command is None:
            for problem in check_expression(span):
                report(line, problem)
    return found


# --------------------------------------------------------------------------------------------------- tests


def test_readme_and_docs_name_only_what_exists():
    """docs/archive/ is not checked: it is history, and names the code as it was then."""
    found = [problem for page in pages() for problem in check_page(page)]
    assert not found, "names that do not exist:\n" + "\n".join(found)


def test_the_name_check_sees_each_kind_of_wrong_name(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("\n".join([
        "`minidiff/training/recipe.py` and `tests/test_recipe.py` and `nowhere.py`",
        "`minidiff.training.loss.LossPerLevels` and `loss.timestep_probability` and `schedules.rescale_zero_snr`",
        "`Schedule.maker` and `UNet(level_biass=50)` and `PRESETS[\"small-patch3\"]` and `tau_grids(f, N)`",
        "| `minidiff/training/loss.py` `recipe_losses` | `minidiff/samplers.py: ddim_steps` |",
        "`minidiff/training/loss.py` `draw_timesteps`, `sample_grid` and `BUILTINS` in `recipes.py`",
        "`python train_cifar.py --lr-decays wsd` and `minidiff sample CKPT --stepz 10` and `minidiff trian`",
        "`python train_cifar.py --lr-decay wsdd` and `minidiff repro brightnes` and `--ema-shares`",
        "`python benchmarks/quality.py --nam x` and `recipe_losss`", "",
        "Write `q_sample(x0, alpha_bars, noise)`:", "",
        "    python train_cifar.py --no-zero-snrr", "",
        "```text", "  weighting    level_mean (loss.recipe_losses)", "  x (recipe.timestep_probabilities)", "```",
        "```python", "from minidiff import Schedules", "```",
    ]))
    found = check_page(page)
    for wrong in ["recipe.py", "test_recipe.py", "nowhere.py", "LossPerLevels", "timestep_probability",
                  "rescale_zero_snr", "maker", "level_biass", "small-patch3", "tau_grids", "recipe_losses",
                  "ddim_steps", "sample_grid", "BUILTINS", "--lr-decays", "--stepz", "trian", "wsdd", "brightnes",
                  "--ema-shares", "--nam", "recipe_losss", "loss.recipe_losses", "Schedules", "alpha_bars",
                  "--no-zero-snrr", "recipe.timestep_probabilities"]:
        assert any(wrong in f for f in found), (wrong, found)
    assert not any("draw_timesteps" in f for f in found), found
    right = tmp_path / "q.md"
    right.write_text("`minidiff/training/loss.py` `recipe_loss`, `draw_timesteps` and `loss.LossPerLevel` and "
                     "`python train_cifar.py --lr-decay wsd` and `--ema-share` and `UNet(patch_size=2)` and "
                     "`UNet.from_preset(\"tiny\", num_classes=10)`\n")
    assert check_page(right) == []
