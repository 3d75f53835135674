"""The brightness gain: the slope of a network's predicted image mean on the exact posterior mean."""

import math

import pytest
import torch

from minidiff.evaluation.brightness_gain import brightness_gain, main, posterior_mean, run_names, timesteps_at, trajectory_drift
from minidiff.objectives import from_x0_eps
from minidiff.schedules import Schedule

S = 0.5  # brightness m ~ N(0, S^2): flat images, so the image mean is all there is


def gaussian_oracle(schedule, shrink=1.0, prediction="v", offset=0.0):
    """The exact denoiser of flat images with m ~ N(0, S^2), written in closed form:
    E[m | d] = sqrt(a) S^2 d / (a S^2 + (1 - a) / D), times `shrink`, plus `offset`."""
    def model(x, t, y=None):
        ab = schedule.alphas_cumprod[t].double().reshape(-1, 1, 1, 1)
        d = x.double().mean(dim=(1, 2, 3), keepdim=True)
        m = shrink * ab.sqrt() * S ** 2 * d / (ab * S ** 2 + (1 - ab) / x[0].numel()) + offset
        x0 = m.expand_as(x)
        eps = (x.double() - ab.sqrt() * x0) / (1 - ab).sqrt()
        return from_x0_eps(prediction, x0, eps, ab).float()
    return model


@pytest.mark.parametrize("shrink", [1.0, 0.8])
def test_slope_is_one_for_the_exact_denoiser_and_its_shrink_otherwise(shrink):
    s = Schedule.make("linear", zero_snr=True)
    gen = torch.Generator().manual_seed(0)
    images = (S * torch.randn(1024, 1, 1, 1, generator=gen)).expand(1024, 3, 4, 4).contiguous()
    prior = S * torch.randn(50_000, generator=gen, dtype=torch.float64)
    rows = brightness_gain(gaussian_oracle(s, shrink), s, "v", images, prior=prior, timesteps=timesteps_at(s, (-6.0, -4.0, -2.0)))
    for r in rows:
        assert r["slope"] == pytest.approx(shrink, abs=0.03)
        assert abs(r["offset"]) < 0.01  # a shrink towards the data's mean (0) adds no brightness
    # The posterior spreads out as the SNR grows: Var E[m | d] = S^4 a / (a S^2 + (1 - a) / D).
    for r in rows:
        ab = float(s.alphas_cumprod[r["t"]])
        assert r["posterior_std"] == pytest.approx(math.sqrt(S ** 4 * ab / (ab * S ** 2 + (1 - ab) / 48)), rel=0.08)


def test_posterior_mean_of_a_gaussian_prior_is_the_linear_shrink():
    prior = 0.5 * torch.randn(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d, ab, dim = torch.tensor([-0.02, 0.0, 0.01, 0.03]), 0.001, 100
    expected = math.sqrt(ab) * 0.25 * d / (ab * 0.25 + (1 - ab) / dim)
    torch.testing.assert_close(posterior_mean(d, prior, ab, dim), expected.double(), rtol=0.02, atol=2e-3)


def test_command_refuses_a_missing_checkpoint(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "none.pt")])
    assert exit_.value.code == 2 and "no checkpoint" in capsys.readouterr().err


def test_every_checkpoint_gets_its_own_name_in_the_plot():
    # Named by their folder alone, two runs' seed1 folders were one legend entry and one curve.
    assert run_names(["runs/a/seed1/checkpoint.pt", "runs/b/seed1/checkpoint.pt"]) == ["a/seed1", "b/seed1"]
    assert run_names(["runs/main8-s0/checkpoint.pt", "runs/main8-s1/checkpoint.pt"]) == ["main8-s0", "main8-s1"]
    assert run_names(["runs/x/checkpoint.pt", "runs/x/checkpoint-ema0.995.pt"]) == ["x", "checkpoint-ema0.995"]


def test_offset_is_the_brightness_a_network_adds():
    """An exact denoiser that adds 0.05 to every predicted image: slope still 1, offset 0.05, at
    levels where almost nothing is decided (log-SNR -12) and where most is (-2)."""
    s = Schedule.make("linear", zero_snr=True)
    gen = torch.Generator().manual_seed(2)
    images = (S * torch.randn(1024, 1, 1, 1, generator=gen)).expand(1024, 3, 4, 4).contiguous()
    prior = S * torch.randn(50_000, generator=gen, dtype=torch.float64)
    rows = brightness_gain(gaussian_oracle(s, offset=0.05), s, "v", images, prior=prior,
                           timesteps=timesteps_at(s, (-12.0, -6.0, -2.0)))
    for r in rows:
        assert r["offset"] == pytest.approx(0.05, abs=0.01)
    assert rows[-1]["slope"] == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_trajectory_drift_is_zero_for_the_exact_denoiser_and_starts_at_an_added_offset(sampler):
    """Along the sampler's own path the mean predicted brightness of the exact denoiser stays at the
    data's mean (0) at every step; a denoiser that adds 0.05 starts at +0.05 exactly (at zero SNR it
    predicts its offset whatever the input), and the samples it draws end brighter still, because
    every step moves them towards a prediction that is 0.05 too bright."""
    s = Schedule.make("linear", zero_snr=True)
    kw = dict(num=4000, batch_size=1000, prediction="v", sampler=sampler, steps=10, spacing="trailing")
    exact = trajectory_drift(gaussian_oracle(s), s, (3, 4, 4), 0.0, **kw)
    assert len(exact) == 10 and exact[0]["log_snr"] == -math.inf
    assert max(abs(r["drift"]) for r in exact) < 0.03, exact  # 0.5 / sqrt(4000) = 0.008 sampling noise
    shifted = trajectory_drift(gaussian_oracle(s, offset=0.05), s, (3, 4, 4), 0.0, **kw)
    assert shifted[0]["drift"] == pytest.approx(0.05, abs=1e-6)
    assert shifted[-1]["drift"] > 0.05 + 0.03, shifted
