"""What the model is trained to predict, and how to get x0 and eps back from it.

Write a = alpha_bar_t. The forward process and the four parameterisations:

    x_t = sqrt(a) x0 + sqrt(1 - a) eps                       q(x_t | x0), Lin et al. eq. 4
    eps prediction:  the noise eps
    x0 prediction:   the clean sample x0
    v prediction:    v = sqrt(a) eps - sqrt(1 - a) x0        Salimans and Ho 2022; Lin eq. 11
    u prediction:    u = eps - x0                            the rectified flow's velocity

Because (x_t, v) is a rotation of (x0, eps) by the angle with cos = sqrt(a), v converts
back to both exactly at every a, including a = 0 (x_t = eps, v = -x0) and a = 1:

    x0  = sqrt(a) x_t - sqrt(1 - a) v                        Lin eq. 19
    eps = sqrt(a) v   + sqrt(1 - a) x_t                      Lin eq. 17

eps prediction cannot give x0 at a = 0 (x0 = (x_t - sqrt(1-a) eps) / sqrt(a) divides by
zero: the input *is* the noise, so predicting it says nothing about the image), and x0
prediction cannot give eps at a = 1. Those two cases raise instead of returning inf.

u is the velocity d/ds of the rectified flow x^flow = (1 - s) x0 + s eps (Liu et al. 2023;
Esser et al. 2024), whose state is the VP state scaled down: with s = sqrt(1 - a) / (sqrt(a) +
sqrt(1 - a)) (docs/09_flow_matching.md, eqs. F1-F4),

    x^flow = x_t / (sqrt(a) + sqrt(1 - a))                                        (F3)
    x0  = x^flow - s u        = (x_t - sqrt(1 - a) u) / (sqrt(a) + sqrt(1 - a))  (F4)
    eps = x^flow + (1 - s) u  = (x_t + sqrt(a) u)     / (sqrt(a) + sqrt(1 - a))

so u, like v, converts back exactly at every a, both ends included (the divisor is at least 1).
The network always sees the VP state x_t; a flow model is a model whose output is u.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedules import Schedule, table_on

PREDICTIONS = ("eps", "x0", "v", "u")


def extract(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] (float64 schedule entries) cast to x's dtype and device, shaped [B, 1, 1, ...]."""
    out = table_on(values, x.device)[t.to(x.device)]
    return out.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _check_prediction_name(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def check_prediction(prediction: str, schedule: Schedule) -> None:
    """Refuse eps prediction on a zero-terminal-SNR schedule (Lin et al. Sec. 3.2)."""
    _check_prediction_name(prediction)
    if prediction == "eps" and schedule.zero_terminal_snr:
        raise ValueError(
            "eps prediction cannot be used with a zero-terminal-SNR schedule: at the last step the "
            "input is pure noise, so the eps target equals the input and x0 = (x_t - sqrt(1-a) eps) / "
            "sqrt(a) divides by zero. Use prediction='v' (recommended by Lin et al.) or 'x0', or turn "
            "the zero-SNR rescale off."
        )


def q_sample(x0: torch.Tensor, ab, noise: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x0): x_t = sqrt(a) x0 + sqrt(1 - a) eps (Lin et al. eq. 4; DDPM eq. 4).
    `ab` (alpha_bar_t) broadcasts against x0."""
    ab = torch.as_tensor(ab, dtype=x0.dtype, device=x0.device)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def target(prediction: str, x0: torch.Tensor, noise: torch.Tensor, ab) -> torch.Tensor:
    """The regression target of each parameterisation for the pair (x0, eps): eps, x0,
    v = sqrt(a) eps - sqrt(1 - a) x0 (Lin et al. eq. 11), or u = eps - x0 (eq. F1)."""
    _check_prediction_name(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "u":
        return noise - x0
    ab = torch.as_tensor(ab, dtype=x0.dtype, device=x0.device)
    return ab.sqrt() * noise - (1 - ab).sqrt() * x0


def from_x0_eps(prediction: str, x0: torch.Tensor, eps: torch.Tensor, ab) -> torch.Tensor:
    """Express (x0, eps) as a model output in `prediction`'s parameterisation (same as `target`)."""
    return target(prediction, x0, eps, ab)


def to_x0_eps(prediction: str, output: torch.Tensor, x_t: torch.Tensor, ab) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a model output into the predicted clean sample x0 and the predicted noise eps (for v:
    x0 = sqrt(a) x_t - sqrt(1 - a) v and eps = sqrt(a) v + sqrt(1 - a) x_t, Lin et al. eqs. 19 and 17;
    for u: eq. F4 above).

    Exact at a = 0 and a = 1 for v and u; eps at a = 0 and x0 at a = 1 are undefined and raise.
    """
    _check_prediction_name(prediction)
    ab = torch.as_tensor(ab, dtype=x_t.dtype, device=x_t.device)
    sa, s1a = ab.sqrt(), (1 - ab).sqrt()
    if prediction == "v":
        return sa * x_t - s1a * output, sa * output + s1a * x_t
    if prediction == "u":
        return (x_t - s1a * output) / (sa + s1a), (x_t + sa * output) / (sa + s1a)
    if prediction == "eps":
        if bool((ab == 0).any()):
            raise ValueError("x0 cannot be recovered from an eps prediction at alpha_bar = 0 (zero SNR); use v or x0")
        return (x_t - s1a * output) / sa, output
    if bool((ab == 1).any()):
        raise ValueError("eps cannot be recovered from an x0 prediction at alpha_bar = 1 (no noise in x_t)")
    return output, (x_t - sa * output) / s1a


def randn(shape, *, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (so a CPU generator gives the same
    numbers whatever device the model runs on), then moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def diffusion_loss(model, x0: torch.Tensor, schedule: Schedule, prediction: str = "v", *, y=None,
                   t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The denoising loss of Lin et al. eq. 12 (DDPM's Algorithm 1 with any target):

        L = E_{t, x0, eps} [ w_t |target_t(x0, eps) - model(x_t, t, y)|^2 ],   x_t by eq. 4

    t ~ Uniform{0..T-1} and eps ~ N(0, I) unless given; `weight` [B] is w_t per sample (default 1,
    the paper's lambda_t = 1 for the v loss). The squared error is averaged over every element, so
    the value does not depend on the image size. The main job adds to this (a timestep density,
    per-level weights, the Stable Target Field): minidiff/training/loss.py.
    """
    check_prediction(prediction, schedule)
    if t is None:
        device = generator.device if generator is not None else x0.device
        t = torch.randint(0, schedule.num_timesteps, (x0.shape[0],), generator=generator, device=device).to(x0.device)
    if noise is None:
        noise = randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    ab = extract(schedule.alphas_cumprod, t, x0)
    out = model(q_sample(x0, ab, noise), t, y=y)
    per_sample = squared_error(out, target(prediction, x0, noise, ab))
    if weight is not None:
        per_sample = per_sample * weight
    return per_sample.mean()


def squared_error(output: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """|goal - output|^2 averaged over all but the batch dimension, in float32: [B]."""
    return F.mse_loss(output.float(), goal.float(), reduction="none").reshape(len(output), -1).mean(dim=1)
