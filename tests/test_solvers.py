"""DPM-Solver++ (2M, 3M) and Heun (issue 13): diffusers agreement, convergence order, zero SNR."""

import math

import pytest
import torch

from minidiff.exact.analytic import GaussianDenoiser, gaussian_flow_moments, gaussian_sampler_moments
from minidiff.repro.exact import brightness_gaussian, exact_moments, monte_carlo
from minidiff.samplers import SAMPLERS, make_timesteps, network_evaluations, sample
from minidiff.schedules import Schedule
from minidiff.solvers import dpmpp_2m_step, dpmpp_3m_step, first_order_step, half_log_snr

SOLVERS = ("dpmpp_2m", "dpmpp_3m", "heun")
# Gaussian data, one entry per eigen-direction: a wide one, a unit one, two narrow ones
LAM = torch.tensor([4.0, 1.0, 0.09, 0.01], dtype=torch.float64)
MU = torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=torch.float64)


def _toy_model(x, t, y=None):
    """Any smooth function of (x, t): the comparison feeds both implementations the same outputs."""
    return 0.5 * torch.sin(3 * x) + 0.01 * t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)) ** 0.5


@pytest.mark.parametrize("kind,prediction,atol", [("linear", "v", 1e-5), ("linear", "x0", 1e-5),
                                                  ("scaled_linear", "v", 1e-5), ("scaled_linear", "eps", 5e-5)])
@pytest.mark.parametrize("timesteps", [make_timesteps(1000, 10, "trailing"), make_timesteps(1000, 7, "linspace"),
                                       torch.tensor([999, 990, 900, 700, 400, 120, 30, 5])])
def test_dpmpp_2m_matches_diffusers_step_by_step(kind, prediction, atol, timesteps):
    """Each step equals diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint,
    lower_order_final, final sigma 0) given the same state and model output. Our schedule is
    built from diffusers' float32 alpha_bar so both use the same numbers; diffusers then computes
    in float32, which for eps divides by sqrt(alpha_bar_T) = 0.068 (hence the looser tolerance)."""
    diffusers = pytest.importorskip("diffusers")
    names = {"v": "v_prediction", "x0": "sample", "eps": "epsilon"}
    ends = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}[kind]
    theirs = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=ends[0], beta_end=ends[1], beta_schedule=kind,
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", prediction_type=names[prediction],
        lower_order_final=True, final_sigmas_type="zero")
    ab = theirs.alphas_cumprod.double()
    schedule = Schedule(torch.cat([1 - ab[:1], 1 - ab[1:] / ab[:-1]]))
    assert torch.allclose(schedule.alphas_cumprod, ab, rtol=1e-12)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = sample(_toy_model, x_T.shape, schedule, prediction=prediction, timesteps=timesteps, sampler="dpmpp_2m",
                  x_T=x_T, dtype=torch.float64, return_trajectory=True, progress=False)
    theirs.set_timesteps(timesteps=timesteps.tolist())
    assert theirs.timesteps.tolist() == timesteps.tolist()
    for i, t in enumerate(theirs.timesteps):
        x = ours.xs[i]
        step = theirs.step(_toy_model(x, torch.full((2,), int(t))), t, x).prev_sample
        assert torch.allclose(step, ours.xs[i + 1], atol=atol, rtol=0), (i, int(t))
    assert torch.equal(ours.samples, ours.x0s[-1])  # the last step returns the x0 prediction


# ----------------------------------------------------------------------------------- zero SNR


def test_the_first_step_from_zero_snr_is_its_closed_form():
    """At alpha_bar = 0: sigma_t = 1, alpha_t = 0, exp(-h) = 0, so the step is
    x_s = sqrt(1 - a_s) x_T + sqrt(a_s) x0_hat, with x0_hat = -v(x_T) for a v model; Heun uses
    the mean of x0_hat and the prediction at the Euler point."""
    s = Schedule.make("scaled_linear", zero_snr=True)
    ts = make_timesteps(1000, 5, "trailing")
    a_s = s.alphas_cumprod[ts[1]].item()
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0_hat = -_toy_model(x_T, torch.full((3,), 999))
    closed = math.sqrt(1 - a_s) * x_T + math.sqrt(a_s) * x0_hat
    for sampler in ("ddim", "dpmpp_2m", "dpmpp_3m"):
        res = sample(_toy_model, x_T.shape, s, prediction="v", timesteps=ts, sampler=sampler, x_T=x_T,
                     dtype=torch.float64, return_trajectory=True, progress=False)
        assert torch.allclose(res.xs[1], closed, atol=1e-14, rtol=0), sampler
    heun = sample(_toy_model, x_T.shape, s, prediction="v", timesteps=ts, sampler="heun", x_T=x_T,
                  dtype=torch.float64, return_trajectory=True, progress=False)
    v_end = _toy_model(closed, torch.full((3,), int(ts[1])))
    x0_end = math.sqrt(a_s) * closed - math.sqrt(1 - a_s) * v_end  # v -> x0 at a_s (Lin eq. 19)
    heun_closed = math.sqrt(1 - a_s) * x_T + math.sqrt(a_s) * (x0_hat + x0_end) / 2
    assert torch.allclose(heun.xs[1], heun_closed, atol=1e-14, rtol=0)


def test_a_zero_snr_point_in_the_history_adds_no_slope():
    """A prediction at lambda = -inf is infinitely far back: the multistep corrections vanish
    (no inf - inf, no 0 * inf), and the 2M/3M steps reduce to lower order exactly."""
    assert half_log_snr(0.0) == -math.inf and half_log_snr(1.0) == math.inf
    g = torch.Generator().manual_seed(1)
    x, m0, m1, m2 = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4))
    first = first_order_step(x, m0, 0.3, 0.6)
    assert torch.equal(dpmpp_2m_step(x, m0, m1, 0.3, 0.6, 0.0), first)
    # 3M with its oldest point at zero SNR: no curvature, the slope of the two newer points,
    # weighted by integral_0^h e^-(h - u) u du = h - 1 + e^-h
    h, h0 = half_log_snr(0.6) - half_log_snr(0.3), half_log_snr(0.3) - half_log_snr(0.1)
    expected = first + math.sqrt(0.6) * (h - 1 + math.exp(-h)) * (m0 - m1) / h0
    assert torch.allclose(dpmpp_3m_step(x, m0, m1, m2, 0.3, 0.6, 0.1, 0.0), expected, atol=1e-14)
    assert torch.equal(first_order_step(x, m0, 0.3, 1.0), m0)  # to a clean sample: x0 exactly
    with pytest.raises(ValueError, match="first order"):
        dpmpp_2m_step(x, m0, m1, 0.3, 1.0, 0.1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_is_finite_at_zero_snr_and_its_moments_approach_the_data(sampler):
    """Zero-SNR schedule, trailing: the output law's distance to the data's (exact moments) falls
    with the step count towards 0, for every sampler; the real loop stays finite in v and x0."""
    s = Schedule.make("scaled_linear", zero_snr=True)
    errors = []
    for steps in (10, 40, 160):
        m, v = gaussian_sampler_moments(LAM, MU, s, make_timesteps(1000, steps, "trailing"), sampler=sampler)
        errors.append(((m - MU) ** 2 + (v.sqrt() - LAM.sqrt()) ** 2).sqrt().max().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03, errors
    for prediction in ("v", "x0"):
        model = GaussianDenoiser(torch.zeros(1, 4, 4), var=torch.full((1, 4, 4), 0.5), schedule=s, prediction=prediction)
        res = sample(model, (3, 1, 4, 4), s, prediction=prediction, steps=25, sampler=sampler,
                     generator=torch.Generator().manual_seed(0), return_trajectory=True, progress=False)
        assert all(torch.isfinite(x).all() for x in res.xs + res.x0s)


@pytest.mark.parametrize("sampler", SOLVERS)
def test_two_point_moments_match_a_monte_carlo_run_in_pixel_space(sampler):
    """The moments computed per eigen-direction equal the law of the real sampler run in pixel
    space on the full-covariance brightness Gaussian (3x4x4, 4000 samples, zero SNR)."""
    sched = Schedule.make("scaled_linear", zero_snr=True)
    _, lam_b, lam_pix, _ = brightness_gaussian((3, 4, 4), 0.5, 0.3, 0.2)
    exact = exact_moments(sched, make_timesteps(1000, 8, "trailing"), sampler, 0.0, lam_b, lam_pix, 0.2)
    got = monte_carlo(sched, 8, "trailing", sampler, 0.0, (3, 4, 4), 0.5, 0.3, 0.2, n=4000)
    for key in ("brightness_std_ratio", "texture_std_ratio"):
        assert got[key] == pytest.approx(exact[key], rel=0.04), key
    assert got["brightness_mean"] == pytest.approx(exact["brightness_mean"], abs=0.02)


# ------------------------------------------------------------------------------ convergence


def log_snr_uniform_timesteps(schedule, num, lo=-3.0, hi=3.0):
    """The training timesteps nearest to `num` values of lambda evenly spaced in [lo, hi]."""
    lam = schedule.log_snr / 2
    ts = {int((lam - x).abs().argmin()) for x in torch.linspace(lo, hi, num, dtype=torch.float64)}
    return torch.tensor(sorted(ts, reverse=True))


def _ode_error(schedule, sampler, num):
    """Distance (W2 per direction, max over directions) between the sampler's law at the last
    listed timestep and the exact probability-flow ODE's from the same start."""
    ts = log_snr_uniform_timesteps(schedule, num)
    m, v = gaussian_sampler_moments(LAM, MU, schedule, ts, sampler=sampler, to_clean=False)
    ab = schedule.alphas_cumprod
    rm, rv = gaussian_flow_moments(LAM, MU, ab[ts[0]].item(), ab[ts[-1]].item())
    return ((m - rm) ** 2 + (v.sqrt() - rv.sqrt()) ** 2).sqrt().max().item(), len(ts) - 1


def _slope(points):
    """Least-squares slope of log(error) against log(steps)."""
    x = torch.tensor([math.log(n) for _, n in points], dtype=torch.float64)
    y = torch.tensor([math.log(e) for e, _ in points], dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x * x).sum())


@pytest.mark.parametrize("sampler,order,tol", [("ddim", 1, 0.1), ("dpmpp_2m", 2, 0.15), ("heun", 2, 0.15),
                                               ("dpmpp_3m", 2, 0.2)])
def test_error_falls_at_the_solvers_order(sampler, order, tol):
    """On steps evenly spaced in log-SNR (lambda from -3 to 3, the range where steps shrink as
    1/S), the exact Gaussian's law at the end falls like steps^-order: DDIM 1, DPM-Solver++(2M) 2,
    Heun 2 per step. 3M is third order per step (next test) but starts with a first- and a
    second-order step, whose errors keep the whole run at second order with a smaller constant."""
    s = Schedule.make("linear")
    points = [_ode_error(s, sampler, n) for n in (41, 81, 161)]
    assert abs(_slope(points) + order) < tol, (sampler, _slope(points), points)
    if sampler == "dpmpp_3m":
        assert all(e3 < e2 / 5 for (e3, _), (e2, _) in zip(points, [_ode_error(s, "dpmpp_2m", n) for n in (41, 81, 161)]))


def test_one_3m_step_from_an_exact_history_is_third_order():
    """Local error of one 3M step fed three exact predictions along the exact ODE path (1-D
    Gaussian, continuous time): O(h^4), i.e. halving h divides it by ~16 (2M: ~8)."""
    lam_v, mu = 0.2, 0.3
    ab = lambda lam: 1 / (1 + math.exp(-2 * lam))  # noqa: E731  (alpha_bar of lambda)
    spread = lambda a: math.sqrt(a * lam_v + 1 - a)  # noqa: E731
    path = lambda lam: math.sqrt(ab(lam)) * mu + spread(ab(lam)) / spread(ab(-1.0)) * (1 - math.sqrt(ab(-1.0)) * mu)  # noqa: E731
    den = lambda x, a: mu + math.sqrt(a) * lam_v / (a * lam_v + 1 - a) * (x - math.sqrt(a) * mu)  # noqa: E731
    lt, errs3, errs2 = 0.3, [], []
    for h in (0.1, 0.05, 0.025):
        lams = [lt - 2 * h, lt - h, lt]
        d = [den(path(lam), ab(lam)) for lam in lams]
        x3 = dpmpp_3m_step(path(lt), d[2], d[1], d[0], ab(lt), ab(lt + h), ab(lt - h), ab(lt - 2 * h))
        x2 = dpmpp_2m_step(path(lt), d[2], d[1], ab(lt), ab(lt + h), ab(lt - h))
        errs3.append(abs(x3 - path(lt + h)))
        errs2.append(abs(x2 - path(lt + h)))
    for a, b in zip(errs3, errs3[1:]):
        assert 13 < a / b < 19
    for a, b in zip(errs2, errs2[1:]):
        assert 6.5 < a / b < 9.5


# --------------------------------------------------------------------------- the loop's options


@pytest.mark.parametrize("sampler", SOLVERS)
def test_eps_x0_and_v_models_give_the_same_samples(sampler):
    """The same exact denoiser in three parameterisations: the solvers see the same x0, so the
    samples agree (non-zero-SNR schedule, where eps is allowed; linspace spacing)."""
    s = Schedule.make("linear")
    x_T = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, var = torch.full((2, 3, 3), 0.2, dtype=torch.float64), torch.full((2, 3, 3), 0.3, dtype=torch.float64)
    out = [sample(GaussianDenoiser(mean, var=var, schedule=s, prediction=p), x_T.shape, s, prediction=p, steps=12,
                  spacing="linspace", sampler=sampler, x_T=x_T, dtype=torch.float64, progress=False)
           for p in ("eps", "x0", "v")]
    assert torch.allclose(out[0], out[1], atol=1e-9) and torch.allclose(out[1], out[2], atol=1e-9)


@pytest.mark.parametrize("sampler", SOLVERS)
def test_guidance_and_custom_timesteps_reach_the_solvers(sampler):
    """Guided samples equal an unguided run of a model that returns cfg(cond, uncond, w, phi)
    itself, on an irregular list of timesteps (each visited, Heun also at every next one)."""
    from minidiff.guidance import cfg

    s = Schedule.make("linear", zero_snr=True)
    calls = []

    def model(x, t, y=None):
        calls.append(int(t[0]))
        shift = torch.zeros(x.shape[0], dtype=x.dtype) if y is None else y.to(x.dtype)
        return 0.5 * x + shift.reshape(-1, 1, 1, 1)

    y = torch.tensor([1, 2])

    def guided(x, t, y=None):  # ignores the label it is given: guides towards the fixed `y`
        return cfg(model(x, t, labels), model(x, t, None), 3.0, 0.7)

    labels = y

    ts = torch.tensor([999, 800, 790, 400, 51, 3])
    kw = dict(prediction="v", timesteps=ts, sampler=sampler, dtype=torch.float64, progress=False)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = sample(model, x_T.shape, s, y=y, guidance=3.0, guidance_rescale=0.7, x_T=x_T, **kw)
    calls.clear()
    b = sample(guided, x_T.shape, s, x_T=x_T, **kw)
    assert torch.allclose(a, b, atol=1e-12)
    visited = sorted(set(calls), reverse=True)
    assert visited == ts.tolist()
    assert len(calls) == 2 * network_evaluations(sampler, len(ts))  # cond + uncond per evaluation


def test_solvers_refuse_eta_and_count_their_evaluations():
    s = Schedule.make("linear", zero_snr=True)
    with pytest.raises(ValueError, match="eta"):
        sample(_toy_model, (1, 1, 2, 2), s, prediction="v", steps=3, sampler="dpmpp_2m", eta=0.5, progress=False)
    assert network_evaluations("dpmpp_2m", 10) == 10 and network_evaluations("heun", 10) == 19
