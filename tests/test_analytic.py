"""Exact Gaussian denoiser, and the samplers driven by it against exact answers (issue 2)."""

import pytest
import torch

from minidiff.exact.analytic import GaussianDenoiser, gaussian_sampler_moments
from minidiff.objectives import q_sample
from minidiff.repro.exact import brightness_gaussian, exact_moments, monte_carlo
from minidiff.samplers import make_timesteps
from minidiff.schedules import Schedule


def _random_gaussian(d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(d, generator=g, dtype=torch.float64), a @ a.T / d + 0.05 * torch.eye(d, dtype=torch.float64)


def test_posterior_mean_matches_the_closed_form_and_its_limits():
    mu, cov = _random_gaussian()
    s = Schedule.make("linear", zero_snr=True)
    den = GaussianDenoiser(mu, cov, schedule=s)
    x = torch.randn(5, 6, dtype=torch.float64)
    a = 0.37
    direct = mu + (a**0.5 * cov @ torch.linalg.inv(a * cov + (1 - a) * torch.eye(6, dtype=torch.float64)) @ (x - a**0.5 * mu).T).T
    assert torch.allclose(den.posterior_mean(x, a), direct, atol=1e-10)
    assert torch.allclose(den.posterior_mean(x, 0.0), mu.expand(5, 6), atol=1e-12)  # nothing known at zero SNR
    assert torch.allclose(den.posterior_mean(x, 1.0), x, atol=1e-10)  # nothing to remove without noise


def test_posterior_mean_is_the_least_squares_regression_of_x0_on_xt():
    """Monte Carlo: for Gaussian data E[x0 | x_t] is the best linear predictor; fit it from samples."""
    mu, cov = _random_gaussian(d=3, seed=1)
    g = torch.Generator().manual_seed(2)
    n, a = 200_000, 0.4
    x0 = mu + torch.randn(n, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    xt = q_sample(x0, a, torch.randn(n, 3, generator=g, dtype=torch.float64))
    design = torch.cat([xt, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    coef = torch.linalg.lstsq(design, x0).solution
    probe = torch.randn(4, 3, generator=g, dtype=torch.float64)
    fitted = torch.cat([probe, torch.ones(4, 1, dtype=torch.float64)], dim=1) @ coef
    exact = GaussianDenoiser(mu, cov, schedule=Schedule.make("linear")).posterior_mean(probe, a)
    assert torch.allclose(fitted, exact, atol=0.02)


def test_diagonal_and_full_covariance_agree_and_outputs_convert():
    s = Schedule.make("cosine")
    var = torch.rand(2, 3, 3, dtype=torch.float64) + 0.1
    mu = torch.randn(2, 3, 3, dtype=torch.float64)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    full = GaussianDenoiser(mu, torch.diag(var.flatten()), schedule=s, prediction="x0")(x, t)
    diag = GaussianDenoiser(mu, var=var, schedule=s, prediction="x0")(x, t)
    assert torch.allclose(full, diag, atol=1e-10)
    v = GaussianDenoiser(mu, var=var, schedule=s, prediction="v")(x, t)
    ab = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(ab.sqrt() * x - (1 - ab).sqrt() * v, diag, atol=1e-10)  # v -> x0
    with pytest.raises(ValueError, match="exactly one"):
        GaussianDenoiser(mu, schedule=s)


@pytest.mark.parametrize("sampler,eta,spacing", [("ddim", 0.0, "trailing"), ("ddpm", 0.0, "leading"), ("ddim", 0.5, "linspace")])
def test_real_sampler_matches_exact_moment_recursion(sampler, eta, spacing):
    """The Monte-Carlo law of `samplers.sample` equals the closed-form moments (3x4x4, 8000 samples)."""
    for name, zero in [("zero-snr", True), ("original", False)]:
        sched = Schedule.make("scaled_linear", zero_snr=zero)
        mu, lam_b, lam_pix, d = brightness_gaussian((3, 4, 4), 0.5, 0.3, 0.2)
        ts = make_timesteps(1000, 8, spacing)
        exact = exact_moments(sched, ts, sampler, eta, lam_b, lam_pix, 0.2)
        got = monte_carlo(sched, 8, spacing, sampler, eta, (3, 4, 4), 0.5, 0.3, 0.2, n=8000)
        for key in ("brightness_std_ratio", "texture_std_ratio"):
            assert got[key] == pytest.approx(exact[key], rel=0.04), (name, key)
        assert got["brightness_mean"] == pytest.approx(exact["brightness_mean"], abs=0.02)


def _ratios(zero_snr, spacing, steps, sampler="ddim", eta=0.0):
    mu, lam_b, lam_pix, d = brightness_gaussian((3, 32, 32), 0.5, 0.3, 0.2)
    sched = Schedule.make("scaled_linear", zero_snr=zero_snr)
    return exact_moments(sched, make_timesteps(1000, steps, spacing), sampler, eta, lam_b, lam_pix, 0.2)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_zero_snr_samples_approach_the_data_as_steps_grow(sampler, eta):
    """(a) Every large step loses variance; with the zero-SNR schedule the loss vanishes with steps."""
    r = [_ratios(True, "trailing", s, sampler, eta) for s in (10, 50, 1000)]
    b = [x["brightness_std_ratio"] for x in r]
    tex = [x["texture_std_ratio"] for x in r]
    assert b[0] < b[1] < b[2] and tex[0] < tex[1] < tex[2]
    assert b[2] > 0.99 and tex[2] > 0.97 and r[2]["mean_error"] < 1e-3
    assert b[0] < 0.6  # 10 steps lose about half the brightness spread


def test_stable_diffusion_schedule_keeps_brightness_wrong_and_leading_is_worse():
    """(b) Without the rescale the brightness spread stays ~half of the data's at any step count."""
    for steps in (10, 50, 1000):
        flawed = _ratios(False, "trailing", steps)["brightness_std_ratio"]
        assert flawed < 0.5, steps
    assert _ratios(False, "trailing", 1000)["brightness_std_ratio"] < 0.5 < _ratios(True, "trailing", 1000)["brightness_std_ratio"] - 0.45
    for steps in (10, 50):
        assert _ratios(False, "leading", steps)["brightness_std_ratio"] < _ratios(False, "trailing", steps)["brightness_std_ratio"] - 0.03
    # the texture (a low-variance feature) is recovered either way
    assert _ratios(False, "trailing", 1000)["texture_std_ratio"] > 0.99


def test_moments_of_1d_ddim_with_one_step_by_hand():
    """One DDIM step from a zero-SNR start to a clean sample returns the posterior mean at a=0: mu."""
    s = Schedule.make("linear", zero_snr=True)
    m, v = gaussian_sampler_moments(torch.tensor(2.0), torch.tensor(0.7), s, [999])
    assert m.item() == pytest.approx(0.7) and v.item() == pytest.approx(0.0)
