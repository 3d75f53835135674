"""The mistakes on record (docs/exercises/mistakes.md) are mutants here, written as a student would
write them, each failing with the hint that names it; and no hint of the course blames math.sqrt on
a body that does not call it."""

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

from minidiff import guidance, objectives, samplers, schedules
from minidiff.course.core import check_function, uses_math_sqrt
from minidiff.course.exercises import EXERCISES

TESTS = Path(__file__).resolve().parent
PAGE = TESTS.parent / "docs" / "exercises" / "mistakes.md"


def _loop(index_for_t=False, fresh_noise=False, last_to_ab0=False):
    """DDIM over trailing timesteps, written out, with one of the loop mistakes."""
    def ddim_sample(denoise, x_T, alphas_cumprod, steps):
        T = len(alphas_cumprod)
        ts = [round(T - k * T / steps) - 1 for k in range(steps)]
        x = x_T
        for i, t in enumerate(ts):
            x0, eps = denoise(x, i if index_for_t else t)
            if fresh_noise:
                eps = torch.randn_like(x)
            if i + 1 < len(ts):
                a_prev = alphas_cumprod[ts[i + 1]].item()
            else:
                a_prev = alphas_cumprod[0].item() if last_to_ab0 else 1.0
            x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        return x
    return ddim_sample


def _loss(shape_alpha_bar=True, v_sign=1.0):
    def v_loss(model, x0, alphas_cumprod, generator):
        t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        a = alphas_cumprod[t].to(x0.dtype)
        if shape_alpha_bar:
            a = a.view(-1, 1, 1, 1)
        v = v_sign * (a.sqrt() * noise - (1 - a).sqrt() * x0)
        return ((model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t) - v) ** 2).mean()
    return v_loss


def _cfg_batch_std(cond, uncond, w, phi=0.0):
    g = uncond + w * (cond - uncond)
    return phi * g * cond.std() / g.std() + (1 - phi) * g if phi else g


def _u_sign(u, x_t, a):
    a = torch.as_tensor(a, dtype=x_t.dtype)
    c = a.sqrt() + (1 - a).sqrt()
    x_flow, s = x_t / c, (1 - a).sqrt() / c
    return x_flow + s * u, x_flow - (1 - s) * u  # the velocity taken as x0 - eps


# ID in docs/exercises/mistakes.md -> (exercise, the mistake, words its hint must contain)
MISTAKES = {
    "M01": (1, lambda x0, ab, n: ab * x0 + (1 - ab) * n, "a variance used as a std"),
    "M02": (2, lambda kind, T=1000: torch.cumprod(schedules.make_betas(kind, T), 0), "cumulative product of the betas"),
    "M03": (2, lambda kind, T=1000: torch.cat([torch.ones(1, dtype=torch.float64),
                                               schedules.alphas_cumprod(schedules.make_betas(kind, T))[:-1]]),
            "shifted by one"),
    "M04": (13, _loop(last_to_ab0=True), "not to alpha_bar = 1"),
    "M05": (13, _loop(index_for_t=True), "the loop's index"),
    "M06": (12, _loss(shape_alpha_bar=False), "has shape [B]"),
    "M07": (13, _loop(fresh_noise=True), "no fresh noise"),
    "M08": (12, _loss(v_sign=-1.0), "sign of v"),
    "M09": (8, lambda c, u, w, phi=0.0: guidance.cfg(c, u, w + 1, phi), "guidance starts from cond"),
    "M10": (8, _cfg_batch_std, "whole batch"),
    "M11": (15, _u_sign, "sign of u"),
}


def test_every_mistake_on_the_page_is_a_mutant_here():
    ids = re.findall(r"^\| (M\d\d) \|", PAGE.read_text(), flags=re.M)
    assert ids and sorted(ids) == sorted(MISTAKES), (ids, sorted(MISTAKES))
    for row in re.findall(r"^\| M\d\d \|.*$", PAGE.read_text(), flags=re.M):
        assert "https://github.com/" in row or "arXiv" in row, row  # each with where it is on record
        hint = MISTAKES[row[2:5]][2]
        assert f'"{hint}"' in row, row


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_mistake_on_record_gets_the_hint_that_names_it(mistake, one_thread):
    number, mutant, words = MISTAKES[mistake]
    failures = [r for r in check_function(EXERCISES[number], mutant) if not r.passed]
    assert failures, "the mutant passed every check"
    assert any(words in r.message for r in failures), [r.line() for r in failures]
    assert not any("your function raised" in r.message for r in failures), [r.line() for r in failures]


def _mutants_of(module_name: str) -> list:
    spec = importlib.util.spec_from_file_location(f"_course_{module_name}", TESTS / f"{module_name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [(n, fn) for n, pairs in module.MUTANTS.items() for fn, _ in pairs]


def test_no_hint_blames_math_sqrt_on_a_body_without_it(one_thread):
    """Every mutant of the course's tests, and these: a hint that says math.sqrt only for a body that
    calls it (the old per-sample check said so to any wrong answer: issue 43)."""
    mutants = _mutants_of("test_course") + _mutants_of("test_course_training")
    mutants += [(n, fn) for n, fn, _ in MISTAKES.values()]
    blamed = []
    for number, fn in mutants:
        for r in check_function(EXERCISES[number], fn):
            if not r.passed and "math.sqrt" in r.message and not uses_math_sqrt(fn):
                blamed.append((number, r.line()))
    assert not blamed, blamed


def test_a_body_with_math_sqrt_is_told_so_and_a_tensor_body_is_not(one_thread):
    """Exercise 1 with math.sqrt: right for a float, refused for one alpha_bar per sample, and the hint
    names math.sqrt; with tensor operations that flatten alpha_bar the hint names the shape instead;
    with wrong coefficients the per-sample check says the formula is off, not the broadcasting."""
    def with_math(x0, ab, n):
        return math.sqrt(ab) * x0 + math.sqrt(1 - ab) * n

    def flattened(x0, ab, n):
        ab = torch.as_tensor(ab, dtype=x0.dtype).flatten()[:1].reshape(())
        return ab.sqrt() * x0 + (1 - ab).sqrt() * n

    def swapped(x0, ab, n):
        return (1 - ab) ** 0.5 * x0 + ab ** 0.5 * n

    def per_sample(fn):
        name = "one alpha_bar per sample broadcasts"
        return next(r for r in check_function(EXERCISES[1], fn) if r.name == name)

    assert uses_math_sqrt(with_math) and not uses_math_sqrt(flattened) and not uses_math_sqrt(swapped)
    r = per_sample(with_math)
    assert not r.passed and "math.sqrt" in r.message, r.line()
    r = per_sample(flattened)
    assert not r.passed and "keep alpha_bar's shape" in r.message and "math.sqrt" not in r.message, r.line()
    r = per_sample(swapped)
    assert not r.passed and "the formula itself is off" in r.message and "math" not in r.message, r.line()
    assert all(r.passed for r in check_function(EXERCISES[1], objectives.q_sample))
    assert all(r.passed for r in check_function(EXERCISES[13], _loop()))
    assert samplers  # the reference loop's module, imported for the DDIM step it writes out
