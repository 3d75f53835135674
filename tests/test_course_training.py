"""Exercises 12-14 (the training step, the sampling loop, the brightness experiment) are checked:
minidiff's own function passes, typical mistakes (written here, independently of the checker's
list) each fail with the hint meant for them, the commands work on them, and their runs write
their figures (quick sizes here; exercise 12's full-size training run behind the slow marker)."""

import math
import re
from pathlib import Path

import pytest
import torch

from minidiff import samplers
from minidiff.course.__main__ import main, starter_name
from minidiff.course.core import check_function
from minidiff.course.exercises import EXERCISES

NEW = (12, 13, 14)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "exercises"


# ---------------------------------------------------------------- 12: mistakes in the v loss


def _loss(xt_coef=lambda a: (a.sqrt(), (1 - a).sqrt()), target=lambda a, x0, n: a.sqrt() * n - (1 - a).sqrt() * x0,
          reduce=lambda e: e.mean(), noise_first=False, cast=True, randn_like=False, detach=False):
    def v_loss(model, x0, alphas_cumprod, generator):
        T, B = len(alphas_cumprod), x0.shape[0]
        if noise_first:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        t = torch.randint(0, T, (B,), generator=generator)
        if not noise_first:
            noise = torch.randn_like(x0) if randn_like else torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        a = alphas_cumprod[t].view(B, *[1] * (x0.ndim - 1))
        a = a.to(x0.dtype) if cast else a
        c0, c1 = xt_coef(a)
        x_t = c0 * x0 + c1 * noise
        loss = reduce((model(x_t, t) - target(a, x0, noise)) ** 2)
        return torch.tensor(loss.item()) if detach else loss
    return v_loss


MUTANTS = {
    12: [(_loss(target=lambda a, x0, n: (1 - a).sqrt() * x0 - a.sqrt() * n), "sign of v is wrong"),
         (_loss(target=lambda a, x0, n: n), "the target is eps"),
         (_loss(reduce=lambda e: e.sum()), "summed, not averaged"),
         (_loss(xt_coef=lambda a: (a, 1 - a)), "x_t is built with a and 1 - a"),
         (_loss(noise_first=True), "noise was drawn before t"),
         (_loss(randn_like=True), "torch.randn_like takes no generator"),
         (_loss(cast=False), "cast alpha_bar to x0's dtype"),
         (_loss(detach=True), "carries no gradient")],
}


# ---------------------------------------------------------------- 13: mistakes in the sampling loop


def _loop(spacing="trailing", final="clean", swap=False, via_eps=False):
    def ddim_sample(denoise, x_T, alphas_cumprod, steps):
        T = len(alphas_cumprod)
        if spacing == "trailing":
            ts = [round(T - k * T / steps) - 1 for k in range(steps)]
        elif spacing == "leading":
            ts = list(range(0, T, T // steps))[::-1]
        else:
            ts = torch.linspace(0, T - 1, steps).round().long().flip(0).tolist()
        x = x_T
        pairs = list(zip(ts, ts[1:] + [None]))
        if final == "stop":
            pairs = pairs[:-1]
        for t, t_next in pairs:
            a = alphas_cumprod[t].item()
            a_prev = alphas_cumprod[t_next].item() if t_next is not None else (alphas_cumprod[0].item() if final == "ab0" else 1.0)
            if swap:
                eps, x0 = denoise(x, t)
            else:
                x0, eps = denoise(x, t)
            if via_eps:
                x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        return x
    return ddim_sample


MUTANTS[13] = [(_loop(spacing="leading"), "leading spacing"),
               (_loop(spacing="linspace"), "linspace"),
               (_loop(final="stop"), "still noisy"),
               (_loop(final="ab0"), "alphas_cumprod[0]"),
               (_loop(swap=True), "x0 and eps are swapped"),
               (_loop(via_eps=True), "never divide by sqrt(alpha_bar_t)")]


# ---------------------------------------------------------------- 14: mistakes in the settings


def _toggle(settings):
    out = dict(settings)
    out["zero_snr"] = not settings["zero_snr"]
    out["prediction"] = "v" if settings["prediction"] == "eps" else "eps"
    out["spacing"] = "trailing" if settings["spacing"] == "leading" else "leading"
    return out


def _in_place(settings):
    settings.update(zero_snr=True, prediction="v", spacing="trailing")
    return settings


MUTANTS[14] = [(lambda s: dict(s), "zero_snr=True"),
               (lambda s: {**s, "zero_snr": True, "prediction": "x0", "spacing": "trailing"}, "x0 prediction works at zero SNR"),
               (lambda s: {**s, "zero_snr": True, "prediction": "v", "spacing": "linspace"}, "linspace does start at T-1"),
               (lambda s: {**s, "zero_snr": True, "prediction": "v"}, "leading spacing is kept"),
               (lambda s: {**s, "zero_snr": True, "spacing": "trailing"}, "eps prediction is kept"),
               (_toggle, "do not flip"),
               (_in_place, "changed in place"),
               (lambda s: {**s, "zero_snr": True, "prediction": "v", "spacing": "trailing", "steps": 1000}, "number of steps stay")]


# ---------------------------------------------------------------- the checks are checked


def test_three_new_exercises_with_their_mistakes():
    assert set(NEW) <= set(EXERCISES) and len(EXERCISES) >= 14
    assert all(len(MUTANTS[n]) >= 3 and len(EXERCISES[n].checks) >= 5 for n in NEW)


@pytest.mark.parametrize("number", NEW)
def test_minidiff_passes_its_own_exercise(number, one_thread):
    ex = EXERCISES[number]
    results = check_function(ex, ex.reference)
    assert len(results) >= 5 and all(r.passed for r in results), [r.line() for r in results if not r.passed]


@pytest.mark.parametrize("number,index", [(n, i) for n in NEW for i in range(len(MUTANTS[n]))])
def test_each_mistake_fails_with_its_hint(number, index, one_thread):
    mutant, hint = MUTANTS[number][index]
    failures = [r for r in check_function(EXERCISES[number], mutant) if not r.passed]
    assert failures, "the mutant passed every check"
    assert any(hint in r.message for r in failures), [r.line() for r in failures]
    assert not any("your function raised" in r.message for r in failures), [r.line() for r in failures]


def test_the_handwritten_solutions_pass(one_thread):
    """The right answers written as a student would (no minidiff inside) pass every check."""
    for number, fn in ((12, _loss()), (13, _loop()), (14, lambda s: {**s, "zero_snr": True, "prediction": "v",
                                                                      "spacing": "trailing"})):
        results = check_function(EXERCISES[number], fn)
        assert all(r.passed for r in results), [r.line() for r in results if not r.passed]


def test_the_loss_check_is_the_papers_loss(one_thread):
    """Exercise 12's reference is minidiff's diffusion_loss, drawing t then the noise as the docstring says:
    a zero model's loss is the mean of v^2, and at alpha_bar = 0 (the zero-SNR last step) v = -x0."""
    from minidiff.course.ex_training import draw_t_noise, reference_v_loss
    from minidiff.schedules import Schedule
    x0 = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ab = Schedule.make("linear", 3, zero_snr=True).alphas_cumprod
    loss = reference_v_loss(lambda x, t, y=None: torch.zeros_like(x), x0, ab, torch.Generator().manual_seed(1))
    t, noise = draw_t_noise(x0, 3, 1)
    a = ab[t].float().view(-1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    assert torch.allclose(loss, (v**2).mean()) and (t == 2).any()
    assert torch.equal(v[t == 2], -x0[t == 2])


def test_the_loop_check_knows_the_exact_answer(one_thread):
    """Exercise 13's reference on the exact Gaussian denoiser has the moments gaussian_sampler_moments gives."""
    from minidiff.course.ex_training import ExactDenoiser, reference_ddim_sample
    from minidiff.exact.analytic import gaussian_sampler_moments
    from minidiff.schedules import Schedule
    s = Schedule.make("scaled_linear", zero_snr=True)
    mean, var = torch.tensor([0.5], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)
    x = reference_ddim_sample(ExactDenoiser(mean, var, s.alphas_cumprod), torch.tensor([[0.0], [1.0]], dtype=torch.float64),
                              s.alphas_cumprod, 20)
    m, v = gaussian_sampler_moments(var, mean, s, samplers.make_timesteps(1000, 20, "trailing"))
    assert torch.allclose(x[0], m) and torch.allclose((x[1] - x[0]) ** 2, v)


def test_the_fixes_are_the_papers(one_thread):
    from minidiff.course.ex_brightness import FIXES, FLAWED, brightness_std_ratio
    from minidiff.schedules import Schedule
    assert FIXES == dict(zero_snr=True, prediction="v", spacing="trailing")
    fixed = EXERCISES[14].reference(FLAWED)
    ratio = {name: brightness_std_ratio(Schedule.make(s["schedule"], zero_snr=s["zero_snr"]),
                                        samplers.make_timesteps(1000, 200, s["spacing"]))
             for name, s in (("flawed", FLAWED), ("fixed", fixed))}
    assert ratio["flawed"] < 0.5 and ratio["fixed"] > 0.95  # Lin et al.'s effect, exactly


# ---------------------------------------------------------------- the commands and the pages


def test_list_shows_the_three(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{n}. " in out and EXERCISES[n].function in out for n in NEW)


def test_every_exercise_has_its_page():
    for n, ex in EXERCISES.items():
        page = DOCS / f"{n:02d}_{ex.slug}.md"
        assert page.exists(), page
        text = page.read_text()
        assert f"Exercise {n}:" in text and ex.function in text
    for n in NEW:
        text = (DOCS / f"{n:02d}_{EXERCISES[n].slug}.md").read_text()
        assert all(name in text for name, _ in EXERCISES[n].checks), n
        course_page = re.search(r"Course page: \[[^\]]+\]\(([^)]+)\)", text).group(1)
        assert (DOCS / course_page).resolve() == (DOCS.parent / EXERCISES[n].page).resolve()


SOLUTIONS = {
    12: ("import torch\n\ndef v_loss(model, x0, alphas_cumprod, generator):\n"
         "    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator)\n"
         "    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
         "    a = alphas_cumprod[t].to(x0.dtype).view(-1, 1, 1, 1)\n"
         "    v = a.sqrt() * noise - (1 - a).sqrt() * x0\n"
         "    return ((model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t) - v) ** 2).mean()\n"),
    13: ("from minidiff.samplers import ddim_step, make_timesteps\n\n"
         "def ddim_sample(denoise, x_T, alphas_cumprod, steps):\n"
         "    ab, ts = alphas_cumprod.tolist(), make_timesteps(len(alphas_cumprod), steps, 'trailing').tolist()\n"
         "    x = x_T\n"
         "    for i, t in enumerate(ts):\n"
         "        x0, eps = denoise(x, t)\n"
         "        x = ddim_step(x, x0, eps, ab[t], ab[ts[i + 1]] if i + 1 < len(ts) else 1.0)\n"
         "    return x\n"),
    14: "def fix_settings(settings):\n    return {**settings, 'zero_snr': True, 'prediction': 'v', 'spacing': 'trailing'}\n",
}


@pytest.mark.parametrize("number", NEW)
def test_start_check_and_a_wrong_file(number, tmp_path, capsys):
    assert main(["start", str(number), "--dir", str(tmp_path)]) == 0
    path = tmp_path / starter_name(number)
    assert EXERCISES[number].signature in path.read_text()
    assert main(["check", str(number), str(path)]) == 1
    assert "not written yet" in capsys.readouterr().out
    path.write_text(SOLUTIONS[number])
    assert main(["check", str(number), str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(EXERCISES[number].checks)}/{len(EXERCISES[number].checks)} checks pass" in out


def test_run_command_on_the_brightness_experiment(tmp_path, capsys):
    path = tmp_path / "ex14.py"
    path.write_text(SOLUTIONS[14])
    assert main(["run", "14", str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "out" / "brightness.png").exists() and "refused" in out and "yours" in out


@pytest.mark.parametrize("number", NEW)
def test_quick_runs_write_their_figures(number, tmp_path, one_thread):
    ex = EXERCISES[number]
    lines = ex.run(ex.reference, tmp_path, True)
    assert any(line.startswith("wrote") for line in lines) and list(tmp_path.glob("*.png")), lines
    if number == 12:
        assert (tmp_path / "model.pt").exists() and (tmp_path / "training.png").exists()


def test_the_sampling_run_uses_a_checkpoint(tmp_path, one_thread):
    """Exercise 13's run samples the model exercise 12's run saved, and the student's loop draws what minidiff's does."""
    from minidiff.course.experiments_training import run_sampling, run_training
    run_training(EXERCISES[12].reference, tmp_path / "12", True)
    lines = run_sampling(EXERCISES[13].reference, tmp_path / "13", True, checkpoint=tmp_path / "12" / "model.pt")
    assert lines[0].startswith("the model of") and "difference from minidiff's DDIM on the same x_T: 0.00e+00" in lines[1]


@pytest.mark.slow
def test_the_full_training_run_draws_shapes_in_five_minutes(tmp_path, one_thread):
    """The default run of exercise 12: the small model on the built-in shapes within the course's run limit;
    the samples cover the data's brightness range (W1 below 0.15) and the loss falls."""
    import time
    start = time.perf_counter()
    lines = EXERCISES[12].run(EXERCISES[12].reference, tmp_path, False)
    assert time.perf_counter() - start < 300
    loss_from, loss_to = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", lines[0]).groups())
    w1 = float(re.search(r"W1 to the data ([\d.]+)", lines[1]).group(1))
    assert loss_to < 0.8 * loss_from and w1 < 0.15, lines
