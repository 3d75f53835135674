"""Exact denoisers: the posterior mean E[x0 | x_t] for data whose law is known in closed form.

A perfectly trained model with the squared loss outputs exactly this posterior mean (in its
own parameterisation), so plugging an exact denoiser into the samplers separates the
sampler's error from the network's. For Gaussian data x0 ~ N(mu, Sigma) and
x_t = sqrt(a) x0 + sqrt(1 - a) eps, the pair (x0, x_t) is jointly Gaussian and

    E[x0 | x_t] = mu + sqrt(a) Sigma (a Sigma + (1 - a) I)^-1 (x_t - sqrt(a) mu).

In the eigenbasis Sigma = U diag(lam) U^T every direction is shrunk on its own by
sqrt(a) lam / (a lam + 1 - a): at a = 0 the answer is mu (nothing is known), at a = 1 it is
x_t. The Gaussian-mixture and Curie-Weiss denoisers of the high-dimensional lab live in
`minidiff.exact.models`.
"""

from __future__ import annotations

import torch

from ..objectives import extract, from_x0_eps
from ..schedules import Schedule


class GaussianDenoiser:
    """The exact model for data ~ N(mean, cov), usable wherever the samplers take a model.

    mean: a tensor of one sample's shape, e.g. [C, H, W].
    cov: a [D, D] covariance over the flattened sample (D = mean.numel()), or
    var: a tensor of mean's shape holding a diagonal covariance (cheap for large D).
    prediction: the parameterisation returned by __call__ ("x0", "eps" or "v").

    Computations are float64; outputs are cast back to the input's dtype.
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor | None = None, *, var: torch.Tensor | None = None,
                 schedule: Schedule, prediction: str = "x0"):
        if (cov is None) == (var is None):
            raise ValueError("give exactly one of cov (a full [D, D] covariance) or var (a diagonal one)")
        self.mean = mean.to(torch.float64)
        self.shape = tuple(mean.shape)
        self.schedule = schedule
        self.prediction = prediction
        d = self.mean.numel()
        if cov is not None:
            cov = cov.to(torch.float64)
            if cov.shape != (d, d):
                raise ValueError(f"cov must be [{d}, {d}] for a mean of shape {self.shape}, got {tuple(cov.shape)}")
            lam, vecs = torch.linalg.eigh((cov + cov.T) / 2)
            if lam.min() < -1e-9 * lam.abs().max():
                raise ValueError("cov must be positive semi-definite")
            self.eigvals, self.eigvecs = lam.clamp_min(0), vecs
        else:
            var = var.to(torch.float64)
            if tuple(var.shape) != self.shape or (var < 0).any():
                raise ValueError(f"var must be non-negative with the mean's shape {self.shape}")
            self.eigvals, self.eigvecs = var.flatten(), None

    def posterior_mean(self, x_t: torch.Tensor, ab) -> torch.Tensor:
        """E[x0 | x_t] for alpha_bar `ab` (a float or a tensor broadcastable as [B, 1, ...])."""
        b = x_t.shape[0]
        ab = torch.as_tensor(ab, dtype=torch.float64, device=x_t.device).reshape(-1, 1)
        mu = self.mean.to(x_t.device).flatten()
        r = x_t.to(torch.float64).reshape(b, -1) - ab.sqrt() * mu
        lam = self.eigvals.to(x_t.device)
        # sqrt(a) lam / (a lam + 1 - a); where lam = 0 and a = 1 the limit is 0 (no spread to recover)
        denom = ab * lam + (1 - ab)
        gain = torch.where(denom > 0, ab.sqrt() * lam / denom.clamp_min(1e-300), torch.zeros_like(denom))
        if self.eigvecs is None:
            shrunk = gain * r
        else:
            u = self.eigvecs.to(x_t.device)
            shrunk = ((r @ u) * gain) @ u.T
        return (mu + shrunk).reshape(x_t.shape)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        ab = extract(self.schedule.alphas_cumprod, t, x.to(torch.float64))
        x0 = self.posterior_mean(x, ab)
        if self.prediction == "x0":
            return x0.to(x.dtype)
        xd = x.to(torch.float64)
        if self.prediction == "eps" and bool((ab == 1).any()):
            raise ValueError("eps is undefined at alpha_bar = 1")
        # eps = (x_t - sqrt(a) x0) / sqrt(1 - a), then re-express in the requested parameterisation
        eps = (xd - ab.sqrt() * x0) / (1 - ab).sqrt()
        return from_x0_eps(self.prediction, x0, eps, ab).to(x.dtype)


def gaussian_sampler_moments(lam, mu, schedule: Schedule, timesteps, *, sampler: str = "ddim", eta: float = 0.0,
                             to_clean: bool = True):
    """The exact mean and variance of a sampler's output for 1-D Gaussian data N(mu, lam).

    With the exact denoiser every DDIM/DDPM step is affine in x plus Gaussian noise, so the
    law of x stays Gaussian and its two moments follow a recursion: no sampling needed.
    Starting from x ~ N(0, 1) at the first listed timestep (as every sampler does),
        x0_hat = mu + g (x - sqrt(a) mu),   g = sqrt(a) lam / (a lam + 1 - a)
        x_prev = c_x0 x0_hat + c_x x + s z
    The deterministic higher-order samplers ("dpmpp_2m", "dpmpp_3m", "heun") also use past or
    extra predictions, but with no noise the whole run is an affine map x_T -> A x_T + b, so
    running the real `samplers.sample` from x_T = 0 and x_T = 1 gives b and A, hence the
    moments b and A^2, exactly.
    For d-dimensional Gaussian data apply it to each eigen-direction of the covariance
    (the samplers add isotropic noise, so they act on each direction separately).
    `lam` and `mu` may be tensors (one entry per direction). `to_clean=False` stops at the last
    listed timestep, before the step to a clean sample. Returns (mean, var), float64.
    """
    from ..samplers import SAMPLERS, ddim_coefficients, ddpm_posterior, sample  # the samplers' own formulas

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}")
    lam = torch.as_tensor(lam, dtype=torch.float64)
    mu = torch.as_tensor(mu, dtype=torch.float64)
    ts = [int(t) for t in timesteps]
    if sampler not in ("ddim", "ddpm"):
        shape = (lam + mu).shape
        den = GaussianDenoiser(mu.expand(shape), var=lam.expand(shape), schedule=schedule, prediction="x0")
        x_T = torch.stack([torch.zeros(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64)])
        run = sample(den, x_T.shape, schedule, prediction="x0", timesteps=torch.tensor(ts), sampler=sampler,
                     x_T=x_T, dtype=torch.float64, return_trajectory=not to_clean, progress=False)
        out = run if to_clean else run.xs[-2]
        return out[0], (out[1] - out[0]) ** 2
    ab = schedule.alphas_cumprod.tolist()
    mean, var = torch.zeros_like(lam + mu), torch.ones_like(lam + mu)
    for i, t in enumerate(ts):
        a = ab[t]
        if i + 1 == len(ts) and not to_clean:
            break
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        g = a**0.5 * lam / (a * lam + 1 - a)
        # x0_hat = g x + (1 - sqrt(a) g) mu ; eps_hat = (x - sqrt(a) x0_hat) / sqrt(1 - a)
        if sampler == "ddpm":
            c_x0, c_x, s2 = ddpm_posterior(a, a_prev)
        else:
            sigma, c_e = ddim_coefficients(a, a_prev, eta)
            s2 = sigma**2
            c_x0, c_x = a_prev**0.5 - c_e * a**0.5 / (1 - a) ** 0.5, c_e / (1 - a) ** 0.5
        slope = c_x0 * g + c_x
        offset = c_x0 * (1 - a**0.5 * g) * mu
        mean, var = slope * mean + offset, slope**2 * var + s2
    return mean, var


def gaussian_flow_moments(lam, mu, ab_start: float, ab_end: float):
    """Mean and variance at alpha_bar `ab_end` of the exact probability-flow ODE started from
    N(0, 1) at `ab_start`, for 1-D Gaussian data N(mu, lam): what a sampler with infinitely
    many steps between the two produces.

    The marginal at a is N(sqrt(a) mu, a lam + 1 - a); in one dimension the flow map between two
    Gaussians is the increasing affine map, x -> m_end + (s_end / s_start) (x - m_start), so
    N(0, 1) goes to N(m_end - (s_end / s_start) m_start, (s_end / s_start)^2). At a zero-SNR
    start (ab_start = 0) N(0, 1) is the true marginal and ab_end = 1 returns the data's law.
    """
    lam = torch.as_tensor(lam, dtype=torch.float64)
    mu = torch.as_tensor(mu, dtype=torch.float64)
    s_start, s_end = (ab_start * lam + 1 - ab_start).sqrt(), (ab_end * lam + 1 - ab_end).sqrt()
    ratio = s_end / s_start
    return ab_end**0.5 * mu - ratio * ab_start**0.5 * mu, ratio**2
