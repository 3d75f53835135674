"""Exercises 8-9 (Lin et al. 2023 pages 6 and 8): classifier-free guidance with the rescale
(Algorithm 2) and one DPM-Solver++(2M) step in x0 form."""

from __future__ import annotations

import math

import torch

from .. import guidance, solvers
from .core import Exercise, Fail, call, explain, random_inputs, same, tensor_like, tolerance

LIN = "Lin et al. 2023"


# ------------------------------------------------------------------------------------------------
# 8. Classifier-free guidance and its rescale
# ------------------------------------------------------------------------------------------------


def _std(x):
    return x.std(dim=tuple(range(1, x.ndim)), keepdim=True)


GUIDANCE_FROM_COND = ("the guidance starts from cond: cond + w (cond - uncond) is guidance from the conditional output, "
                      "weight w + 1 in this course's form; x_cfg = uncond + w (cond - uncond), so that w = 1 gives cond")


def cfg_mistakes(cond, uncond, w, phi) -> list:
    plain = uncond + w * (cond - uncond)
    wrong_branch = cond + w * (uncond - cond)
    from_cond = cond + w * (cond - uncond)
    out = [("guidance was applied to the wrong branch: x_cfg = uncond + w (cond - uncond) moves from the "
            "unconditional output towards the conditional one", wrong_branch),
           (GUIDANCE_FROM_COND, from_cond)]
    if phi == 0:
        return out
    mixed = lambda resc: phi * resc + (1 - phi) * plain
    whole = cond.std() / plain.std()
    out += [
        ("the rescale was applied to the wrong branch's guidance: x_cfg = uncond + w (cond - uncond)",
         phi * wrong_branch * _std(cond) / _std(wrong_branch) + (1 - phi) * wrong_branch),
        (GUIDANCE_FROM_COND, phi * from_cond * _std(cond) / _std(from_cond) + (1 - phi) * from_cond),
        ("the std was taken over the whole batch: Algorithm 2 takes it per sample, over all non-batch dimensions",
         mixed(plain * whole)),
        ("the rescale factor is upside down: x_rescaled = x_cfg * std(cond) / std(x_cfg)",
         mixed(plain * _std(plain) / _std(cond))),
        ("phi mixes the wrong way round: x_final = phi x_rescaled + (1 - phi) x_cfg",
         (1 - phi) * plain * _std(cond) / _std(plain) + phi * plain),
        ("the output was rescaled to the std of the unconditional output; Algorithm 2 uses the conditional one, std(cond)",
         mixed(plain * _std(uncond) / _std(plain))),
    ]
    return out


def cfg_checks():
    def shapes(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 4, 4), torch.float32), ((3, 5), torch.float64)]):
            cond, uncond = random_inputs(i, shape, shape, dtype=dtype)
            tensor_like(call(fn, cond, uncond, 3.0, 0.7), shape, dtype, f"the guided output for shape {shape} ({dtype})")

    def scale_one(fn):
        cond, uncond = random_inputs(1, (2, 6), (2, 6))
        got = call(fn, cond, uncond, 1.0, 0.0)
        if same(got, 2 * cond - uncond):
            raise Fail(GUIDANCE_FROM_COND)
        if not same(got, cond):
            raise Fail("scale 1 must return the conditional output: x_cfg = uncond + 1 (cond - uncond) = cond")

    def worked(phi, expected):
        def check(fn):
            pos = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
            neg = torch.tensor([[0.0, 1.0, 1.0, 2.0]], dtype=torch.float64)
            got = call(fn, pos, neg, 7.5, phi)
            explain(got, torch.tensor([expected], dtype=torch.float64), cfg_mistakes(pos, neg, 7.5, phi),
                    f"got {[round(v, 7) for v in got.flatten().tolist()]}, expected {expected}", 1e-6, 1e-6)
        return check

    def keeps_std(fn):
        g = torch.Generator().manual_seed(2)
        cond = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64) * torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64).reshape(3, 1, 1, 1)
        uncond = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
        got = call(fn, cond, uncond, 7.5, 1.0)
        explain(_std(got), _std(cond), [(h, _std(w)) for h, w in cfg_mistakes(cond, uncond, 7.5, 1.0)],
                "with rescale phi = 1 each sample's guided output must have the std of its conditional output", 1e-6, 1e-9)

    def oracle(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 4, 4), torch.float32), ((4, 7), torch.float64), ((1, 2, 3), torch.float32)]):
            cond, uncond = random_inputs(10 + i, shape, shape, dtype=dtype)
            for w, phi in ((1.0, 0.0), (3.0, 0.0), (7.5, 0.7), (2.0, 1.0), (0.0, 0.5)):
                got = call(fn, cond, uncond, w, phi)
                # minidiff.guidance.cfg takes the stds in float32, so with a rescale its float64 answer is
                # good to float32's precision only: a float64 std must not fail here
                explain(got, guidance.cfg(cond, uncond, w, phi), cfg_mistakes(cond.double(), uncond.double(), w, phi),
                        f"scale {w}, rescale {phi}, shape {shape}, {dtype}: differs from minidiff.guidance.cfg",
                        *tolerance(torch.float32 if phi else dtype))

    return [("shape and dtype kept", shapes), ("scale 1 returns cond", scale_one),
            ("the paper's example without the rescale: [7.5, 8.5, 16, 17]", worked(0.0, [7.5, 8.5, 16.0, 17.0])),
            ("the paper's example with phi = 0.7: [3.6216411, 4.1045266, 7.7261677, 8.2090532]",
             worked(0.7, [3.6216411, 4.1045266, 7.7261677, 8.2090532])),
            ("phi = 1 gives each sample the std of its conditional output", keeps_std),
            ("agrees with minidiff on random inputs", oracle)]


# ------------------------------------------------------------------------------------------------
# 9. DPM-Solver++(2M)
# ------------------------------------------------------------------------------------------------


def dpm_mistakes(x_t, x0, x0_prev, ab_t, ab_s, ab_prev) -> list:
    lam = solvers.half_log_snr
    h, h_prev = lam(ab_s) - lam(ab_t), lam(ab_t) - lam(ab_prev)
    r = h_prev / h
    first = lambda d: solvers.first_order_step(x_t, d, ab_t, ab_s)
    return [
        ("the ratio is upside down: r = h_prev / h, and the correction is (1 / (2 r)) (x0 - x0_prev)",
         first(x0 + r / 2 * (x0 - x0_prev))),
        ("the correction has the wrong sign: extrapolate forward, D = x0 + (1 / (2 r)) (x0 - x0_prev)",
         first(x0 - 1 / (2 * r) * (x0 - x0_prev))),
        ("the correction misses the 1/2: D = x0 + (1 / (2 r)) (x0 - x0_prev)", first(x0 + 1 / r * (x0 - x0_prev))),
        ("the steps were measured in alpha_bar; h is measured in lambda = log(sqrt(a) / sqrt(1 - a)), the half log-SNR",
         first(x0 + (ab_s - ab_t) / (2 * (ab_t - ab_prev)) * (x0 - x0_prev))),
        ("the extrapolated D went into the x_t term as well; only x0's coefficient takes D",
         first(x0) + (x0 - x0_prev) / (2 * r)),
    ]


def dpm_checks():
    def shapes(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 4, 4), torch.float32), ((5,), torch.float64)]):
            x_t, x0, x0p = random_inputs(i, shape, shape, shape, dtype=dtype)
            tensor_like(call(fn, x_t, x0, x0p, 0.3, 0.6, 0.1), shape, dtype, f"x_s for shape {shape} ({dtype})")

    def no_change(fn):
        x_t, x0 = random_inputs(1, (3, 4), (3, 4))
        got = call(fn, x_t, x0, x0.clone(), 0.3, 0.6, 0.1)
        if not same(got, solvers.first_order_step(x_t, x0, 0.3, 0.6)):
            raise Fail("with x0_prev = x0 there is nothing to extrapolate, so the step must be DDIM's: "
                       "x_s = (sigma_s / sigma_t) x_t + (alpha_s - alpha_t sigma_s / sigma_t) x0")

    def zero_snr_prev(fn):
        x_t, x0, x0p = random_inputs(2, (3, 4), (3, 4), (3, 4))
        got = call(fn, x_t, x0, x0p, 0.05, 0.3, 0.0)
        explain(got, solvers.first_order_step(x_t, x0, 0.05, 0.3),
                [("not finite when alpha_bar_prev = 0: lambda_prev = -inf, so h_prev is infinite and the correction "
                  "(1 / (2 r)) (x0 - x0_prev) is 0 (guard the log of 0, or let lambda be -inf)", None)],
                "from a previous point at zero SNR (lambda_prev = -inf, r infinite) the correction is 0: "
                "the step must be first order")

    def correction(fn):
        x_t, x0, x0p = random_inputs(3, (6,), (6,), (6,))
        for ab_t, ab_s, ab_prev in ((0.2, 0.5, 0.05), (0.6, 0.95, 0.4)):
            got = call(fn, x_t, x0, x0p, ab_t, ab_s, ab_prev)
            explain(got, solvers.dpmpp_2m_step(x_t, x0, x0p, ab_t, ab_s, ab_prev), dpm_mistakes(x_t, x0, x0p, ab_t, ab_s, ab_prev),
                    f"from alpha_bar {ab_t} to {ab_s} (previous {ab_prev}): expected the first-order step taken with "
                    "D = x0 + (1 / (2 r)) (x0 - x0_prev), r = h_prev / h")

    def second_order(fn):
        # x0(lambda) linear in lambda: the 2M step's error is O(h^3) per step, DDIM's O(h^2)
        ab = lambda l: 1 / (1 + math.exp(-2 * l))
        errs = []
        for h in (0.2, 0.1):
            l_prev, l_t, l_s = 0.0, h, 2 * h
            x0p, x0 = torch.tensor([l_prev], dtype=torch.float64), torch.tensor([l_t], dtype=torch.float64)
            x_t = torch.tensor([0.3], dtype=torch.float64)
            # exact: x_s = (sig_s/sig_t) x_t + sig_s int_{l_t}^{l_s} e^l l dl
            sig = lambda l: math.sqrt(1 - ab(l))
            exact = sig(l_s) / sig(l_t) * x_t + sig(l_s) * ((l_s - 1) * math.exp(l_s) - (l_t - 1) * math.exp(l_t))
            errs.append(abs((call(fn, x_t, x0, x0p, ab(l_t), ab(l_s), ab(l_prev)) - exact).item()))
        if not errs[1] < errs[0] / 5:
            raise Fail(f"for a prediction linear in lambda, halving the step divided the error by {errs[0] / max(errs[1], 1e-300):.2f}, "
                       "not about 8: the step is not second order")

    def oracle(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 4, 4), torch.float32), ((5, 7), torch.float64)]):
            x_t, x0, x0p = random_inputs(10 + i, shape, shape, shape, dtype=dtype)
            for ab_t, ab_s, ab_prev in ((0.0047, 0.05, 0.0), (0.1, 0.3, 0.02), (0.5, 0.99, 0.3)):
                if not same(call(fn, x_t, x0, x0p, ab_t, ab_s, ab_prev),
                            solvers.dpmpp_2m_step(x_t, x0, x0p, ab_t, ab_s, ab_prev), *tolerance(dtype)):
                    raise Fail(f"alpha_bar {ab_prev} -> {ab_t} -> {ab_s}, shape {shape}, {dtype}: differs from "
                               "minidiff.solvers.dpmpp_2m_step")

    return [("shape and dtype kept", shapes), ("x0_prev = x0 gives the DDIM step", no_change),
            ("a zero-SNR previous point gives the first-order step", zero_snr_prev),
            ("the second-order correction", correction), ("second order: error / 8 when the step halves", second_order),
            ("agrees with minidiff on random inputs", oracle)]


EXERCISES = [
    Exercise(8, "guidance", "Classifier-free guidance with the rescale (Algorithm 2)", LIN, "06_guidance.md", "cfg",
             "def cfg(cond, uncond, scale, rescale=0.0):",
             "Classifier-free guidance with Lin et al.'s rescale (Algorithm 2, eqs. 13-16).\n\n"
             "x_cfg = uncond + scale (cond - uncond); x_rescaled = x_cfg std(cond) / std(x_cfg);\n"
             "output = rescale x_rescaled + (1 - rescale) x_cfg (rescale is the paper's phi, 0.7).\n"
             "std is taken per sample over all non-batch dimensions. cond, uncond: [B, ...] of one dtype.\n"
             "Returns a tensor of cond's shape and dtype.",
             guidance.cfg, "minidiff.guidance.cfg", cfg_checks()),
    Exercise(9, "dpm-solver", "One DPM-Solver++(2M) step", LIN, "08_fast_samplers.md", "dpmpp_2m_step",
             "def dpmpp_2m_step(x_t, x0, x0_prev, ab_t, ab_s, ab_prev):",
             "One DPM-Solver++(2M) step (Lu et al. 2022, Algorithm 2) from alpha_bar ab_t to ab_s, in x0 form.\n\n"
             "With alpha = sqrt(a), sigma = sqrt(1 - a), lambda = log(alpha / sigma) (the half log-SNR):\n"
             "h = lambda_s - lambda_t, h_prev = lambda_t - lambda_prev, r = h_prev / h,\n"
             "D = x0 + (1 / (2 r)) (x0 - x0_prev), and the first-order (DDIM) step taken with D:\n"
             "x_s = (sigma_s / sigma_t) x_t + (alpha_s - alpha_t sigma_s / sigma_t) D.\n"
             "x0, x0_prev: the predictions at ab_t and at the previous point ab_prev. ab_prev may be 0\n"
             "(lambda = -inf: the correction is 0); ab_s < 1. Returns x_s with x_t's shape and dtype.",
             solvers.dpmpp_2m_step, "minidiff.solvers.dpmpp_2m_step", dpm_checks()),
]
