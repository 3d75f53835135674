"""The high-dimensional schedule lab (Aranguri, Biroli, Mezard, Vanden-Eijnden 2025): `minidiff.exact.interpolants`,
`minidiff.exact.models` and the shared parts of the `highdim-*` experiments (`minidiff.repro.highdim_common`).

Exact denoisers against brute-force posterior means, the scalar reduction against the full
simulation, the exact samplers against the models' statistics, and the paper's two findings:
uniform VP loses the mode weight, uniform VE loses the within-mode spread, the dilated schedules
keep both with a number of steps that does not depend on d.
"""

import itertools
import math

import pytest
import torch

from minidiff.exact.models import (
    CurieWeiss,
    GaussianMixture,
    PosteriorMeanModel,
    ReducedMixture,
    curie_weiss_magnetisation,
    euler_mixture_reduced,
    reduce_noise,
)
from minidiff.exact.interpolants import (
    DilatedTime,
    Interpolant,
    dilated_time,
    dilated_timesteps,
    euler,
    interpolant_scale,
    interpolant_time,
    make_interpolant,
    speciation_alpha_bar,
    speciation_timestep,
    tau_grid,
    uniform_time,
)
from minidiff.repro.highdim_common import (
    Setup,
    curie_weiss_features,
    mixture_ddim,
    mixture_features_exact,
    mixture_features_of,
    run_curie_weiss,
    run_mixture,
    smallest_steps,
    step_candidates,
)


@pytest.fixture(autouse=True)
def one_thread():
    """The lab's loops run many small ops; OpenMP waits on a shared CPU cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- exact denoisers


@pytest.mark.parametrize("signal,noise", [(0.3, 1.0), (0.8, 0.6), (1.0, 0.2)])
def test_mixture_denoiser_matches_importance_weighted_monte_carlo(signal, noise):
    """E[a|x] in d = 2 against prior samples weighted by the likelihood of x."""
    mixture = GaussianMixture(d=2, p=0.7, m=1.0, sigma=0.5)
    prior = mixture.sample(400_000, gen(1))
    xs = torch.tensor([[0.4, -0.1], [-0.5, -0.8], [1.2, 0.9], [0.0, 0.05]], dtype=torch.float64)
    exact = mixture.denoise(xs, signal, noise)
    for x, e in zip(xs, exact):
        logw = -((x - signal * prior) ** 2).sum(-1) / (2 * noise**2)
        w = torch.softmax(logw, 0)
        mc = (w[:, None] * prior).sum(0)
        ess = 1 / (w**2).sum()
        assert ess > 2000
        torch.testing.assert_close(e, mc, atol=4 / ess.sqrt().item(), rtol=0)


@pytest.mark.parametrize("signal,noise", [(0.2, 1.0), (0.7, 0.7), (1.0, 0.3)])
def test_curie_weiss_denoiser_matches_enumeration(signal, noise):
    """d = 3 spins: the prior has 8 states, so the posterior mean is an exact finite sum."""
    cw = CurieWeiss(d=3, inverse_temperature=2.0, field=0.4)
    states = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3)), dtype=torch.float64)
    prior = sum(w * ((1 + nu * cw.m * states) / 2).prod(-1) for nu, w in ((1, cw.weight_plus), (-1, 1 - cw.weight_plus)))
    assert prior.sum().item() == pytest.approx(1.0, abs=1e-14)
    xs = torch.randn(5, 3, generator=gen(2), dtype=torch.float64)
    exact = cw.denoise(xs, signal, noise)
    for x, e in zip(xs, exact):
        post = prior * torch.exp(-((x - signal * states) ** 2).sum(-1) / (2 * noise**2))
        torch.testing.assert_close(e, (post[:, None] * states).sum(0) / post.sum(), atol=1e-12, rtol=0)


def test_posterior_mean_model_is_the_denoiser_at_sqrt_alpha_bar():
    """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps: the x0 "network" is E[a | signal = sqrt(ab), noise = sqrt(1 - ab)]."""
    mixture = GaussianMixture(d=8)
    ab = torch.linspace(0.0, 0.99, 10, dtype=torch.float64)
    model = PosteriorMeanModel(mixture, ab)
    x = torch.randn(10, 8, generator=gen(), dtype=torch.float64)
    t = torch.arange(10)
    out = model(x, t)
    for i in range(10):
        ref = mixture.denoise(x[i : i + 1], ab[i].sqrt().item(), (1 - ab[i]).sqrt().item())
        torch.testing.assert_close(out[i : i + 1], ref)
    # at zero SNR the exact x0 prediction is the data mean (2p - 1) mu, whatever the input
    torch.testing.assert_close(out[0], torch.full((8,), 2 * mixture.p - 1, dtype=torch.float64))


# ---------------------------------------------------------------- exact samplers


def test_mixture_sampler_statistics():
    mixture = GaussianMixture(d=400, p=0.8, m=1.0, sigma=0.5)
    a = mixture.sample(5000, gen())
    feats = mixture_features_of(mixture, a)
    assert feats.high == pytest.approx(0.8, abs=0.02)  # 3.5 standard errors
    assert feats.low == pytest.approx(0.5, rel=0.01)


def test_curie_weiss_magnetisation_root():
    """m = tanh(b m): 0.9575 at b = 2 (HIGHDIM.md), 0 above the critical temperature."""
    m = curie_weiss_magnetisation(2.0)
    assert m == pytest.approx(0.957504, abs=1e-6)
    assert m == pytest.approx(math.tanh(2 * m), abs=1e-14)
    assert curie_weiss_magnetisation(0.9) == 0.0


def test_curie_weiss_samplers_statistics():
    """The two-state sampler and the finite-d Boltzmann law share |M| ~ m and W_+ = 1/(1 + exp(-2 h m))."""
    cw = CurieWeiss(d=2000, inverse_temperature=2.0, field=0.7)
    assert cw.weight_plus == pytest.approx(0.79257, abs=1e-5)
    for x in (cw.sample(2000, gen(3)), cw.sample_boltzmann(2000, gen(4))):
        mag = x.mean(-1)
        assert mag.abs().mean().item() == pytest.approx(cw.m, abs=0.005)
        assert (mag > 0).double().mean().item() == pytest.approx(cw.weight_plus, abs=0.035)
        feats = curie_weiss_features(cw, x)
        assert feats.low == pytest.approx(cw.minority_fraction, rel=0.05)


# ---------------------------------------------------------------- interpolants and time changes


def test_drift_coefficients_are_the_derivatives():
    """b = (alpha'/alpha) x + (beta' - alpha' beta/alpha) E, checked by finite differences of alpha, beta."""
    for path in ("linear", "trig"):
        interp = Interpolant(c=2.0, path=path)
        for tau in (0.0, 0.3, 0.9):
            e = 1e-6
            da = (interp.alpha(tau + e) - interp.alpha(max(tau - e, 0))) / (tau + e - max(tau - e, 0))
            a, b = interp.alpha(tau), interp.beta(tau)
            coef_a, coef_b = interp.drift_coefficients(tau)
            assert coef_a == pytest.approx(da / a, abs=1e-6)
            assert coef_b == pytest.approx(1 - da * b / a, abs=1e-6)


def test_linear_path_last_step_lands_on_the_denoiser():
    mixture = GaussianMixture(d=6)
    interp = make_interpolant("vp", 6)
    x = torch.randn(3, 6, generator=gen(), dtype=torch.float64)
    taus = torch.tensor([0.0, 0.7, 1.0], dtype=torch.float64)
    _, traj = euler(interp, mixture.denoise, x, taus, return_trajectory=True)
    torch.testing.assert_close(traj[-1], mixture.denoise(traj[1], *interp.signal_noise(0.7)))


def test_dilated_time_changes():
    d, kappa = 10_000, 3.0
    vp, ve = DilatedTime("vp", d, kappa), DilatedTime("ve", d, kappa)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    torch.testing.assert_close(vp(t), torch.tensor([0.0, 0.015, 0.03, 0.515, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ve(t), torch.tensor([0.0, 0.485, 0.97, 0.985, 1.0], dtype=torch.float64))
    # on the trig path the VE schedule is carried over through the noise: alpha_trig(tau(t)) = 1 - tau_lin(t)
    ve_trig, trig = DilatedTime("ve", d, kappa, "trig"), Interpolant(path="trig")
    alphas = torch.tensor([trig.alpha(v) for v in ve_trig(t).tolist()], dtype=torch.float64)
    torch.testing.assert_close(alphas, 1 - ve(t))
    torch.testing.assert_close(DilatedTime("vp", d, kappa, "trig")(t), vp(t))  # beta = tau on both paths
    with pytest.raises(ValueError, match="even number of steps"):
        tau_grid(vp, 7)
    with pytest.raises(ValueError, match="must lie in"):
        DilatedTime("vp", 9, 3.0)
    # a user time change is any monotone map of [0, 1] onto itself
    torch.testing.assert_close(tau_grid(lambda s: s**2, 4), torch.tensor([0, 1 / 16, 1 / 4, 9 / 16, 1], dtype=torch.float64))
    with pytest.raises(ValueError, match="0 -> 0 and 1 -> 1"):
        tau_grid(lambda s: 0.5 * s, 4)
    assert tau_grid(uniform_time, 3).tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])


def test_step_candidates_are_even_and_increasing():
    grid = step_candidates(100)
    assert grid[:6] == [2, 4, 6, 8, 10, 12]
    assert all(n % 2 == 0 for n in grid) and grid == sorted(set(grid)) and grid[-1] <= 100


# ---------------------------------------------------------------- the scalar reduction


@pytest.mark.parametrize("kind,schedule,path", [("vp", "uniform", "linear"), ("vp", "dilated", "linear"),
                                                ("ve", "uniform", "linear"), ("ve", "dilated", "trig")])
def test_reduction_equals_full_simulation(kind, schedule, path):
    """Same noise, d = 64: one scalar and one gain reproduce every coordinate to rounding."""
    d, n, steps = 64, 16, 12
    mixture = GaussianMixture(d=d)
    interp = make_interpolant(kind, d, path)
    taus = Setup(kind, schedule, path).taus(d, steps)
    z = torch.randn(n, d, generator=gen(5), dtype=torch.float64)
    full = euler(interp, mixture.denoise, interp.c * z, taus)
    u0, _ = reduce_noise(z, interp.c)
    u, gain = euler_mixture_reduced(interp, mixture, taus, u0)
    z_perp = z - z.mean(-1, keepdim=True)
    rebuilt = u[:, None] / math.sqrt(d) + gain * interp.c * z_perp
    torch.testing.assert_close(rebuilt, full, rtol=1e-10, atol=1e-10 * interp.c)


def test_exact_in_law_features_match_monte_carlo():
    """The table's noise-free features (root of the monotone Euler map, exact chi mean) vs 20000 samples."""
    mixture = GaussianMixture(d=10**4)
    for setup, steps in ((Setup("vp", "uniform"), 100), (Setup("ve", "dilated"), 20), (Setup("ve", "uniform"), 40)):
        exact = mixture_features_exact(mixture, setup, steps)
        mc = run_mixture(mixture, setup, steps, n=20_000, seed=1)
        assert mc.high == pytest.approx(exact.high, abs=0.012)  # 4 standard errors
        assert mc.low == pytest.approx(exact.low, rel=1e-3)


# ---------------------------------------------------------------- the paper's findings


def test_uniform_vp_piles_into_the_majority_mode_dilated_recovers_p():
    """d = 1e8, 20 steps: the mode is decided at tau ~ 1/sqrt(d), inside the first uniform step."""
    mixture = GaussianMixture(d=10**8, p=0.8)
    uniform = run_mixture(mixture, Setup("vp", "uniform"), 20)
    dilated = run_mixture(mixture, Setup("vp", "dilated"), 20)
    assert uniform.high > 0.999
    assert dilated.high == pytest.approx(0.8, abs=0.03)
    assert uniform.low == pytest.approx(0.5, rel=0.2)  # VP keeps the low-level feature


def test_uniform_ve_collapses_the_spread_dilated_recovers_sigma():
    """d = 1e8, 100 steps: the spread is set at 1 - tau ~ 1/sqrt(d), inside the last uniform step."""
    mixture = GaussianMixture(d=10**8, sigma=0.5)
    uniform = run_mixture(mixture, Setup("ve", "uniform"), 100)
    dilated = run_mixture(mixture, Setup("ve", "dilated"), 100)
    assert uniform.low < 0.01
    assert dilated.low == pytest.approx(0.5, rel=0.1)
    assert uniform.high == pytest.approx(0.8, abs=0.03)  # VE keeps the high-level feature


def test_dilated_steps_do_not_grow_with_d_uniform_steps_do():
    """The headline, in small: N* of dilated VP barely moves from d = 1e4 to 1e8 (28 -> 34, one grid
    step), uniform VP grows like sqrt(d)."""
    def n_star(setup, d):
        mixture = GaussianMixture(d=d)
        n, _ = smallest_steps(lambda n: mixture_features_exact(mixture, setup, n), 0.03, 0.1, 4000)
        return n

    dil_small, dil_large = n_star(Setup("vp", "dilated"), 10**4), n_star(Setup("vp", "dilated"), 10**8)
    assert dil_small is not None and dil_large <= 1.25 * dil_small
    uniform_small = n_star(Setup("vp", "uniform"), 10**4)
    assert uniform_small > 2 * dil_small
    # 100 times the dimension: uniform VP still fails at 3x the steps that sufficed at d = 1e4
    feats = mixture_features_exact(GaussianMixture(d=10**6), Setup("vp", "uniform"), 3 * uniform_small)
    assert not feats.within(0.03, 0.1)


def test_curie_weiss_uniform_ve_freezes_spins_dilated_keeps_minority():
    """Full simulation at d = 1000: uniform VE ends with soft spins all along the mode."""
    cw = CurieWeiss(d=1000)
    uniform = run_curie_weiss(cw, Setup("ve", "uniform"), 10, n=64)
    dilated = run_curie_weiss(cw, Setup("ve", "dilated"), 30, n=64)
    assert uniform.low < 0.2 * cw.minority_fraction and uniform.abs_mean < 0.97
    assert dilated.low == pytest.approx(cw.minority_fraction, rel=0.25) and dilated.abs_mean > 0.99
    vp_uniform = run_curie_weiss(cw, Setup("vp", "uniform"), 10, n=200)
    assert vp_uniform.high > 0.95  # W+ = 0.79: the majority state takes almost everything


# ---------------------------------------------------------------- the bridge to DDPM


def test_ddpm_noisy_sample_is_a_scaled_interpolant():
    """x_t = sqrt(ab) a + sqrt(1 - ab) z equals s * ((1 - tau) z + tau a) for the linear path."""
    ab = torch.tensor([0.0, 1e-4, 0.3, 0.9, 1.0], dtype=torch.float64)
    a, z = torch.randn(5, 3, generator=gen(), dtype=torch.float64), torch.randn(5, 3, generator=gen(1), dtype=torch.float64)
    x_t = ab.sqrt()[:, None] * a + (1 - ab).sqrt()[:, None] * z
    for path in ("linear", "trig"):
        tau = interpolant_time(ab, path)
        interp = Interpolant(path=path)
        inter = torch.stack([interp.sample(tau[i].item(), a[i], z[i]) for i in range(5)])
        torch.testing.assert_close(interpolant_scale(ab, path)[:, None] * inter, x_t)


def test_speciation_window_and_dilated_timesteps():
    from minidiff.schedules import Schedule

    schedule = Schedule.make(kind="linear", num_timesteps=1000, zero_snr=True)
    ab = schedule.alphas_cumprod
    lam = 1e4
    assert speciation_alpha_bar(lam) == 1e-4
    t_s = speciation_timestep(ab, lam)
    assert ab[t_s] <= 1e-4 < ab[t_s - 1]
    steps = dilated_timesteps(ab, 10, lam, kappa=3.0)
    assert steps.dtype == torch.int64 and steps[0] == 999 and (steps.diff() < 0).all() and steps[-1] >= 0
    tau_w = 3.0 * interpolant_time(torch.tensor([1e-4])).item()
    taus = interpolant_time(ab[steps])
    # half of the steps inside the window (the sixth sits on its edge, to the nearest timestep)
    assert (taus[:5] < tau_w).all() and (taus[6:] > tau_w).all()
    assert taus[5].item() == pytest.approx(tau_w, rel=0.05)
    # a schedule whose terminal SNR already resolves the mode is refused with the reason
    with pytest.raises(ValueError, match="zero terminal SNR"):
        dilated_timesteps(Schedule.make(kind="linear").alphas_cumprod, 10, 1e7)


def test_ddim_on_reduced_coordinates_equals_full_ddim():
    """DDIM steps are linear in x and x0_hat, so (mu_hat . x, e_1 . x) evolve on their own."""
    from minidiff.samplers import sample
    from minidiff.schedules import Schedule

    d, n = 64, 8
    mixture = GaussianMixture(d=d)
    schedule = Schedule.make(kind="linear", num_timesteps=1000, zero_snr=True)
    x_T = torch.randn(n, d, generator=gen(7), dtype=torch.float64)
    mu_hat = torch.full((d,), d**-0.5, dtype=torch.float64)
    e_1 = torch.zeros(d, dtype=torch.float64)
    e_1[0], e_1[1] = 2**-0.5, -(2**-0.5)
    basis = torch.stack([mu_hat, e_1], -1)
    kw = dict(prediction="x0", steps=7, spacing="trailing", dtype=torch.float64, progress=False)
    full = sample(PosteriorMeanModel(mixture, schedule.alphas_cumprod), (n, d), schedule, x_T=x_T, **kw)
    reduced = sample(PosteriorMeanModel(ReducedMixture(mixture), schedule.alphas_cumprod), (n, 2), schedule,
                     x_T=x_T @ basis, **kw)
    torch.testing.assert_close(full @ basis, reduced, rtol=1e-10, atol=1e-10)


def test_ddim_dilated_spacing_recovers_the_mode_weight():
    """DDIM with the exact x0 model, zero-SNR linear schedule, d = 1e6, 10 steps: trailing and
    linspace step over the speciation window (nearly all samples in the + mode), dilated does not."""
    from minidiff.schedules import Schedule

    mixture = GaussianMixture(d=10**6)
    schedule = Schedule.make(kind="linear", num_timesteps=1000, zero_snr=True)
    trailing = mixture_ddim(mixture, schedule, 10, "trailing", n=4000)
    linspace = mixture_ddim(mixture, schedule, 10, "linspace", n=4000)
    dilated = mixture_ddim(mixture, schedule, 10, "dilated", n=4000)
    assert trailing.high > 0.99 and linspace.high > 0.99
    assert dilated.high == pytest.approx(0.8, abs=0.05)


def test_nonzero_terminal_snr_loses_the_mode_weight():
    """Lin et al.'s flaw, in the mixture: the linear schedule's last alpha_bar (4e-5) already carries
    sqrt(ab) |mu| = 6.3 noise units of mode signal at d = 1e6; starting from pure noise, the sign of
    the noise picks the mode and the weight falls to about 1/2 whatever the number of steps."""
    from minidiff.schedules import Schedule

    mixture = GaussianMixture(d=10**6)
    flawed = mixture_ddim(mixture, Schedule.make(kind="linear", num_timesteps=1000), 50, "trailing", n=4000)
    assert flawed.high == pytest.approx(0.5, abs=0.06)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        mixture_ddim(mixture, Schedule.make(kind="linear", num_timesteps=1000), 10, "dilated", n=10)


def test_discrete_dilated_timesteps_follow_the_continuous_dilated_time():
    """One schedule, two uses: `DilatedTime` is `dilated_time` with knot r (VP) or 1 - r (VE), and on a
    fine training grid the timesteps of `dilated_timesteps` sit within one grid gap of
    dilated_time(k / N, knot tau_w, start tau(T - 1))."""
    d = 10_000
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    torch.testing.assert_close(DilatedTime("vp", d)(t), dilated_time(t, 0.03), rtol=0, atol=0)
    torch.testing.assert_close(DilatedTime("ve", d)(t), dilated_time(t, 0.97), rtol=0, atol=0)
    from minidiff.schedules import Schedule

    ab = Schedule.make(kind="linear", num_timesteps=20_000, zero_snr=True).alphas_cumprod
    taus = interpolant_time(ab)
    lam, steps = 1e4, 10
    chosen = taus[dilated_timesteps(ab, steps, lam, kappa=3.0)]
    tau_w = 3.0 * interpolant_time(torch.tensor([speciation_alpha_bar(lam)])).item()
    targets = dilated_time(torch.arange(steps, dtype=torch.float64) / steps, tau_w, start=taus[-1].item())
    gap = taus.diff().abs().max().item()
    assert (chosen - targets).abs().max().item() <= gap
    assert chosen[0] == taus[-1] and (chosen[:steps // 2] <= tau_w + gap).all()
