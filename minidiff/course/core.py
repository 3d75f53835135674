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


@dataclass
class Result:
    name: str
    passed: bool
    message: str = ""

    def line(self) -> str:
        return f"PASS  {self.name}" if self.passed else f"FAIL  {self.name}: {self.message}"


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


def _where(exc: BaseException, student_file: str | None) -> str:
    """' (line N of your file)' for the deepest frame in the student's file, if any."""
    frames = traceback.extract_tb(exc.__traceback__)
    if student_file:
        mine = [f for f in frames if Path(f.filename).resolve() == Path(student_file).resolve()]
        if mine:
            return f" (line {mine[-1].lineno} of your file: {mine[-1].line})"
    return ""


def run_check(name: str, check: Callable, fn: Callable, student_file: str | None = None) -> Result:
    """One check as a Result: never raises, never prints a traceback."""
    try:
        check(fn)
    except Fail as e:
        return Result(name, False, str(e))
    except (NotWritten, NotImplementedError) as e:
        why = str(e) if isinstance(e, NotWritten) else "the body raises NotImplementedError"
        return Result(name, False, f"not written yet: {why}")
    except Exception as e:  # the student's function raised: say what and where, in one line
        return Result(name, False, describe(e, student_file))
    return Result(name, True)


def describe(exc: BaseException, student_file: str | None = None) -> str:
    """An exception from the student's function in one line: its type, message and line."""
    if isinstance(exc, (NotWritten, NotImplementedError)):
        return "not written yet: " + (str(exc) if isinstance(exc, NotWritten) else "the body raises NotImplementedError")
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"your function raised {type(exc).__name__}: {msg}{_where(exc, student_file)}"


def check_function(exercise: Exercise, fn: Callable, student_file: str | None = None) -> list[Result]:
    """Every check of `exercise` on `fn`, in this process (no time limit): what the tests use."""
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
