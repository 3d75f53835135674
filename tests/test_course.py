"""The checks are checked: minidiff's own function passes every exercise, and typical mistakes
(mutants written here, independently of the checker's own list) each fail with the hint meant for
them. Plus the command: start, an empty body, a function that raises, loops or is missing, --json, run."""

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minidiff import guidance, objectives, samplers, schedules, solvers
from minidiff.course import check
from minidiff.course.__main__ import main, starter_name
from minidiff.course.core import UsageError, check_function
from minidiff.course.exercises import EXERCISES

sqrt = math.sqrt


# ---------------------------------------------------------------- mutants: (mistake, hint it must get)

def _ab(betas):
    return torch.cumprod(1 - betas, 0)


def _betas(ab):
    return 1 - torch.cat([ab[:1], ab[1:] / ab[:-1]])


def _rescale_ab_space(betas):
    ab = _ab(betas)
    return _betas((ab - ab[-1]) * ab[0] / (ab[0] - ab[-1]))


def _rescale_alphas(betas):
    al = 1 - betas
    return 1 - (al - al[-1]) * al[0] / (al[0] - al[-1])


def _rescale_shift_only(betas):
    s = _ab(betas).sqrt()
    return _betas((s - s[-1]) ** 2)


def _alphas_cumprod_sd_linear(kind, T=1000):
    if kind == "scaled_linear":
        return _ab(torch.linspace(0.00085, 0.012, T, dtype=torch.float64))
    return schedules.alphas_cumprod(schedules.make_betas(kind, T))


def _trailing_one_indexed(T, S, spacing):
    steps = samplers.make_timesteps(T, S, spacing)
    return steps + 1 if spacing == "trailing" else steps


def _linspace_floor(T, S, spacing):
    if spacing == "linspace" and S > 1:
        return torch.linspace(0, T - 1, S, dtype=torch.float64).floor().long().flip(0)
    return samplers.make_timesteps(T, S, spacing)


def _dpm(correction):
    def step(x_t, x0, x0_prev, ab_t, ab_s, ab_prev):
        lam = solvers.half_log_snr
        h, h_prev = lam(ab_s) - lam(ab_t), lam(ab_t) - lam(ab_prev)
        return solvers.first_order_step(x_t, x0 + correction(h, h_prev) * (x0 - x0_prev), ab_t, ab_s)
    return step


def _cfg_batch_std(cond, uncond, w, phi=0.0):
    g = uncond + w * (cond - uncond)
    return phi * g * cond.std() / g.std() + (1 - phi) * g if phi else g


def _dilated(knot_of, slope=2.0):
    def tau(t, kind, d, kappa=3.0):
        k = knot_of(kind, d, kappa)
        return torch.where(t <= 0.5, slope * k * t, k + (1 - k) * (2 * t - 1))
    return tau


def _velocity(x0_of, eps_of):
    """A u -> (x0, eps) conversion built from (x^flow, s, sqrt(1 - a), u) -> x0 and -> eps."""
    def fn(u, x_t, a):
        a = torch.as_tensor(a, dtype=x_t.dtype)
        sa, s1a = a.sqrt(), (1 - a).sqrt()
        xf, s = x_t / (sa + s1a), s1a / (sa + s1a)
        return x0_of(xf, s, s1a, u, x_t), eps_of(xf, s, s1a, u, x_t)
    return fn


MUTANTS = {
    1: [(lambda x0, ab, n: ab * x0 + (1 - ab) * n, "need square roots"),
        (lambda x0, ab, n: (1 - ab) ** 0.5 * x0 + ab**0.5 * n, "swapped"),
        (lambda x0, ab, n: ab**0.5 * x0 + (1 - ab**0.5) * n, "1 - sqrt(alpha_bar)"),
        (lambda x0, ab, n: objectives.q_sample(x0.double(), ab, n.double()), "expected float32")],
    2: [(_alphas_cumprod_sd_linear, "linear in sqrt(beta)"),
        (lambda k, T=1000: schedules.alphas_cumprod(schedules.make_betas(k, T, cosine_clip=None)), "not clipped at 0.999"),
        (lambda k, T=1000: torch.cat([torch.ones(1, dtype=torch.float64), _ab(schedules.make_betas(k, T))[:-1]]), "shifted by one"),
        (lambda k, T=1000: _ab(schedules.make_betas(k, T).float()), "keep schedules in float64")],
    3: [(lambda b: b.clone(), "the rescale was not applied"),
        (_rescale_ab_space, "applied to alpha_bar, not to sqrt(alpha_bar)"),
        (_rescale_alphas, "applied to alpha = 1 - beta"),
        (_rescale_shift_only, "the first alpha_bar changed")],
    4: [(lambda p, o, x, a: (a**0.5 * x + (1 - a) ** 0.5 * o, a**0.5 * o + (1 - a) ** 0.5 * x) if p == "v"
         else objectives.to_x0_eps(p, o, x, a), "sign of v"),
        (lambda p, o, x, a: ((x - (1 - a) ** 0.5 * o) / a, o) if p == "eps" else objectives.to_x0_eps(p, o, x, a),
         "not alpha_bar"),
        (lambda p, o, x, a: ((x - (1 - a) ** 0.5 * o) / a**0.5, o) if p == "eps" else objectives.to_x0_eps(p, o, x, a),
         "must raise ValueError"),
        (lambda p, o, x, a: (a * x - (1 - a) * o, a * o + (1 - a) * x) if p == "v" else objectives.to_x0_eps(p, o, x, a),
         "need square roots")],
    5: [(_trailing_one_indexed, "Table 2's trailing rule counts from T"),
        (lambda T, S, sp: samplers.make_timesteps(T, S, sp).flip(0), "ascending order"),
        (_linspace_floor, "rounded down"),
        (lambda T, S, sp: samplers.make_timesteps(T, S, sp) + (1 if sp == "leading" else 0), "leading rule starts at 1")],
    6: [(lambda x, x0, e, a, ap: ap**0.5 * (x - (1 - a) ** 0.5 * e) / a**0.5 + (1 - ap) ** 0.5 * e, "divided by sqrt(alpha_bar_t)"),
        (lambda x, x0, e, a, ap: ap * x0 + (1 - ap) * e, "need square roots"),
        (lambda x, x0, e, a, ap: a**0.5 * x0 + (1 - a) ** 0.5 * e, "must use alpha_bar_prev"),
        (lambda x, x0, e, a, ap: ap**0.5 * x0 + (1 - a) ** 0.5 * e, "keeps alpha_bar_t's coefficient")],
    7: [(lambda x, a, m, v: m + a * v / (a * v + 1 - a) * (x - a**0.5 * m), "sqrt(alpha_bar) in front"),
        (lambda x, a, m, v: m + a**0.5 * v / (a * v + 1 - a) * (x - m), "not mu"),
        (lambda x, a, m, v: m + a**0.5 * v / (v + 1 - a) * (x - a**0.5 * m), "the denominator")],
    8: [(lambda c, u, w, phi=0.0: guidance.cfg(u, c, w, phi), "wrong branch"),
        (_cfg_batch_std, "whole batch"),
        (lambda c, u, w, phi=0.0: (lambda g: phi * g * g.std((1,), keepdim=True) / c.std((1,), keepdim=True) + (1 - phi) * g)(u + w * (c - u))
         if c.ndim == 2 else guidance.cfg(c, u, w, phi), "upside down"),
        (lambda c, u, w, phi=0.0: guidance.cfg(c, u, w, 1 - phi) if phi not in (0.0, 1.0) else guidance.cfg(c, u, w, phi),
         "mixes the wrong way")],
    9: [(lambda x_t, x0, x0_prev, ab_t, ab_s, ab_prev: solvers.first_order_step(x_t, x0, ab_t, ab_s), "not second order"),
        (_dpm(lambda h, hp: -h / (2 * hp)), "wrong sign"),
        (_dpm(lambda h, hp: h / hp), "misses the 1/2"), (_dpm(lambda h, hp: hp / (2 * h)), "upside down")],
    15: [(_velocity(lambda xf, s, s1a, u, x: xf + s * u, lambda xf, s, s1a, u, x: xf - (1 - s) * u), "sign of u"),
         (_velocity(lambda xf, s, s1a, u, x: x - s * u, lambda xf, s, s1a, u, x: x + (1 - s) * u), "VP state"),
         (_velocity(lambda xf, s, s1a, u, x: xf - s1a * u, lambda xf, s, s1a, u, x: xf + (1 - s) * u), "flow's time"),
         (_velocity(lambda xf, s, s1a, u, x: xf - s * u, lambda xf, s, s1a, u, x: xf + s * u), "share 1 - s")],
    16: [(lambda x, i, m, a, n: m * (sqrt(a) * i + sqrt(1 - a) * n) + (1 - m) * x, "mask is inverted"),
         (lambda x, i, m, a, n: m * x + (1 - m) * (a * i + (1 - a) * n), "need square roots"),
         (lambda x, i, m, a, n: m * x + (1 - m) * sqrt(a) * i, "miss their noise"),
         (lambda x, i, m, a, n: torch.where(m == 1, x, i), "init itself, clean"),
         (lambda x, i, m, a, n: m * x + (1 - m) * sqrt(a) * i + sqrt(1 - a) * n, "added to every pixel"),
         (lambda x, i, m, a, n: x.mul_(m).add_((1 - m) * (sqrt(a) * i + sqrt(1 - a) * n)), "in place")],
    10: [(lambda k, tau, a, z: (a.shape[-1] if k == "ve" else 1) * (1 - tau) * z + tau * a, "not by d"),
         (lambda k, tau, a, z: (a.shape[-1] ** 0.5 if k == "ve" else 1) * tau * z + (1 - tau) * a, "swapped"),
         (lambda k, tau, a, z: (1 - tau) * z + (a.shape[-1] ** 0.5 if k == "ve" else 1) * tau * a, "belongs to the noise"),
         (lambda k, tau, a, z: (1 - tau) * z + tau * a, "written as VP")],
    11: [(_dilated(lambda k, d, kp: kp / d if k == "vp" else 1 - kp / d), "not kappa / d"),
         (_dilated(lambda k, d, kp: 1 - kp / d**0.5 if k == "vp" else kp / d**0.5), "swapped"),
         (_dilated(lambda k, d, kp: kp / d**0.5 if k == "vp" else 1 - kp / d**0.5, slope=1.0), "slope is 2 * knot"),
         (lambda t, k, d, kappa=3.0: t.clone(), "uniform schedule")],
}
def test_at_least_ten_exercises_across_both_papers():
    assert len(EXERCISES) >= 10
    papers = {ex.paper for ex in EXERCISES.values()}
    assert any("Lin" in p for p in papers) and any("Aranguri" in p for p in papers)
    assert all(len(MUTANTS[n]) >= 3 for n in EXERCISES if n not in (12, 13, 14))  # 12-14's: test_course_training.py


@pytest.mark.parametrize("number", sorted(EXERCISES))
def test_minidiff_passes_its_own_exercise(number, one_thread):
    ex = EXERCISES[number]
    results = check_function(ex, ex.reference)
    assert all(r.passed for r in results), [r.line() for r in results if not r.passed]


@pytest.mark.parametrize("number,index", [(n, i) for n in sorted(MUTANTS) for i in range(len(MUTANTS[n]))])
def test_each_mistake_fails_with_its_hint(number, index, one_thread):
    mutant, hint = MUTANTS[number][index]
    failures = [r for r in check_function(EXERCISES[number], mutant) if not r.passed]
    assert failures, "the mutant passed every check"
    assert any(hint in r.message for r in failures), [r.line() for r in failures]
    assert not any("your function raised" in r.message for r in failures[:1]), failures[0].line()


# ---------------------------------------------------------------- the command


def test_list_shows_every_exercise(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(ex.function in out for ex in EXERCISES.values()) and "Aranguri" in out


def test_start_then_empty_body_says_not_written(tmp_path, capsys):
    assert main(["start", "3", "--dir", str(tmp_path)]) == 0
    path = tmp_path / starter_name(3)
    text = path.read_text()
    assert "def rescale_zero_terminal_snr(betas):" in text and "NotImplementedError" in text
    path.write_text(text + "\n")  # start never overwrites
    assert main(["start", "3", "--dir", str(tmp_path)]) == 0 and path.read_text() == text + "\n"
    capsys.readouterr()
    assert main(["check", "3", str(path)]) == 1
    out = capsys.readouterr().out
    assert "not written yet" in out and "Traceback" not in out
    path.write_text(text.replace('raise NotImplementedError("exercise 3: write this function")', "..."))
    assert main(["check", "3", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] == 0 and all("not written yet" in c["message"] for c in report["checks"])


def test_raising_looping_and_missing_functions_get_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def ddim_step(x_t, x0, eps, ab_t, ab_prev):\n    while True:\n        pass\n")
    assert main(["check", "6", str(bad), "--time-limit", "2"]) == 1
    out = capsys.readouterr().out
    assert "did not finish within 2 s" in out and "SKIP" in out and "Traceback" not in out
    bad.write_text("def ddim_step(x_t, x0, eps, ab_t, ab_prev):\n    return x_t[:1] + undefined_name\n")
    assert main(["check", "6", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "your function raised NameError" in out and "line 2 of your file" in out
    bad.write_text("def something_else():\n    pass\n")
    assert main(["check", "6", str(bad)]) == 2
    assert "has no function ddim_step" in capsys.readouterr().err
    assert main(["check", "99", str(bad)]) == 2
    assert main(["check", "6", str(tmp_path / "missing.py")]) == 2


def test_json_of_a_correct_file_scores_one(tmp_path, capsys):
    good = tmp_path / "good.py"
    good.write_text("from minidiff.samplers import make_timesteps as _m\n\n"
                    "def make_timesteps(num_train_timesteps, num_steps, spacing):\n"
                    "    return _m(num_train_timesteps, num_steps, spacing)\n")
    assert main(["check", "5", str(good), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["score"] == 1.0 and report["total"] == len(EXERCISES[5].checks)


def test_run_command_writes_the_figure(tmp_path, capsys):
    good = tmp_path / "good.py"
    good.write_text("from minidiff.schedules import rescale_zero_terminal_snr\n")
    assert main(["run", "3", str(good), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "leakage.png").exists() and "r^2 = 0.000" in capsys.readouterr().out


@pytest.mark.parametrize("number", sorted(EXERCISES))
def test_every_run_writes_a_figure(number, tmp_path, one_thread):
    ex = EXERCISES[number]
    lines = ex.run(ex.reference, tmp_path, True)
    assert any(line.startswith("wrote") for line in lines) and list(tmp_path.glob("*.png"))


# ---------------------------------------------------------------- the course's layers and its Python entry


COURSE = Path(__file__).resolve().parents[1] / "minidiff" / "course"


def course_imports(path: Path) -> set[str]:
    """The course modules a file imports anywhere (relative, `from . import x`, or absolute)."""
    names = {p.stem for p in COURSE.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 or (node.level == 0 and module.startswith("minidiff.course")):
                rest = module.removeprefix("minidiff.course").lstrip(".") if node.level == 0 else module
                first = rest.split(".")[0]
                found |= {first} if first else {a.name for a in node.names if a.name in names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names
                      if a.name.startswith("minidiff.course.") and len(a.name.split(".")) > 2}
    return found & names


def test_course_imports_run_one_way():
    """core.py depends on nothing in the course; the exercise modules on core.py alone; only the
    runner, the command and the notebook writer reach the list (issue 30: the circle core -> exercises -> ex_* -> core)."""
    assert course_imports(COURSE / "core.py") == set()
    for path in COURSE.glob("ex_*.py"):
        assert course_imports(path) == {"core"}, path.name
    assert course_imports(COURSE / "exercises.py") >= {"ex_schedules", "ex_sampling", "ex_guidance", "ex_highdim"}
    assert "exercises" in course_imports(COURSE / "runner.py") and "core" in course_imports(COURSE / "runner.py")
    users = {p.stem for p in COURSE.glob("*.py") if "exercises" in course_imports(p) or "runner" in course_imports(p)}
    assert users <= {"runner", "__main__", "__init__", "notebook", "sets", "set2", "grading"}, users  # set2: set 2's parts
    assert course_imports(COURSE / "parts.py") <= {"core", "ex_training"}  # problem set 1's two loops


def test_importing_the_course_core_loads_no_exercise():
    code = ("import sys, minidiff.course.core\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('minidiff.course.') and m != 'minidiff.course.core')\n"
            "assert not loaded, loaded\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_check_in_python_grades_a_function(capsys, one_thread):
    results = check(5, samplers.make_timesteps)
    assert results and all(r.passed for r in results)
    out = capsys.readouterr().out
    assert f"{len(results)}/{len(results)} checks pass" in out and "PASS" in out
    mutant, hint = MUTANTS[5][0]
    failed = [r for r in check(5, mutant, quiet=True) if not r.passed]
    assert failed and any(hint in r.message for r in failed) and capsys.readouterr().out == ""
    with pytest.raises(UsageError, match="no exercise 99"):
        check(99, mutant)


def test_the_command_calls_itself_minidiff_course(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: minidiff course") and "python -m" not in out.split("\n")[0]
