"""The rectified flow as one more schedule and target (docs/09_flow_matching.md): its alpha_bar, the
velocity u and its conversions, the flow's Euler step against DDIM, and diffusers' flow sampler."""

import math

import pytest
import torch

from minidiff.exact.analytic import GaussianDenoiser
from minidiff.objectives import diffusion_loss, from_x0_eps, target, to_x0_eps
from minidiff.samplers import ddim_step, flow_euler_step, make_timesteps, sample
from minidiff.schedules import Schedule, flow_times
from minidiff.training.loss import logsnr_band_shares, timestep_probabilities


def test_the_flows_alpha_bar_is_its_scaled_path_and_exactly_zero_at_the_end():
    """alpha_bar(s) = (1 - s)^2 / ((1 - s)^2 + s^2) at s_t = (t + 1) / T (eq. F2): exactly 0 at the
    last step, 1/2 at s = 1/2 (log-SNR 0), symmetric in log-SNR about it, and the zero-SNR rescale
    of Lin et al. leaves it as it is."""
    flow = Schedule.make("flow")
    s = flow_times(1000)
    assert s[0] == 0.001 and s[-1] == 1.0
    exact = (1 - s) ** 2 / ((1 - s) ** 2 + s**2)
    torch.testing.assert_close(flow.alphas_cumprod, exact, rtol=1e-12, atol=0)
    assert flow.alphas_cumprod[-1] == 0 and flow.zero_terminal_snr
    assert flow.alphas_cumprod[499] == pytest.approx(0.5, abs=1e-15)
    torch.testing.assert_close(flow.log_snr[:499], -flow.log_snr[500:999].flip(0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(Schedule.make("flow", zero_snr=True).alphas_cumprod, exact, rtol=1e-12, atol=1e-15)


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64),
            torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("ab", [0.0, 1e-9, 0.3, 0.5, 0.999, 1.0])
def test_u_round_trips_at_every_alpha_bar_and_is_the_paths_velocity(ab):
    """u = eps - x0 (eq. F1) converts back exactly, both ends included, and in the path's own scaling
    x0 = x^flow - s u and eps = x^flow + (1 - s) u, with x^flow = x_t / (sqrt(a) + sqrt(1 - a))."""
    x0, eps = _pair(1)
    a = torch.tensor(ab, dtype=torch.float64)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    u = target("u", x0, eps, a)
    assert torch.equal(u, eps - x0)
    x0_back, eps_back = to_x0_eps("u", u, x_t, a)
    torch.testing.assert_close(x0_back, x0, rtol=0, atol=1e-14)
    torch.testing.assert_close(eps_back, eps, rtol=0, atol=1e-14)
    s = (1 - a).sqrt() / (a.sqrt() + (1 - a).sqrt())
    x_flow = (1 - s) * x0 + s * eps
    torch.testing.assert_close(x_t / (a.sqrt() + (1 - a).sqrt()), x_flow, rtol=0, atol=1e-14)
    torch.testing.assert_close(x_flow - s * u, x0, rtol=0, atol=1e-14)


def test_the_four_optimal_predictions_are_one_function_of_the_posterior_mean():
    """For Gaussian data the exact eps, x0, v and u models, each turned into (x0, eps) by
    to_x0_eps, agree: every optimal predictor is a linear function of E[x0 | x_t] and x_t."""
    flow = Schedule.make("flow")
    g = torch.Generator().manual_seed(2)
    mean, var = torch.randn(3, 4, 4, generator=g, dtype=torch.float64), torch.rand(3, 4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 100, 499, 900, 998])
    ab = flow.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    pairs = {p: to_x0_eps(p, GaussianDenoiser(mean, var=var, schedule=flow, prediction=p)(x, t), x, ab)
             for p in ("eps", "x0", "v", "u")}
    for p in ("eps", "v", "u"):
        torch.testing.assert_close(pairs[p][0], pairs["x0"][0], rtol=0, atol=1e-10)
        torch.testing.assert_close(pairs[p][1], pairs["x0"][1], rtol=0, atol=1e-10)


def test_the_flows_euler_step_is_ddim_step_for_step_with_the_exact_denoiser():
    """Euler on d x^flow / ds = u and deterministic DDIM on the VP view visit the same states,
    step for step, to float64 round-off, on the flow schedule and on a VP one."""
    g = torch.Generator().manual_seed(3)
    mean, var = torch.randn(2, 4, 4, generator=g, dtype=torch.float64), torch.rand(2, 4, 4, generator=g, dtype=torch.float64)
    x_T = torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64)
    for schedule in (Schedule.make("flow"), Schedule.make("linear", zero_snr=True)):
        model = GaussianDenoiser(mean, var=var, schedule=schedule, prediction="u")
        runs = {name: sample(model, x_T.shape, schedule, prediction="u", steps=12, sampler=name, x_T=x_T,
                             dtype=torch.float64, return_trajectory=True, progress=False) for name in ("euler", "ddim")}
        for a, b in zip(runs["euler"].xs, runs["ddim"].xs):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # and one step by hand, away from the ends
    x0, eps = _pair(4)
    x_t = math.sqrt(0.4) * x0 + math.sqrt(0.6) * eps
    torch.testing.assert_close(flow_euler_step(x_t, x0, eps, 0.4, 0.7), ddim_step(x_t, x0, eps, 0.4, 0.7), rtol=0, atol=1e-14)


def test_samples_match_diffusers_flow_match_euler_scheduler_on_the_same_model():
    """diffusers' FlowMatchEulerDiscreteScheduler (shift 1) on a fixed velocity field g(x^flow, s),
    against minidiff's sampler on the flow schedule, the same grid (linspace: s = 1, 0.889, ...,
    0.001) and the same starting noise: the network sees the VP state and returns u, so a model
    that reads x^flow = x_t / (sqrt(a) + sqrt(1 - a)) draws the same samples, with "euler" and "ddim"."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(10)

    def velocity(x_flow, s):
        return 0.4 * x_flow - 0.7 * s + 0.2 * torch.tanh(x_flow.flip(-1))

    noise = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(velocity(x, t / 1000), t, x).prev_sample
    theirs = x

    flow = Schedule.make("flow")
    times = flow_times(1000)

    def model(x_t, t, y=None):
        ab = flow.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(x_t.dtype)
        x_flow = x_t / (ab.sqrt() + (1 - ab).sqrt())
        return velocity(x_flow, times[t].reshape(-1, 1, 1, 1).to(x_t.dtype))

    grid = make_timesteps(1000, 10, "linspace")
    assert torch.equal(grid + 1, scheduler.timesteps.round().long())
    for name in ("euler", "ddim"):
        ours = sample(model, noise.shape, flow, prediction="u", steps=10, spacing="linspace", sampler=name,
                      x_T=noise, progress=False)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_logit_normal_timesteps_are_sd3s_density_of_the_flows_time():
    """logit(s) ~ N(0, 1): 68.3% of the draws (without the uniform share) have |logit(s)| < 1, i.e.
    log-SNR within 2 of 0; the median draw sits at s = 1/2; the uniform share still trains the
    zero-SNR step."""
    flow = Schedule.make("flow")
    p = timestep_probabilities(flow, "logit_normal", uniform_share=0.0)
    s = flow_times(1000)
    logit = torch.log(s / (1 - s))
    assert float(p[logit.abs() < 1].sum()) == pytest.approx(0.6827, abs=0.005)
    assert abs(int(torch.searchsorted(p.cumsum(0), 0.5)) - 499) <= 1
    mixed = timestep_probabilities(flow, "logit_normal", uniform_share=0.05)
    assert mixed[-1] >= 0.05 / 1000 and sum(logsnr_band_shares(flow, mixed).values()) == pytest.approx(1.0)


def test_the_loss_of_a_perfect_velocity_model_is_zero_at_every_step():
    flow = Schedule.make("flow")
    x0, eps = _pair(6)
    t = torch.tensor([999, 998, 500, 0, 1, 250])
    perfect = lambda x, t_, y=None: eps - x0  # noqa: E731
    assert diffusion_loss(perfect, x0, flow, "u", t=t, noise=eps).item() == 0.0
    assert from_x0_eps("u", x0, eps, 0.3).equal(eps - x0)


def test_the_trainer_trains_the_flow_and_the_sample_command_draws_it_as_trained(tmp_path, capsys):
    """--schedule flow --prediction u --timesteps logit_normal trains with the recipe's machinery
    (level weights, the Stable Target Field) and `minidiff sample CKPT` with no flags reads the path
    and the prediction from the checkpoint."""
    from minidiff.training import sample as sample_command, train as T

    cfg = T.TrainConfig(dataset="builtin", num_images=64, preset="tiny", class_cond=True, batch_size=8, lr=1e-3,
                        warmup=2, max_steps=3, minutes=0, sample_every=0, ckpt_every=0, num_samples=4, sample_steps=3,
                        log_every=1, device="cpu", judge_samples=0, schedule="flow", prediction="u",
                        timesteps="logit_normal", stf_reference=16, weighting="level_mean", out=str(tmp_path / "run"))
    result = T.train(cfg)
    assert result["step"] == 3 and math.isfinite(result["loss"])
    assert "logit(s) ~ N(0, 1)" in capsys.readouterr().out  # the start-up print says what it trains with
    ckpt = tmp_path / "run" / T.CHECKPOINT
    model, config, settings = sample_command.load_run(ckpt)
    assert (config["schedule"], config["prediction"]) == ("flow", "u")
    sample_command.main([str(ckpt), "--num", "4", "--npz", str(tmp_path / "s.npz"), "--png", ""])
    import numpy as np

    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (4, 16, 16, 3) and f["images"].dtype == np.uint8
    assert settings["steps"] == 3  # the run's own report settings


def test_repro_flow_prints_the_identity_to_round_off_and_draws_the_paths(tmp_path, capsys):
    from minidiff.repro import flow as experiment

    experiment.main(["--out", str(tmp_path)])
    import json

    rows = json.loads((tmp_path / "flow.json").read_text())["rows"]
    assert len(rows) == 4 and {r["data"] for r in rows} == {"Gaussian", "two-mode mixture"}
    for r in rows:
        assert r["predictions_max_diff"] < 1e-10 and all(r[f"euler_vs_ddim_{s}"] < 1e-12 for s in experiment.STEPS)
    assert (tmp_path / "flow_snr.png").stat().st_size > 10_000 and "Euler vs DDIM" in capsys.readouterr().out
