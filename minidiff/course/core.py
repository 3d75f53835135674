"""What every exercise shares: the Exercise record, the helpers its checks are written with, and
the check runner that turns a student's mistake into one line of words.

It depends on nothing in the course: the exercise modules (ex_*.py) import it, exercises.py lists
them, and runner.py (which runs a numbered exercise, here or in a child process with a time
limit) imports the list and this module; nothing here imports back.

A check is a function `check(fn)` that calls the student's function `fn` and either returns
(passed) or raises `Fail(hint)`, where the hint says what is wrong in the words of the course
("the terminal SNR is 0.0047, not 0: the rescale was not applied"). The runner adds the cases
every check has in common: a body that is not written yet, a function that raises, returns
None, or (in a child process, `runner.in_child`) does not return at all.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


class Fail(Exception):
    """A failed check; the message is the hint the student reads."""


class NotWritten(Exception):
    """The student's body is still `...` (returns None) or raises NotImplementedError."""


@dataclass
class Exercise:
    """One exercise: the function a student writes, the checks that grade it, the experiment it runs in.

    signature/docstring: the starter file's `def` line and docstring (the body is left out).
    reference: minidiff's own function with this signature (the reference solution).
    library: where that function lives, for the docs and the `list` command.
    checks: [(name, check(fn))], run in order.
    run: run(fn, out_dir, quick) -> lines to print; writes at least one figure in out_dir.
    hidden: names of checks kept from the students until the deadline: `check` shows only that
        they exist; teachers' grading (`--gradescope`, `--json --all`) runs them
        (docs/exercises/teachers.md).
    """

    number: int
    slug: str
    title: str
    paper: str
    page: str
    function: str
    signature: str
    docstring: str
    reference: Callable
    library: str
    checks: list = field(default_factory=list)
    run: Callable | None = None
    hidden: tuple = ()

    def graded(self, hidden: bool) -> list:
        """The (name, check) pairs a grading runs: all of them for a teacher (hidden=True), the
        visible ones for a student."""
        unknown = set(self.hidden) - {name for name, _ in self.checks}
        if unknown:
            raise ValueError(f"exercise {self.number}: hidden names no check: {sorted(unknown)}")
        return [(name, c) for name, c in self.checks if hidden or name not in self.hidden]


@dataclass
class Result:
    name: str
    passed: bool
    message: str = ""
    skipped: bool = False  # not run, because an earlier check did not finish in time

    def line(self) -> str:
        if self.passed:
            return f"PASS  {self.name}"
        return f"{'SKIP' if self.skipped else 'FAIL'}  {self.name}: {self.message}"


def hidden_line(count: int) -> str:
    """What a student sees of the hidden checks: that they exist, not what they are."""
    return f"HIDDEN {count} check{'s' if count != 1 else ''}, graded after the deadline"


class Report(list):
    """The Results of one grading (a list, as before), with the score and a display for Jupyter.

    passed, total (the checks graded here), hidden (checks not shown), lines (one per check),
    score (passed / total). str() is the text the command prints; in a notebook the returned
    report shows the score and what failed, in colour.
    """

    def __init__(self, results, *, number: int, function: str, hidden: int = 0):
        super().__init__(results)
        self.number, self.function, self.hidden = number, function, hidden

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self)

    @property
    def total(self) -> int:
        return len(self)

    @property
    def score(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def lines(self) -> list[str]:
        return [r.line() for r in self] + ([hidden_line(self.hidden)] if self.hidden else [])

    def summary(self) -> str:
        return f"exercise {self.number} ({self.function}): {self.passed}/{self.total} checks pass"

    def __str__(self) -> str:
        return "\n".join([*self.lines, self.summary()])

    def __repr__(self) -> str:
        return f"<{self.summary()}" + (f", {hidden_line(self.hidden).lower()}" if self.hidden else "") + ">"

    def _repr_html_(self) -> str:
        from html import escape

        ok = self.passed == self.total and self.total > 0
        colour = "#1a7f37" if ok else "#cf222e"
        rows = "".join(
            f"<tr><td style='color:{'#1a7f37' if r.passed else '#9a6700' if r.skipped else '#cf222e'};"
            f"font-weight:bold;text-align:left'>{'PASS' if r.passed else 'SKIP' if r.skipped else 'FAIL'}</td>"
            f"<td style='text-align:left'>{escape(r.name)}</td>"
            f"<td style='text-align:left'>{escape(r.message)}</td></tr>" for r in self)
        if self.hidden:
            rows += f"<tr><td style='color:#57606a;text-align:left'>HIDDEN</td><td colspan=2 " \
                    f"style='text-align:left'>{escape(hidden_line(self.hidden)[7:])}</td></tr>"
        return (f"<div><b style='color:{colour}'>{escape(self.summary())}</b>"
                f"<table style='margin-left:0'>{rows}</table></div>")


# ------------------------------------------------------------------------------------------------
# Helpers the checks are written with
# ------------------------------------------------------------------------------------------------


def call(fn, *args, **kwargs):
    """fn(*args, **kwargs); None (a body of `...`) means the function is not written yet."""
    out = fn(*args, **kwargs)
    if out is None:
        raise NotWritten("it returned None (the body is still empty)")
    return out


def tensor_like(out, shape, dtype, what: str = "the result") -> torch.Tensor:
    """Check that `out` is a tensor of `shape` and `dtype`, in words if not."""
    if not isinstance(out, torch.Tensor):
        raise Fail(f"{what} is a {type(out).__name__}, not a torch.Tensor")
    if tuple(out.shape) != tuple(shape):
        raise Fail(f"{what} has shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype != dtype:
        raise Fail(f"{what} is {str(out.dtype).replace('torch.', '')}, expected {str(dtype).replace('torch.', '')}: "
                   "keep the input's dtype (a float64 constant or tensor mixed in promotes it)")
    return out


def same(a, b, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    """a and b agree (NaN never agrees); compared in float64."""
    a = torch.as_tensor(a).to(torch.float64)
    b = torch.as_tensor(b).to(torch.float64)
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def explain(got, expected, mistakes, default: str, rtol: float = 1e-6, atol: float = 1e-9) -> None:
    """Pass if got matches expected; otherwise fail with the hint of the first known mistake whose
    answer got matches (`mistakes`: [(hint, its answer)]), or `default`."""
    if same(got, expected, rtol, atol):
        return
    got_t = torch.as_tensor(got)
    if not bool(torch.isfinite(got_t.to(torch.float64)).all()):
        for hint, wrong in mistakes:
            if wrong is None:  # a mistake whose answer is not finite: the caller's hint for NaN/inf
                raise Fail(hint)
    for hint, wrong in mistakes:
        if wrong is not None and same(got, wrong, rtol, atol):
            raise Fail(hint)
    raise Fail(default)


def agree(got, expected, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    """`same` for a tensor or a tuple of tensors (an (x0, eps) pair)."""
    if isinstance(expected, (tuple, list)):
        return isinstance(got, (tuple, list)) and len(got) == len(expected) and all(
            isinstance(g, torch.Tensor) and same(g, e, rtol, atol) for g, e in zip(got, expected))
    return isinstance(got, torch.Tensor) and same(got, expected, rtol, atol)


def _math_sqrt_calls(code, scope: dict) -> bool:
    """Whether `code` (or a function nested in it) loads math.sqrt: `math.sqrt`, or a global bound to it."""
    import dis
    import math

    loads = [i for i in dis.get_instructions(code) if i.opname not in ("CACHE", "EXTENDED_ARG")]
    for here, after in zip(loads, loads[1:] + [None]):
        if here.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            value = scope.get(here.argval)
            if value is math.sqrt:
                return True
            if value is math and after is not None and after.opname in ("LOAD_ATTR", "LOAD_METHOD") \
                    and after.argval == "sqrt":
                return True
    return any(_math_sqrt_calls(c, scope) for c in code.co_consts if hasattr(c, "co_code"))


def uses_math_sqrt(fn) -> bool:
    """Whether fn's own code calls math.sqrt (as math.sqrt, or a global bound to it): read from its
    bytecode, so that a hint never blames math.sqrt on a body that does not use it."""
    code = getattr(fn, "__code__", None)
    return code is not None and _math_sqrt_calls(code, getattr(fn, "__globals__", {}))


def per_sample_check(fn, run, expected, alpha_bar: torch.Tensor, what: str = "the result") -> None:
    """The check that one alpha_bar per sample (a [B, 1, 1, 1] tensor) works, with a hint that names
    only what the code does. run(a, rows) calls fn on the samples `rows` (a slice) with alpha_bar a;
    expected(a, rows) is the right answer. A wrong answer is blamed on broadcasting only when the
    same function is right sample by sample with a float alpha_bar; math.sqrt is named only when the
    function calls it."""
    rows = slice(None)
    try:
        got = run(alpha_bar, rows)
    except (TypeError, RuntimeError, ValueError) as e:
        if uses_math_sqrt(fn):
            raise Fail("with one alpha_bar per sample (a [B, 1, 1, 1] tensor) math.sqrt fails: it takes one "
                       "number; use torch.sqrt(alpha_bar) or alpha_bar ** 0.5, which work on every sample at once") from None
        raise Fail(f"with one alpha_bar per sample (a [B, 1, 1, 1] tensor) your function raised {type(e).__name__}: "
                   f"{str(e).splitlines()[0] if str(e) else ''}: keep alpha_bar a tensor and use tensor operations") from None
    if got is None:
        raise NotWritten("it returned None (the body is still empty)")
    if agree(got, expected(alpha_bar, rows)):
        return
    one_by_one = all(agree(run(float(a), slice(i, i + 1)), expected(float(a), slice(i, i + 1)))
                     for i, a in enumerate(alpha_bar.flatten().tolist()))
    if not one_by_one:
        raise Fail(f"{what} is wrong with one alpha_bar per sample, and wrong too with each sample's alpha_bar given "
                   "as a float: the formula itself is off (see the checks above), not how it broadcasts")
    if uses_math_sqrt(fn):
        raise Fail(f"{what} is right for a float alpha_bar but wrong for a [B, 1, 1, 1] tensor: math.sqrt reads one "
                   "number; use torch.sqrt or ** 0.5, which broadcast")
    raise Fail(f"{what} is right for a float alpha_bar but wrong for a [B, 1, 1, 1] tensor: sample i must get "
               "alpha_bar[i], so keep alpha_bar's shape (no reshaping, indexing or reducing it) and let it broadcast")


def random_inputs(seed: int, *shapes, dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def tolerance(dtype) -> tuple[float, float]:
    """(rtol, atol) for comparing with the oracle in `dtype`."""
    return {torch.float64: (1e-9, 1e-12), torch.float32: (1e-4, 1e-5)}.get(dtype, (2e-2, 2e-2))


def fmt(value: float) -> str:
    return f"{value:.6g}"


# ------------------------------------------------------------------------------------------------
# Running the checks
# ------------------------------------------------------------------------------------------------


def _where(exc: BaseException, student_file: str | None, what: str = "your file") -> str:
    """' (line N of your file)' for the deepest frame in the student's file, if any."""
    frames = traceback.extract_tb(exc.__traceback__)
    if student_file:
        mine = [f for f in frames if f.filename == student_file
                or Path(f.filename).resolve() == Path(student_file).resolve()]
        if mine:
            return f" (line {mine[-1].lineno} of {what}: {mine[-1].line})"
    return ""


def run_check(name: str, check: Callable, fn: Callable, student_file: str | None = None,
              what: str = "your file") -> Result:
    """One check as a Result: never raises (an Exception), never prints a traceback. `what` names
    the student's file in the line of an error ("your file", "your cell")."""
    try:
        check(fn)
    except Fail as e:
        return Result(name, False, str(e))
    except (NotWritten, NotImplementedError) as e:
        why = str(e) if isinstance(e, NotWritten) else "the body raises NotImplementedError"
        return Result(name, False, f"not written yet: {why}")
    except Exception as e:  # the student's function raised: say what and where, in one line
        return Result(name, False, describe(e, student_file, what))
    return Result(name, True)


def describe(exc: BaseException, student_file: str | None = None, what: str = "your file") -> str:
    """An exception from the student's function in one line: its type, message and line."""
    if isinstance(exc, (NotWritten, NotImplementedError)):
        return "not written yet: " + (str(exc) if isinstance(exc, NotWritten) else "the body raises NotImplementedError")
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"your function raised {type(exc).__name__}: {msg}{_where(exc, student_file, what)}"


def check_function(exercise: Exercise, fn: Callable, student_file: str | None = None) -> list[Result]:
    """Every check of `exercise` on `fn`, hidden ones too, in this process (no time limit): what
    the tests use."""
    return [run_check(name, check, fn, student_file) for name, check in exercise.checks]


class UsageError(Exception):
    """Bad N, missing file, file without the function: one line and exit code 2."""


def load_student(path: str, function: str) -> Callable:
    """The function `function` from the file at `path`. A file that does not import raises
    UsageError with the reason in one line, as does a file without the function."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such file: {path} (make one with: minidiff course start N)")
    spec = importlib.util.spec_from_file_location(f"student_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UsageError(f"{path} does not import: SyntaxError at line {e.lineno}: {e.msg}") from None
    except Exception as e:
        raise UsageError(f"{path} does not import: {type(e).__name__}: {e}{_where(e, str(p))}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UsageError(f"{path} has no function {function}(...): the exercise grades a function of that name")
    return fn


def defines(path: Path, function: str) -> bool:
    """Whether the Python file at `path` binds `function` at its top level (a def, an import or
    an assignment), read without running it; False for a file that does not parse."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, OSError):
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (a.asname or a.name.split(".")[0]) == function for a in node.names):
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == function for t in targets):
                return True
    return False


def find_submission(folder: str | Path, function: str) -> Path:
    """The .py file in `folder` (searched recursively, in name order) that defines `function`: what
    Gradescope's run_autograder grades. A folder with one .py file that defines nothing (one that
    does not parse, say) gives that file, so that loading it says what is wrong; otherwise no
    such file is a UsageError."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*.py") if p.is_file() and "__pycache__" not in p.parts)
    found = [p for p in files if defines(p, function)]
    if found:
        return found[0]
    if len(files) == 1:
        return files[0]
    names = ", ".join(str(p.relative_to(folder)) for p in files[:5]) or "none"
    raise UsageError(f"no .py file in {folder} defines {function}(...) (the .py files there: {names}); "
                     f"hand in the file with your {function}")
