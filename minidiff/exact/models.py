"""Two exactly solvable high-dimensional data models, and the reduction that makes the mixture cheap.

Aranguri, Biroli, Mezard, Vanden-Eijnden 2025 ("Optimizing Noise Schedules of Generative Models in
High Dimensions", arXiv 2501.00988) study sampling on data whose denoiser is known in closed form,
so that every error comes from the time discretisation and none from a network. This file holds
the two models of the paper, a two-mode Gaussian mixture and the Curie-Weiss model, each with

- an exact sampler (`sample`),
- the exact denoiser E[a | signal * a + noise * z = x], z ~ N(0, I) (`denoise`),

and, for the mixture, the exact reduction of Euler's iterates to one scalar and one gain
(`euler_mixture_reduced`), so that d = 1e12 costs what d = 10 does.

Writing the noisy observation as `signal * a + noise * z` covers both conventions used in minidiff:
the stochastic interpolant I_tau = c alpha(tau) z + beta(tau) a (signal = beta, noise = c alpha,
see `minidiff.exact.interpolants`) and DDPM's x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (signal = sqrt(ab),
noise = sqrt(1 - ab)). `PosteriorMeanModel` wraps a model so that `minidiff.samplers.sample` can
drive it as an "x0"-prediction network.

Arithmetic is float64 unless the caller passes float32 tensors (Curie-Weiss at d = 1e5).
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass

import torch

from .interpolants import Interpolant


def _as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    """A float scalar or tensor of per-sample values, broadcastable against `like` [..., d]."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return value.unsqueeze(-1) if value.dim() > 0 else value


# ------------------------------------------------------------------------------------------------
# Gaussian mixture
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianMixture:
    """a = s mu + sigma eta, s = +1 with probability p else -1, eta ~ N(0, I_d), mu = m (1, ..., 1).

    |mu|^2 = m^2 d, so the two modes sit m sqrt(d) apart along mu_hat = mu / |mu| and overlap in no
    other direction. Defaults are the paper's: p = 0.8, m = 1, sigma = 0.5.
    """

    d: int
    p: float = 0.8
    m: float = 1.0
    sigma: float = 0.5

    def __post_init__(self):
        if not 0.0 < self.p < 1.0:
            raise ValueError(f"the weight p of the + mode must lie in (0, 1), got {self.p}")
        if self.d < 2:
            raise ValueError(f"the dimension d must be at least 2 (a mode direction and its complement), got {self.d}")
        if self.sigma <= 0 or self.m <= 0:
            raise ValueError(f"m and sigma must be positive, got m={self.m}, sigma={self.sigma}")

    @property
    def h(self) -> float:
        """The mode field h = 0.5 log(p / (1 - p)): E[s] = tanh(h)."""
        return 0.5 * math.log(self.p / (1.0 - self.p))

    @property
    def mu_norm(self) -> float:
        """|mu| = m sqrt(d)."""
        return self.m * math.sqrt(self.d)

    @property
    def top_eigenvalue(self) -> float:
        """Largest eigenvalue of the covariance of a: 4 p (1 - p) m^2 d + sigma^2 (along mu_hat)."""
        return 4 * self.p * (1 - self.p) * self.m**2 * self.d + self.sigma**2

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        """n exact samples, shape [n, d] (materialises d; for d beyond ~1e6 use the scalar reduction)."""
        s = self.sample_signs(n, generator, dtype)
        eta = torch.randn(n, self.d, generator=generator, dtype=dtype)
        return s[:, None] * self.m + self.sigma * eta

    def sample_signs(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        """The mode labels s in {-1, +1}, P(s = +1) = p."""
        u = torch.rand(n, generator=generator, dtype=dtype)
        return torch.where(u < self.p, 1.0, -1.0).to(dtype)

    def posterior_coefficients(self, signal, noise):
        """(lin, pref, slope) with E[a | x] = lin x + pref tanh(h + slope u) mu_hat, u = mu_hat . x.

        Given s, x ~ N(signal s mu, den I) with den = noise^2 + sigma^2 signal^2, so
        E[a | x, s] = (sigma^2 signal / den) x + (noise^2 / den) s mu and
        E[s | x] = tanh(h + signal mu.x / den)  (HIGHDIM.md, the mixture's denoiser); hence
        lin = sigma^2 signal / den, pref = |mu| noise^2 / den, slope = |mu| signal / den.
        Everything but the tanh is linear in x; this is what lets Euler iterates split into one
        scalar along mu plus a gain on the orthogonal part (`euler_mixture_reduced`).
        """
        den = noise**2 + self.sigma**2 * signal**2
        return self.sigma**2 * signal / den, self.mu_norm * noise**2 / den, self.mu_norm * signal / den

    def denoise(self, x: torch.Tensor, signal, noise) -> torch.Tensor:
        """Exact E[a | signal a + noise z = x] for x of shape [..., d]; signal/noise scalars or [...]."""
        signal, noise = _as_tensor(signal, x), _as_tensor(noise, x)
        u = x.sum(-1, keepdim=True) / math.sqrt(self.d)  # mu_hat . x, mu_hat = 1 / sqrt(d)
        lin, pref, slope = self.posterior_coefficients(signal, noise)
        return lin * x + pref * torch.tanh(self.h + slope * u) / math.sqrt(self.d)


@dataclass(frozen=True)
class ReducedMixture:
    """The Gaussian mixture seen in coordinates y = (mu_hat . x, x_perp . e_1, ..., x_perp . e_k).

    Any sampler whose steps are linear combinations of x and of the denoiser output (Euler, DDIM,
    DDPM with its noise) keeps the coordinates separate, because E[a | x] = lin x + (term along
    mu_hat). So a d-dimensional run is reproduced exactly by running on y, of width 1 + k, with
    the starting noise reduced the same way: d = 1e8 costs what d = 2 does.
    """

    mixture: GaussianMixture

    def denoise(self, y: torch.Tensor, signal, noise) -> torch.Tensor:
        """E[a | x] in the reduced coordinates; y[..., 0] is mu_hat . x."""
        signal, noise = _as_tensor(signal, y), _as_tensor(noise, y)
        lin, pref, slope = self.mixture.posterior_coefficients(signal, noise)
        out = lin * y
        along = pref[..., 0] if torch.is_tensor(pref) and pref.dim() else pref
        slope0 = slope[..., 0] if torch.is_tensor(slope) and slope.dim() else slope
        out[..., 0] = out[..., 0] + along * torch.tanh(self.mixture.h + slope0 * y[..., 0])
        return out


# ------------------------------------------------------------------------------------------------
# The Gaussian mixture's Euler iterates in one scalar and one gain
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


def mean_chi_over_sqrt(k: int) -> float:
    """E[chi_k] / sqrt(k) = sqrt(2/k) Gamma((k+1)/2) / Gamma(k/2); the series 1 - 1/(4k) + 1/(32k^2)
    beyond k = 1e4, where the difference of two huge lgammas would lose the digits."""
    if k > 10_000:
        return 1.0 - 1.0 / (4 * k) + 1.0 / (32 * k * k)
    return math.sqrt(2.0 / k) * math.exp(math.lgamma((k + 1) / 2) - math.lgamma(k / 2))


# ------------------------------------------------------------------------------------------------
# Curie-Weiss
# ------------------------------------------------------------------------------------------------


def curie_weiss_magnetisation(inverse_temperature: float, tol: float = 1e-15) -> float:
    """The positive root of m = tanh(b m) (0 for b <= 1); 0.957504 at b = 2. Newton from m = 1."""
    b = inverse_temperature
    if b <= 1.0:
        return 0.0
    m = 1.0
    for _ in range(100):
        f = m - math.tanh(b * m)
        step = f / (1.0 - b / math.cosh(b * m) ** 2)
        m -= step
        if abs(step) < tol:
            break
    return m


@dataclass(frozen=True)
class CurieWeiss:
    """Spins a in {-1, +1}^d with P(a) proportional to exp(d b M^2 / 2 + h M), M = mean_i a_i.

    Below the critical temperature (b > 1) and for large d the law is a mixture of two product
    measures (HIGHDIM.md): with m the root of m = tanh(b m), the state nu = +-1 has weight
    W_nu = exp(nu h m) / (2 cosh(h m)) and, inside it, every spin is independently +nu with
    probability (1 + m) / 2. The field h acts on the magnetisation M, not on each spin, so that
    W_+ stays O(1) as d grows. `sample` and `denoise` use this mixture (and are exact for it);
    `sample_boltzmann` draws from the finite-d law itself, for comparison.
    """

    d: int
    inverse_temperature: float = 2.0
    field: float = 0.7
    m: float = dataclasses.field(init=False)

    def __post_init__(self):
        if self.inverse_temperature <= 1.0:
            raise ValueError(
                f"the two-state form needs b > 1 (ordered phase), got inverse_temperature={self.inverse_temperature}"
            )
        if self.d < 1:
            raise ValueError(f"d must be positive, got {self.d}")
        object.__setattr__(self, "m", curie_weiss_magnetisation(self.inverse_temperature))

    @property
    def weight_plus(self) -> float:
        """W_+ = exp(h m) / (2 cosh(h m)) = 1 / (1 + exp(-2 h m))."""
        return 1.0 / (1.0 + math.exp(-2.0 * self.field * self.m))

    @property
    def minority_fraction(self) -> float:
        """Fraction of spins against their state: (1 - m) / 2."""
        return (1.0 - self.m) / 2.0

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        """n exact samples of the two-state mixture, shape [n, d], entries +-1."""
        nu = torch.where(torch.rand(n, 1, generator=generator, dtype=dtype) < self.weight_plus, 1.0, -1.0)
        agree = torch.rand(n, self.d, generator=generator, dtype=dtype) < (1.0 + self.m) / 2.0
        return torch.where(agree, nu, -nu).to(dtype)

    def sample_boltzmann(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        """n exact samples of the finite-d Curie-Weiss law, shape [n, d].

        The law depends on a only through K = number of up spins, P(K) proportional to
        C(d, K) exp(d b M^2 / 2 + h M) with M = (2K - d) / d; draw K, then place the K up spins at
        uniformly random positions.
        """
        d, b = self.d, self.inverse_temperature
        k = torch.arange(d + 1, dtype=torch.float64)
        mag = (2 * k - d) / d
        log_binom = torch.lgamma(torch.tensor(d + 1.0, dtype=torch.float64)) - torch.lgamma(k + 1) - torch.lgamma(d - k + 1)
        logits = log_binom + d * b * mag**2 / 2 + self.field * mag
        probs = torch.softmax(logits, dim=0)
        ups = torch.multinomial(probs, n, replacement=True, generator=generator)
        ranks = torch.rand(n, d, generator=generator).argsort(-1).argsort(-1)
        return torch.where(ranks < ups[:, None], 1.0, -1.0).to(dtype)

    def posterior_plus(self, x: torch.Tensor, signal, noise) -> torch.Tensor:
        """P(nu = +1 | x), shape [...].

        log P(+|x) - log P(-|x) = 2 h m + sum_i log((1 + m t_i) / (1 - m t_i)), t_i = tanh(lam x_i),
        lam = signal / noise^2 (from W_nu prod_i (1 + nu m t_i)); summed in float64 because d
        terms of order one nearly cancel.
        """
        t = torch.tanh(_as_tensor(signal, x) / _as_tensor(noise, x) ** 2 * x)
        return self._posterior_plus(t)

    def _posterior_plus(self, t: torch.Tensor) -> torch.Tensor:
        log_ratio = torch.log1p(self.m * t) - torch.log1p(-self.m * t)
        log_odds = 2.0 * self.field * self.m + log_ratio.sum(-1, dtype=torch.float64)
        return torch.sigmoid(log_odds).to(t.dtype)

    def denoise(self, x: torch.Tensor, signal, noise) -> torch.Tensor:
        """Exact E[a | signal a + noise z = x] for x of shape [..., d].

        Inside state nu the spins are independent: E[a_i | x, nu] = tanh(nu atanh(m) + lam x_i),
        lam = signal / noise^2; then average over nu with its posterior weight (HIGHDIM.md).
        With t = tanh(lam x), tanh(+-atanh(m) + lam x) = (t +- m) / (1 +- m t): one tanh per spin
        instead of three (this is the whole cost of a Curie-Weiss run).
        """
        t = torch.tanh(_as_tensor(signal, x) / _as_tensor(noise, x) ** 2 * x)
        w_plus = self._posterior_plus(t).unsqueeze(-1)
        plus = (t + self.m) / (1.0 + self.m * t)
        minus = (t - self.m) / (1.0 - self.m * t)
        return minus + w_plus * (plus - minus)


# ------------------------------------------------------------------------------------------------
# The DDPM view: an exact x0-prediction "network"
# ------------------------------------------------------------------------------------------------


class PosteriorMeanModel:
    """The exact E[x0 | x_t] of a data model under x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps.

    Callable as model(x, t, y=None) with x [B, d] and t int64 [B] training timesteps, returning the
    x0 prediction; use it with `minidiff.samplers.sample(..., prediction="x0")`. At ab_t = 0
    (zero terminal SNR) it returns the data mean, which is what a perfect v or x0 network learns
    there (Lin et al. Sec. 3.2).
    """

    def __init__(self, data_model, alphas_cumprod: torch.Tensor):
        self.data_model = data_model
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        ab = self.alphas_cumprod.to(x.device)[t.long()]
        if ab.dim() == 0:
            ab = ab.expand(x.shape[0])
        x64 = x.reshape(x.shape[0], -1).double()
        x0 = self.data_model.denoise(x64, ab.sqrt(), (1.0 - ab).sqrt())
        return x0.reshape(x.shape).to(x.dtype)
