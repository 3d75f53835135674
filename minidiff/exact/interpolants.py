"""Stochastic interpolants and their time changes (Aranguri, Biroli, Mezard, Vanden-Eijnden 2025,
arXiv 2501.00988), with the bridge to DDPM's discrete timesteps.

The equations of the paper, one function each, read top to bottom:

    interpolant   I_tau = c alpha(tau) z + beta(tau) a,  tau: 0 (noise) -> 1 (data)
                  VP: c = 1; VE: c = sqrt(d); alpha/beta "linear" (1 - tau, tau) or "trig" (sqrt(1 - tau^2), tau)
    ODE           dX/dtau = b(tau, X) = (alpha'/alpha) X + (beta' - alpha' beta / alpha) E[a | I_tau = X]
    time change   tau = tau(t) on the uniform grid t_k = k / N: uniform (tau = t), VP-dilated, VE-dilated
                  (`dilated_time`, the paper's two-piece schedules), or any callable
    integrator    forward Euler, X_{k+1} = X_k + (tau_{k+1} - tau_k) b(tau_k, X_k)
    bridge        an alphas_cumprod seen as a VP interpolant (`interpolant_time`), the speciation window
                  alpha_bar ~ 1 / Lambda (Biroli et al. 2024), and the VP-dilated schedule carried over
                  to a discrete sampler's timesteps (`dilated_timesteps`, from the same `dilated_time`)

The data models with exact denoisers E[a | signal a + noise z = x] live in `minidiff.exact.models`;
the experiments in `minidiff.repro` (`minidiff repro highdim-...`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

INTERPOLANTS = ("vp", "ve")      # variance preserving (c = 1) or exploding (c = sqrt(d))
PATHS = ("linear", "trig")       # the alpha/beta pair
TIME_CHANGES = ("uniform", "dilated")


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
    if kind not in INTERPOLANTS:
        raise ValueError(f"kind must be 'vp' or 've', got {kind!r}")
    return Interpolant(c=1.0 if kind == "vp" else math.sqrt(d), path=path)


# ------------------------------------------------------------------------------------------------
# Time changes tau(t)
# ------------------------------------------------------------------------------------------------


def uniform_time(t: torch.Tensor) -> torch.Tensor:
    """tau(t) = t: every step denoises by the same amount of tau."""
    return t


def dilated_time(t: torch.Tensor, knot: float, start: float = 0.0) -> torch.Tensor:
    """The dilated schedule: tau piecewise linear through (0, start), (1/2, knot) and (1, 1).

    Half of the clock t is spent between `start` and `knot`, half between `knot` and 1. The
    paper's VP- and VE-dilated schedules are start = 0 with knot r or 1 - r (`DilatedTime`); a
    discrete sampler starts at the tau of its last training timestep instead (`dilated_timesteps`).
    """
    return torch.where(t <= 0.5, start + 2.0 * (knot - start) * t, knot + (1.0 - knot) * (2.0 * t - 1.0))


@dataclass(frozen=True)
class DilatedTime:
    """The paper's two-piece schedules (`dilated_time`), kink at t = 1/2, r = kappa / sqrt(d).

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
        if self.kind not in INTERPOLANTS:
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
        tau = dilated_time(t, self.knot)
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

    denoise(x, signal, noise) is an exact E[a | signal a + noise z = x] (see `minidiff.exact.models`).
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
    (= kappa / sqrt(d) for the mixture with m = 1), evaluate `dilated_time` with knot tau_w and
    start tau(T - 1) at t_k = k / N, k = 0..N-1 (first half uniform in tau on [tau(T - 1), tau_w],
    second half on [tau_w, 1]), and take for each the training timestep with the nearest tau. Like
    "trailing" it starts at T - 1; the step after the last listed timestep goes to a clean sample
    (alpha_bar = 1), which is tau = 1 = tau(t_N). Collisions (several targets on one timestep)
    are pushed down one timestep at a time.
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
    t = torch.arange(num_steps, dtype=torch.float64) / num_steps
    targets = dilated_time(t, tau_w, start=tau_start)
    nearest = (taus[None, :] - targets[:, None]).abs().argmin(-1)
    steps = [num_train - 1]
    for step in nearest[1:].tolist():
        steps.append(min(step, steps[-1] - 1))
    if steps[-1] < 0:
        raise ValueError(f"{num_steps} steps do not fit in {num_train} timesteps with this window")
    return torch.tensor(steps, dtype=torch.int64)
