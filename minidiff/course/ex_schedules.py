"""Exercises 1-3 (Lin et al. 2023, pages 1-2): the forward process, the three schedules and their
terminal SNR (Table 1), and the rescale to zero terminal SNR (Algorithm 1)."""

from __future__ import annotations

import math

import torch

from .. import objectives, schedules
from .core import Exercise, Fail, call, explain, fmt, per_sample_check, random_inputs, same, tensor_like, tolerance

LIN = "Lin et al. 2023"
TABLE1 = {  # Lin et al. Table 1: (SNR(T), sqrt(alpha_bar_T)); cosine is float32 tooling's value (ZERO_SNR.md)
    "linear": (4.035993e-05, 0.006353),
    "cosine": (2.428735e-09, 4.928220e-05),
    "scaled_linear": (0.004682, 0.068265),
}


# ------------------------------------------------------------------------------------------------
# 1. q(x_t | x0)
# ------------------------------------------------------------------------------------------------


def q_sample_checks():
    def shapes(fn):
        for i, (shape, dtype) in enumerate([((4, 3, 8, 8), torch.float32), ((2, 5), torch.float64), ((7,), torch.float32)]):
            x0, noise = random_inputs(i, shape, shape, dtype=dtype)
            tensor_like(call(fn, x0, 0.3, noise), shape, dtype, f"x_t for x0 of shape {shape} ({dtype})")

    def coefficients(fn):
        ab = 0.36  # sqrt = 0.6, sqrt(1 - ab) = 0.8
        one, zero = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        signal = call(fn, one, ab, zero)[0].item()
        noise = call(fn, zero, ab, one)[0].item()
        if abs(signal - 0.6) < 1e-9 and abs(noise - 0.8) < 1e-9:
            return
        if abs(signal - 0.8) < 1e-9 and abs(noise - 0.6) < 1e-9:
            raise Fail("the coefficients are swapped: x0 takes sqrt(alpha_bar), the noise sqrt(1 - alpha_bar)")
        if abs(signal - ab) < 1e-9 or abs(noise - (1 - ab)) < 1e-9:
            raise Fail(f"at alpha_bar = {ab} x0 is multiplied by {fmt(signal)} and the noise by {fmt(noise)}, not 0.6 and "
                       "0.8: the coefficients need square roots, sqrt(alpha_bar) and sqrt(1 - alpha_bar): alpha_bar and "
                       "1 - alpha_bar are variances, and a sample is scaled by the standard deviation (a variance used as a std)")
        if abs(noise - 0.4) < 1e-9:
            raise Fail("the noise is multiplied by 1 - sqrt(alpha_bar) = 0.4, not sqrt(1 - alpha_bar) = 0.8")
        raise Fail(f"at alpha_bar = {ab} x0 is multiplied by {fmt(signal)} (expected sqrt(ab) = 0.6) and the noise by "
                   f"{fmt(noise)} (expected sqrt(1 - ab) = 0.8)")

    def ends(fn):
        x0, noise = random_inputs(3, (2, 3), (2, 3))
        if not same(call(fn, x0, 1.0, noise), x0):
            raise Fail("alpha_bar = 1 must give x0 itself (no noise yet)")
        if not same(call(fn, x0, 0.0, noise), noise):
            raise Fail("alpha_bar = 0 must give the noise itself (nothing of x0 left)")

    def variance(fn):
        x0, noise = random_inputs(4, (200_000,), (200_000,))
        var = call(fn, x0, 0.3, noise).var().item()
        if abs(var - 1) > 0.02:
            raise Fail(f"unit-variance x0 and noise give Var(x_t) = {var:.3f}, not 1: the process must preserve the "
                       "variance (alpha_bar + (1 - alpha_bar) = 1)")

    def per_sample(fn):
        x0, noise = random_inputs(5, (4, 3, 2, 2), (4, 3, 2, 2))
        ab = torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=torch.float64).reshape(4, 1, 1, 1)
        per_sample_check(fn, lambda a, rows: fn(x0[rows], a, noise[rows]),
                         lambda a, rows: objectives.q_sample(x0[rows], a, noise[rows]), ab, "x_t")

    def oracle(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 4, 4), torch.float32), ((5, 6), torch.float64), ((1, 1, 9), torch.float32)]):
            x0, noise = random_inputs(10 + i, shape, shape, dtype=dtype)
            for ab in (0.0047, 0.5, 0.9999):
                if not same(call(fn, x0, ab, noise), objectives.q_sample(x0, ab, noise), *tolerance(dtype)):
                    raise Fail(f"differs from minidiff.objectives.q_sample at alpha_bar = {ab}, shape {shape}, {dtype}")

    return [("shape and dtype of x_t", shapes), ("the coefficients of x0 and the noise", coefficients),
            ("alpha_bar = 1 gives x0, alpha_bar = 0 the noise", ends), ("Var(x_t) = 1 for unit-variance data", variance),
            ("one alpha_bar per sample broadcasts", per_sample), ("agrees with minidiff on random inputs", oracle)]


# ------------------------------------------------------------------------------------------------
# 2. alpha_bar of the linear, cosine and scaled-linear schedules; Table 1
# ------------------------------------------------------------------------------------------------


def reference_alphas_cumprod(kind: str, num_timesteps: int = 1000) -> torch.Tensor:
    return schedules.alphas_cumprod(schedules.make_betas(kind, num_timesteps))


def _terminal(ab: torch.Tensor) -> tuple[float, float]:
    a = ab[-1].item()
    return a / (1 - a), math.sqrt(max(a, 0.0))


def schedule_mistakes(kind: str, T: int = 1000) -> list:
    """Known wrong alpha_bar curves of a schedule, with what went wrong."""
    betas = schedules.make_betas(kind, T)
    right = schedules.alphas_cumprod(betas)
    out = [("alpha_bar is shifted by one step: alpha_bar_0 = 1 - beta_0 (index 0 already has one step of noise), "
            "so the cumulative product must include beta_t itself", torch.cat([torch.ones(1, dtype=torch.float64), right[:-1]])),
           ("alpha_bar was taken as the cumulative product of the betas; it is the product of alpha = 1 - beta",
            torch.cumprod(betas, 0))]
    if kind == "scaled_linear":
        out.append(("the betas are linear in beta; Stable Diffusion's are linear in sqrt(beta): "
                    "linspace(sqrt(0.00085), sqrt(0.012), T) ** 2", schedules.alphas_cumprod(torch.linspace(0.00085, 0.012, T, dtype=torch.float64))))
    if kind == "cosine":
        out.append(("the terminal SNR is 0: the cosine betas were not clipped at 0.999 (Nichol and Dhariwal clip them; "
                    "the paper's Table 1 row is the clipped schedule)", schedules.alphas_cumprod(schedules.make_betas("cosine", T, cosine_clip=None))))
        out.append(("the cosine schedule lacks the offset s = 0.008 in f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)",
                    schedules.alphas_cumprod(schedules.cosine_betas(T, s=0.0))))
    return out


def table1_check(kind: str):
    def check(fn):
        ab = call(fn, kind, 1000)
        tensor_like(ab, (1000,), torch.float64, f"alpha_bar of {kind!r}")
        paper_snr, paper_sab = TABLE1[kind]
        snr_T, sab_T = _terminal(ab)
        if abs(snr_T / paper_snr - 1) < 1e-4 and abs(sab_T / paper_sab - 1) < 1e-4:
            return
        for hint, wrong in schedule_mistakes(kind):
            if same(ab, wrong, 1e-6, 1e-12):
                raise Fail(f"SNR(T) is {snr_T:.6g}, not {paper_snr:g}: {hint}")
        raise Fail(f"SNR(T) is {snr_T:.6g} and sqrt(alpha_bar_T) {sab_T:.6g}; Table 1 says {paper_snr:g} and {paper_sab:g}")
    return check


def alphas_cumprod_checks():
    def dtype_and_length(fn):
        for kind in schedules.BETA_SCHEDULES:
            for T in (1000, 50):
                ab = call(fn, kind, T)
                if isinstance(ab, torch.Tensor) and ab.dtype == torch.float32:
                    raise Fail(f"alpha_bar of {kind!r} is float32: keep schedules in float64 (Table 1's cosine row and "
                               "the rescale of Algorithm 1 lose digits in float32)")
                tensor_like(ab, (T,), torch.float64, f"alpha_bar of {kind!r} with T = {T}")

    def decreasing(fn):
        for kind in schedules.BETA_SCHEDULES:
            ab = call(fn, kind, 1000)
            first = schedules.make_betas(kind, 1000)[0].item()
            explain(ab[0], 1 - first, [("alpha_bar_0 is 1, which belongs to t = -1: index 0 is after the first step, "
                                        "alpha_bar_0 = 1 - beta_0", 1.0)],
                    f"alpha_bar_0 of {kind!r} is {fmt(ab[0].item())}, expected 1 - beta_0 = {fmt(1 - first)}")
            if not bool((ab[1:] < ab[:-1]).all()):
                raise Fail(f"alpha_bar of {kind!r} does not decrease at every step")

    def oracle(fn):
        for kind in schedules.BETA_SCHEDULES:
            for T in (1000, 257, 10):
                ab = call(fn, kind, T)
                explain(ab, reference_alphas_cumprod(kind, T), [(h, w) for h, w in schedule_mistakes(kind, T)],
                        f"{kind!r} with T = {T} differs from minidiff.schedules (make_betas, then alphas_cumprod)", 1e-9, 1e-15)

    return [("float64, one alpha_bar per timestep", dtype_and_length),
            ("alpha_bar_0 = 1 - beta_0, then decreasing", decreasing),
            ("Table 1, linear row: SNR(T) = 4.035993e-05", table1_check("linear")),
            ("Table 1, cosine row: SNR(T) = 2.428735e-09", table1_check("cosine")),
            ("Table 1, Stable Diffusion row: SNR(T) = 0.004682", table1_check("scaled_linear")),
            ("agrees with minidiff for T = 1000, 257, 10", oracle)]


# ------------------------------------------------------------------------------------------------
# 3. Algorithm 1: rescale to zero terminal SNR
# ------------------------------------------------------------------------------------------------


def _betas_from_alpha_bar(ab: torch.Tensor) -> torch.Tensor:
    return 1 - torch.cat([ab[:1], ab[1:] / ab[:-1]])


def rescale_mistakes(betas: torch.Tensor) -> list:
    ab = schedules.alphas_cumprod(betas)
    shifted = ab - ab[-1]
    alphas = 1 - betas
    alphas_rescaled = (alphas - alphas[-1]) * (alphas[0] / (alphas[0] - alphas[-1]))
    sab = ab.sqrt()
    return [
        ("the terminal SNR is not 0: the rescale was not applied", betas),
        ("the shift and scale were applied to alpha_bar, not to sqrt(alpha_bar): Algorithm 1 shifts and scales "
         "sqrt(alpha_bar), then squares it", _betas_from_alpha_bar(shifted * (ab[0] / shifted[0]))),
        ("the rescale was applied to alpha = 1 - beta instead of sqrt(alpha_bar)", 1 - alphas_rescaled),
        ("the first alpha_bar changed: after subtracting the last sqrt(alpha_bar), multiply by "
         "sqrt(ab_0) / (sqrt(ab_0) - sqrt(ab_T)) so the first value is unchanged", _betas_from_alpha_bar((sab - sab[-1]) ** 2)),
    ]


def rescale_checks():
    sd = schedules.make_betas("scaled_linear", 1000)

    def shape(fn):
        tensor_like(call(fn, sd.clone()), (1000,), torch.float64, "the rescaled betas")

    def terminal(fn):
        ab = schedules.alphas_cumprod(call(fn, sd.clone()))
        a = ab[-1].item()
        if abs(a) < 1e-15:
            return
        if abs(a - 0.068265**2) < 1e-6:
            raise Fail("the terminal SNR is 0.0047, not 0: the rescale was not applied")
        raise Fail(f"alpha_bar_T is {fmt(a)}, not 0: subtract the last sqrt(alpha_bar) from every sqrt(alpha_bar)")

    def first(fn):
        ab0 = schedules.alphas_cumprod(sd)[0].item()
        new = schedules.alphas_cumprod(call(fn, sd.clone()))[0].item()
        if abs(new / ab0 - 1) > 1e-9:
            if abs(new / ab0 - 1) < 1e-3:
                raise Fail(f"the first alpha_bar moved by {abs(new / ab0 - 1):.1e} (relative): compute in float64, "
                           "float32 loses about 2e-4 of the first beta")
            raise Fail("the first alpha_bar changed: after subtracting the last sqrt(alpha_bar), multiply by "
                       "sqrt(ab_0) / (sqrt(ab_0) - sqrt(ab_T)) so the first value is unchanged")

    def last_beta(fn):
        b = call(fn, sd.clone())[-1].item()
        if abs(b - 1) > 1e-12:
            raise Fail(f"the last beta is {fmt(b)}, not 1: at zero terminal SNR the last step removes what is left of x0")

    def twice(fn):
        once = call(fn, sd.clone())
        again = call(fn, once.clone())
        if not same(again, once, 1e-9, 1e-15):
            raise Fail("applying the rescale twice changed the schedule: on a zero-SNR schedule the shift is 0 and "
                       "the scale is 1, so nothing may change")

    def oracle(fn):
        g = torch.Generator().manual_seed(0)
        cases = [schedules.make_betas(k, 1000) for k in schedules.BETA_SCHEDULES]
        cases += [torch.rand(n, generator=g, dtype=torch.float64).sort().values * 0.05 + 1e-4 for n in (100, 37)]
        for betas in cases:
            got = call(fn, betas.clone())
            explain(got, schedules.rescale_zero_terminal_snr(betas), rescale_mistakes(betas),
                    "differs from minidiff.schedules.rescale_zero_terminal_snr", 1e-8, 1e-12)

    return [("float64 betas of the same length", shape), ("Table 1 after Algorithm 1: terminal SNR = 0", terminal),
            ("the first alpha_bar is unchanged", first), ("the last beta is 1", last_beta),
            ("applying it twice changes nothing", twice),
            ("agrees with minidiff on the three schedules and random ones", oracle)]


EXERCISES = [
    Exercise(1, "forward-process", "The forward process q(x_t | x0)", LIN, "01_forward_process.md", "q_sample",
             "def q_sample(x0, alpha_bar, noise):",
             "Draw x_t from q(x_t | x0): x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise (Lin et al. eq. 4).\n\n"
             "x0, noise: tensors of the same shape and dtype. alpha_bar: a float, or a tensor that broadcasts\n"
             "against x0 (one value per sample, shape [B, 1, 1, 1]). Returns x_t with x0's shape and dtype.",
             objectives.q_sample, "minidiff.objectives.q_sample", q_sample_checks()),
    Exercise(2, "schedules", "alpha_bar of three schedules, and Table 1", LIN, "02_snr_leakage.md", "alphas_cumprod",
             "def alphas_cumprod(kind, num_timesteps=1000):",
             "alpha_bar_t = prod_{s <= t} (1 - beta_s), t = 0..T-1, as a float64 tensor of length T.\n\n"
             "kind \"linear\": betas evenly spaced from 1e-4 to 0.02 (Ho et al.).\n"
             "kind \"cosine\": alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2), s = 0.008;\n"
             "    beta_t = 1 - alpha_bar(t+1) / alpha_bar(t) for t = 0..T-1, clipped at 0.999 (Nichol and Dhariwal).\n"
             "kind \"scaled_linear\": Stable Diffusion's, sqrt(beta) evenly spaced from sqrt(0.00085) to sqrt(0.012).\n"
             "Table 1 of Lin et al. gives SNR(T) = alpha_bar_T / (1 - alpha_bar_T) of each.",
             reference_alphas_cumprod, "minidiff.schedules.make_betas and alphas_cumprod", alphas_cumprod_checks()),
    Exercise(3, "zero-terminal-snr", "Algorithm 1: rescale to zero terminal SNR", LIN, "02_snr_leakage.md",
             "rescale_zero_terminal_snr", "def rescale_zero_terminal_snr(betas):",
             "Lin et al. Algorithm 1: betas (float64, length T) -> betas whose last alpha_bar is exactly 0.\n\n"
             "In sqrt(alpha_bar): subtract the last value (so it becomes 0), multiply so the first value is\n"
             "unchanged, square to get alpha_bar back, and recover the betas from ratios of consecutive\n"
             "alpha_bar (the first beta is 1 - alpha_bar_0). Work in float64.",
             schedules.rescale_zero_terminal_snr, "minidiff.schedules.rescale_zero_terminal_snr", rescale_checks()),
]
