"""`run` for exercises 10-11: Aranguri et al.'s two features of the Gaussian mixture (weight of the +
mode, spread inside a mode) against the number of Euler steps, with the student's interpolant or
time change in the place of minidiff's (exact in law, `repro.highdim_common`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..exact.interpolants import Interpolant, make_interpolant, tau_grid, uniform_time
from ..exact.models import GaussianMixture, euler_mixture_reduced, mean_chi_over_sqrt
from ..repro.common import pyplot, save_figure
from ..repro.highdim_common import Features, Setup, mixture_features_exact, step_candidates


class ProbedInterpolant(Interpolant):
    """An Interpolant whose signal and noise coefficients come from a student's interpolant(kind, tau, a, z),
    read off by probing it with (a, z) = (1, 0) and (0, 1) in dimension d; the velocity keeps the linear path."""

    def __init__(self, fn, kind: str, d: int):
        for name, value in (("_fn", fn), ("_kind", kind), ("_d", d)):
            object.__setattr__(self, name, value)  # Interpolant is a frozen dataclass
        super().__init__(c=self.signal_noise(0.0)[1], path="linear")

    def signal_noise(self, tau: float) -> tuple[float, float]:
        one, zero = torch.ones(1, self._d, dtype=torch.float64), torch.zeros(1, self._d, dtype=torch.float64)
        return float(self._fn(self._kind, tau, one, zero)[0, 0]), float(self._fn(self._kind, tau, zero, one)[0, 0])


def features(interp: Interpolant, mixture: GaussianMixture, taus: torch.Tensor, points: int = 257) -> Features:
    """Both features in law, as `mixture_features_exact`, for any Interpolant object."""
    quantiles = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    u0 = interp.c * math.sqrt(2.0) * torch.erfinv(2 * quantiles - 1)
    u, gain = euler_mixture_reduced(interp, mixture, taus, u0)
    return Features(high=(u > 0).double().mean().item(), high_target=mixture.p,
                    low=abs(gain) * interp.c * mean_chi_over_sqrt(mixture.d - 1), low_target=mixture.sigma)


def _figure(path: Path, grid, curves, title):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for label, (yours, ref) in curves.items():
        for ax, attr in zip(axes, ("high", "low")):
            line, = ax.plot(grid, [getattr(f, attr) for f in yours], "o-", ms=3, label=f"{label}: yours")
            ax.plot(grid, [getattr(f, attr) for f in ref], "--", color=line.get_color(), alpha=0.6, label=f"{label}: minidiff")
    axes[0].axhline(0.8, color="k", lw=0.6), axes[1].axhline(0.5, color="k", lw=0.6)
    axes[0].set_title("weight of the + mode (target 0.8)"), axes[1].set_title("spread inside a mode (target 0.5)")
    for ax in axes:
        ax.set_xscale("log"), ax.set_xlabel("Euler steps N"), ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=80)


def _summary(label, yours, grid, tol_high=0.02, tol_low=0.05):
    ok = [n for n, f in zip(grid, yours) if f.within(tol_high, tol_low)]
    first = f"both features right from N = {ok[0]}" if ok else f"both features never right up to N = {grid[-1]}"
    return f"  {label:22s} {first}; at N = {grid[-1]}: weight {yours[-1].high:.3f}, spread {yours[-1].low:.3f}"


def run_interpolant(fn, out: Path, quick: bool):
    dims = [100] if quick else [100, 10_000]
    grid = step_candidates(64 if quick else 2048, ratio=2 ** 0.5)
    curves, lines = {}, ["Gaussian mixture (p = 0.8, sigma = 0.5), uniform Euler steps, your interpolant:"]
    for d in dims:
        mixture = GaussianMixture(d=d)
        for kind in ("vp", "ve"):
            mine, ref = ProbedInterpolant(fn, kind, d), make_interpolant(kind, d)
            yours = [features(mine, mixture, tau_grid(uniform_time, n)) for n in grid]
            theirs = [features(ref, mixture, tau_grid(uniform_time, n)) for n in grid]
            curves[f"{kind.upper()}, d = {d:g}"] = (yours, theirs)
            lines.append(_summary(f"{kind.upper()}, d = {d:g}", yours, grid))
    _figure(out / "interpolants.png", grid, curves, "VP loses the weight of the modes, VE their spread (uniform steps)")
    return lines + [f"wrote {out / 'interpolants.png'}"]


def run_dilated(fn, out: Path, quick: bool):
    dims = [100, 10_000] if quick else [100, 10_000, 1_000_000]
    grid = step_candidates(64 if quick else 4096, ratio=2 ** 0.5)
    curves, lines = {}, ["Gaussian mixture (p = 0.8, sigma = 0.5), your dilated time change (kappa = 3):"]
    for d in dims:
        mixture = GaussianMixture(d=d)
        for kind in ("vp", "ve"):
            yours = [mixture_features_exact(mixture, Setup(kind, lambda t, k=kind, dd=d: fn(t, k, dd, 3.0)), n) for n in grid]
            theirs = [mixture_features_exact(mixture, Setup(kind, "dilated"), n) for n in grid]
            curves[f"{kind.upper()}-dilated, d = {d:g}"] = (yours, theirs)
            lines.append(_summary(f"{kind.upper()}-dilated, d = {d:g}", yours, grid))
    _figure(out / "dilated.png", grid, curves, "dilated steps: the N needed should not grow with d")
    return lines + [f"wrote {out / 'dilated.png'}"]


RUNS = {10: run_interpolant, 11: run_dilated}
