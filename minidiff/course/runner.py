"""Running a numbered exercise: look it up in the list, grade a function in this process
(`check(N, fn)`, what `from minidiff.course import check` gives, each check in a thread with a
time limit), or load a student's file in a child process with a time limit per step (`in_child`,
what the `minidiff course` command uses); write Gradescope's results.json and its autograder zip.

This is the one module that imports both the exercise list and core.py; core.py and the
exercise modules never import it, so the course's imports run one way.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import threading
import zipfile
from pathlib import Path
from typing import Callable

import torch

from .core import (Exercise, Fail, Report, Result, UsageError, describe, hidden_line, load_student,
                   run_check)
from .exercises import EXERCISES

CHECK_TIME_LIMIT = 10.0  # seconds per check; every check of the reference takes well under one
TIMED_OUT = "not run (an earlier check timed out)"


def exercise(number: int) -> Exercise:
    """Exercise `number`, or UsageError saying which numbers there are."""
    if number not in EXERCISES:
        raise UsageError(f"no exercise {number}: the exercises are 1 to {max(EXERCISES)} (minidiff course list)")
    return EXERCISES[number]


class _TimeUp(BaseException):
    """Raised inside a check's thread once it is past its time limit (a BaseException, so that a
    student's `except Exception` does not swallow it)."""


def _stop(thread: threading.Thread, wait: float = 1.0) -> bool:
    """Raise _TimeUp inside `thread` (it arrives at the thread's next Python instruction, so a loop
    in Python stops; a single torch call that never returns does not); True if it stopped."""
    for _ in range(3):  # a bare `except:` in the loop may swallow one
        if not thread.is_alive():
            return True
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_TimeUp))
        thread.join(wait / 3)
    return not thread.is_alive()


def check_with_limit(name: str, grade: Callable, fn: Callable, time_limit: float | None,
                     student_file: str | None = None, what: str = "your file") -> Result:
    """One check in a daemon thread, waited for `time_limit` seconds: past it the thread is
    stopped (see _stop) and the check fails with a line saying so, as on the command line."""
    if time_limit is None:
        return run_check(name, grade, fn, student_file, what)
    box: list[Result] = []

    def work():
        try:
            box.append(run_check(name, grade, fn, student_file, what))
        except _TimeUp:
            pass
        except BaseException as e:  # SystemExit, KeyboardInterrupt raised by the student's code
            box.append(Result(name, False, f"your function raised {type(e).__name__}"))

    thread = threading.Thread(target=work, daemon=True, name=f"minidiff check: {name}")
    thread.start()
    try:
        thread.join(time_limit)
    except KeyboardInterrupt:  # the notebook's stop button: stop the check too, then stop
        _stop(thread)
        raise
    if box:
        return box[0]
    stopped = _stop(thread)
    why = f"the check did not finish within {time_limit:g} s: does your function loop forever?"
    if not stopped:
        why += " (it is still running in the background; restart the kernel if it slows down)"
    return Result(name, False, why)


def _where_defined(fn: Callable) -> tuple[str | None, str]:
    """The file a function was written in and what to call it in a line: a notebook cell
    (ipykernel's /tmp/ipykernel_*/N.py, IPython's <ipython-input-N>) or a file."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None, "your file"
    name = code.co_filename
    return name, "your cell" if name.startswith("<") or "ipykernel_" in name else "your file"


def check(number: int, fn: Callable, *, quiet: bool = False, time_limit: float | None = CHECK_TIME_LIMIT,
          hidden: bool = False) -> Report:
    """Grade `fn` as the answer to exercise `number`, in this process (a notebook, a test).

    Prints one line per check as it finishes and a total unless quiet, and returns a Report: a
    list of the Results (r.name, r.passed, r.message) with passed, total, score, lines, and a
    display for Jupyter. Each check runs in a thread and fails with a line if it takes longer
    than `time_limit` seconds (None: no limit); the checks after it are not run. Hidden checks
    are run only with hidden=True (a teacher's grading); else a line says how many there are.
    """
    ex = exercise(number)
    graded = ex.graded(hidden)
    student_file, what = _where_defined(fn)
    results, timed_out = [], False
    for name, grade in graded:
        if timed_out:
            r = Result(name, False, TIMED_OUT, skipped=True)
        else:
            r = check_with_limit(name, grade, fn, time_limit, student_file, what)
            timed_out = "did not finish within" in r.message and not r.passed
        results.append(r)
        if not quiet:
            print(r.line(), flush=True)
    report = Report(results, number=number, function=ex.function, hidden=len(ex.checks) - len(graded))
    if not quiet:
        if report.hidden:
            print(hidden_line(report.hidden))
        print(report.summary())
    return report


def _child(task: str, number: int, path: str, out_dir: str | None, quick: bool, names, conn) -> None:
    """Runs in a fresh process: load the student's file and send each result as it comes."""
    torch.set_num_threads(1)
    ex = EXERCISES[number]
    try:
        fn = load_student(path, ex.function)
    except UsageError as e:
        conn.send(("usage", str(e)))
        return
    conn.send(("loaded", ""))
    if task == "check":
        for name, grade in ex.checks:
            if names is not None and name not in names:
                continue
            conn.send(("started", name))
            conn.send(("result", run_check(name, grade, fn, path)))
    else:
        try:
            lines = ex.run(fn, Path(out_dir), quick)
            conn.send(("lines", lines))
        except Exception as e:
            conn.send(("error", describe(e, path)))
    conn.send(("done", ""))


def in_child(task: str, number: int, path: str, *, time_limit: float, out_dir: str | None = None,
             quick: bool = False, on_result: Callable | None = None, names: list[str] | None = None):
    """Run a task in a spawned process with a time limit per step.

    names: the checks to run (None: all of them), chosen here so that hidden checks stay hidden.
    task "check": returns [Result] (passing each to on_result as it arrives); a step past the
    limit is a failed check with a line saying so, and the checks after it are not run.
    task "run": returns the experiment's printed lines, or raises Fail with one line.
    Raises UsageError for a file that does not load.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(task, number, path, out_dir, quick, names, child), daemon=True)
    proc.start()
    child.close()
    results, current, lines = [], None, None
    limit = max(time_limit, 60.0)  # the first message waits for torch and the student's imports
    try:
        while True:
            if not parent.poll(limit):
                what = f"the check did not finish within {time_limit:g} s" if task == "check" else \
                    f"the experiment did not finish within {time_limit:g} s"
                if task == "run":
                    raise Fail(f"{what}: does your function loop forever?")
                results.append(Result(current or "loading your file", False, f"{what}: does your function loop forever?"))
                if on_result:
                    on_result(results[-1])
                break
            try:
                kind, payload = parent.recv()
            except EOFError:
                raise Fail("the check process died (out of memory, or your file called exit()?)") from None
            limit = time_limit
            if kind == "usage":
                raise UsageError(payload)
            if kind == "started":
                current = payload
            elif kind == "result":
                results.append(payload)
                if on_result:
                    on_result(payload)
            elif kind == "lines":
                lines = payload
            elif kind == "error":
                raise Fail(payload)
            elif kind == "done":
                break
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
    return results if task == "check" else lines


# ------------------------------------------------------------------------------------------------
# Gradescope: results.json and the autograder zip
# ------------------------------------------------------------------------------------------------


def gradescope_results(ex: Exercise, results: list[Result], *, output: str = "", not_run: str = TIMED_OUT) -> dict:
    """Gradescope's results format: one test per check of `ex` (hidden ones too), a point each,
    the hint as the test's output, visibility "after_due_date" for a hidden check. A check with
    no Result (after a time-out, or none at all after a usage error) scores 0 with `not_run`."""
    by_name = {r.name: r for r in results}
    tests = []
    for name, _ in ex.checks:
        r = by_name.get(name) or Result(name, False, not_run, skipped=True)
        tests.append({"name": name, "score": 1.0 if r.passed else 0.0, "max_score": 1.0,
                      "status": "passed" if r.passed else "failed",
                      "output": "PASS" if r.passed else r.message,
                      "visibility": "after_due_date" if name in ex.hidden else "visible"})
    return {"score": sum(t["score"] for t in tests), "max_score": float(len(tests)),
            "output": output or f"exercise {ex.number}: {ex.title} ({ex.function})",
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests}


def write_json(path: str | Path, data: dict) -> Path:
    """`data` as JSON at `path` (its folder made if missing); UsageError for a path that is a folder."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder: give the file to write, e.g. {path / 'results.json'}")
    if path.parent.exists() and not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: {path.parent} is a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, when it builds the autograder (the zip is unpacked in
# /autograder/source). It installs minidiff from the copy of its source in this zip; pip
# fetches only minidiff's dependencies (torch, torchvision, einops, tqdm, matplotlib) from PyPI.
set -euo pipefail
cd "$(dirname "$0")"
if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update && apt-get install -y python3 python3-pip
fi
python3 -m pip install --no-cache-dir . || python3 -m pip install --no-cache-dir --break-system-packages .
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for each submission: grade exercise {number} ({function}) in the .py file of
# the submission that defines {function}, every check (hidden ones too), and write
# results/results.json. MINIDIFF_AUTOGRADER_ROOT replaces /autograder (a test's temporary folder),
# MINIDIFF_PYTHON the python3 that has minidiff.
ROOT="${{MINIDIFF_AUTOGRADER_ROOT:-/autograder}}"
PYTHON="${{MINIDIFF_PYTHON:-python3}}"
mkdir -p "$ROOT/results"
"$PYTHON" -m minidiff course check {number} "$ROOT/submission" --time-limit {time_limit:g} \\
    --gradescope "$ROOT/results/results.json"
if [ ! -s "$ROOT/results/results.json" ]; then  # the grader itself failed: say so, score 0
    printf '{{"score": 0, "output": "the autograder could not grade this submission (see the autograder output)", "tests": []}}\\n' \\
        > "$ROOT/results/results.json"
fi
exit 0
"""


def default_zip_name(number: int) -> str:
    return f"minidiff_autograder_ex{number:02d}.zip"


def autograder_zip(number: int, out: str | Path | None = None, *, time_limit: float = CHECK_TIME_LIMIT) -> Path:
    """Write the autograder zip of exercise `number` (setup.sh, run_autograder, and minidiff's
    source: pyproject.toml, README.md, minidiff/) and return its path. `out` may be a folder."""
    ex = exercise(number)
    import minidiff

    package = Path(minidiff.__file__).resolve().parent
    source = package.parent
    if not (source / "pyproject.toml").is_file() or not (source / "README.md").is_file():
        raise UsageError(f"minidiff at {package} is not a source checkout (no pyproject.toml and README.md "
                         "beside it): build the autograder from a checkout installed with pip install -e .")
    path = Path(out) if out else Path(default_zip_name(number))
    if path.is_dir():
        path = path / default_zip_name(number)
    if path.suffix != ".zip":
        raise UsageError(f"{path} does not end in .zip: Gradescope takes the autograder as a .zip file")
    if path.resolve().is_relative_to(package):
        raise UsageError(f"{path} is inside minidiff's source, which the zip carries: write it elsewhere")
    if path.parent.exists() and not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: {path.parent} is a file")
    path.parent.mkdir(parents=True, exist_ok=True)

    def add(zf: zipfile.ZipFile, name: str, text: str, executable: bool = False) -> None:
        info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
        info.external_attr = (0o100755 if executable else 0o100644) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, text)

    files = sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and p.suffix not in (".pyc", ".pyo"))
    with zipfile.ZipFile(path, "w") as zf:
        add(zf, "setup.sh", SETUP_SH, executable=True)
        add(zf, "run_autograder", RUN_AUTOGRADER.format(number=number, function=ex.function, time_limit=time_limit),
            executable=True)
        for name in ("pyproject.toml", "README.md"):
            add(zf, name, (source / name).read_text(encoding="utf-8"))
        for p in files:
            add(zf, str(p.relative_to(source)), (p.read_text(encoding="utf-8") if p.suffix == ".py" else
                                                 p.read_bytes()))
    return path
