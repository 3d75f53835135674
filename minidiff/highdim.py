"""The high-dimensional schedule lab (Aranguri, Biroli, Mezard, Vanden-Eijnden 2025, arXiv 2501.00988).

Generative sampling with an *exact* denoiser, so that the only error left is the time grid:

    interpolant   I_tau = c alpha(tau) z + beta(tau) a,  tau: 0 (noise) -> 1 (data)
                  VP: c = 1; VE: c = sqrt(d); alpha/beta "linear" (1 - tau, tau) or "trig" (sqrt(1 - tau^2), tau)
    ODE           dX/dtau = b(tau, X) = (alpha'/alpha) X + (beta' - alpha' beta / alpha) E[a | I_tau = X]
    time change   tau = tau(t) on the uniform grid t_k = k / N: uniform (tau = t), VP-dilated, VE-dilated, any callable
    integrator    forward Euler, X_{k+1} = X_k + (tau_{k+1} - tau_k) b(tau_k, X_k)

on the two data models of `minidiff.mixtures` (two-mode Gaussian mixture, Curie-Weiss). For the
mixture the Euler iterates split exactly into one scalar along mu and a gain on the orthogonal part
(`euler_mixture_reduced`), so d = 1e12 costs the same as d = 10.

Findings reproduced here: VP with uniform steps decides the mode in one step near tau = 0 and piles
samples into the majority mode (high-level feature lost); VE with uniform steps never resolves the
window 1 - tau ~ 1/sqrt(d) and collapses samples on the mode centres (low-level feature lost); uniform
grids need N ~ sqrt(d); the dilated schedules need a number of steps independent of d.

The bridge to DDPM/DDIM (`interpolant_time`, `speciation_alpha_bar`, `dilated_timesteps`) maps an
alphas_cumprod onto a VP interpolant and spends half of a discrete sampler's steps in the speciation
window alpha_bar ~ 1/Lambda (Biroli et al. 2024).

Command line: python -m minidiff.highdim {trajectories, features, table, bridge} --help
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from minidiff.mixtures import CurieWeiss, GaussianMixture, PosteriorMeanModel, ReducedMixture

KINDS = ("vp", "ve")
PATHS = ("linear", "trig")
SCHEDULES = ("uniform", "dilated")


# ------------------------------------------------------------------------------------------------
# Stochastic interpolants
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interpolant:
    """I_tau = c alpha(tau) z + beta(tau) a with alpha(0) = beta(1) = 1, alpha(1) = beta(0) = 0.

    path "linear": alpha = 1 - tau, beta = tau (the paper's main choice).
    path "trig":   alpha = sqrt(1 - tau^2), beta = tau (the usual VP diffusion with tau = exp(-t)).
    c = 1 is VP, c = sqrt(d) is VE: they differ only in the variance c^2 of the starting noise.
    """

    c: float = 1.0
    path: str = "linear"

    def __post_init__(self):
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")

    def alpha(self, tau: float) -> float:
        return 1.0 - tau if self.path == "linear" else math.sqrt(max(1.0 - tau * tau, 0.0))

    def beta(self, tau: float) -> float:
        return tau

    def signal_noise(self, tau: float) -> tuple[float, float]:
        """(beta(tau), c alpha(tau)): I_tau = signal * a + noise * z, the denoisers' convention."""
        return self.beta(tau), self.c * self.alpha(tau)

    def drift_coefficients(self, tau: float) -> tuple[float, float]:
        """(A, B) with b(tau, x) = A x + B E[a | I_tau = x], A = alpha'/alpha, B = beta' - alpha' beta/alpha.

        linear: A = -1/(1 - tau), B = 1/(1 - tau), so b = (E[a|x] - x) / (1 - tau).
        trig:   A = -tau/(1 - tau^2), B = 1/(1 - tau^2).
        Both blow up at tau = 1, where Euler never evaluates them (the last step starts before 1).
        """
        if tau >= 1.0:
            raise ValueError("the velocity is singular at tau = 1; Euler evaluates it only at tau_k < 1")
        if self.path == "linear":
            return -1.0 / (1.0 - tau), 1.0 / (1.0 - tau)
        return -tau / (1.0 - tau * tau), 1.0 / (1.0 - tau * tau)

    def velocity(self, tau: float, x: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """The probability-flow velocity b(tau, x) from the denoiser output E[a | I_tau = x]."""
        a_coef, b_coef = self.drift_coefficients(tau)
        return a_coef * x + b_coef * denoised

    def sample(self, tau: float, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """I_tau for data a and noise z."""
        signal, noise = self.signal_noise(tau)
        return noise * z + signal * a


def make_interpolant(kind: str, d: int, path: str = "linear") -> Interpolant:
    """VP (c = 1) or VE (c = sqrt(d)) in dimension d."""
    if kind not in KINDS:
        raise ValueError(f"kind must be 'vp' or 've', got {kind!r}")
    return Interpolant(c=1.0 if kind == "vp" else math.sqrt(d), path=path)


# ------------------------------------------------------------------------------------------------
# Time changes tau(t)
# ------------------------------------------------------------------------------------------------


def uniform_time(t: torch.Tensor) -> torch.Tensor:
    """tau(t) = t: every step denoises by the same amount of tau."""
    return t


@dataclass(frozen=True)
class DilatedTime:
    """The paper's two-piece schedules, kink at t = 1/2, r = kappa / sqrt(d).

    vp: tau = 2 r t on [0, 1/2], then r + (1 - r)(2t - 1): half of the steps inside the window
        tau < r next to the noise end, where VP decides the mode.
    ve: tau = 2 (1 - r) t on [0, 1/2], then (1 - r) + r (2t - 1): half of the steps inside the
        window 1 - tau < r next to the data end, where VE sets the shape inside a mode.
    These are the authors' formulas, for the linear path. The VP window is set by the signal
    beta(tau) = tau, the same for both paths; the VE window by the noise c alpha(tau). So for
    path="trig" the VE schedule is carried over through alpha: alpha_trig(tau(t)) = 1 - tau_lin(t),
    i.e. tau = sqrt(1 - (1 - tau_lin)^2). (Taken literally on the trig path, whose
    alpha ~ sqrt(2 (1 - tau)) is not Lipschitz at tau = 1, the linear formula needs thousands of
    steps; see docs/highdim.md.)
    Use an even number of steps so t = 1/2 is a grid point.
    """

    kind: str
    d: float
    kappa: float = 3.0
    path: str = "linear"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be 'vp' or 've', got {self.kind!r}")
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")
        if not 0.0 < self.r < 1.0:
            raise ValueError(
                f"the window r = kappa / sqrt(d) = {self.r:.3g} must lie in (0, 1); "
                f"lower kappa ({self.kappa}) or raise d ({self.d:g})"
            )

    @property
    def r(self) -> float:
        return self.kappa / math.sqrt(self.d)

    @property
    def knot(self) -> float:
        """tau at the kink t = 1/2 on the linear path."""
        return self.r if self.kind == "vp" else 1.0 - self.r

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        k = self.knot
        tau = torch.where(t <= 0.5, 2.0 * k * t, k + (1.0 - k) * (2.0 * t - 1.0))
        if self.kind == "ve" and self.path == "trig":
            return (1.0 - (1.0 - tau) ** 2).clamp(min=0.0).sqrt()
        return tau


def make_time_change(schedule, kind: str, d: float, kappa: float = 3.0, path: str = "linear") -> Callable:
    """"uniform", "dilated" (VP-dilated for vp, VE-dilated for ve), "vp_dilated", "ve_dilated",
    or any callable t -> tau (tensor in, tensor out) with tau(0) = 0 and tau(1) = 1."""
    if callable(schedule):
        return schedule
    if schedule == "uniform":
        return uniform_time
    if schedule == "dilated":
        return DilatedTime(kind, d, kappa, path)
    if schedule in ("vp_dilated", "ve_dilated"):
        return DilatedTime(schedule[:2], d, kappa, path)
    raise ValueError(f"unknown schedule {schedule!r}: use 'uniform', 'dilated', 'vp_dilated', 've_dilated' or a callable")


def tau_grid(time_change: Callable, num_steps: int) -> torch.Tensor:
    """tau(t_k) at t_k = k / N, k = 0..N, float64 [N + 1]; checks the ends and the monotonicity."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if isinstance(time_change, DilatedTime) and num_steps % 2:
        raise ValueError(
            f"the dilated schedule has a kink at t = 1/2; use an even number of steps so it is a grid point (got {num_steps})"
        )
    t = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    taus = torch.as_tensor(time_change(t), dtype=torch.float64)
    if abs(taus[0].item()) > 1e-12 or abs(taus[-1].item() - 1.0) > 1e-12:
        raise ValueError(f"a time change must map 0 -> 0 and 1 -> 1, got tau(0)={taus[0]:.3g}, tau(1)={taus[-1]:.3g}")
    if (taus.diff() < 0).any():
        raise ValueError("a time change must be non-decreasing")
    taus[0], taus[-1] = 0.0, 1.0
    return taus


# ------------------------------------------------------------------------------------------------
# Forward Euler
# ------------------------------------------------------------------------------------------------


def euler(interpolant: Interpolant, denoise: Callable, x_start: torch.Tensor, taus: torch.Tensor,
          return_trajectory: bool = False):
    """Forward Euler for dX/dtau = b(tau, X) on the grid `taus` from X = x_start at tau = 0.

    denoise(x, signal, noise) is an exact E[a | signal a + noise z = x] (see `minidiff.mixtures`).
    For the linear path the last step lands exactly on E[a | X_{N-1}]. Returns the final X, or
    (final X, list of the N + 1 iterates) with return_trajectory.
    """
    x = x_start
    trajectory = [x] if return_trajectory else None
    for k in range(len(taus) - 1):
        tau, dtau = taus[k].item(), (taus[k + 1] - taus[k]).item()
        if dtau > 0:  # a flat stretch of a user time change is no step at all
            signal, noise = interpolant.signal_noise(tau)
            x = x + dtau * interpolant.velocity(tau, x, denoise(x, signal, noise))
        if return_trajectory:
            trajectory.append(x)
    return (x, trajectory) if return_trajectory else x


# ------------------------------------------------------------------------------------------------
# The Gaussian mixture in one scalar and one gain
# ------------------------------------------------------------------------------------------------


def mixture_noise(n: int, d: int, c: float, generator: torch.Generator | None = None):
    """The starting point X_0 = c z of n samples, reduced: (u0, perp_norm).

    u0 = c mu_hat . z ~ c N(0, 1) is the coordinate along mu; perp_norm = c |z_perp| with
    |z_perp|^2 ~ chi^2_{d-1}, drawn exactly (sum of squares) for d <= 1001 and by the
    Wilson-Hilferty cube-root normal approximation above (relative error of order 1/d).
    """
    u0 = c * torch.randn(n, generator=generator, dtype=torch.float64)
    k = d - 1
    if k <= 1000:
        chi2 = (torch.randn(n, k, generator=generator, dtype=torch.float64) ** 2).sum(-1)
    else:
        g = torch.randn(n, generator=generator, dtype=torch.float64)
        chi2 = k * (1.0 - 2.0 / (9 * k) + g * math.sqrt(2.0 / (9 * k))) ** 3
    return u0, c * chi2.sqrt()


def reduce_noise(z: torch.Tensor, c: float):
    """(u0, perp_norm) of an explicit starting noise z [n, d] (to compare with the full simulation)."""
    d = z.shape[-1]
    u = z.sum(-1) / math.sqrt(d)
    perp = z - u[:, None] / math.sqrt(d)
    return c * u, c * perp.norm(dim=-1)


def reduced_coefficients(interpolant: Interpolant, mixture: GaussianMixture, taus: torch.Tensor):
    """Per-step (g_k, q_k, s_k) of the reduced Euler map u -> g_k u + q_k tanh(h + s_k u).

    With E[a|x] = lin x + pref tanh(h + slope u) mu_hat and b = A x + B E[a|x]:
    g_k = 1 + dtau_k (A_k + B_k lin_k), q_k = dtau_k B_k pref_k, s_k = slope_k. Steps of zero
    length (flat stretches of a user time change) are the identity (g = 1, q = 0).
    """
    gs, qs, ss = [], [], []
    for k in range(len(taus) - 1):
        tau, dtau = taus[k].item(), (taus[k + 1] - taus[k]).item()
        if dtau <= 0:
            gs.append(1.0), qs.append(0.0), ss.append(0.0)
            continue
        a_coef, b_coef = interpolant.drift_coefficients(tau)
        lin, pref, slope = mixture.posterior_coefficients(*interpolant.signal_noise(tau))
        gs.append(1.0 + dtau * (a_coef + b_coef * lin))
        qs.append(dtau * b_coef * pref)
        ss.append(slope)
    return gs, qs, ss


def euler_mixture_reduced(interpolant: Interpolant, mixture: GaussianMixture, taus: torch.Tensor,
                          u0: torch.Tensor, return_trajectory: bool = False):
    """Euler on the mixture, exactly, in O(N n) work whatever d.

    E[a|x] = lin x + pref tanh(h + slope u) mu_hat (`GaussianMixture.posterior_coefficients`),
    so with u = mu_hat . X and X_perp the rest,
        u_{k+1}      = g_k u_k + q_k tanh(h + s_k u_k)    (nonlinear, one scalar per sample)
        X_perp_{k+1} = g_k X_perp_k                      (linear, the same gain for all samples)
    (`reduced_coefficients`). Returns (u_N, G = prod g_k), or with return_trajectory
    (u [N+1, n], G [N+1]) at every grid point. A sample is X_N = u_N mu_hat + G X_perp_0: its
    coordinate mean is u_N / sqrt(d) and its coordinate std is |G| |X_perp_0| / sqrt(d - 1).
    """
    gs, qs, ss = reduced_coefficients(interpolant, mixture, taus)
    h = mixture.h
    u, tmp = u0.clone(), torch.empty_like(u0)
    us = [u0.clone()]
    for g, q, s in zip(gs, qs, ss):
        # in place: this loop is the whole cost of a run (about 1e5 steps at d = 1e8, uniform grid)
        torch.mul(u, s, out=tmp).add_(h).tanh_().mul_(q)
        u.mul_(g).add_(tmp)
        if return_trajectory:
            us.append(u.clone())
    gains = torch.tensor([1.0] + gs, dtype=torch.float64).cumprod(0)
    if return_trajectory:
        return torch.stack(us), gains
    return u, gains[-1].item()


# ------------------------------------------------------------------------------------------------
# Features
# ------------------------------------------------------------------------------------------------


@dataclass
class Features:
    """The two features of a batch of samples and their targets.

    high: weight of the + mode (fraction of samples whose coordinate mean is > 0), target p or W_+.
    low:  mixture: mean over samples of the coordinate std (target sigma);
          Curie-Weiss: fraction of coordinates whose sign disagrees with the sample's mode,
          target (1 - m)/2. `abs_mean` (Curie-Weiss) is mean |x_i|, which should reach 1.
    """

    high: float
    high_target: float
    low: float
    low_target: float
    abs_mean: float | None = None

    @property
    def high_error(self) -> float:
        return abs(self.high - self.high_target)

    @property
    def low_error(self) -> float:
        """Relative error of the low-level feature."""
        return abs(self.low / self.low_target - 1.0)

    def within(self, tol_high: float, tol_low: float) -> bool:
        return self.high_error <= tol_high and self.low_error <= tol_low


def mixture_features(mixture: GaussianMixture, coord_mean: torch.Tensor, coord_std: torch.Tensor) -> Features:
    """Features from each sample's coordinate mean and (unbiased) coordinate std."""
    return Features(high=(coord_mean > 0).double().mean().item(), high_target=mixture.p,
                    low=coord_std.mean().item(), low_target=mixture.sigma)


def mixture_features_of(mixture: GaussianMixture, x: torch.Tensor) -> Features:
    """Features of explicit samples x [n, d]."""
    return mixture_features(mixture, x.mean(-1), x.std(-1))


def curie_weiss_features(model: CurieWeiss, x: torch.Tensor) -> Features:
    """Features of (soft) spins x [n, d]."""
    mode = torch.where(x.sum(-1, keepdim=True, dtype=torch.float64) > 0, 1.0, -1.0).to(x.dtype)
    minority = (x * mode < 0).double().mean().item()
    return Features(high=(mode > 0).double().mean().item(), high_target=model.weight_plus,
                    low=minority, low_target=model.minority_fraction, abs_mean=x.abs().double().mean().item())


# ------------------------------------------------------------------------------------------------
# One run of a setup
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """VP or VE, uniform or dilated (or a user callable), with the alpha/beta path and kappa."""

    kind: str
    schedule: str | Callable = "uniform"
    path: str = "linear"
    kappa: float = 3.0

    @property
    def name(self) -> str:
        sched = self.schedule if isinstance(self.schedule, str) else "custom"
        return f"{self.kind}_{sched}"

    def taus(self, d: float, num_steps: int) -> torch.Tensor:
        return tau_grid(make_time_change(self.schedule, self.kind, d, self.kappa, self.path), num_steps)


def run_mixture(mixture: GaussianMixture, setup: Setup, num_steps: int, n: int = 4000, seed: int = 0) -> Features:
    """Sample n points with the scalar reduction and measure the features (any d)."""
    interp = make_interpolant(setup.kind, mixture.d, setup.path)
    gen = torch.Generator().manual_seed(seed)
    u0, perp0 = mixture_noise(n, mixture.d, interp.c, gen)
    u, gain = euler_mixture_reduced(interp, mixture, setup.taus(mixture.d, num_steps), u0)
    return mixture_features(mixture, u / math.sqrt(mixture.d), abs(gain) * perp0 / math.sqrt(mixture.d - 1))


def _mean_chi_over_sqrt(k: int) -> float:
    """E[chi_k] / sqrt(k) = sqrt(2/k) Gamma((k+1)/2) / Gamma(k/2); the series 1 - 1/(4k) + 1/(32k^2)
    beyond k = 1e4, where the difference of two huge lgammas would lose the digits."""
    if k > 10_000:
        return 1.0 - 1.0 / (4 * k) + 1.0 / (32 * k * k)
    return math.sqrt(2.0 / k) * math.exp(math.lgamma((k + 1) / 2) - math.lgamma(k / 2))


def mixture_features_exact(mixture: GaussianMixture, setup: Setup, num_steps: int, points: int = 513) -> Features:
    """The features' expectations, without Monte Carlo noise (used by the table and the N-curves).

    Weight of the + mode: the Euler map u0 -> u_N is non-decreasing (each step is
    u -> g u + q tanh(h + s u) with g, q s >= 0), so P(u_N > 0) = P(u0 > u0*) for the root u0*,
    found on `points` quantiles of u0 ~ N(0, c^2) and refined by linear interpolation.
    Spread: |G| c E[chi_{d-1}] / sqrt(d - 1), exactly (the orthogonal part only gets the gain).
    """
    interp = make_interpolant(setup.kind, mixture.d, setup.path)
    quantiles = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    u0 = interp.c * math.sqrt(2.0) * torch.erfinv(2 * quantiles - 1)
    u, gain = euler_mixture_reduced(interp, mixture, setup.taus(mixture.d, num_steps), u0)
    positive = u > 0
    first = int(positive.int().argmax()) if positive.any() else points
    if positive[first:].all() and not positive[:first].any():
        if first == 0 or first == points:
            weight = 1.0 - first / points  # root beyond the outer quantiles: within 1/(2 points)
        else:
            lo, hi = u[first - 1].item(), u[first].item()
            root = u0[first - 1].item() + (u0[first] - u0[first - 1]).item() * (-lo) / (hi - lo)
            weight = 0.5 * math.erfc(root / (interp.c * math.sqrt(2.0)))
    else:  # not monotone (a user time change with huge steps): count the quantiles instead
        weight = positive.double().mean().item()
    spread = abs(gain) * interp.c * _mean_chi_over_sqrt(mixture.d - 1)
    return Features(high=weight, high_target=mixture.p, low=spread, low_target=mixture.sigma)


def run_curie_weiss(model: CurieWeiss, setup: Setup, num_steps: int, n: int = 400, seed: int = 0,
                    dtype=torch.float32, return_trajectory: bool = False):
    """Full d x n simulation of Curie-Weiss; returns Features (and the trajectory if asked)."""
    interp = make_interpolant(setup.kind, model.d, setup.path)
    gen = torch.Generator().manual_seed(seed)
    x0 = interp.c * torch.randn(n, model.d, generator=gen, dtype=dtype)
    out = euler(interp, model.denoise, x0, setup.taus(model.d, num_steps), return_trajectory)
    x = out[0] if return_trajectory else out
    feats = curie_weiss_features(model, x)
    return (feats, out[1]) if return_trajectory else feats


def step_candidates(max_steps: int, ratio: float = 2 ** 0.25) -> list[int]:
    """Even step counts 2, 4, 6, ... growing geometrically by about `ratio`, up to max_steps."""
    out, value = [], 2.0
    while True:
        n = 2 * max(1, round(value / 2))
        if n > max_steps:
            return out
        if not out or n > out[-1]:
            out.append(n)
        value = max(value * ratio, out[-1] + 2)


def smallest_steps(run: Callable[[int], Features], tol_high: float, tol_low: float, max_steps: int,
                   ratio: float = 2 ** 0.25):
    """The smallest N on the geometric grid `step_candidates` with both features within tolerance.

    Brackets the answer by doubling (every 1/log2(ratio)-th candidate), then bisects inside the
    bracket, assuming that once N resolves the critical window the errors stay small for larger
    N. Cost about 4 N* steps. Returns (N or None if none up to max_steps, Features at N or at
    the largest N tried).
    """
    grid = step_candidates(max_steps, ratio)
    stride = max(1, round(math.log(2) / math.log(ratio)))
    cache = {}

    def ok(i):
        if i not in cache:
            cache[i] = run(grid[i])
        return cache[i].within(tol_high, tol_low)

    lo, hi = -1, None  # grid[lo] fails (or lo = -1), grid[hi] passes
    for i in list(range(0, len(grid), stride)) + [len(grid) - 1]:
        if ok(i):
            hi = i
            break
        lo = i
    if hi is None:
        return None, cache[max(cache)]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return grid[hi], cache[hi]


# ------------------------------------------------------------------------------------------------
# The bridge to DDPM / DDIM
# ------------------------------------------------------------------------------------------------


def interpolant_time(alphas_cumprod: torch.Tensor, path: str = "linear") -> torch.Tensor:
    """tau of each DDPM timestep, seen as a VP interpolant (c = 1).

    x_t = sqrt(ab) a + sqrt(1 - ab) z. For the trig path (alpha = sqrt(1 - tau^2), beta = tau)
    x_t = I_tau with tau = sqrt(ab). For the linear path, dividing by sqrt(ab) + sqrt(1 - ab)
    gives (1 - tau) z + tau a with tau = sqrt(ab) / (sqrt(ab) + sqrt(1 - ab)); see `interpolant_scale`.
    """
    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if path == "trig":
        return ab.sqrt()
    if path == "linear":
        return ab.sqrt() / (ab.sqrt() + (1 - ab).sqrt())
    raise ValueError(f"path must be one of {PATHS}, got {path!r}")


def interpolant_scale(alphas_cumprod: torch.Tensor, path: str = "linear") -> torch.Tensor:
    """s with x_t = s * I_tau(ab): sqrt(ab) + sqrt(1 - ab) for the linear path, 1 for trig."""
    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ab.sqrt() + (1 - ab).sqrt() if path == "linear" else torch.ones_like(ab)


def speciation_alpha_bar(window_eigenvalue: float) -> float:
    """alpha_bar at the speciation time t_s = 0.5 log(Lambda) of Biroli et al. 2024: 1 / Lambda.

    With alpha_bar = exp(-2t) (the Ornstein-Uhlenbeck clock), the signal along the top
    eigenvector (variance Lambda) becomes as large as the noise when ab Lambda ~ 1 - ab, i.e. at
    ab ~ 1 / Lambda. For the mixture Lambda ~ m^2 d, so the window in tau is ~ 1 / (m sqrt(d)).
    """
    if window_eigenvalue <= 1.0:
        raise ValueError(f"the window eigenvalue Lambda must exceed 1, got {window_eigenvalue}")
    return 1.0 / window_eigenvalue


def speciation_timestep(alphas_cumprod: torch.Tensor, window_eigenvalue: float) -> int:
    """The first 0-indexed timestep whose alpha_bar is at or below 1 / Lambda (T if none is)."""
    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    below = (ab <= speciation_alpha_bar(window_eigenvalue)).nonzero()
    return int(below[0]) if len(below) else len(ab)


def dilated_timesteps(alphas_cumprod: torch.Tensor, num_steps: int, window_eigenvalue: float,
                      kappa: float = 3.0, path: str = "linear") -> torch.Tensor:
    """A descending int64 tensor of timesteps that spends half of the steps in the speciation window.

    The VP-dilated schedule carried over to a discrete sampler: map each training timestep to its
    interpolant time tau (`interpolant_time`), put the window edge at tau_w = kappa tau(1 / Lambda)
    (= kappa / sqrt(d) for the mixture with m = 1), lay the first half of the steps uniformly in
    tau on [tau(T - 1), tau_w] and the second half on [tau_w, 1], and take for each the training
    timestep with the nearest tau. Like "trailing" it starts at T - 1; the step after the last
    listed timestep goes to a clean sample (alpha_bar = 1), which is tau = 1.
    Collisions (several targets on one timestep) are pushed down one timestep at a time.
    """
    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    num_train = len(ab)
    if num_steps < 2 or num_steps % 2:
        raise ValueError(f"num_steps must be even and at least 2 (half inside the window), got {num_steps}")
    if num_steps > num_train:
        raise ValueError(f"num_steps={num_steps} exceeds the {num_train} training timesteps")
    taus = interpolant_time(ab, path)
    tau_start = taus[-1].item()
    tau_w = kappa * interpolant_time(torch.tensor([speciation_alpha_bar(window_eigenvalue)]), path).item()
    if tau_w <= tau_start:
        raise ValueError(
            f"the schedule's last timestep (tau = {tau_start:.3g}, alpha_bar = {ab[-1].item():.3g}) is already past "
            f"the speciation window (tau_w = {tau_w:.3g}): its terminal SNR leaks the mode. Rescale it to zero "
            "terminal SNR (minidiff.schedules.rescale_zero_terminal_snr) or lower kappa."
        )
    if tau_w >= 1.0:
        raise ValueError(f"the window edge tau_w = {tau_w:.3g} must be below 1: raise Lambda or lower kappa")
    half = num_steps // 2
    first = tau_start + (tau_w - tau_start) * torch.arange(half, dtype=torch.float64) / half
    second = tau_w + (1.0 - tau_w) * torch.arange(half, dtype=torch.float64) / half
    targets = torch.cat([first, second])
    nearest = (taus[None, :] - targets[:, None]).abs().argmin(-1)
    steps = [num_train - 1]
    for t in nearest[1:].tolist():
        steps.append(min(t, steps[-1] - 1))
    if steps[-1] < 0:
        raise ValueError(f"{num_steps} steps do not fit in {num_train} timesteps with this window")
    return torch.tensor(steps, dtype=torch.int64)


def mixture_ddim(mixture: GaussianMixture, schedule, steps: int, spacing: str, n: int = 20_000,
                 seed: int = 0, kappa: float = 3.0, window_eigenvalue: float | None = None,
                 sampler: str = "ddim") -> Features:
    """Sample the mixture with minidiff.samplers.sample driven by the exact posterior mean E[x0 | x_t].

    The sampler runs on the reduced coordinates (mu_hat . x, one orthogonal coordinate)
    (`minidiff.mixtures.ReducedMixture`), which DDIM keeps exact, so any d costs the same. The
    orthogonal coordinate starts at 1 and ends at the common gain G, so the spread is
    |G| E[chi_{d-1}] / sqrt(d - 1). spacing "trailing"/"linspace"/"leading" go to the sampler;
    "dilated" passes `dilated_timesteps` with Lambda = m^2 d unless `window_eigenvalue` is given.
    """
    from minidiff import samplers  # the core sampler; imported here so the rest of the lab runs without it

    if sampler != "ddim":
        raise ValueError("mixture_ddim keeps one orthogonal coordinate, which is exact for deterministic DDIM only")
    model = PosteriorMeanModel(ReducedMixture(mixture), schedule.alphas_cumprod)
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.stack([torch.randn(n, generator=gen, dtype=torch.float64), torch.ones(n, dtype=torch.float64)], -1)
    kwargs = dict(prediction="x0", steps=steps, sampler=sampler, generator=gen, dtype=torch.float64,
                  x_T=x_t, progress=False)
    if spacing == "dilated":
        lam = window_eigenvalue if window_eigenvalue is not None else mixture.m**2 * mixture.d
        kwargs["timesteps"] = dilated_timesteps(schedule.alphas_cumprod, steps, lam, kappa)
    else:
        kwargs["spacing"] = spacing
    y = samplers.sample(model, (n, 2), schedule, **kwargs)
    return Features(high=(y[:, 0] > 0).double().mean().item(), high_target=mixture.p,
                    low=y[0, 1].abs().item() * _mean_chi_over_sqrt(mixture.d - 1), low_target=mixture.sigma)


# ------------------------------------------------------------------------------------------------
# Experiments (figures and the headline table)
# ------------------------------------------------------------------------------------------------

SETUPS = [Setup(k, s) for k in KINDS for s in SCHEDULES]


def _setups(args) -> list[Setup]:
    """The four setups with the command line's path and kappa."""
    return [Setup(s.kind, s.schedule, args.path, args.kappa) for s in SETUPS]
COLORS = {"vp_uniform": "tab:blue", "vp_dilated": "tab:cyan", "ve_uniform": "tab:red", "ve_dilated": "tab:orange"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _dims(text: str | None) -> list[int]:
    """"1e2,1e4" -> [100, 10000]; empty -> []."""
    return [int(float(v)) for v in text.split(",") if v.strip()] if text else []


def _committed(posterior_sign: Callable, interp: Interpolant, taus: torch.Tensor, xs: list, final_mean: torch.Tensor):
    """E[s | X_k] at each grid point before the last (which mode the sample is heading to), and the
    sign of the final coordinate mean at tau = 1, where the posterior is a step function."""
    rows = [posterior_sign(x, *interp.signal_noise(taus[k].item())) for k, x in enumerate(xs[:-1])]
    rows.append(torch.sign(final_mean))
    return torch.stack(rows)


def experiment_trajectories(args) -> dict:
    """Which mode each sample commits to, and single coordinates, against t for the four setups."""
    plt = _pyplot()
    d, steps, n_show = int(args.d), args.steps, 40
    mixture = GaussianMixture(d=d)
    cw = CurieWeiss(d=args.cw_d)
    fig, axes = plt.subplots(4, 4, figsize=(16, 13), sharex=True)
    summary = {}
    t = torch.linspace(0, 1, steps + 1)
    for col, setup in enumerate(_setups(args)):
        interp = make_interpolant(setup.kind, d, setup.path)
        taus = setup.taus(d, steps)
        # the exact marginal std of one coordinate at tau: sqrt(c^2 alpha^2 + beta^2 E[a_i^2]); dividing
        # by it puts VP and VE on one scale (VE starts at std sqrt(d))
        def scale(second_moment, c=interp.c):
            return torch.tensor([math.hypot(c * interp.alpha(v), v * math.sqrt(second_moment)) for v in taus.tolist()])

        # mixture, via the reduction; coordinates x_i = u / sqrt(d) + G c w_i, w_i ~ N(0, 1 - 1/d)
        gen = torch.Generator().manual_seed(args.seed)
        u0, _ = mixture_noise(n_show, d, interp.c, gen)
        us, gains = euler_mixture_reduced(interp, mixture, taus, u0, return_trajectory=True)
        lin_sign = lambda u, signal, noise: torch.tanh(mixture.h + mixture.posterior_coefficients(signal, noise)[2] * u)
        committed = _committed(lin_sign, interp, taus, list(us), us[-1])
        feats = run_mixture(mixture, setup, steps, n=args.samples, seed=args.seed)
        ax = axes[0, col]
        ax.plot(t, committed.numpy(), color=COLORS[setup.name], alpha=0.35, lw=1)
        ax.set_ylim(-1.1, 1.1)
        ax.set_title(f"{setup.name}, N={steps}. Mixture d={d:.0e}:\n+ mode {feats.high:.2f} (p={mixture.p}), "
                     f"spread {feats.low:.3f} (sigma={mixture.sigma})", fontsize=9)
        # one sample, 4 coordinates whose starting noise sits at the quartiles and tails of N(0, 1)
        w = torch.tensor([-1.5, -0.67, 0.67, 1.5], dtype=torch.float64) * math.sqrt(1 - 1 / d)
        coords = us[:, :1] / math.sqrt(d) + gains[:, None] * interp.c * w[None, :]
        axes[1, col].plot(t, (coords / scale(mixture.m**2 + mixture.sigma**2)[:, None]).numpy(), lw=1.2)
        axes[1, col].set_ylim(-3, 3)
        # Curie-Weiss, full simulation
        feats_cw, traj = run_curie_weiss(cw, setup, steps, n=200, seed=args.seed, return_trajectory=True)
        state = lambda x, signal, noise: 2 * cw.posterior_plus(x, signal, noise) - 1
        committed_cw = _committed(state, interp_cw := make_interpolant(setup.kind, cw.d, setup.path),
                                  setup.taus(cw.d, steps), [x[:n_show] for x in traj], traj[-1][:n_show].mean(-1))
        axes[2, col].plot(t, committed_cw.numpy(), color=COLORS[setup.name], alpha=0.35, lw=1)
        axes[2, col].set_ylim(-1.1, 1.1)
        axes[2, col].set_title(f"Curie-Weiss d={cw.d}: + state {feats_cw.high:.2f} (W+ {cw.weight_plus:.2f}),\n"
                               f"minority {feats_cw.low:.3f} ({cw.minority_fraction:.3f}), mean |x_i| {feats_cw.abs_mean:.3f}",
                               fontsize=9)
        # 3 spins of sample 0, and the 3 whose starting noise points most against its final state:
        # a correct sampler turns these into the minority spins
        against = (traj[0][0] * torch.sign(traj[-1][0].sum())).argsort()[:3]
        idx = torch.cat([torch.arange(3), against])
        spins = torch.stack([x[0, idx] for x in traj]).double()
        cw_taus = setup.taus(cw.d, steps).tolist()
        spin_scale = torch.tensor([math.hypot(interp_cw.c * interp_cw.alpha(v), v) for v in cw_taus])
        axes[3, col].plot(t, (spins / spin_scale[:, None]).numpy(), lw=1.2)
        axes[3, col].set_ylim(-3, 3)
        axes[3, col].set_xlabel("t (sampler clock; tau = tau(t))")
        summary[setup.name] = {"mixture": asdict(feats), "curie_weiss": asdict(feats_cw)}
    for row, label in enumerate(["mixture: committed mode\nE[s | X]", "mixture: 4 coordinates x_i of a sample\n/ exact std at tau",
                                 "Curie-Weiss: committed state\n2 P(+ | X) - 1", "Curie-Weiss: 6 spins of a sample\n(3 most against its state) / exact std"]):
        axes[row, 0].set_ylabel(label)
    fig.tight_layout()
    path = Path(args.figures) / "highdim_trajectories.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")
    for name, s in summary.items():
        m, c = s["mixture"], s["curie_weiss"]
        print(f"{name:11s} mixture: + mode {m['high']:.3f}/{m['high_target']:.3f} spread {m['low']:.3f}/{m['low_target']:.3f}"
              f" | CW: + state {c['high']:.3f}/{c['high_target']:.3f} minority {c['low']:.4f}/{c['low_target']:.4f} |x| {c['abs_mean']:.3f}")
    return summary


def experiment_features(args) -> dict:
    """Both features against N for each setup at several d (mixture via the reduction)."""
    plt = _pyplot()
    dims = _dims(args.dims)
    grid = step_candidates(args.max_steps)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    out = {"steps": grid, "dims": dims, "curves": {}}
    styles = ["-", "--", ":", "-."]
    for di, d in enumerate(dims):
        mixture = GaussianMixture(d=d)
        for setup in _setups(args):
            feats = [mixture_features_exact(mixture, setup, n) for n in grid]
            out["curves"][f"{setup.name}_d{d}"] = [asdict(f) for f in feats]
            col = 0 if setup.kind == "vp" else 1
            kw = dict(color=COLORS[setup.name], ls=styles[di % 4], label=f"{setup.schedule}, d={d:.0e}")
            axes[0, col].plot(grid, [f.high for f in feats], **kw)
            axes[1, col].plot(grid, [f.low for f in feats], **kw)
    for col, kind in enumerate(KINDS):
        axes[0, col].axhline(0.8, color="k", lw=0.6)
        axes[1, col].axhline(0.5, color="k", lw=0.6)
        axes[0, col].set_title(f"{kind.upper()}: weight of the + mode (target p = 0.8)")
        axes[1, col].set_title(f"{kind.upper()}: within-mode spread (target sigma = 0.5)")
        axes[1, col].set_xlabel("number of Euler steps N")
        for row in range(2):
            axes[row, col].set_xscale("log")
        axes[0, col].legend(fontsize=7)
    fig.tight_layout()
    path = Path(args.figures) / "highdim_features.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")
    return out


def experiment_table(args) -> dict:
    """The headline table: smallest N with both features within tolerance, per d and setup."""
    from tqdm import tqdm

    result = {"tolerance": {"mixture": {"weight_abs": args.tol_weight, "spread_rel": args.tol_spread},
                            "curie_weiss": {"weight_abs": args.cw_tol_weight, "minority_rel": args.cw_tol_minority}},
              "kappa": args.kappa, "path": args.path, "samples": {"mixture": "exact in law (mixture_features_exact)", "curie_weiss": args.cw_samples},
              "mixture": [], "curie_weiss": []}
    start = time.time()
    mix_dims, cw_dims = _dims(args.dims), _dims(args.cw_dims)
    setups = _setups(args)
    jobs = [("mixture", d, s) for d in mix_dims for s in setups] + [("curie_weiss", d, s) for d in cw_dims for s in setups]
    rows = {}
    for model_name, d, setup in tqdm(jobs, desc="table", disable=not args.progress):
        if model_name == "mixture":
            mixture = GaussianMixture(d=d)
            n_star, feats = smallest_steps(lambda n: mixture_features_exact(mixture, setup, n),
                                           args.tol_weight, args.tol_spread, args.max_steps)
        else:
            cw = CurieWeiss(d=d)
            n_star, feats = smallest_steps(lambda n: run_curie_weiss(cw, setup, n, n=args.cw_samples, seed=args.seed),
                                           args.cw_tol_weight, args.cw_tol_minority, args.cw_max_steps)
        row = rows.setdefault((model_name, d), {"d": d})
        row[setup.name] = n_star
        row[setup.name + "_features"] = asdict(feats)
    for (model_name, _), row in rows.items():
        result[model_name].append(row)
    result["seconds"] = round(time.time() - start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"wrote {out / 'table.json'} ({result['seconds']} s)")
    _plot_table(result, Path(args.figures) / "highdim_table.png")
    return result


def format_table(result: dict) -> str:
    """Markdown table of N* per d and setup ("> max" where no N up to the cap passed)."""
    names = [s.name for s in SETUPS]
    lines = []
    for model_name in ("mixture", "curie_weiss"):
        if not result[model_name]:
            continue
        lines.append(f"\n{model_name}: smallest even N with both features within tolerance "
                     f"({', '.join(f'{k} {v}' for k, v in result['tolerance'][model_name].items())})")
        lines.append("| d | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for row in result[model_name]:
            cells = [str(row[n]) if row[n] is not None else "> max" for n in names]
            lines.append(f"| {row['d']:.0e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_table(result: dict, path: Path) -> None:
    plt = _pyplot()
    models = [m for m in ("mixture", "curie_weiss") if result[m]]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model_name in zip(axes[0], models):
        rows = result[model_name]
        dims = [r["d"] for r in rows]
        for setup in SETUPS:
            pts = [(r["d"], r[setup.name]) for r in rows if r[setup.name] is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=COLORS[setup.name], label=setup.name)
        ref = [r["vp_uniform"] or r["ve_uniform"] for r in rows]
        if ref[0]:
            ax.plot(dims, [ref[0] * math.sqrt(d / dims[0]) for d in dims], "k:", lw=1, label="~ sqrt(d)")
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel("dimension d"), ax.set_ylabel("smallest N with both features right")
        ax.set_title(model_name.replace("_", "-")), ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


def experiment_bridge(args) -> dict:
    """DDPM alpha_bar as a VP interpolant, the speciation window, and trailing vs linspace vs dilated with DDIM."""
    from minidiff.schedules import Schedule

    plt = _pyplot()
    mixture = GaussianMixture(d=int(args.bridge_d))
    lam = mixture.m**2 * mixture.d
    result = {"d": mixture.d, "Lambda": lam, "schedules": {}}
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for zero_snr, ls in ((False, "-"), (True, "--")):
        schedule = Schedule.make(kind="linear", num_timesteps=1000, zero_snr=zero_snr)
        ab = schedule.alphas_cumprod
        key = "linear_zero_snr" if zero_snr else "linear"
        t_s = speciation_timestep(ab, lam)
        taus = interpolant_time(ab)
        axes[0].plot(taus.numpy(), ls=ls, color="k", label=f"tau(t), {key}")
        entry = {"speciation_timestep": t_s, "tau_start": taus[-1].item(), "runs": {}}
        for steps in args.bridge_steps:
            for spacing in ("trailing", "linspace", "dilated"):
                try:
                    feats = mixture_ddim(mixture, schedule, steps, spacing, n=args.samples_ddim, seed=args.seed,
                                         kappa=args.kappa)
                except ValueError as err:  # the dilated spacing refuses a schedule already past the window
                    entry["runs"][f"{spacing}_{steps}"] = {"error": str(err)}
                    continue
                entry["runs"][f"{spacing}_{steps}"] = asdict(feats)
                print(f"{key:16s} {spacing:9s} {steps:3d} steps: + mode {feats.high:.3f} (p {mixture.p}), "
                      f"spread {feats.low:.3f} (sigma {mixture.sigma})")
        result["schedules"][key] = entry
        if zero_snr:  # where each spacing puts 10 steps on the zero-SNR schedule
            from minidiff.samplers import make_timesteps

            for spacing, marker, color in (("trailing", "s", "tab:green"), ("linspace", "^", "tab:gray"),
                                           ("dilated", "o", "tab:purple")):
                tt = (dilated_timesteps(ab, 10, lam, args.kappa) if spacing == "dilated"
                      else make_timesteps(1000, 10, spacing))
                axes[0].plot(tt.numpy(), taus[tt].clamp(min=1e-5).numpy(), marker, color=color,
                             label=f"{spacing}, 10 steps", ms=6, alpha=0.8)
    tau_w = args.kappa * interpolant_time(torch.tensor([speciation_alpha_bar(lam)])).item()
    axes[0].axhline(tau_w, color="tab:purple", lw=0.8, label="window edge kappa tau(1/Lambda)")
    axes[0].set_yscale("log"), axes[0].set_ylim(1e-5, 1.5)
    axes[0].set_xlabel("training timestep t"), axes[0].set_ylabel("interpolant time tau (log)")
    axes[0].legend(fontsize=7), axes[0].set_title(f"DDPM linear schedule as a VP interpolant, Lambda={lam:.0e}")
    for ax, feature, target, title in ((axes[1], "high", mixture.p, "weight of + mode"),
                                       (axes[2], "low", mixture.sigma, "within-mode spread")):
        for key, entry in result["schedules"].items():
            for spacing, color in (("trailing", "tab:green"), ("linspace", "tab:gray"), ("dilated", "tab:purple")):
                pts = [(s, entry["runs"][f"{spacing}_{s}"][feature]) for s in args.bridge_steps
                       if "error" not in entry["runs"][f"{spacing}_{s}"]]
                if pts:
                    ax.plot(*zip(*pts), "o" + ("--" if "zero" in key else "-"), color=color, label=f"{spacing}, {key}")
        ax.axhline(target, color="k", lw=0.6)
        ax.set_xscale("log"), ax.set_xlabel("DDIM steps"), ax.set_title(f"{title} (d={mixture.d:.0e}, exact x0 model)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(args.figures) / "highdim_bridge.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bridge.json").write_text(json.dumps(result, indent=2))
    return result


EXPERIMENTS = {"trajectories": experiment_trajectories, "features": experiment_features,
               "table": experiment_table, "bridge": experiment_bridge}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minidiff.highdim", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(EXPERIMENTS))
    parser.add_argument("--figures", default="docs/figures", help="where the figures go")
    parser.add_argument("--out", default="runs/highdim", help="where the JSON results go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kappa", type=float, default=3.0, help="window width r = kappa / sqrt(d)")
    parser.add_argument("--path", choices=PATHS, default="linear", help="alpha/beta: linear (1 - tau, tau) or trig")
    parser.add_argument("--d", type=float, default=1e4, help="dimension (trajectories)")
    parser.add_argument("--cw-d", type=int, default=1000, help="Curie-Weiss dimension (trajectories)")
    parser.add_argument("--steps", type=int, default=16, help="Euler steps (trajectories)")
    parser.add_argument("--dims", default=None, help="comma-separated dimensions (features, table)")
    parser.add_argument("--cw-dims", default="100,300,1000", help="Curie-Weiss dimensions (table); '' for none")
    parser.add_argument("--samples", type=int, default=4000, help="samples per run, mixture (trajectories)")
    parser.add_argument("--cw-samples", type=int, default=500, help="samples per run, Curie-Weiss")
    parser.add_argument("--samples-ddim", type=int, default=20_000, help="samples per run, bridge")
    parser.add_argument("--bridge-d", type=float, default=1e6, help="dimension (bridge)")
    parser.add_argument("--max-steps", type=int, default=200_000)
    parser.add_argument("--cw-max-steps", type=int, default=2000)
    parser.add_argument("--tol-weight", type=float, default=0.03, help="|weight - p| tolerance, mixture")
    parser.add_argument("--tol-spread", type=float, default=0.1, help="|spread / sigma - 1| tolerance")
    parser.add_argument("--cw-tol-weight", type=float, default=0.06, help="|weight - W+| tolerance, Curie-Weiss")
    parser.add_argument("--cw-tol-minority", type=float, default=0.25, help="|minority / target - 1| tolerance")
    parser.add_argument("--bridge-steps", type=lambda s: [int(v) for v in s.split(",")], default=[4, 6, 10, 20, 50, 100])
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; the lab's arrays are small, and one thread avoids OpenMP waits")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dims is None:
        args.dims = "1e2,1e3,1e4,1e5,1e6,1e7,1e8" if args.name == "table" else "1e2,1e4,1e6"
        if args.name == "features":
            args.max_steps = min(args.max_steps, 4000)
    EXPERIMENTS[args.name](args)


if __name__ == "__main__":
    main()
