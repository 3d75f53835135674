"""Higher-order samplers: DPM-Solver++ (2M, 3M) and Heun, in x0 form, exact at zero SNR.

Write a = alpha_bar, alpha = sqrt(a), sigma = sqrt(1 - a) and lambda = log(alpha / sigma), the
half log-SNR. The probability-flow ODE in x0 form (Lu et al. 2022, DPM-Solver++ eq. 9) has the
exact solution from t to s

    x_s = (sigma_s / sigma_t) x_t + sigma_s * integral_{lambda_t}^{lambda_s} e^lambda x0(lambda) dlambda

where x0(lambda) is the model's x0 prediction along the path. The samplers differ only in how
they approximate x0(lambda) over the step: constant (first order: DDIM), a line through the last
two predictions (2M), a parabola through the last three (3M), or the trapezoid rule between
the ends of the step (Heun).

Why this form is exact at both ends of a zero-terminal-SNR schedule. With h = lambda_s -
lambda_t, the constant part of the integral is alpha_s (1 - e^-h) x0, and

    alpha_s e^-h = alpha_t sigma_s / sigma_t,

so every coefficient below is a product of alphas and sigmas, never of e^lambda alone:
  - from a = 0 (lambda = -inf, alpha_t = 0, sigma_t = 1, e^-h = 0) the first step is
    x_s = sigma_s x_t + alpha_s x0, with no inf - inf and no 0 * inf;
  - to a = 1 (lambda = +inf, sigma_s = 0, e^-h = 0) it returns x0 exactly. That step is always
    taken at first order (DPM-Solver++'s "lower_order_final"): the higher-order terms of an
    infinitely long step grow like h, so no higher order is defined there.
A previous prediction made at a = 0 lies an infinite lambda-distance back, so the slope it gives
is 0: the step after a zero-SNR start reduces to first order on its own, with no special case.
"""

from __future__ import annotations

import math

SOLVER_ORDERS = {"dpmpp_2m": 2, "dpmpp_3m": 3}  # multistep solvers: how many past predictions each uses


def half_log_snr(ab: float) -> float:
    """lambda = log(sqrt(a) / sqrt(1 - a)) = log(SNR) / 2 (Lu et al. 2022, Sec. 3); -inf at a = 0, +inf at a = 1."""
    if ab <= 0.0:
        return -math.inf
    if ab >= 1.0:
        return math.inf
    return 0.5 * (math.log(ab) - math.log1p(-ab))


def first_order_step(x_t, x0, ab_t: float, ab_s: float):
    """DPM-Solver++ first order (Lu et al. 2022, eq. 10), the same map as deterministic DDIM:

        x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^-h) x0
            = (sigma_s / sigma_t) x_t + (alpha_s - alpha_t sigma_s / sigma_t) x0

    Finite for every a_t < 1, a_t = 0 included, and for a_s = 1 (then x_s = x0).
    """
    alpha_t, sigma_t = math.sqrt(ab_t), math.sqrt(1.0 - ab_t)
    alpha_s, sigma_s = math.sqrt(ab_s), math.sqrt(1.0 - ab_s)
    ratio = sigma_s / sigma_t
    return ratio * x_t + (alpha_s - alpha_t * ratio) * x0


def dpmpp_2m_step(x_t, x0, x0_prev, ab_t: float, ab_s: float, ab_prev: float):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): one network call per step, second order.

    The first-order step is taken with the extrapolated prediction

        D = x0 + (1 / (2 r)) (x0 - x0_prev),   r = h_prev / h,

    h = lambda_s - lambda_t the step and h_prev = lambda_t - lambda_prev the one before. From a
    zero-SNR previous point h_prev = inf and the correction is 0. Needs a_s < 1 (the last step
    is first order).
    """
    lam_prev, lam_t, lam_s = half_log_snr(ab_prev), half_log_snr(ab_t), half_log_snr(ab_s)
    if not math.isfinite(lam_s):
        raise ValueError("dpmpp_2m_step needs alpha_bar_s < 1: the step to a clean sample is first order")
    half_inv_r = (lam_s - lam_t) / (2.0 * (lam_t - lam_prev))  # 0 when lam_prev = -inf
    return first_order_step(x_t, x0 + half_inv_r * (x0 - x0_prev), ab_t, ab_s)


def dpmpp_3m_step(x_t, x0, x0_prev, x0_prev2, ab_t: float, ab_s: float, ab_prev: float, ab_prev2: float):
    """DPM-Solver++(3M): the exponential integrator with x0(lambda) replaced by the parabola
    through the last three predictions (Lu et al. 2022, Sec. 4 and App. B; the Taylor form).

    With u = lambda - lambda_t, x0 ~ x0 + u d1 + u^2 / 2 d2, and the exact weights

        integral_0^h e^-(h - u) du            = 1 - e^-h
        integral_0^h e^-(h - u) u du          = h - 1 + e^-h
        integral_0^h e^-(h - u) u^2 / 2 du    = h^2 / 2 - h + 1 - e^-h

    x_s = (sigma_s / sigma_t) x_t + alpha_s [(1 - e^-h) x0 + (h - 1 + e^-h) d1 + (h^2/2 - h + 1 - e^-h) d2],
    with d1, d2 the slope at lambda_t and the curvature of the parabola (Newton's divided
    differences). A point at a = 0 (infinitely far back) contributes no slope and no curvature.
    """
    lam_p2, lam_p1, lam_t, lam_s = (half_log_snr(a) for a in (ab_prev2, ab_prev, ab_t, ab_s))
    if not math.isfinite(lam_s):
        raise ValueError("dpmpp_3m_step needs alpha_bar_s < 1: the step to a clean sample is first order")
    h, h0, h1 = lam_s - lam_t, lam_t - lam_p1, lam_p1 - lam_p2
    slope_new = (x0 - x0_prev) * (1.0 / h0)  # divided difference over [lambda_prev, lambda_t]
    slope_old = (x0_prev - x0_prev2) * (1.0 / h1)  # over [lambda_prev2, lambda_prev]; 0 if it starts at -inf
    curv_half = (slope_new - slope_old) * (1.0 / (h0 + h1))  # second divided difference = d2 / 2
    d1 = slope_new + h0 * curv_half
    e = math.exp(-h)
    alpha_s = math.sqrt(ab_s)
    w1, w2 = h - 1.0 + e, h * h / 2.0 - h + 1.0 - e
    return first_order_step(x_t, x0, ab_t, ab_s) + alpha_s * w1 * d1 + alpha_s * w2 * (2.0 * curv_half)


def heun_step(x_t, x0, x0_end, ab_t: float, ab_s: float):
    """Heun's second-order step (Karras et al. 2022, EDM Algorithm 1) in the x0 frame.

    First-order DPM-Solver++ (DDIM) is Euler's method for d(x / sigma) / d(alpha / sigma) = x0
    (divide `first_order_step` by sigma_s). Heun's method averages the slope at both ends:
    x0_end is the prediction at a_s for the Euler point `first_order_step(x_t, x0, a_t, a_s)`,
    and the step is repeated with (x0 + x0_end) / 2. Two network calls per step.

    EDM takes the same step on x / alpha against sigma / alpha (its sigma), where the slope is
    eps. At a = 0 that sigma is infinite and the correction term is inf * (eps - eps_end), so
    EDM's own variables cannot start at zero SNR; alpha / sigma runs from 0 and they can.
    """
    return first_order_step(x_t, 0.5 * (x0 + x0_end), ab_t, ab_s)
