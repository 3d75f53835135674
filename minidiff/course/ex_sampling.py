"""Exercises 4-7 (Lin et al. 2023, pages 3-5): the eps / x0 / v conversions, the timesteps of
Table 2, one DDIM step in x0 form, and the exact Gaussian denoiser."""

from __future__ import annotations

import math

import torch

from .. import objectives, samplers
from ..exact.analytic import GaussianDenoiser
from ..schedules import Schedule
from .core import Exercise, Fail, call, explain, per_sample_check, random_inputs, same, tensor_like, tolerance

LIN = "Lin et al. 2023"


# ------------------------------------------------------------------------------------------------
# 4. eps / x0 / v
# ------------------------------------------------------------------------------------------------


def conversion_mistakes(prediction: str, out, x_t, ab: float) -> list:
    """Known wrong x0 of a conversion, with what went wrong."""
    sa, s1a = math.sqrt(ab), math.sqrt(1 - ab)
    if prediction == "v":
        return [("the sign of v is wrong: v = sqrt(a) eps - sqrt(1 - a) x0, so x0 = sqrt(a) x_t - sqrt(1 - a) v",
                 sa * x_t + s1a * out),
                ("sqrt(a) and sqrt(1 - a) are swapped: x0 = sqrt(a) x_t - sqrt(1 - a) v", s1a * x_t - sa * out),
                ("the coefficients need square roots: x0 = sqrt(a) x_t - sqrt(1 - a) v", ab * x_t - (1 - ab) * out)]
    if prediction == "eps":
        return [("x0 = (x_t - sqrt(1 - a) eps) / sqrt(a): the division is by sqrt(alpha_bar), not alpha_bar",
                 (x_t - s1a * out) / ab),
                ("the coefficients need square roots: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)", (x_t - (1 - ab) * out) / ab)]
    return []


VP_PREDICTIONS = ("eps", "x0", "v")  # the exercise's three (u, the flow's velocity, is in the docs)


def conversion_checks():
    def pair(fn):
        x_t, out = random_inputs(0, (2, 3, 4, 4), (2, 3, 4, 4), dtype=torch.float32)
        for prediction in VP_PREDICTIONS:
            res = call(fn, prediction, out, x_t, 0.5)
            if not (isinstance(res, (tuple, list)) and len(res) == 2):
                raise Fail(f"return a pair (x0, eps); for {prediction!r} it returned a {type(res).__name__}")
            tensor_like(res[0], x_t.shape, x_t.dtype, f"x0 from {prediction!r}")
            tensor_like(res[1], x_t.shape, x_t.dtype, f"eps from {prediction!r}")

    def round_trip(prediction):
        def check(fn):
            x0, eps = random_inputs(1, (4, 6), (4, 6))
            for ab in (0.02, 0.5, 0.98):
                x_t = objectives.q_sample(x0, ab, eps)
                out = objectives.target(prediction, x0, eps, ab)
                got_x0, got_eps = call(fn, prediction, out, x_t, ab)
                explain(got_x0, x0, conversion_mistakes(prediction, out, x_t, ab),
                        f"{prediction} -> x0 does not give back the x0 that made x_t (alpha_bar = {ab})")
                if not same(got_eps, eps):
                    raise Fail(f"{prediction} -> eps does not give back the eps that made x_t (alpha_bar = {ab}): "
                               + {"v": "eps = sqrt(a) v + sqrt(1 - a) x_t", "eps": "eps is the output itself",
                                  "x0": "eps = (x_t - sqrt(a) x0) / sqrt(1 - a)"}[prediction])
        return check

    def v_at_zero(fn):
        x0, eps = random_inputs(2, (3, 5), (3, 5))
        v = objectives.target("v", x0, eps, 0.0)
        got_x0, got_eps = call(fn, "v", v, eps.clone(), 0.0)
        if not (torch.isfinite(got_x0).all() and torch.isfinite(got_eps).all()):
            raise Fail("v at alpha_bar = 0 gives NaN or inf: the v conversions never divide, "
                       "x0 = sqrt(a) x_t - sqrt(1 - a) v and eps = sqrt(a) v + sqrt(1 - a) x_t")
        if not (same(got_x0, x0) and same(got_eps, eps)):
            raise Fail("at alpha_bar = 0 (x_t = eps, v = -x0) v must give x0 = -v and eps = x_t exactly")

    def eps_at_zero(fn):
        x_t, out = random_inputs(3, (2, 4), (2, 4))
        try:
            res = fn("eps", out, x_t, 0.0)
        except ValueError:
            return
        if res is None:
            call(fn, "eps", out, x_t, 0.0)
        raise Fail("an eps prediction at alpha_bar = 0 must raise ValueError: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) "
                   "divides by zero there (the input is the noise, so eps says nothing about x0)")

    def per_sample(fn):
        x_t, out = random_inputs(4, (3, 2, 2, 2), (3, 2, 2, 2))
        ab = torch.tensor([0.0, 0.3, 0.9], dtype=torch.float64).reshape(3, 1, 1, 1)
        per_sample_check(fn, lambda a, rows: fn("v", out[rows], x_t[rows], a),
                         lambda a, rows: objectives.to_x0_eps("v", out[rows], x_t[rows], a), ab, "(x0, eps) from v")

    def oracle(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 4, 4), torch.float32), ((5, 7), torch.float64), ((1, 2, 3), torch.float32)]):
            x_t, out = random_inputs(10 + i, shape, shape, dtype=dtype)
            for prediction in VP_PREDICTIONS:
                for ab in (0.0047, 0.4, 0.999):
                    got, ref = call(fn, prediction, out, x_t, ab), objectives.to_x0_eps(prediction, out, x_t, ab)
                    if not (same(got[0], ref[0], *tolerance(dtype)) and same(got[1], ref[1], *tolerance(dtype))):
                        raise Fail(f"{prediction!r} at alpha_bar = {ab}, shape {shape}, {dtype}: differs from "
                                   "minidiff.objectives.to_x0_eps")

    return [("returns (x0, eps) with x_t's shape and dtype", pair),
            ("round trip x0, eps -> v -> x0, eps", round_trip("v")),
            ("round trip x0, eps -> eps -> x0, eps", round_trip("eps")),
            ("round trip x0, eps -> x0 -> x0, eps", round_trip("x0")),
            ("v at alpha_bar = 0: x0 = -v, eps = x_t", v_at_zero),
            ("eps at alpha_bar = 0 is refused (ValueError)", eps_at_zero),
            ("one alpha_bar per sample broadcasts", per_sample), ("agrees with minidiff on random inputs", oracle)]


# ------------------------------------------------------------------------------------------------
# 5. Table 2: leading, linspace, trailing
# ------------------------------------------------------------------------------------------------

TABLE2 = {  # Lin et al. Table 2 (T = 1000, 10 steps), 1-indexed as printed
    "leading": [1, 101, 201, 301, 401, 501, 601, 701, 801, 901],
    "linspace": [1, 112, 223, 334, 445, 556, 667, 778, 889, 1000],
    "trailing": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
}


def timesteps_mistakes(T: int, S: int, spacing: str) -> list:
    right = samplers.make_timesteps(T, S, spacing)
    rules = {"trailing": "Table 2's trailing rule counts from T (1-indexed), so the first timestep is T-1",
             "leading": "Table 2's leading rule starts at 1 (1-indexed), so the last timestep is 0",
             "linspace": "Table 2's linspace rule runs from 1 to T (1-indexed), so from T-1 down to 0"}
    out = [(f"the timesteps are shifted by one: {rules[spacing]}", right + 1),
           (f"the timesteps are shifted by one: {rules[spacing]}", right - 1),
           ("the timesteps are in ascending order: a sampler goes from noise to data, so list them descending",
            right.flip(0))]
    if spacing == "trailing":
        floor = torch.tensor([T * (S - k) // S - 1 for k in range(S)])
        out.append(("T (S - k) / S was rounded down: Table 2 rounds it to the nearest integer", floor))
    if spacing == "linspace" and S > 1:
        floor = torch.tensor([1 + k * (T - 1) // (S - 1) - 1 for k in range(S)]).flip(0)
        out.append(("linspace(1, T, S) was rounded down: Table 2 rounds it to the nearest integer", floor))
    if spacing == "leading":
        out.append(("leading steps by floor(T / S) from 1: arange(1, T + 1, T // S), not evenly spaced over [0, T-1]",
                    torch.tensor([round(k * (T - 1) / S) for k in range(S)]).flip(0)))
    return out


def timesteps_checks():
    def kind(fn):
        for spacing in samplers.SPACINGS:
            out = call(fn, 1000, 10, spacing)
            tensor_like(out, (10,), torch.int64, f"the {spacing} timesteps")

    def table2(spacing):
        def check(fn):
            expected = torch.tensor(TABLE2[spacing][::-1]) - 1
            got = call(fn, 1000, 10, spacing)
            explain(got, expected, timesteps_mistakes(1000, 10, spacing),
                    f"got {got.tolist()}; Table 2 minus one is {expected.tolist()}")
        return check

    def rounding(fn):
        for spacing, S in (("trailing", 3), ("trailing", 7), ("linspace", 6), ("leading", 7)):
            got = call(fn, 1000, S, spacing)
            expected = samplers.make_timesteps(1000, S, spacing)
            explain(got, expected, timesteps_mistakes(1000, S, spacing),
                    f"{spacing} with T = 1000, S = {S}: got {got.tolist()}, expected {expected.tolist()}")

    def last_step(fn):
        for S in (1, 3, 7, 25, 50, 999):
            first = int(call(fn, 1000, S, "trailing")[0])
            if first != 999:
                raise Fail(f"trailing with {S} steps starts at {first}, not T-1 = 999: only trailing starts where training "
                           "ends, for every number of steps")

    def oracle(fn):
        for T in (1000, 50, 7):
            for S in sorted({1, 2, 3, min(T, 10), T}):
                for spacing in samplers.SPACINGS:
                    got, expected = call(fn, T, S, spacing), samplers.make_timesteps(T, S, spacing)
                    explain(got, expected, timesteps_mistakes(T, S, spacing),
                            f"{spacing} with T = {T}, S = {S}: got {got.tolist()}, expected {expected.tolist()}")

    return [("int64, one timestep per step", kind),
            ("Table 2, leading: 900, 800, ..., 0", table2("leading")),
            ("Table 2, linspace: 999, 888, ..., 0", table2("linspace")),
            ("Table 2, trailing: 999, 899, ..., 99", table2("trailing")),
            ("rounding when S does not divide T", rounding),
            ("trailing starts at T-1 for every S", last_step),
            ("agrees with minidiff for T = 1000, 50, 7", oracle)]


# ------------------------------------------------------------------------------------------------
# 6. One DDIM step in x0 form
# ------------------------------------------------------------------------------------------------


def reference_ddim_step(x_t, x0, eps, ab_t, ab_prev):
    return samplers.ddim_step(x_t, x0, eps, ab_t, ab_prev)


def ddim_checks():
    def shapes(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 4, 4), torch.float32), ((5,), torch.float64)]):
            x_t, x0, eps = random_inputs(i, shape, shape, shape, dtype=dtype)
            tensor_like(call(fn, x_t, x0, eps, 0.3, 0.6), shape, dtype, f"x_prev for shape {shape} ({dtype})")

    def to_clean(fn):
        x_t, x0, eps = random_inputs(2, (3, 4), (3, 4), (3, 4))
        if not same(call(fn, x_t, x0, eps, 0.5, 1.0), x0):
            raise Fail("the step to alpha_bar_prev = 1 must return x0 exactly: x_prev = sqrt(1) x0 + sqrt(0) eps")

    def from_zero(fn):
        x0, eps = random_inputs(3, (3, 4), (3, 4))
        got = call(fn, eps.clone(), x0, eps, 0.0, 0.25)
        explain(got, 0.5 * x0 + math.sqrt(0.75) * eps,
                [("not finite at alpha_bar_t = 0: the step divided by sqrt(alpha_bar_t) (it re-derived x0 from eps); "
                  "in x0 form use the x0 given: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps", None)],
                "from alpha_bar_t = 0 to 0.25 the step must give 0.5 x0 + sqrt(0.75) eps")

    def exact_path(fn):
        x0, eps = random_inputs(4, (6,), (6,))
        for ab_t, ab_prev in ((0.1, 0.4), (0.64, 0.81)):
            x_t = objectives.q_sample(x0, ab_t, eps)
            got = call(fn, x_t, x0, eps, ab_t, ab_prev)
            explain(got, objectives.q_sample(x0, ab_prev, eps), [
                ("you returned x_t unchanged: the step must use alpha_bar_prev (the next listed timestep), not alpha_bar_t", x_t),
                ("the coefficients need square roots: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps",
                 ab_prev * x0 + (1 - ab_prev) * eps),
                ("the noise keeps alpha_bar_t's coefficient: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps",
                 math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_t) * eps)],
                f"with the true x0 and eps the step from {ab_t} to {ab_prev} must land on q(x_prev | x0): "
                "sqrt(a_prev) x0 + sqrt(1 - a_prev) eps")

    def oracle(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 4, 4), torch.float32), ((5, 7), torch.float64)]):
            x_t, x0, eps = random_inputs(10 + i, shape, shape, shape, dtype=dtype)
            for ab_t, ab_prev in ((0.0, 0.05), (0.0047, 0.2), (0.5, 0.9), (0.99, 1.0)):
                if not same(call(fn, x_t, x0, eps, ab_t, ab_prev), samplers.ddim_step(x_t, x0, eps, ab_t, ab_prev),
                            *tolerance(dtype)):
                    raise Fail(f"from alpha_bar {ab_t} to {ab_prev}, shape {shape}, {dtype}: differs from "
                               "minidiff.samplers.ddim_step")

    return [("shape and dtype kept", shapes), ("the step to alpha_bar = 1 returns x0", to_clean),
            ("finite and exact from alpha_bar_t = 0", from_zero),
            ("exact on the path of the true x0 and eps", exact_path), ("agrees with minidiff on random inputs", oracle)]


# ------------------------------------------------------------------------------------------------
# 7. The exact Gaussian denoiser
# ------------------------------------------------------------------------------------------------


def reference_posterior_mean(x_t, alpha_bar, mean, var):
    den = GaussianDenoiser(mean, var=var, schedule=Schedule.make("linear", 10), prediction="x0")
    return den.posterior_mean(x_t, alpha_bar).to(x_t.dtype)


def posterior_checks():
    def shapes(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 4, 4), torch.float32), ((5, 6), torch.float64)]):
            x_t, mean = random_inputs(i, shape, shape[1:], dtype=dtype)
            var = torch.full(shape[1:], 0.25, dtype=dtype)
            tensor_like(call(fn, x_t, 0.3, mean, var), shape, dtype, f"E[x0 | x_t] for x_t of shape {shape} ({dtype})")

    def ends(fn):
        x_t, mean = random_inputs(1, (4, 3), (3,))
        var = torch.tensor([0.5, 2.0, 0.1], dtype=torch.float64)
        if not same(call(fn, x_t, 0.0, mean, var), mean.expand(4, 3)):
            raise Fail("at alpha_bar = 0 x_t is pure noise and says nothing: E[x0 | x_t] must be the data mean")
        if not same(call(fn, x_t, 1.0, mean, var), x_t):
            raise Fail("at alpha_bar = 1 there is no noise: E[x0 | x_t] must be x_t itself")
        if not same(call(fn, x_t, 0.5, mean, torch.zeros(3, dtype=torch.float64)), mean.expand(4, 3)):
            raise Fail("data with zero variance is its mean whatever x_t says: E[x0 | x_t] must be the mean")

    def one_dim(fn):
        mu, lam = 0.3, 2.0
        x = torch.tensor([[-1.0], [0.5], [2.0]], dtype=torch.float64)
        m, v = torch.tensor([mu], dtype=torch.float64), torch.tensor([lam], dtype=torch.float64)
        for a in (0.2, 0.7):
            sa = math.sqrt(a)
            got = call(fn, x, a, m, v)
            explain(got, mu + sa * lam / (a * lam + 1 - a) * (x - sa * mu), [
                ("the gain needs sqrt(alpha_bar) in front: E[x0 | x_t] = mu + sqrt(a) lam / (a lam + 1 - a) (x_t - sqrt(a) mu)",
                 mu + a * lam / (a * lam + 1 - a) * (x - sa * mu)),
                ("subtract the mean of x_t, sqrt(a) mu, not mu: E[x0 | x_t] = mu + sqrt(a) lam / (a lam + 1 - a) (x_t - sqrt(a) mu)",
                 mu + sa * lam / (a * lam + 1 - a) * (x - mu)),
                ("the denominator is Var(x_t) = a lam + 1 - a (the signal's variance is scaled by a)",
                 mu + sa * lam / (lam + 1 - a) * (x - sa * mu))],
                f"for 1-D data N({mu}, {lam}) at alpha_bar = {a}: E[x0 | x_t] = mu + sqrt(a) lam / (a lam + 1 - a) (x_t - sqrt(a) mu)")

    def regression(fn):
        # the posterior mean is the best predictor: its error is uncorrelated with x_t
        g = torch.Generator().manual_seed(5)
        mean, var = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.2, 3.0], dtype=torch.float64)
        x0 = mean + var.sqrt() * torch.randn(200_000, 2, generator=g, dtype=torch.float64)
        x_t = objectives.q_sample(x0, 0.3, torch.randn(200_000, 2, generator=g, dtype=torch.float64))
        err = x0 - call(fn, x_t, 0.3, mean, var)
        corr = (err * (x_t - x_t.mean(0))).mean(0) / (err.std(0) * x_t.std(0))
        if err.mean(0).abs().max() > 0.02 or corr.abs().max() > 0.02:
            raise Fail(f"on samples of the data the error x0 - E[x0 | x_t] has mean {err.mean(0).tolist()} and correlation "
                       f"{[round(c, 3) for c in corr.tolist()]} with x_t: the posterior mean leaves neither")

    def oracle(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 4, 4), torch.float32), ((5, 6), torch.float64), ((3, 1, 2), torch.float32)]):
            x_t, mean, var = random_inputs(20 + i, shape, shape[1:], shape[1:], dtype=dtype)
            var = var.abs()
            for a in (0.0047, 0.5, 0.99):
                if not same(call(fn, x_t, a, mean, var), reference_posterior_mean(x_t, a, mean, var), *tolerance(dtype)):
                    raise Fail(f"at alpha_bar = {a}, shape {shape}, {dtype}: differs from "
                               "minidiff.exact.analytic.GaussianDenoiser.posterior_mean")

    return [("shape and dtype of x_t", shapes), ("alpha_bar = 0 gives the mean, 1 gives x_t", ends),
            ("the closed form for 1-D data", one_dim), ("the error is uncorrelated with x_t (200k samples)", regression),
            ("agrees with minidiff on random inputs", oracle)]


EXERCISES = [
    Exercise(4, "objectives", "eps, x0 and v, and the conversions between them", LIN, "03_objectives.md", "to_x0_eps",
             "def to_x0_eps(prediction, output, x_t, alpha_bar):",
             "Turn a model output into (x0, eps), the predicted clean sample and noise (Lin et al. eqs. 17, 19).\n\n"
             "prediction: \"eps\", \"x0\" or \"v\", where v = sqrt(a) eps - sqrt(1 - a) x0 and a = alpha_bar.\n"
             "x_t = sqrt(a) x0 + sqrt(1 - a) eps. alpha_bar: a float or a tensor that broadcasts against x_t.\n"
             "v converts exactly at every a, a = 0 included. An eps output at a = 0 cannot give x0 (it would\n"
             "divide by sqrt(a) = 0): raise ValueError. Returns (x0, eps), each with x_t's shape and dtype.",
             objectives.to_x0_eps, "minidiff.objectives.to_x0_eps", conversion_checks()),
    Exercise(5, "timesteps", "Table 2: leading, linspace and trailing timesteps", LIN, "04_sample_steps.md",
             "make_timesteps", "def make_timesteps(num_train_timesteps, num_steps, spacing):",
             "The num_steps timesteps a sampler visits: a descending int64 tensor of 0-indexed timesteps.\n\n"
             "Lin et al. Table 2 gives the rules 1-indexed, with T = num_train_timesteps, S = num_steps:\n"
             "  leading:  arange(1, T + 1, floor(T / S))     (1, 101, ..., 901 for T = 1000, S = 10)\n"
             "  linspace: round(linspace(1, T, S))           (1, 112, ..., 1000)\n"
             "  trailing: round(flip(arange(T, 0, -T / S)))  (100, 200, ..., 1000)\n"
             "Subtract one for 0-indexed timesteps and return them in descending order.",
             samplers.make_timesteps, "minidiff.samplers.make_timesteps", timesteps_checks()),
    Exercise(6, "ddim-step", "One DDIM step in x0 form", LIN, "05_ddpm_ddim.md", "ddim_step",
             "def ddim_step(x_t, x0, eps, ab_t, ab_prev):",
             "One deterministic DDIM step (eta = 0) from alpha_bar ab_t to ab_prev, written in x0 form\n"
             "(Song et al. eq. 12; Lin et al. Sec. 6): x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps.\n\n"
             "x_t, x0, eps: tensors of one shape (x0 and eps are the model's predictions at x_t).\n"
             "ab_t, ab_prev: floats; ab_t may be 0 (a zero-SNR start), ab_prev may be 1 (the step to a\n"
             "clean sample). Never divide by sqrt(ab_t). Returns x_prev with x_t's shape and dtype.",
             reference_ddim_step, "minidiff.samplers.ddim_step", ddim_checks()),
    Exercise(7, "gaussian-denoiser", "The exact denoiser for Gaussian data", LIN, "05_ddpm_ddim.md",
             "gaussian_posterior_mean", "def gaussian_posterior_mean(x_t, alpha_bar, mean, var):",
             "E[x0 | x_t] for data x0 ~ N(mean, diag(var)) and x_t = sqrt(a) x0 + sqrt(1 - a) eps, a = alpha_bar.\n\n"
             "Each coordinate on its own: E[x0 | x_t] = mean + sqrt(a) var / (a var + 1 - a) (x_t - sqrt(a) mean).\n"
             "x_t: [B, ...]; alpha_bar: a float; mean, var: tensors of one sample's shape [...].\n"
             "Returns a tensor of x_t's shape and dtype. This is what a perfectly trained model predicts.",
             reference_posterior_mean, "minidiff.exact.analytic.GaussianDenoiser.posterior_mean", posterior_checks()),
]
