"""Problem sets (issue 43): `minidiff course sets | set N | grade N NOTEBOOK`. The solution's functions
pass every part's checks, planted mistakes fail their part with the hint that names them, the two
new loops' mistakes get theirs, and the notebooks grade in a fresh kernel: the starter 0 with no
traceback, the solution every check's points at a tiny training budget (the band is set at the full
budget: docs/exercises/problem_sets.md)."""

import json
import math
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from minidiff.course.__main__ import main
from minidiff.course.core import check_function
from minidiff.course.grading import band_points, check_part
from minidiff.course.parts import (DDPM_SAMPLE, TRAIN_LOOP, reference_ddpm_sample, reference_train_loop,
                                   variant_ddpm_sample, variant_train_loop)
from minidiff.course.sets import S1_ALPHAS, S1_LOOP, S1_LOSS, S1_Q_SAMPLE, S1_SAMPLERS, SETS, notebook_name

DOCS = Path(__file__).resolve().parents[1] / "docs" / "exercises"
SOLUTION = (S1_Q_SAMPLE, S1_ALPHAS, S1_LOSS, S1_LOOP, S1_SAMPLERS)


def namespace(*replace):
    """The solution's cells run in one namespace, with (old, new) text replacements: a planted mistake."""
    ns = {"torch": torch, "math": math}
    for code in SOLUTION:
        for old, new in replace:
            code = code.replace(old, new)
        exec(code, ns)
    return ns


def test_the_sets_are_listed(capsys):
    assert main(["sets"]) == 0
    out = capsys.readouterr().out
    assert "set 1: DDPM from scratch" in out and "part 6. Train and draw" in out and "CPU-minutes" in out
    assert all(ps.total == 100 for ps in SETS.values())


def test_set_writes_the_starter_and_the_solution_and_never_overwrites(tmp_path, capsys):
    import nbformat
    assert main(["set", "1", "--dir", str(tmp_path)]) == 0
    assert main(["set", "1", "--dir", str(tmp_path), "--solution"]) == 0
    starter = nbformat.read(tmp_path / notebook_name(1), as_version=4)
    solution = nbformat.read(tmp_path / notebook_name(1, True), as_version=4)
    nbformat.validate(starter), nbformat.validate(solution)
    text = "\n".join(c.source for c in starter.cells)
    assert "raise NotImplementedError" in text and "Answer (for teachers)" not in text
    solved = "\n".join(c.source for c in solution.cells)
    assert "NotImplementedError(\"write" not in solved and "Answer (for teachers)" in solved
    assert main(["set", "1", "--dir", str(tmp_path)]) == 2  # never overwrites the student's work
    assert main(["set", "9", "--dir", str(tmp_path)]) == 2
    assert "no problem set 9" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["1", "2", "3", "4", "5"])
def test_the_solution_passes_every_part(key, one_thread):
    results = check_part(1, key, namespace(), quiet=True, time_limit=None)
    assert results and all(r.passed for r in results), [r.line() for r in results if not r.passed]


PLANTED = [  # (part, the mistake planted in the solution's text, words of the hint)
    ("1", ("alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise", "alpha_bar * x0 + (1 - alpha_bar) * noise"),
     "a variance used as a std"),
    ("3", ("return ((model(x_t, t) - v) ** 2).mean()", "return ((model(x_t, t) - noise) ** 2).mean()"), "the target is eps"),
    ("3", (".view(-1, *[1] * (x0.ndim - 1))", ""), "has shape [B]"),
    ("4", ("        opt.zero_grad()\n", ""), "never cleared"),
    ("5", ("x0, eps = denoise(x, t)", "x0, eps = denoise(x, i)"), "the loop's index"),
    ("5", ("x_new = x_new + var ** 0.5 *", "x_new = x_new + var *"), "a variance used as a std"),
    ("5", ("a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0\n        x = a_prev",
           "a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else ab[0]\n        x = a_prev"), "not to alpha_bar = 1"),
]


@pytest.mark.parametrize("part,replace,words", PLANTED)
def test_a_planted_mistake_fails_its_part_with_its_hint(part, replace, words, one_thread):
    assert replace[0] in "\n".join(SOLUTION), replace[0]
    failures = [r for r in check_part(1, part, namespace(replace), quiet=True, time_limit=None) if not r.passed]
    assert failures and any(words in r.message for r in failures), [r.line() for r in failures]


LOOP_MISTAKES = [(TRAIN_LOOP, partial(variant_train_loop, zero_grad="never"), "never cleared"),
                 (TRAIN_LOOP, partial(variant_train_loop, zero_grad="after"), "between backward() and step()"),
                 (TRAIN_LOOP, partial(variant_train_loop, decay=False), "not decayed"),
                 (TRAIN_LOOP, partial(variant_train_loop, optimizer="sgd"), "plain SGD"),
                 (DDPM_SAMPLE, partial(variant_ddpm_sample, noise_scale="var"), "a variance used as a std"),
                 (DDPM_SAMPLE, partial(variant_ddpm_sample, deterministic=True), "fresh noise at every step")]


@pytest.mark.parametrize("ex,mutant,words", LOOP_MISTAKES)
def test_the_loops_mistakes_get_their_hints(ex, mutant, words, one_thread):
    failures = [r for r in check_function(ex, mutant) if not r.passed]
    assert failures and any(words in r.message for r in failures), [r.line() for r in failures]
    reference = reference_train_loop if ex is TRAIN_LOOP else reference_ddpm_sample
    assert ex.reference is reference and all(r.passed for r in check_function(ex, reference))


def test_the_band_gives_full_points_below_and_none_above():
    band = dict(full=10.0, zero=20.0)
    assert band_points(3.0, band, 30) == 30 and band_points(10.0, band, 30) == 30
    assert band_points(15.0, band, 30) == 15.0 and band_points(20.0, band, 30) == 0 and band_points(math.nan, band, 30) == 0
    assert SETS[1].band["full"] < SETS[1].band["zero"]


def test_the_packaged_scorer_tells_real_images_from_noise(one_thread):
    from minidiff.course.scorer import WEIGHTS, default_scorer
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 400_000
    scorer = default_scorer()
    noise = torch.randint(0, 256, (200, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert scorer.score(noise)["fcd"] > 40 and scorer.info["test_accuracy"] > 0.85


@pytest.fixture
def grading_env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MINIDIFF_GRADE_THREADS", "1")
    monkeypatch.setenv("MINIDIFF_SET_SAMPLES", "20")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")


def test_the_starter_grades_zero_with_no_traceback(tmp_path, grading_env, capsys):
    assert main(["set", "1", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["grade", "1", str(tmp_path / notebook_name(1)), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["score"] == 0 and report["total"] == 100 and not report["errors"]
    assert all(p["points"] == 0 for p in report["parts"]) and "Traceback" not in json.dumps(report)
    assert any("not written yet" in m for m in report["parts"][0]["messages"])
    assert main(["grade", "1", str(tmp_path / "missing.ipynb")]) == 2


def test_the_solution_grades_every_check_and_trains_at_a_tiny_budget(tmp_path, grading_env, capsys):
    """In a fresh kernel, 2 training steps and 20 samples: every check's points, the trained part
    scored (not within the band at 2 steps) and its figures in the JSON; --gradescope writes results.json."""
    assert main(["set", "1", "--dir", str(tmp_path), "--solution"]) == 0
    capsys.readouterr()
    out = tmp_path / "results.json"
    assert main(["grade", "1", str(tmp_path / notebook_name(1, True)), "--json", "--steps", "2",
                 "--gradescope", str(out)]) == 1
    report = json.loads(capsys.readouterr().out)
    checked = [p for p in report["parts"] if p["part"] != "6"]
    assert all(p["points"] == p["max_points"] for p in checked), checked
    assert report["trained"]["steps"] == 2 and report["trained"]["fcd"] > 0 and not report["errors"]
    assert set(report["figures"]) == {"samples.png", "loss.png"}
    gradescope = json.loads(out.read_text())
    assert gradescope["score"] == report["score"] and len(gradescope["tests"]) == 6


def test_the_set_autograder_zip_carries_the_scorer_and_the_training_images(tmp_path, capsys):
    import zipfile
    assert main(["autograder", "--set", "1", "--out", str(tmp_path / "set1.zip")]) == 0
    names = zipfile.ZipFile(tmp_path / "set1.zip").namelist()
    assert {"setup.sh", "run_autograder", "pyproject.toml", "minidiff/course/weights/fmnist_scorer.pt",
            "data/train-images-idx3-ubyte.gz", "data/train-labels-idx1-ubyte.gz"} <= set(names)
    script = zipfile.ZipFile(tmp_path / "set1.zip").read("run_autograder").decode()
    assert "minidiff course grade 1" in script and "--gradescope" in script
    assert main(["autograder"]) == 2


@pytest.mark.slow
def test_the_set_autograder_grades_a_submission_and_writes_results(tmp_path, grading_env):
    """run_autograder from the zip, this Python, 2 training steps: results/results.json with a test a part."""
    import subprocess
    import zipfile
    assert main(["autograder", "--set", "1", "--out", str(tmp_path / "set1.zip")]) == 0
    zipfile.ZipFile(tmp_path / "set1.zip").extractall(tmp_path / "source")
    assert main(["set", "1", "--dir", str(tmp_path / "root" / "submission"), "--solution"]) == 0
    env = {**__import__("os").environ, "MINIDIFF_AUTOGRADER_ROOT": str(tmp_path / "root"), "MINIDIFF_PYTHON": sys.executable,
           "MINIDIFF_SET_STEPS": "2"}
    subprocess.run(["bash", str(tmp_path / "source" / "run_autograder")], env=env, check=True, capture_output=True)
    results = json.loads((tmp_path / "root" / "results" / "results.json").read_text())
    assert results["max_score"] == 100 and len(results["tests"]) == 6 and results["score"] >= 70


def test_the_band_script_plants_each_mistake_in_the_solution(one_thread):
    from minidiff.course.set_bands import MISTAKES, solution
    right = solution()
    for mistake in MISTAKES:
        fns = solution(mistake)
        assert any(fns[k].__code__.co_code != right[k].__code__.co_code or fns[k].__code__.co_consts != right[k].__code__.co_consts
                   for k in fns), mistake
