"""Noise schedules: betas, alpha_bar, SNR, and the rescale to zero terminal SNR.

A schedule is a sequence beta_0..beta_{T-1} (0-indexed). The forward process keeps
alpha_bar_t = prod_{s<=t} (1 - beta_s) of the signal's variance at step t:

    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps        (Lin et al. eq. 4)
    SNR(t) = alpha_bar_t / (1 - alpha_bar_t)                      (eq. 5)

All arithmetic here is float64: the rescale of Algorithm 1 and the cosine schedule both
lose digits in float32 (the first beta after the rescale is off by ~2e-4 relative).
Cast to the model's dtype at the point of use (`objectives.extract`). A table goes to a device
through `table_on`, which casts it once to float32 where the device has no float64 (Apple's mps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

BETA_SCHEDULES = ("linear", "cosine", "scaled_linear")  # the beta schedules of Lin et al.'s Table 1
SCHEDULES = BETA_SCHEDULES + ("flow",)  # the names make_betas knows: those and the rectified flow


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020: betas evenly spaced from 1e-4 to 0.02 (for T = 1000)."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion: linear in sqrt(beta) from sqrt(0.00085) to sqrt(0.012), then squared."""
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, clip: float | None = 0.999) -> torch.Tensor:
    """Nichol and Dhariwal 2021: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2).

    beta_t = 1 - alpha_bar(t+1) / alpha_bar(t) for t = 0..T-1, clipped at `clip`. The clip is
    what keeps the terminal SNR above zero: f(T) = cos^2(pi/2) = 0, so without it the last
    beta is exactly 1 (Lin et al. Sec. 3.1: "Cosine schedule can simply remove the clipping").
    """
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    if clip is None:
        betas[-1] = 1.0  # cos(pi/2) is 6e-17 in floating point, not 0: make the end exact
        return betas
    return betas.clamp(max=clip)


def flow_times(num_timesteps: int) -> torch.Tensor:
    """The rectified flow's time s of each training timestep: s_t = (t + 1) / T, so s runs from 1/T
    to exactly 1 at t = T-1 (the grid of diffusers' FlowMatchEulerDiscreteScheduler)."""
    return torch.arange(1, num_timesteps + 1, dtype=torch.float64) / num_timesteps


def flow_betas(num_timesteps: int) -> torch.Tensor:
    """The rectified flow x = (1 - s) x0 + s eps (Liu et al. 2023; Esser et al. 2024) as a schedule.

    Its state is a VP state scaled by sqrt((1 - s)^2 + s^2), so its alpha_bar is

        alpha_bar(s) = (1 - s)^2 / ((1 - s)^2 + s^2)                  (docs/09_flow_matching.md, eq. F2)

    exactly 0 at s = 1: zero terminal SNR by construction (the last beta is exactly 1).
    """
    s = flow_times(num_timesteps)
    ab = (1 - s) ** 2 / ((1 - s) ** 2 + s**2)
    betas = 1 - torch.cat([ab[:1], ab[1:] / ab[:-1]])
    betas[0] = s[0] ** 2 / ((1 - s[0]) ** 2 + s[0] ** 2)  # 1 - alpha_bar_0 without losing its digits
    return betas


def make_betas(kind: str, num_timesteps: int = 1000, *, cosine_clip: float | None = 0.999) -> torch.Tensor:
    """The betas of a named schedule as a float64 tensor of length `num_timesteps`.

    kind: "linear" (1e-4..0.02), "cosine" (s = 0.008, betas clipped at `cosine_clip`;
    None removes the clip), "scaled_linear" (Stable Diffusion) or "flow" (the rectified flow).
    """
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
    if kind == "linear":
        return linear_betas(num_timesteps)
    if kind == "cosine":
        return cosine_betas(num_timesteps, clip=cosine_clip)
    if kind == "scaled_linear":
        return scaled_linear_betas(num_timesteps)
    if kind == "flow":
        return flow_betas(num_timesteps)
    raise ValueError(f"unknown schedule kind {kind!r}; choose one of {', '.join(SCHEDULES)}")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), in float64 (Ho et al. 2020, above eq. 4)."""
    return torch.cumprod(1 - betas.to(torch.float64), dim=0)


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """SNR(t) = alpha_bar / (1 - alpha_bar) (eq. 5); 0 where alpha_bar = 0, inf where it is 1."""
    return alpha_bar / (1 - alpha_bar)


def log_snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """log SNR(t); -inf at zero terminal SNR (plots clip it)."""
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. Algorithm 1: rescale any schedule so that the last step has SNR exactly 0.

    Work in sqrt(alpha_bar): shift so its last value is 0, scale so its first value is
    unchanged (a linear map, so the curve's shape is kept), square back to alpha_bar and
    recover betas from ratios of consecutive alpha_bar. The last beta becomes exactly 1.
    Applying it to an already zero-SNR schedule changes nothing (the shift is 0, the scale 1).
    """
    sqrt_ab = alphas_cumprod(betas).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    new = 1 - alphas
    # The first alpha_bar is unchanged by construction; take its beta from the input rather
    # than from 1 - (1 - beta), which would cost ~12 digits of a beta of 1e-4.
    new[0] = betas[0]
    return new


def has_float64(device) -> bool:
    """Whether `device` holds float64 tensors: every torch device but Apple's mps."""
    return torch.device(device).type != "mps"


def table_on(values: torch.Tensor, device) -> torch.Tensor:
    """A schedule table (float64, computed on the CPU) moved to `device`, cast once to float32 on
    a device without float64. The network sees the same numbers either way: they reach it in its
    own dtype (float32 or lower), and float64 -> float32 rounds the same on any device."""
    if values.dtype == torch.float64 and not has_float64(device):
        values = values.to(torch.float32)
    return values.to(device)


@dataclass(frozen=True)
class Schedule:
    """A discrete noise schedule: betas and everything derived from them (float64, CPU).

    Build one with `Schedule.make("scaled_linear", zero_snr=True)` or `Schedule(betas)`.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        betas = torch.as_tensor(self.betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError(f"betas must be a 1-D tensor of length >= 2, got shape {tuple(betas.shape)}")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]; a beta of 1 is allowed only as a zero-SNR last step")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod(betas))

    @classmethod
    def make(cls, kind: str = "linear", num_timesteps: int = 1000, zero_snr: bool = False, **kwargs) -> "Schedule":
        """A named schedule (see `make_betas`), optionally rescaled to zero terminal SNR."""
        betas = make_betas(kind, num_timesteps, **kwargs)
        return cls(rescale_zero_terminal_snr(betas) if zero_snr else betas)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def snr(self) -> torch.Tensor:
        return snr(self.alphas_cumprod)

    @property
    def log_snr(self) -> torch.Tensor:
        return log_snr(self.alphas_cumprod)

    @property
    def zero_terminal_snr(self) -> bool:
        """True when alpha_bar at the last step is exactly 0: x_{T-1} is pure noise."""
        return bool(self.alphas_cumprod[-1] == 0)
