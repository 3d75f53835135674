"""The course's command: list the exercises, write a starter file, grade it, run it in its experiment.

    minidiff course list
    minidiff course start N [--dir D]          # writes D/exNN_<slug>.py, never overwriting
    minidiff course check N FILE [--json]      # one line per check; exit 0 when all pass
    minidiff course run N FILE [--out DIR]     # the experiment with your function; writes a figure
    minidiff course notebook N [--dir D]       # the exercise as a Jupyter notebook
    minidiff course check N FILE --gradescope results.json   # teachers: Gradescope's format, hidden checks too
    minidiff course check N FILE --json --all  # teachers: --json with the hidden checks
    minidiff course autograder N [--out ZIP]   # the zip a Gradescope programming assignment runs
    minidiff course sets                        # the problem sets: parts, student time, graded training
    minidiff course set N --dir D [--solution]  # a problem set's notebook (or the teacher's solution)
    minidiff course grade N NOTEBOOK [--json] [--all]  # run it in a fresh kernel, check and train; points per part
    minidiff course autograder --set N [--out ZIP]     # the Gradescope zip of a whole set

FILE may be a folder: the .py file in it that defines the exercise's function is graded.

Exit codes: 0 all checks pass, full marks (or the command did its job), 1 a check failed or marks
were lost, 2 a usage error
(bad N, missing file, a file without the function), printed as one line without a traceback.
Also `python -m minidiff.course ...`. In Python: `from minidiff.course import check; check(N, fn)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .core import Fail, Result, UsageError, find_submission, hidden_line
from .exercises import EXERCISES
from .runner import (CHECK_TIME_LIMIT, TIMED_OUT, autograder_zip, exercise, gradescope_results, in_child,
                     write_json)

RUN_TIME_LIMIT = 300.0


def starter_name(number: int) -> str:
    return f"ex{number:02d}_{EXERCISES[number].slug.replace('-', '_')}.py"


def starter_text(number: int) -> str:
    """The file a student starts from: the signature and docstring, and no body."""
    ex = EXERCISES[number]
    doc = "\n".join(("    " + line) if line else "" for line in ex.docstring.splitlines())
    return (f'"""Exercise {number}: {ex.title} ({ex.paper}; docs/exercises/{number:02d}_{ex.slug}.md).\n\n'
            f"Write the body of {ex.function} below, then:\n\n"
            f"    minidiff course check {number} {starter_name(number)}\n"
            f"    minidiff course run {number} {starter_name(number)}\n"
            '"""\n\nimport math\n\nimport torch\n\n\n'
            f'{ex.signature}\n    """{doc.lstrip()}\n    """\n    raise NotImplementedError("exercise {number}: write this function")\n')


def cmd_list(args) -> int:
    paper = None
    for n, ex in EXERCISES.items():
        if ex.paper != paper:
            paper = ex.paper
            print(f"{paper}:")
        print(f"  {n:2d}. {ex.title:55s} {ex.function}()  [docs/{ex.page}]")
    print("minidiff course start N   writes the starter file of exercise N")
    return 0


def cmd_start(args) -> int:
    exercise(args.n)
    folder = Path(args.dir)
    path = folder / starter_name(args.n)
    if path.exists():
        print(f"{path} exists; not overwritten (check it with: minidiff course check {args.n} {path})")
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(starter_text(args.n))
    print(f"wrote {path}; write the body of {EXERCISES[args.n].function}, then: "
          f"minidiff course check {args.n} {path}")
    return 0


def submission(number: int, file: str) -> str:
    """FILE, or for a folder the .py file in it that defines the exercise's function."""
    path = Path(file)
    if path.is_dir():
        return str(find_submission(path, EXERCISES[number].function))
    if not path.is_file():
        raise UsageError(f"no such file: {file} (make one with: minidiff course start {number})")
    return file


def cmd_check(args) -> int:
    ex = exercise(args.n)
    teacher = bool(args.all or args.gradescope)  # a teacher's grading runs the hidden checks too
    graded = ex.graded(hidden=teacher)
    try:
        file = submission(args.n, args.file)
        if not args.json:
            print(f"exercise {args.n}: {ex.title} ({ex.function} in {file})")
        show = None if args.json else (lambda r: print(r.line(), flush=True))
        results = in_child("check", args.n, file, time_limit=args.time_limit, on_result=show,
                           names=[name for name, _ in graded])
    except (UsageError, Fail) as e:
        if args.gradescope:  # Gradescope shows the student why there is no score
            write_json(args.gradescope, gradescope_results(ex, [], output=f"not graded: {e}", not_run=f"not graded: {e}"))
        if isinstance(e, UsageError):
            raise
        print(f"exercise {args.n} ({ex.function}): {e}")
        return 1
    ran = {r.name for r in results}
    results += [Result(name, False, TIMED_OUT, skipped=True) for name, _ in graded if name not in ran]
    passed = sum(r.passed for r in results)
    total = len(graded)
    hidden = len(ex.checks) - total
    if args.gradescope:
        write_json(args.gradescope, gradescope_results(ex, results, output=f"exercise {args.n}: {ex.title} "
                                                       f"({ex.function} in {Path(file).name}): {passed}/{total} checks pass"))
    if args.json:
        print(json.dumps({"exercise": args.n, "function": ex.function, "file": str(file), "passed": passed,
                          "total": total, "score": passed / total, "hidden": hidden,
                          "checks": [{"name": r.name, "passed": r.passed, "message": r.message}
                                     | ({"hidden": r.name in ex.hidden} if teacher else {}) for r in results]},
                         indent=1))
    else:
        for r in results:
            if r.skipped:
                print(r.line())
        if hidden:
            print(hidden_line(hidden))
        print(f"{passed}/{total} checks pass" + ("" if passed < total else
              f"; now see it in the experiment: minidiff course run {args.n} {file}"))
        if args.gradescope:
            print(f"wrote {args.gradescope}")
    return 0 if passed == total else 1


def cmd_run(args) -> int:
    ex = exercise(args.n)
    if not Path(args.file).is_file():
        raise UsageError(f"no such file: {args.file} (make one with: minidiff course start {args.n})")
    out = Path(args.out or f"runs/course/{args.n}")
    try:
        lines = in_child("run", args.n, args.file, time_limit=args.time_limit, out_dir=str(out))
    except Fail as e:
        print(f"exercise {args.n} ({ex.function}): the experiment stopped: {e}")
        return 1
    for line in lines:
        print(line)
    return 0


def cmd_notebook(args) -> int:
    exercise(args.n)
    folder = Path(args.dir)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--dir {folder} is a file, not a folder")
    from .notebook import write_notebook

    path = write_notebook(args.n, folder)
    print(f"wrote {path}; open it in Jupyter or Colab (jupyter lab {path})")
    return 0


def cmd_sets(args) -> int:
    from .sets import SETS

    for n, ps in SETS.items():
        print(f"set {n}: {ps.title}  ({ps.total:g} points; about {ps.student_hours} of student time)")
        for part in ps.parts:
            graded = "trained and scored: " + f"{part.measure}, {ps.training.BUDGET['steps']} steps" + \
                f"{' a model, two models' if n == 2 else ''}, about {ps.train_minutes} CPU-minutes on 2 cores" \
                if part.trained else ", ".join(f"{ex.function}()" for ex in part.functions)
            print(f"  part {part.key}. {part.title:38s} {part.points:4g} points  {graded}")
    print("minidiff course set N --dir D   writes the notebook; docs/exercises/problem_sets.md has the bands")
    return 0



def cmd_set(args) -> int:
    from .sets import write_set

    path = write_set(args.n, args.dir, solution=args.solution)
    print(f"wrote {path}" + ("" if args.solution else f"; grade it with: minidiff course grade {args.n} {path}"))
    return 0


def cmd_grade(args) -> int:
    from .grading import format_report, grade_notebook

    report = grade_notebook(args.n, args.notebook, hidden=args.all, steps=args.steps)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
    if args.gradescope:
        from .grading import gradescope_set_results

        write_json(args.gradescope, gradescope_set_results(report))
    return 0 if report["score"] >= report["total"] else 1


def cmd_autograder(args) -> int:
    if args.set is not None:
        from .grading import set_autograder_zip

        path = set_autograder_zip(args.set, args.out)
        print(f"wrote {path}: upload it as the autograder of a Gradescope programming assignment; students hand "
              f"in their notebook of set {args.set} (docs/exercises/problem_sets.md)")
        return 0
    if args.n is None:
        raise UsageError("give an exercise number (autograder N) or a problem set (autograder --set N)")
    path = autograder_zip(args.n, args.out, time_limit=args.time_limit)
    print(f"wrote {path}: upload it as the autograder of a Gradescope programming assignment; students "
          f"hand in the .py file that defines {EXERCISES[args.n].function} (docs/exercises/README.md)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="minidiff course", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the exercises, in the order of the course")
    s = sub.add_parser("start", help="write the starter file of exercise N (never overwrites)")
    s.add_argument("n", type=int)
    s.add_argument("--dir", default=".", help="folder for the file (default: here)")
    c = sub.add_parser("check", help="grade FILE's function for exercise N")
    c.add_argument("n", type=int)
    c.add_argument("file")
    c.add_argument("--json", action="store_true", help="one JSON object for automatic grading")
    c.add_argument("--all", action="store_true", help="teachers: run the hidden checks too")
    c.add_argument("--gradescope", metavar="OUT", help="teachers: write Gradescope's results.json to OUT "
                   "(every check, hidden ones visible after the due date)")
    c.add_argument("--time-limit", type=float, default=CHECK_TIME_LIMIT, help="seconds a check may take")
    r = sub.add_parser("run", help="run exercise N's experiment with FILE's function and write the figure")
    r.add_argument("n", type=int)
    r.add_argument("file")
    r.add_argument("--out", help="folder for the figure (default runs/course/N)")
    r.add_argument("--time-limit", type=float, default=RUN_TIME_LIMIT, help="seconds the experiment may take")
    nb = sub.add_parser("notebook", help="write exercise N as a Jupyter notebook (starter, check and run cells)")
    nb.add_argument("n", type=int)
    nb.add_argument("--dir", default=".", help="folder for the notebook (default: here)")
    a = sub.add_parser("autograder", help="teachers: build the Gradescope autograder zip of exercise N (or --set N)")
    a.add_argument("n", type=int, nargs="?")
    a.add_argument("--set", type=int, help="the zip of problem set N (the whole notebook) instead of one exercise")
    a.add_argument("--out", help="the zip to write, or a folder for it (default: minidiff_autograder_exNN.zip here)")
    a.add_argument("--time-limit", type=float, default=CHECK_TIME_LIMIT, help="seconds a check may take")
    sub.add_parser("sets", help="the problem sets: parts, student time, the graded training's CPU time")
    st = sub.add_parser("set", help="write problem set N's notebook (never overwrites)")
    st.add_argument("n", type=int)
    st.add_argument("--dir", default=".", help="folder for the notebook (default: here)")
    st.add_argument("--solution", action="store_true", help="teachers: the solution, with the written answers")
    g = sub.add_parser("grade", help="grade a problem set's notebook: fresh kernel, every part, the trained model")
    g.add_argument("n", type=int)
    g.add_argument("notebook")
    g.add_argument("--json", action="store_true", help="one JSON object: score, total, parts, the model's figures")
    g.add_argument("--all", action="store_true", help="teachers: run the hidden checks too")
    g.add_argument("--steps", type=int, help="train for this many steps instead of the set's budget (the band "
                   "is set at the budget: for trying the grader, not for grading)")
    g.add_argument("--gradescope", metavar="OUT", help="also write Gradescope's results.json to OUT")
    args = p.parse_args(argv)
    try:
        return {"list": cmd_list, "start": cmd_start, "check": cmd_check, "run": cmd_run, "notebook": cmd_notebook,
                "autograder": cmd_autograder, "sets": cmd_sets, "set": cmd_set, "grade": cmd_grade}[args.command](args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
