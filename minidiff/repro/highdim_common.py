"""What the high-dimensional experiments share: the two features, the four setups, one run of a
setup, the search for the smallest number of steps, and DDIM on the mixture.

Aranguri, Biroli, Mezard, Vanden-Eijnden 2025 (arXiv 2501.00988) judge a schedule by two features
of its samples: the high-level one (the weight of each mode) and the low-level one (the law inside
a mode). VP with uniform steps loses the first, VE with uniform steps the second, and the dilated
schedules keep both with a number of steps that does not grow with d. The equations are in
`minidiff.exact.interpolants`, the data models in `minidiff.exact.models`; the experiments that use
what is here are `minidiff repro highdim-trajectories | highdim-features | highdim-table |
highdim-bridge`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..exact.interpolants import INTERPOLANTS, PATHS, TIME_CHANGES, dilated_timesteps, euler, make_interpolant, make_time_change, tau_grid
from ..exact.models import (CurieWeiss, GaussianMixture, PosteriorMeanModel, ReducedMixture, euler_mixture_reduced,
                            mean_chi_over_sqrt, mixture_noise)
from ..samplers import sample
from ..training.cli import add_common_flags
from .common import experiment_parser


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
    spread = abs(gain) * interp.c * mean_chi_over_sqrt(mixture.d - 1)
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
# DDIM on the mixture (the bridge to DDPM)
# ------------------------------------------------------------------------------------------------


def mixture_ddim(mixture: GaussianMixture, schedule, steps: int, spacing: str, n: int = 20_000,
                 seed: int = 0, kappa: float = 3.0, window_eigenvalue: float | None = None,
                 sampler: str = "ddim") -> Features:
    """Sample the mixture with minidiff.samplers.sample driven by the exact posterior mean E[x0 | x_t].

    The sampler runs on the reduced coordinates (mu_hat . x, one orthogonal coordinate)
    (`minidiff.exact.models.ReducedMixture`), which DDIM keeps exact, so any d costs the same. The
    orthogonal coordinate starts at 1 and ends at the common gain G, so the spread is
    |G| E[chi_{d-1}] / sqrt(d - 1). spacing "trailing"/"linspace"/"leading" go to the sampler;
    "dilated" passes `dilated_timesteps` with Lambda = m^2 d unless `window_eigenvalue` is given.
    """
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
    y = sample(model, (n, 2), schedule, **kwargs)
    return Features(high=(y[:, 0] > 0).double().mean().item(), high_target=mixture.p,
                    low=y[0, 1].abs().item() * mean_chi_over_sqrt(mixture.d - 1), low_target=mixture.sigma)


# ------------------------------------------------------------------------------------------------
# The command line the four experiments share
# ------------------------------------------------------------------------------------------------

# VP and VE, each with uniform and dilated steps: the four columns of the paper's comparison
PAPER_SETUPS = [Setup(k, s) for k in INTERPOLANTS for s in TIME_CHANGES]
COLORS = {"vp_uniform": "tab:blue", "vp_dilated": "tab:cyan", "ve_uniform": "tab:red", "ve_dilated": "tab:orange"}


def paper_setups(args) -> list[Setup]:
    """The four setups with the command line's path and kappa."""
    return [Setup(s.kind, s.schedule, args.path, args.kappa) for s in PAPER_SETUPS]


def dims(text: str | None) -> list[int]:
    """"1e2,1e4" -> [100, 10000]; empty -> []."""
    return [int(float(v)) for v in text.split(",") if v.strip()] if text else []


def highdim_parser(name: str, description: str, *, seed: bool = True, path: bool = True) -> argparse.ArgumentParser:
    """The flags of the high-dimensional experiments: --out, --figures-dir, --kappa, --threads, and
    --seed and --path where the experiment draws noise or integrates an interpolant."""
    p = experiment_parser(name, description, trained=False)
    add_common_flags(p, seed=seed, device=False)
    p.add_argument("--kappa", type=float, default=3.0, help="window width r = kappa / sqrt(d)")
    if path:
        p.add_argument("--path", choices=PATHS, default="linear", help="alpha/beta: linear (1 - tau, tau) or trig")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; the lab's arrays are small, and one thread avoids OpenMP waits")
    return p


def parse(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args
