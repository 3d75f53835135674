"""Sample steps (Lin et al. Table 2) and the DDIM/DDPM updates in x0 form."""

import pytest
import torch

from minidiff.exact.analytic import GaussianDenoiser
from minidiff.objectives import q_sample
from minidiff.samplers import ddim_step, ddpm_posterior, ddpm_step, make_timesteps, sample
from minidiff.schedules import Schedule

# Table 2 (T = 1000, S = 10), 1-indexed in the paper
TABLE2 = {
    "leading": [1, 101, 201, 301, 401, 501, 601, 701, 801, 901],
    "linspace": [1, 112, 223, 334, 445, 556, 667, 778, 889, 1000],
    "trailing": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
}


@pytest.mark.parametrize("spacing", list(TABLE2))
def test_table2_minus_one(spacing):
    got = make_timesteps(1000, 10, spacing)
    assert got.dtype == torch.int64
    assert got.tolist() == [t - 1 for t in reversed(TABLE2[spacing])]


def test_leading_with_steps_offset_matches_stable_diffusion_tooling():
    # Stable Diffusion tooling: leading with steps_offset=1 -> 901, 801, ..., 1 (0-indexed)
    assert make_timesteps(1000, 10, "leading", steps_offset=1).tolist() == list(range(901, 0, -100))


def test_exact_half_ties_round_to_even():
    """linspace(1, 1000, 3) = 1, 500.5, 1000 -> 1, 500, 1000; trailing at S=16 hits 62.5 -> 62."""
    assert make_timesteps(1000, 3, "linspace").tolist() == [999, 499, 0]
    assert make_timesteps(1000, 16, "trailing").tolist()[-2:] == [124, 61]  # 125 -> 124, 62.5 -> 62 -> 61
    # S = 48: 1000 - 3 * 1000/48 = 937.5 exactly -> 938 (even) -> 937
    assert make_timesteps(1000, 48, "trailing").tolist()[3] == 937


def test_values_follow_the_paper_rules_for_every_step_count():
    """Independent check with Python's Fractions (exact) and round() (ties to even)."""
    from fractions import Fraction

    T = 1000
    for S in range(1, T + 1, 7):
        lead = [1 + k * (T // S) for k in range(S)]
        lin = [round(1 + Fraction(k * (T - 1), S - 1)) for k in range(S)] if S > 1 else [1]
        trail = [round(Fraction(T * (S - k), S)) for k in range(S)]
        for spacing, rule in [("leading", lead), ("linspace", lin), ("trailing", trail)]:
            assert make_timesteps(T, S, spacing).tolist() == sorted((t - 1 for t in rule), reverse=True), (spacing, S)


def test_every_step_count_from_1_to_T():
    T = 1000
    for S in range(1, T + 1):
        for spacing in ("leading", "linspace", "trailing"):
            ts = make_timesteps(T, S, spacing)
            assert len(ts) == S and len(set(ts.tolist())) == S, (spacing, S)
            assert ts.min() >= 0 and ts.max() <= T - 1, (spacing, S)
            assert (ts[1:] < ts[:-1]).all()
        assert make_timesteps(T, S, "trailing")[0] == T - 1  # only trailing always starts at T-1
    assert make_timesteps(T, 3, "leading")[0] < T - 1 and make_timesteps(T, 3, "linspace")[-1] == 0


def test_timestep_errors():
    with pytest.raises(ValueError, match="unknown spacing"):
        make_timesteps(1000, 10, "uniform")
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            make_timesteps(1000, bad, "trailing")
    with pytest.raises(ValueError, match="leaves"):
        make_timesteps(1000, 1000, "leading", steps_offset=1)


def test_ddpm_step_is_ddim_with_eta_one():
    """Same mean and same noise scale: the posterior q(x_s | x_t, x0) is DDIM at eta = 1."""
    g = torch.Generator().manual_seed(0)
    x_t, x0, z = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for ab_t, ab_s in [(0.2, 0.5), (0.0, 0.3), (0.6, 1.0)]:
        eps = (x_t - ab_t**0.5 * x0) / (1 - ab_t) ** 0.5
        a = ddim_step(x_t, x0, eps, ab_t, ab_s, eta=1.0, noise=z)
        b = ddpm_step(x_t, x0, ab_t, ab_s, noise=z)
        assert torch.allclose(a, b, atol=1e-12)


def test_ddpm_posterior_is_exact_bayes():
    """Check q(x_s | x_t, x0) against the joint Gaussian of (x_s, x_t) given x0."""
    ab_t, ab_s = 0.3, 0.7
    a = ab_t / ab_s
    # x_s = sqrt(ab_s) x0 + sqrt(1-ab_s) e1 ; x_t = sqrt(a) x_s + sqrt(1-a) e2
    cov_ss, cov_tt, cov_st = 1 - ab_s, 1 - ab_t, a**0.5 * (1 - ab_s)
    c_x0, c_xt, var = ddpm_posterior(ab_t, ab_s)
    # E[x_s | x_t, x0] = sqrt(ab_s) x0 + cov_st / cov_tt (x_t - sqrt(ab_t) x0)
    assert c_xt == pytest.approx(cov_st / cov_tt)
    assert c_x0 == pytest.approx(ab_s**0.5 - cov_st / cov_tt * ab_t**0.5)
    assert var == pytest.approx(cov_ss - cov_st**2 / cov_tt)


def test_deterministic_ddim_recovers_x0_from_an_exact_model():
    """With the true x0 and eps, one DDIM step lands exactly on the forward sample at s."""
    x0, eps = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    x_t = q_sample(x0, 0.2, eps)
    assert torch.allclose(ddim_step(x_t, x0, eps, 0.2, 0.9), q_sample(x0, 0.9, eps), atol=1e-12)
    assert torch.allclose(ddim_step(x_t, x0, eps, 0.2, 1.0), x0)  # to a clean sample


class _Recorder:
    """Records the timesteps it is called with; predicts x0 = 0."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y=None):
        self.calls.append(int(t[0]))
        return torch.zeros_like(x)


def test_sampler_visits_listed_timesteps_and_ends_clean():
    s = Schedule.make("linear", zero_snr=True)
    model = _Recorder()
    res = sample(model, (2, 1, 4, 4), s, prediction="x0", steps=7, spacing="trailing",
                 generator=torch.Generator().manual_seed(0), return_trajectory=True, progress=False)
    assert model.calls == make_timesteps(1000, 7, "trailing").tolist()
    assert len(res.xs) == 8 and len(res.x0s) == 7
    assert torch.equal(res.samples, torch.zeros(2, 1, 4, 4))  # last step goes to alpha_bar = 1: x = x0


def test_custom_timesteps_are_visited_in_order():
    """An irregular list is followed exactly (that each step lands on the *next listed* timestep,
    not t - T // S, is checked by the Monte-Carlo moment tests in test_analytic.py)."""
    s = Schedule.make("linear")
    ts = torch.tensor([999, 750, 400, 390, 12])
    model = _Recorder()
    sample(model, (1, 1, 2, 2), s, prediction="x0", timesteps=ts, progress=False)
    assert model.calls == ts.tolist()
    with pytest.raises(ValueError, match="descending"):
        sample(model, (1, 1, 2, 2), s, prediction="x0", timesteps=torch.tensor([5, 10]), progress=False)


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_no_nan_on_zero_snr_schedule(prediction, sampler, eta):
    s = Schedule.make("scaled_linear", zero_snr=True)
    model = GaussianDenoiser(torch.zeros(1, 4, 4), var=torch.full((1, 4, 4), 0.5), schedule=s, prediction=prediction)
    res = sample(model, (3, 1, 4, 4), s, prediction=prediction, steps=1000, sampler=sampler, eta=eta,
                 generator=torch.Generator().manual_seed(0), return_trajectory=True, progress=False)
    assert all(torch.isfinite(x).all() for x in res.xs + res.x0s)
    assert res.timesteps[0] == 999


def test_eps_on_zero_snr_refused():
    s = Schedule.make("linear", zero_snr=True)
    with pytest.raises(ValueError, match="use prediction='v'|Use prediction='v'"):
        sample(lambda x, t, y=None: x, (1, 1, 2, 2), s, prediction="eps", progress=False)


def test_same_seed_same_samples_and_guidance_batching():
    s = Schedule.make("linear", zero_snr=True)

    def model(x, t, y=None):  # a class-conditional toy: the label shifts the prediction
        shift = torch.zeros(x.shape[0]) if y is None else y.float()
        return 0.5 * x + shift.reshape(-1, 1, 1, 1)

    kw = dict(prediction="v", steps=10, sampler="ddpm", guidance=3.0, guidance_rescale=0.7, progress=False)
    y = torch.tensor([1, 2])
    a = sample(model, (2, 1, 4, 4), s, y=y, generator=torch.Generator().manual_seed(1), **kw)
    b = sample(model, (2, 1, 4, 4), s, y=y, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b)
    # the batched [cond, uncond] path equals two separate calls when uncond_y is the model's null
    def model_null(x, t, y=None):
        return model(x, t, y=None if y is None else torch.where(y < 0, torch.zeros_like(y), y))

    c = sample(model_null, (2, 1, 4, 4), s, y=y, uncond_y=torch.tensor([-1, -1]),
               generator=torch.Generator().manual_seed(1), **kw)
    assert torch.allclose(a, c, atol=1e-6)


def test_each_ddim_step_lands_on_the_next_listed_timestep():
    """An oracle that knows x0: deterministic DDIM then follows x_t = sqrt(ab_t) x0 + sqrt(1-ab_t) x_T
    exactly, so after step i the state must sit at alpha_bar of the (i+1)-th *listed* timestep.
    S = 7 does not divide T: stepping to t - T // S would land elsewhere."""
    s = Schedule.make("linear", zero_snr=True)
    x0 = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    res = sample(lambda x, t, y=None: x0, (2, 1, 4, 4), s, prediction="x0", steps=7, spacing="trailing",
                 dtype=torch.float64, generator=torch.Generator().manual_seed(0), return_trajectory=True, progress=False)
    x_T = res.xs[0]
    ts = res.timesteps.tolist()
    assert ts[1] == 856  # listed; 999 - 1000 // 7 = 857 is not
    for i, t in enumerate(ts[1:], start=1):
        assert torch.allclose(res.xs[i], q_sample(x0, s.alphas_cumprod[t].item(), x_T), atol=1e-12), t


def test_guidance_interval_guides_only_inside_its_log_snr_band():
    """guidance_interval=(lo, hi): an interval holding every visited log-SNR gives the guided
    sample, one holding none gives the unguided one, and one holding some gives neither."""
    from minidiff.samplers import sample

    s = Schedule.make("linear", zero_snr=True)
    model = lambda x, t, y=None: 0.5 * x + (0.0 if y is None else (y.float() - 1.5).view(-1, 1, 1, 1)) * 0.3
    y, null = torch.tensor([0, 3]), torch.tensor([4, 4])

    def draw(**kw):
        return sample(model, (2, 1, 4, 4), s, steps=10, y=y, uncond_y=null, generator=torch.Generator().manual_seed(0),
                      progress=False, guidance_rescale=0.7, **kw)

    guided, unguided = draw(guidance=4.0), draw(guidance=1.0)
    assert not torch.allclose(guided, unguided)
    assert torch.equal(draw(guidance=4.0, guidance_interval=(-float("inf"), float("inf"))), guided)
    assert torch.equal(draw(guidance=4.0, guidance_interval=(50.0, 60.0)), unguided)
    part = draw(guidance=4.0, guidance_interval=(-5.0, 30.0))
    assert not torch.allclose(part, guided) and not torch.allclose(part, unguided)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m"])
def test_clip_x0_keeps_every_predicted_x0_in_the_data_range(sampler):
    """An eps model whose x0 is 5 everywhere ends at 5 unclipped and at exactly 1 clipped; a model
    whose x0 lies inside [-1, 1] is not changed by the clip."""
    s = Schedule.make("linear")

    def eps_for(x0_value):
        def model(x, t, y=None):
            ab = s.alphas_cumprod[t].to(x.dtype).reshape(-1, 1, 1, 1)
            return (x - ab.sqrt() * x0_value) / (1 - ab).sqrt()
        return model

    def run(model, clip):
        return sample(model, (2, 1, 4, 4), s, prediction="eps", steps=5, spacing="leading", sampler=sampler,
                      clip_x0=clip, generator=torch.Generator().manual_seed(0), progress=False)

    torch.testing.assert_close(run(eps_for(5.0), False), torch.full((2, 1, 4, 4), 5.0), rtol=0, atol=1e-4)
    torch.testing.assert_close(run(eps_for(5.0), True), torch.full((2, 1, 4, 4), 1.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(run(eps_for(-0.3), True), run(eps_for(-0.3), False), rtol=0, atol=1e-6)
