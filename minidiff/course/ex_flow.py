"""Exercise 15 (flow matching, docs/09_flow_matching.md): the rectified flow's velocity u = eps - x0
and its conversion to (x0, eps) from the VP state the network sees. Its run (experiments.py)
samples the exact Gaussian model with the flow's Euler steps through the student's conversion
and compares them with DDIM, step for step."""

from __future__ import annotations

import math

import torch

from .. import objectives
from .core import Exercise, Fail, call, explain, per_sample_check, random_inputs, same, tensor_like, tolerance

FLOW = "Flow matching (Liu et al. 2023; Esser et al. 2024)"


def reference_u_to_x0_eps(u, x_t, alpha_bar):
    return objectives.to_x0_eps("u", u, x_t, alpha_bar)


def velocity_mistakes(u, x_t, ab: float) -> tuple[list, list]:
    """Known wrong (x0, eps) answers, each with what went wrong: ([(hint, x0)], [(hint, eps)])."""
    sa, s1a = math.sqrt(ab), math.sqrt(1 - ab)
    c = sa + s1a
    x_flow, s = x_t / c, s1a / c
    x0 = [("the sign of u is wrong: u = eps - x0, so x0 = x^flow - s u", x_flow + s * u),
          ("x_t is the VP state: divide it by sqrt(a) + sqrt(1 - a) to get the flow's state x^flow first",
           x_t - s * u),
          ("s is the flow's time, sqrt(1 - a) / (sqrt(a) + sqrt(1 - a)), not sqrt(1 - a)", x_flow - s1a * u),
          ("x0 = x^flow - s u uses the flow's time s, not 1 - s", x_flow - (1 - s) * u)]
    eps = [("eps = x^flow + (1 - s) u: the noise gets the share 1 - s of u, not s", x_flow + s * u),
           ("x_t is the VP state: divide it by sqrt(a) + sqrt(1 - a) to get the flow's state x^flow first",
            x_t + (1 - s) * u),
           ("the sign of u is wrong: u = eps - x0, so eps = x^flow + (1 - s) u", x_flow - (1 - s) * u)]
    return x0, eps


def velocity_checks():
    def pair(fn):
        x_t, u = random_inputs(0, (2, 3, 4, 4), (2, 3, 4, 4), dtype=torch.float32)
        res = call(fn, u, x_t, 0.5)
        if not (isinstance(res, (tuple, list)) and len(res) == 2):
            raise Fail(f"return a pair (x0, eps); it returned a {type(res).__name__}")
        tensor_like(res[0], x_t.shape, x_t.dtype, "x0")
        tensor_like(res[1], x_t.shape, x_t.dtype, "eps")

    def round_trip(fn):
        x0, eps = random_inputs(1, (4, 6), (4, 6))
        for ab in (0.02, 0.5, 0.98):
            x_t = objectives.q_sample(x0, ab, eps)
            u = eps - x0
            got_x0, got_eps = call(fn, u, x_t, ab)
            wrong_x0, wrong_eps = velocity_mistakes(u, x_t, ab)
            explain(got_x0, x0, wrong_x0, f"u -> x0 does not give back the x0 that made x_t (alpha_bar = {ab})")
            explain(got_eps, eps, wrong_eps, f"u -> eps does not give back the eps that made x_t (alpha_bar = {ab})")

    def ends(fn):
        x_t, u = random_inputs(2, (3, 5), (3, 5))
        at_zero, at_one = call(fn, u, x_t, 0.0), call(fn, u, x_t, 1.0)
        if not (same(at_zero[0], x_t - u) and same(at_zero[1], x_t)):
            raise Fail("at alpha_bar = 0 (s = 1, pure noise) x_t is the noise: eps = x_t and x0 = x_t - u; "
                       "the divisor sqrt(a) + sqrt(1 - a) is 1 there, never 0")
        if not (same(at_one[0], x_t) and same(at_one[1], x_t + u)):
            raise Fail("at alpha_bar = 1 (s = 0, no noise) x_t is the image: x0 = x_t and eps = x_t + u")

    def per_sample(fn):
        x0, eps = random_inputs(3, (3, 2, 2, 2), (3, 2, 2, 2))
        ab = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64).reshape(3, 1, 1, 1)
        u = eps - x0
        per_sample_check(fn, lambda a, rows: fn(u[rows], objectives.q_sample(x0[rows], a, eps[rows]), a),
                         lambda a, rows: (x0[rows], eps[rows]), ab, "(x0, eps) from u")

    def oracle(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 4, 4), torch.float32), ((5, 7), torch.float64)]):
            x_t, u = random_inputs(10 + i, shape, shape, dtype=dtype)
            for ab in (0.0, 0.0047, 0.4, 0.999, 1.0):
                got, ref = call(fn, u, x_t, ab), reference_u_to_x0_eps(u, x_t, ab)
                if not (same(got[0], ref[0], *tolerance(dtype)) and same(got[1], ref[1], *tolerance(dtype))):
                    raise Fail(f"at alpha_bar = {ab}, shape {shape}, {dtype}: differs from "
                               "minidiff.objectives.to_x0_eps('u', ...)")

    return [("returns (x0, eps) with x_t's shape and dtype", pair),
            ("round trip x0, eps -> u -> x0, eps", round_trip),
            ("exact at both ends: alpha_bar = 0 and 1", ends),
            ("one alpha_bar per sample broadcasts", per_sample),
            ("agrees with minidiff on random inputs", oracle)]


EXERCISES = [
    Exercise(15, "velocity", "The flow's velocity u and its conversion to x0 and eps", FLOW, "09_flow_matching.md",
             "u_to_x0_eps", "def u_to_x0_eps(u, x_t, alpha_bar):",
             "Turn the rectified flow's velocity u = eps - x0 into (x0, eps) (docs/09_flow_matching.md, F3-F4).\n\n"
             "The network sees the VP state x_t = sqrt(a) x0 + sqrt(1 - a) eps (a = alpha_bar) and outputs u.\n"
             "The flow's own state is x^flow = (1 - s) x0 + s eps = x_t / (sqrt(a) + sqrt(1 - a)), at the flow's\n"
             "time s = sqrt(1 - a) / (sqrt(a) + sqrt(1 - a)); from it x0 = x^flow - s u and eps = x^flow + (1 - s) u.\n"
             "Exact at every a, a = 0 and a = 1 included. alpha_bar: a float or a tensor that broadcasts\n"
             "against x_t. Returns (x0, eps), each with x_t's shape and dtype.",
             reference_u_to_x0_eps, "minidiff.objectives.to_x0_eps('u', ...)", velocity_checks()),
]
