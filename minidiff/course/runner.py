"""Running a numbered exercise: look it up in the list, grade a function in this process
(`check(N, fn)`, what `from minidiff.course import check` gives), or load a student's file in a
child process with a time limit per step (`in_child`, what the `minidiff course` command uses).

This is the one module that imports both the exercise list and core.py; core.py and the
exercise modules never import it, so the course's imports run one way.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Callable

import torch

from .core import Exercise, Fail, Result, UsageError, check_function, describe, load_student, run_check
from .exercises import EXERCISES


def exercise(number: int) -> Exercise:
    """Exercise `number`, or UsageError saying which numbers there are."""
    if number not in EXERCISES:
        raise UsageError(f"no exercise {number}: the exercises are 1 to {max(EXERCISES)} (minidiff course list)")
    return EXERCISES[number]


def check(number: int, fn: Callable, *, quiet: bool = False) -> list[Result]:
    """Grade `fn` as the answer to exercise `number`, in this process (a notebook, a test): prints
    one line per check and a total unless quiet, and returns the Results (r.passed, r.message)."""
    ex = exercise(number)
    results = check_function(ex, fn)
    if not quiet:
        for r in results:
            print(r.line())
        passed = sum(r.passed for r in results)
        print(f"exercise {number} ({ex.function}): {passed}/{len(results)} checks pass")
    return results


def _child(task: str, number: int, path: str, out_dir: str | None, quick: bool, conn) -> None:
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
             quick: bool = False, on_result: Callable | None = None):
    """Run a task in a spawned process with a time limit per step.

    task "check": returns [Result] (passing each to on_result as it arrives); a step past the
    limit is a failed check with a line saying so, and the checks after it are not run.
    task "run": returns the experiment's printed lines, or raises Fail with one line.
    Raises UsageError for a file that does not load.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(task, number, path, out_dir, quick, child), daemon=True)
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
