"""Problem set 2 (issue 43): conditioning, guidance and the paper's fixes. The solution's functions pass
every checked part, planted mistakes fail their part with the hint that names them, the conditional
loss's own mistakes get theirs, the notebook grades in a fresh kernel (the starter 0 with no
traceback; the solution every check's points at a tiny budget) and the Gradescope zip builds and, slow,
grades a submission."""

import json
import math
import sys
from functools import partial

import pytest
import torch

from minidiff.course import set2
from minidiff.course.__main__ import main
from minidiff.course.core import check_function
from minidiff.course.grading import band_points, check_part
from minidiff.course.sets import SETS, notebook_name

SOLUTION = (set2.S2_ZSNR, set2.S2_TIMESTEPS, set2.S2_COND_LOSS, set2.S2_CFG)


def namespace(*replace):
    ns = {"torch": torch, "math": math}
    for code in SOLUTION:
        for old, new in replace:
            code = code.replace(old, new)
        exec(code, ns)
    return ns


def test_both_sets_are_listed(capsys):
    assert main(["sets"]) == 0
    out = capsys.readouterr().out
    assert "set 1: DDPM from scratch" in out and "set 2: Conditioning, guidance and the paper's fixes" in out
    assert "part 7. Train both ways: the brightness effect" in out and out.count("CPU-minutes") == 4
    ps = SETS[2]
    assert ps.total == 100 and [p.measure for p in ps.parts if p.trained] == ["accuracy", "fcd", "brightness_gain"]


@pytest.mark.parametrize("key", ["1", "2", "3", "4"])
def test_the_solution_passes_every_checked_part(key, one_thread):
    results = check_part(2, key, namespace(), quiet=True, time_limit=None)
    assert results and all(r.passed for r in results), [r.line() for r in results if not r.passed]


PLANTED = [  # (part, the mistake planted in the solution's text, words of the hint)
    ("1", ("    return new", "    return betas"), "the rescale was not applied"),
    ("1", [("root = torch.cumprod(1 - betas, 0).sqrt()", "root = torch.cumprod(1 - betas, 0)"), ("ab = root ** 2", "ab = root")],
     "applied to alpha_bar, not to sqrt(alpha_bar)"),
    ("2", ("one_indexed = [round(Fraction(T * (S - k), S)) for k in range(S)]",
           "one_indexed = [1 + k * (T // S) for k in range(S)]"), "only trailing starts where training ends"),
    ("3", ("dropped = torch.rand(B, generator=generator) < p_uncond", "dropped = torch.rand(B, generator=generator) > 2"),
     "never dropped"),
    ("3", ('goal = noise if prediction == "eps" else', 'goal = noise if prediction == "v" else'), "the target is eps"),
    ("4", ("guided = uncond + scale * (cond - uncond)", "guided = cond + scale * (cond - uncond)"), "guidance starts from cond"),
    ("4", ("dims = tuple(range(1, cond.ndim))", "dims = tuple(range(0, cond.ndim))"), "whole batch"),
]


@pytest.mark.parametrize("part,replace,words", PLANTED)
def test_a_planted_mistake_fails_its_part_with_its_hint(part, replace, words, one_thread):
    replace = replace if isinstance(replace, list) else [replace]
    assert all(old in "\n".join(SOLUTION) for old, _ in replace), replace
    failures = [r for r in check_part(2, part, namespace(*replace), quiet=True, time_limit=None) if not r.passed]
    assert failures and any(words in r.message for r in failures), [r.line() for r in failures]


COND_MISTAKES = [(dict(drop="never"), "never dropped"), (dict(drop="inverted"), "dropped where they should be kept"),
                 (dict(drop="zero"), "class 0, a real class"), (dict(order="mask first"), "drawn before t and the noise"),
                 (dict(target="eps"), "the target is eps"), (dict(target="-v"), "sign of v"), (dict(target="x0"), "the target is x0")]


@pytest.mark.parametrize("kw,words", COND_MISTAKES)
def test_the_conditional_loss_mistakes_get_their_hints(kw, words, one_thread):
    failures = [r for r in check_function(set2.COND_LOSS, partial(set2.variant_cond_loss, **kw)) if not r.passed]
    assert failures and any(words in r.message for r in failures), [r.line() for r in failures]
    assert all(r.passed for r in check_function(set2.COND_LOSS, set2.reference_cond_loss))
    assert all(r.passed for r in check_function(set2.COND_LOSS, set2.variant_cond_loss))  # no mistake: the reference


def test_a_float64_std_in_the_rescale_is_not_blamed(one_thread):
    """minidiff's cfg takes its stds in float32; a student's float64 std agrees to that precision."""
    results = check_function(set2.SET2.parts[3].functions[0], namespace()["cfg"])
    assert all(r.passed for r in results), [r.line() for r in results if not r.passed]


def test_the_band_reads_higher_as_better_when_full_is_above_zero():
    band = dict(full=0.8, zero=0.4)
    assert band_points(0.9, band, 15) == 15 and band_points(0.6, band, 15) == 7.5 and band_points(0.3, band, 15) == 0
    assert band_points(math.nan, band, 15) == 0
    for part in (p for p in SETS[2].parts if p.trained):
        assert part.band and part.band["full"] != part.band["zero"]


def test_the_band_script_plants_set_2s_mistakes(one_thread):
    from minidiff.course.set_bands import MISTAKES2, solution
    right = solution(None, 2)
    assert set(right) >= set(SETS[2].needed)
    for mistake in MISTAKES2:
        fns = solution(mistake, 2)
        assert any(fns[k].__code__.co_code != right[k].__code__.co_code or fns[k].__code__.co_consts != right[k].__code__.co_consts
                   for k in fns), mistake


def test_the_training_runs_both_setups_at_a_tiny_budget(one_thread):
    """3 steps a model, 20 samples: both runs finite, the flawed one on leading steps and eps, the measures there."""
    from minidiff.course.set2_training import SETUPS, train_and_draw
    fns = {k: namespace()[k] for k in SETS[2].needed}
    r = train_and_draw(fns, steps=3, samples=20, score=False)
    assert set(r["runs"]) == {"flawed", "fixed"} and all(run["finite"] for run in r["runs"].values())
    assert r["images"].shape == (20, 3, 16, 16) and len(r["losses"]) == 3
    assert SETUPS["flawed"]["spacing"] == "leading" and SETUPS["fixed"]["prediction"] == "v"
    assert abs(r["brightness_gain"] - (r["brightness_ratio_fixed"] - r["brightness_ratio_flawed"])) < 1e-3


def test_the_shapes_scorer_tells_real_shapes_from_noise(one_thread):
    from minidiff.course.scorer import SHAPES_WEIGHTS, shapes_scorer
    from minidiff.training.data import builtin_shapes
    assert SHAPES_WEIGHTS.is_file() and SHAPES_WEIGHTS.stat().st_size < 400_000
    scorer = shapes_scorer()
    real = builtin_shapes(300, seed=2, resolution=16)
    noise = torch.randint(0, 256, (300, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    _, pred = scorer.features(real.images)
    assert float((pred == real.labels).double().mean()) > 0.9 and scorer.info["test_accuracy"] > 0.9
    assert scorer.score(noise)["fcd"] > 10 * scorer.score(real.images)["fcd"]


def test_set_2_writes_its_notebooks(tmp_path):
    import nbformat
    assert main(["set", "2", "--dir", str(tmp_path)]) == 0
    assert main(["set", "2", "--dir", str(tmp_path), "--solution"]) == 0
    starter = nbformat.read(tmp_path / notebook_name(2), as_version=4)
    solution = nbformat.read(tmp_path / notebook_name(2, True), as_version=4)
    text = "\n".join(c.source for c in starter.cells)
    assert 'raise NotImplementedError("write cond_loss")' in text and "Answer (for teachers)" not in text
    assert "Answer (for teachers)" in "\n".join(c.source for c in solution.cells)


@pytest.fixture
def grading_env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MINIDIFF_GRADE_THREADS", "1")
    monkeypatch.setenv("MINIDIFF_SET_SAMPLES", "20")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")


def test_the_starter_grades_zero_with_no_traceback(tmp_path, grading_env, capsys):
    assert main(["set", "2", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["grade", "2", str(tmp_path / notebook_name(2)), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["score"] == 0 and report["total"] == 100 and not report["errors"]
    assert all(p["points"] == 0 for p in report["parts"]) and "Traceback" not in json.dumps(report)
    assert [p["part"] for p in report["parts"]] == ["1", "2", "3", "4", "5", "6", "7"]
    assert any("not trained" in m for m in report["parts"][-1]["messages"])


def test_the_solution_grades_every_check_and_trains_at_a_tiny_budget(tmp_path, grading_env, capsys):
    """(About 10 s.) In a fresh kernel, 2 steps a model and 20 samples: every check's points, the three trained parts
    scored, the figures in the JSON, Gradescope's results.json with a test a part."""
    assert main(["set", "2", "--dir", str(tmp_path), "--solution"]) == 0
    capsys.readouterr()
    out = tmp_path / "results.json"
    main(["grade", "2", str(tmp_path / notebook_name(2, True)), "--json", "--steps", "2", "--gradescope", str(out)])
    report = json.loads(capsys.readouterr().out)
    checked = [p for p in report["parts"] if p["part"] in "1234"]
    assert all(p["points"] == p["max_points"] for p in checked), checked
    trained = report["trained"]
    assert trained["steps"] == 2 and {"accuracy", "fcd", "brightness_gain"} <= set(trained) and not report["errors"]
    assert set(report["figures"]) == {"samples.png", "brightness.png", "loss.png"}
    assert len(json.loads(out.read_text())["tests"]) == 7


def test_the_set_2_autograder_zip_carries_the_shapes_scorer_and_no_images(tmp_path):
    import zipfile
    assert main(["autograder", "--set", "2", "--out", str(tmp_path / "set2.zip")]) == 0
    names = set(zipfile.ZipFile(tmp_path / "set2.zip").namelist())
    assert {"setup.sh", "run_autograder", "minidiff/course/weights/shapes16_scorer.pt", "minidiff/course/set2.py"} <= names
    assert not any(n.startswith("data/") for n in names)
    assert "minidiff course grade 2" in zipfile.ZipFile(tmp_path / "set2.zip").read("run_autograder").decode()


@pytest.mark.slow
def test_the_set_2_autograder_grades_a_submission_and_writes_results(tmp_path, grading_env):
    import os
    import subprocess
    import zipfile
    assert main(["autograder", "--set", "2", "--out", str(tmp_path / "set2.zip")]) == 0
    zipfile.ZipFile(tmp_path / "set2.zip").extractall(tmp_path / "source")
    assert main(["set", "2", "--dir", str(tmp_path / "root" / "submission"), "--solution"]) == 0
    env = {**os.environ, "MINIDIFF_AUTOGRADER_ROOT": str(tmp_path / "root"), "MINIDIFF_PYTHON": sys.executable,
           "MINIDIFF_SET_STEPS": "2"}
    subprocess.run(["bash", str(tmp_path / "source" / "run_autograder")], env=env, check=True, capture_output=True)
    results = json.loads((tmp_path / "root" / "results" / "results.json").read_text())
    assert results["max_score"] == 100 and len(results["tests"]) == 7 and results["score"] >= 50


def test_the_brightness_counts_only_when_the_samples_are_shapes(tmp_path, monkeypatch, one_thread):
    """Part 7 is gated on part 6: a gain measured on samples that score no quality points gets none."""
    from minidiff.course import set2_training
    from minidiff.course.grading import grade_here
    canned = dict(steps=2000, samples=500, train_seconds=1.0, sample_seconds=1.0, accuracy=0.9, brightness_gain=0.2)
    monkeypatch.setattr(set2_training, "figures", lambda result: {})
    for fcd, brightness_points in ((10.0, 20), (80.0, 0)):
        monkeypatch.setattr(set2_training, "train_and_draw", lambda fns, **kw: dict(canned, fcd=fcd))
        report = grade_here(2, namespace(), str(tmp_path / "grade.json"))
        points = {p["part"]: p["points"] for p in report["parts"]}
        assert points["5"] == 15 and points["7"] == brightness_points, report["parts"]
