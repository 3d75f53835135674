"""Coursework that checks itself: `minidiff course list | start N | check N FILE | run N FILE |
notebook N | autograder N`.

Each exercise is one function of the course that a student writes from its docstring; `check`
grades it against facts (the papers' tables, identities, exact solutions, and minidiff's own
function on random inputs) and says in words what is wrong; `run` plugs it into the experiment
it belongs to and writes the figure. The library never imports this package.

In Python (a notebook): `from minidiff.course import check`, then `check(N, fn)`: the same lines,
each check stopped at a time limit without stopping the kernel, and a result to display.

The imports run one way: core.py (the Exercise record, the check helpers) <- ex_*.py (the
exercises) <- exercises.py (the list) <- runner.py (check a numbered exercise) <- __main__.py (the
command). This file imports the runner only when `check` is called, so that importing one
module of the course does not load them all.
"""


def check(number: int, fn, *, quiet: bool = False, time_limit: float | None = 10.0, hidden: bool = False):
    """Grade `fn` as the answer to exercise `number` in this process (a notebook cell's function
    will do): prints one line per check and a total (unless quiet) and returns a Report, the list
    of Results (r.name, r.passed, r.message) with .passed, .total, .score and .lines, which
    Jupyter shows as a table. A check that takes longer than `time_limit` seconds fails with a
    line saying so (its thread is stopped; the kernel lives on) and the checks after it are not
    run. Hidden checks run only with hidden=True (a teacher); a student sees how many there are."""
    from .runner import check as check_in_process

    return check_in_process(number, fn, quiet=quiet, time_limit=time_limit, hidden=hidden)
