"""Grading outside the shell: `check(N, fn)` in Python (a time limit that stops an endless loop and
leaves the process, or a Jupyter kernel, alive; a result that displays), hidden checks, Gradescope's
results.json and the autograder zip, run on a right and a wrong submission as Gradescope lays
them out."""

import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from minidiff import objectives, samplers
from minidiff.course import check
from minidiff.course.__main__ import main
from minidiff.course.core import Exercise, Report, UsageError, find_submission
from minidiff.course.exercises import EXERCISES

LOOP = "def make_timesteps(num_train_timesteps, num_steps, spacing):\n    while True:\n        pass\n"
RIGHT = ("from minidiff.samplers import make_timesteps as _m\n\n\n"
         "def make_timesteps(num_train_timesteps, num_steps, spacing):\n"
         "    return _m(num_train_timesteps, num_steps, spacing)\n")
# the mutant of tests/test_course.py: Table 2's trailing rule counted from T instead of T - 1
WRONG = ("from minidiff.samplers import make_timesteps as _m\n\n\n"
         "def make_timesteps(num_train_timesteps, num_steps, spacing):\n"
         "    steps = _m(num_train_timesteps, num_steps, spacing)\n"
         "    return steps + 1 if spacing == 'trailing' else steps\n")
WRONG_HINT = "Table 2's trailing rule counts from T"


def _trailing_one_indexed(T, S, spacing):
    steps = samplers.make_timesteps(T, S, spacing)
    return steps + 1 if spacing == "trailing" else steps


# ---------------------------------------------------------------- check in Python


def test_check_returns_a_report_that_is_still_the_list_of_results(capsys, one_thread):
    report = check(5, samplers.make_timesteps)
    assert isinstance(report, Report) and isinstance(report, list)
    assert report.passed == report.total == len(EXERCISES[5].checks) and report.score == 1.0
    assert all(r.passed for r in report) and report.lines == [r.line() for r in report]
    out = capsys.readouterr().out
    assert out.splitlines() == [*report.lines, report.summary()] == str(report).splitlines()
    wrong = check(5, _trailing_one_indexed, quiet=True)
    assert capsys.readouterr().out == "" and 0 < wrong.passed < wrong.total
    html = wrong._repr_html_()
    assert "FAIL" in html and WRONG_HINT.replace("'", "&#x27;") in html and f"{wrong.passed}/{wrong.total}" in html
    assert repr(wrong) == f"<exercise 5 (make_timesteps): {wrong.passed}/{wrong.total} checks pass>"


def test_an_endless_loop_fails_at_the_time_limit_and_is_stopped(capsys):
    def make_timesteps(num_train_timesteps, num_steps, spacing):
        while True:
            pass

    start = time.monotonic()
    report = check(5, make_timesteps, time_limit=1.0)
    took = time.monotonic() - start
    assert took < 4.0, took  # 1 s, and at most 1 s more to stop the thread
    first, *rest = report
    assert not first.passed and "did not finish within 1 s" in first.message and "still running" not in first.message
    assert rest and all(r.skipped and not r.passed for r in rest) and report.passed == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("minidiff check")]  # the loop was stopped
    assert "SKIP" in capsys.readouterr().out
    assert check(5, samplers.make_timesteps, quiet=True).score == 1.0  # and this process grades on


def test_an_exception_in_the_students_code_is_one_line_with_its_line(capsys):
    def make_timesteps(num_train_timesteps, num_steps, spacing):
        return undefined_name + 1  # noqa: F821

    report = check(5, make_timesteps)
    out = capsys.readouterr().out
    assert report.passed == 0 and "Traceback" not in out
    assert all("your function raised NameError" in r.message for r in report)
    assert "line" in report[0].message and "undefined_name + 1" in report[0].message


def test_check_in_a_jupyter_kernel_stops_a_loop_and_the_kernel_lives_on():
    """The brief's 'Done means': in a fresh kernel, a right and a wrong function and an endless loop."""
    manager = pytest.importorskip("jupyter_client.manager")
    pytest.importorskip("ipykernel")
    km, kc = manager.start_new_kernel(kernel_name="python3")
    try:
        def run(code: str, timeout: float = 60.0) -> str:
            out = []
            reply = kc.execute_interactive(code, timeout=timeout, output_hook=lambda m: out.append(
                m["content"].get("text", "") + json.dumps(m["content"].get("data", {}))))
            assert reply["content"]["status"] == "ok", reply["content"]
            return "".join(out)

        run("import torch; torch.set_num_threads(1)\nfrom minidiff.course import check\nfrom minidiff import samplers")
        out = run("check(5, samplers.make_timesteps)")
        n = len(EXERCISES[5].checks)
        assert out.count("PASS") >= n and f"{n}/{n} checks pass" in out and "text/html" in out
        out = run("def make_timesteps(T, S, spacing):\n    return samplers.make_timesteps(T, S, spacing) + "
                  "(1 if spacing == 'trailing' else 0)\nr = check(5, make_timesteps)")
        assert "FAIL" in out and WRONG_HINT in out
        out = run("def make_timesteps(T, S, spacing):\n    x = None\n    return x.shape\ncheck(5, make_timesteps)")
        assert "your function raised AttributeError" in out and "line 3 of your cell" in out and "Traceback" not in out
        start = time.monotonic()
        out = run("def make_timesteps(T, S, spacing):\n    while True:\n        pass\nr = check(5, make_timesteps, "
                  "time_limit=2)\nprint('score', r.passed, r.total)")
        assert time.monotonic() - start < 20 and "did not finish within 2 s" in out and f"score 0 {n}" in out
        assert km.is_alive() and "2" in run("print(1 + 1)")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# ---------------------------------------------------------------- hidden checks


def _small_exercise() -> Exercise:
    """Exercise 4's first three checks, one of them hidden: a record built here, no real check hidden."""
    real = EXERCISES[4]
    checks = real.checks[:3]
    return Exercise(number=98, slug="hidden-demo", title="a demo with a hidden check", paper=real.paper,
                    page=real.page, function=real.function, signature=real.signature, docstring=real.docstring,
                    reference=real.reference, library=real.library, checks=checks, hidden=(checks[1][0],))


def _sign_of_v(p, o, x, a):
    if p == "v":
        return a**0.5 * x + (1 - a) ** 0.5 * o, a**0.5 * o + (1 - a) ** 0.5 * x
    return objectives.to_x0_eps(p, o, x, a)


def test_hidden_checks_are_counted_for_students_and_run_for_teachers(monkeypatch, capsys):
    ex = _small_exercise()
    monkeypatch.setitem(EXERCISES, 98, ex)
    student = check(98, objectives.to_x0_eps)
    out = capsys.readouterr().out
    assert student.total == 2 and student.hidden == 1 and ex.hidden[0] not in out
    assert "HIDDEN 1 check, graded after the deadline" in out and "HIDDEN" in student._repr_html_()
    teacher = check(98, objectives.to_x0_eps, hidden=True, quiet=True)
    assert teacher.total == 3 and teacher.hidden == 0 and [r.name for r in teacher] == [n for n, _ in ex.checks]
    with pytest.raises(ValueError, match="hidden names no check"):
        Exercise(**{**ex.__dict__, "hidden": ("no such check",)}).graded(False)


def test_the_command_hides_a_hidden_check_from_students_and_grades_it_for_teachers(tmp_path, monkeypatch, capsys):
    """A check of exercise 5 marked hidden for this test only, in this process (the parent chooses
    which checks the child runs)."""
    name = EXERCISES[5].checks[3][0]  # Table 2, trailing: the one the mutant fails
    monkeypatch.setattr(EXERCISES[5], "hidden", (name,))
    wrong = tmp_path / "wrong.py"
    wrong.write_text(WRONG)
    total = len(EXERCISES[5].checks)
    assert main(["check", "5", str(wrong)]) == 1  # another check still catches the mistake
    out = capsys.readouterr().out
    assert name not in out and "HIDDEN 1 check, graded after the deadline" in out and f"/{total - 1} checks" in out
    assert main(["check", "5", str(wrong), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == total - 1 and report["hidden"] == 1 and name not in [c["name"] for c in report["checks"]]
    assert main(["check", "5", str(wrong), "--json", "--all"]) == 1
    report = json.loads(capsys.readouterr().out)
    hidden = [c for c in report["checks"] if c["hidden"]]
    assert report["total"] == total and [c["name"] for c in hidden] == [name] and not hidden[0]["passed"]
    assert WRONG_HINT in hidden[0]["message"]
    results = tmp_path / "results.json"
    assert main(["check", "5", str(wrong), "--gradescope", str(results)]) == 1
    grade = json.loads(results.read_text())
    visibility = {t["name"]: t["visibility"] for t in grade["tests"]}
    assert visibility[name] == "after_due_date" and set(visibility.values()) == {"visible", "after_due_date"}
    assert len(grade["tests"]) == grade["max_score"] == total


# ---------------------------------------------------------------- Gradescope


def test_gradescope_results_of_a_right_and_a_wrong_file(tmp_path, capsys):
    right, wrong = tmp_path / "right.py", tmp_path / "wrong.py"
    right.write_text(RIGHT)
    wrong.write_text(WRONG)
    n = len(EXERCISES[5].checks)
    assert main(["check", "5", str(right), "--gradescope", str(tmp_path / "out" / "right.json")]) == 0
    grade = json.loads((tmp_path / "out" / "right.json").read_text())
    assert grade["score"] == grade["max_score"] == n and len(grade["tests"]) == n
    assert all(set(t) >= {"name", "score", "max_score", "output", "visibility"} for t in grade["tests"])
    assert [t["name"] for t in grade["tests"]] == [name for name, _ in EXERCISES[5].checks]
    assert all(t["visibility"] == "visible" and t["score"] == t["max_score"] == 1 for t in grade["tests"])
    assert main(["check", "5", str(wrong), "--gradescope", str(tmp_path / "wrong.json")]) == 1
    grade = json.loads((tmp_path / "wrong.json").read_text())
    failed = [t for t in grade["tests"] if t["score"] == 0]
    assert 0 < grade["score"] == n - len(failed) < grade["max_score"]
    assert any(WRONG_HINT in t["output"] for t in failed)
    capsys.readouterr()
    missing = tmp_path / "missing.py"
    missing.write_text("def something_else():\n    pass\n")
    assert main(["check", "5", str(missing), "--gradescope", str(tmp_path / "missing.json")]) == 2
    grade = json.loads((tmp_path / "missing.json").read_text())  # the student still reads why
    assert grade["score"] == 0 and "has no function make_timesteps" in grade["output"]
    assert "has no function make_timesteps" in capsys.readouterr().err
    assert main(["check", "5", str(right), "--gradescope", str(tmp_path)]) == 2  # a folder is not a file to write


def test_find_submission_takes_the_file_that_defines_the_function(tmp_path):
    (tmp_path / "notes.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.py").write_text(RIGHT)
    assert find_submission(tmp_path, "make_timesteps") == tmp_path / "sub" / "mine.py"
    (tmp_path / "sub" / "mine.py").write_text("import math\n")
    with pytest.raises(UsageError, match="no .py file .* defines make_timesteps"):
        find_submission(tmp_path, "make_timesteps")
    (tmp_path / "sub" / "mine.py").unlink()
    (tmp_path / "notes.py").write_text("def make_timesteps(:\n")  # the only file, broken: graded, so it says why
    assert find_submission(tmp_path, "make_timesteps") == tmp_path / "notes.py"


def _gradescope_root(tmp_path: Path, zip_path: Path, name: str, text: str) -> Path:
    """A folder laid out as Gradescope lays /autograder out: source/ (the zip), submission/, results/."""
    root = tmp_path / name
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(root / "source")
    (root / "submission").mkdir()
    (root / "submission" / "answer.py").write_text(text)
    (root / "submission" / "helpers.py").write_text("import math\n")
    (root / "results").mkdir()
    runner = root / "run_autograder"  # Gradescope copies it to /autograder/run_autograder
    runner.write_bytes((root / "source" / "run_autograder").read_bytes())
    runner.chmod(0o755)
    return root


def test_the_autograder_zip_grades_a_right_and_a_wrong_submission(tmp_path, capsys):
    assert main(["autograder", "5", "--out", str(tmp_path / "ag.zip")]) == 0
    assert "wrote" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "ag.zip") as zf:
        names = set(zf.namelist())
        modes = {i.filename: i.external_attr >> 16 for i in zf.infolist()}
        setup = zf.read("setup.sh").decode()
    assert {"setup.sh", "run_autograder", "pyproject.toml", "README.md", "minidiff/__init__.py",
            "minidiff/course/runner.py", "minidiff/samplers.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert modes["setup.sh"] & 0o111 and modes["run_autograder"] & 0o111
    assert "pip install" in setup and "git" not in setup  # installs the source it carries
    n = len(EXERCISES[5].checks)
    env = {**os.environ, "MINIDIFF_PYTHON": sys.executable}
    scores = {}
    for name, text in (("right", RIGHT), ("wrong", WRONG)):
        root = _gradescope_root(tmp_path, tmp_path / "ag.zip", name, text)
        done = subprocess.run([str(root / "run_autograder")], env={**env, "MINIDIFF_AUTOGRADER_ROOT": str(root)},
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        grade = json.loads((root / "results" / "results.json").read_text())
        assert grade["max_score"] == n == len(grade["tests"]), grade
        scores[name] = grade
    assert scores["right"]["score"] == n
    assert scores["wrong"]["score"] < n and any(WRONG_HINT in t["output"] for t in scores["wrong"]["tests"])


def test_the_autograder_refuses_bad_paths(tmp_path, capsys):
    import minidiff

    inside = Path(minidiff.__file__).resolve().parent / "course" / "ag.zip"
    assert main(["autograder", "5", "--out", str(inside)]) == 2 and not inside.exists()
    assert "inside minidiff's source" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["autograder", "5", "--out", str(tmp_path / "file" / "ag.zip")]) == 2
    assert main(["autograder", "5", "--out", str(tmp_path / "ag.tar")]) == 2
    assert main(["autograder", "99"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err
    assert main(["autograder", "5", "--out", str(tmp_path)]) == 0  # a folder: the default name inside it
    assert (tmp_path / "minidiff_autograder_ex05.zip").is_file()
