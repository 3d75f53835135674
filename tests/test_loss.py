"""The main job's recipe (minidiff/training/loss.py): the timestep density, min-SNR and per-level
weights, the Stable Target Field, offset noise, and recipe_loss, which composes them with the core."""

import math

import pytest
import torch

from minidiff.objectives import diffusion_loss, from_x0_eps, q_sample, target
from minidiff.schedules import Schedule
from minidiff.training.loss import (LossPerLevel, logsnr_band_shares, min_snr_weight, offset_noise, recipe_loss,
                                      stable_target, timestep_probabilities)


def test_recipe_loss_without_extras_is_the_papers_loss_bit_for_bit():
    """With uniform timesteps, plain noise and no weighting, the recipe's loss draws the same t and
    eps from the same generator as objectives.diffusion_loss and returns the same number exactly."""
    s = Schedule.make("linear", zero_snr=True)
    x0 = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = lambda x, t, y=None: 0.5 * x + t.float()[:, None, None, None] / 1000  # noqa: E731
    a = diffusion_loss(model, x0, s, "v", generator=torch.Generator().manual_seed(4))
    b = recipe_loss(model, x0, s, "v", generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_min_snr_weights_finite_on_zero_snr_schedule():
    s = Schedule.make("linear", zero_snr=True).snr
    for p in ["eps", "x0", "v"]:
        w = min_snr_weight(s, p, gamma=5.0)
        assert torch.isfinite(w).all(), p
    assert min_snr_weight(s, "v")[-1].item() == 0.0  # min(0, 5) / (0 + 1)
    assert min_snr_weight(s, "eps")[-1].item() == 1.0  # min(1, 5 / 0)
    # at high SNR the x0 weight is gamma
    assert min_snr_weight(torch.tensor([100.0]), "x0", gamma=5.0).item() == 5.0


def test_min_snr_weights_multiply_the_papers_loss():
    """weighting min_snr is the core loss with weight = min_snr_weight(SNR_t) (no zero SNR here)."""
    s = Schedule.make("linear", zero_snr=False)
    x0 = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t, eps = torch.tensor([0, 10, 100, 400, 800, 999]), torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    model = lambda x, t, y=None: 0.2 * x  # noqa: E731
    w = min_snr_weight(s.snr[t], "x0").float()
    torch.testing.assert_close(recipe_loss(model, x0, s, "x0", t=t, noise=eps, weighting="min_snr"),
                               diffusion_loss(model, x0, s, "x0", t=t, noise=eps, weight=w))


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_min_snr_with_zero_snr_refused_because_the_last_step_would_never_train(prediction):
    """min(SNR, gamma) = 0 at t = T-1: on Stable Diffusion's rescaled schedule the last step gets
    weight 0 and 163 timesteps less than 0.01 (v loss; 161 for x0), so the combination is refused."""
    s = Schedule.make("scaled_linear", zero_snr=True)
    w = min_snr_weight(s.snr, prediction)
    assert w[-1].item() == 0.0 and int((w < 0.01).sum()) == {"v": 163, "x0": 161}[prediction]
    with pytest.raises(ValueError, match="weight of exactly 0.*never be trained"):
        recipe_loss(lambda x, t, y=None: x, torch.zeros(2, 1, 4, 4), s, prediction, weighting="min_snr")


def test_offset_noise_shares_a_shift_per_channel():
    g = torch.Generator().manual_seed(0)
    n = offset_noise((512, 3, 16, 16), 1.0, generator=g)
    # the per-channel mean of plain N(0,1) noise has std 1/16; with offset 1 it is ~1
    assert n.mean(dim=(2, 3)).std().item() > 0.8
    plain = offset_noise((512, 3, 16, 16), 0.0, generator=g)
    assert plain.mean(dim=(2, 3)).std().item() < 0.1


def test_logsnr_normal_timesteps_follow_the_normal_law_and_keep_every_step():
    """p(t) for log-SNR ~ N(2.4, 2.4) (EDM's ln sigma ~ N(-1.2, 1.2)): 68.3% of the normal part lies
    within one std of the mean, and the 10% uniform share keeps the zero-SNR step t = T-1 trained."""
    s = Schedule.make("linear", zero_snr=True)
    p = timestep_probabilities(s, "logsnr_normal")
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12) and p.min().item() >= 0.1 / 1000
    normal = (p - 0.1 / 1000) / 0.9
    lam = s.log_snr
    assert normal[(lam > 0.0) & (lam < 4.8)].sum().item() == pytest.approx(0.6827, abs=0.01)
    assert torch.equal(timestep_probabilities(s, "uniform"), torch.full((1000,), 1e-3, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    loss = recipe_loss(lambda x, t, y=None: torch.zeros_like(x), torch.zeros(64, 1, 2, 2), s, "v",
                       generator=g, timestep_probs=p.float())
    assert torch.isfinite(loss) and loss.item() > 0


def test_logsnr_band_shares_match_the_normal_law_and_the_uniform_count():
    """Where the training draws land in log-SNR (rescaled linear schedule). All of p(t) on
    N(-6, 2) puts Phi(1.5) - Phi(-1.5) = 0.866 of the draws in -9..-3, as the continuous law
    does; uniform t puts there the share of the 1000 steps whose log-SNR lies in the band; the
    default N(2.4, 2.4) with 10% uniform draws under 5% there (the brightness band)."""
    s = Schedule.make("linear", zero_snr=True)
    only_low = timestep_probabilities(s, "logsnr_normal", uniform_share=0.0, low_snr_share=1.0)
    shares = logsnr_band_shares(s, only_low)
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    assert shares["-9..-3"] == pytest.approx(phi(1.5) - phi(-1.5), abs=0.005)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
    lam = s.log_snr
    uniform = logsnr_band_shares(s, timestep_probabilities(s, "uniform"))
    assert uniform["-9..-3"] == pytest.approx(int(((lam > -9) & (lam <= -3)).sum()) / 1000, abs=1e-12)
    default = logsnr_band_shares(s, timestep_probabilities(s, "logsnr_normal", uniform_share=0.1))
    mixed = logsnr_band_shares(s, timestep_probabilities(s, "logsnr_normal", uniform_share=0.05, low_snr_share=0.2))
    assert default["-9..-3"] < 0.05 < 0.15 < mixed["-9..-3"]
    with pytest.raises(ValueError, match="add up to at most 1"):
        timestep_probabilities(s, "logsnr_normal", uniform_share=0.5, low_snr_share=0.6)


def test_loss_per_level_divides_each_level_by_its_running_mean():
    """LossPerLevel keeps, per bin of timesteps, a running mean of the loss (the first batch sets
    it, later ones move it by 1 - decay): a level whose loss is constant scores exactly 1 however
    large its loss, so every level enters the gradient at the same size."""
    w = LossPerLevel(num_timesteps=1000, num_bins=10, decay=0.9)
    t = torch.tensor([0, 50, 999, 950, 500])          # bins 0, 0, 9, 9, 5
    loss = torch.tensor([0.01, 0.03, 2.0, 2.0, 0.5])
    out = w(loss, t)
    assert out.tolist() == pytest.approx([0.5, 1.5, 1.0, 1.0, 1.0])
    assert w.last_unweighted.item() == pytest.approx(loss.mean().item())  # what the trainer logs
    assert w.mean_loss[[0, 9, 5]].tolist() == pytest.approx([0.02, 2.0, 0.5]) and not w.seen[1]
    w(torch.tensor([0.12]), torch.tensor([10]))          # bin 0 again: 0.9 * 0.02 + 0.1 * 0.12
    assert w.mean_loss[0].item() == pytest.approx(0.03)
    s = Schedule.make("linear", zero_snr=True)
    with pytest.raises(ValueError, match="loss_per_level"):
        recipe_loss(lambda x, t, y=None: x, torch.zeros(2, 3, 4, 4), s, "v", weighting="level_mean")


def stable_target_by_hand(x0, x_t, ab, reference, y=None, reference_y=None, null_class=None):
    """Xu et al.'s eq. 5 one sample at a time, in float64, from the Gaussian density itself."""
    out = []
    for i in range(len(x0)):
        pool = [x0[i]] + [r for j, r in enumerate(reference)
                          if y is None or y[i] == null_class or reference_y[j] == y[i]]
        a = float(ab[i]) ** 0.5
        dens = torch.stack([torch.distributions.Normal(a * r.double(), (1 - a * a) ** 0.5).log_prob(x_t[i].double()).sum()
                            for r in pool])
        w = torch.softmax(dens, 0)
        out.append(sum(wj * r.double() for wj, r in zip(w, pool)))
    return torch.stack(out)


def test_stable_target_is_the_posterior_weighted_mean_of_x0_and_the_reference():
    """The Stable Target Field (Xu et al. 2023, eq. 5) against a one-sample-at-a-time computation
    from the Gaussian density; at zero SNR it is the plain mean of x0 and the sample's own class in
    the reference (the null class: all of it); where x_t shows the image it is x0 exactly."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 4, 4, generator=g) * 2 - 1
    reference = torch.rand(40, 3, 4, 4, generator=g) * 2 - 1
    y, reference_y = torch.tensor([0, 1, 2, 0, 3, 3]), torch.arange(40) % 3  # class 3: the null class
    ab = torch.tensor([0.0, 0.002, 0.02, 0.1, 0.3, 0.05]).reshape(-1, 1, 1, 1)
    x_t = q_sample(x0, ab, torch.randn(x0.shape, generator=g))
    got = stable_target(x0, x_t, ab, reference, y=y, reference_y=reference_y, null_class=3)
    torch.testing.assert_close(got.double(), stable_target_by_hand(x0, x_t, ab, reference, y, reference_y, 3),
                               atol=1e-5, rtol=1e-4)
    same_class = reference[reference_y == 0]
    torch.testing.assert_close(got[0], (x0[0] + same_class.sum(0)) / (1 + len(same_class)), atol=1e-6, rtol=0)
    unconditional = stable_target(x0, x_t, ab, reference)
    torch.testing.assert_close(unconditional.double(), stable_target_by_hand(x0, x_t, ab, reference), atol=1e-5, rtol=1e-4)
    clean = torch.full((6, 1, 1, 1), 0.9)
    x_clean = q_sample(x0, clean, torch.randn(x0.shape, generator=g))
    assert torch.equal(stable_target(x0, x_clean, clean, reference, y=y, reference_y=reference_y, null_class=3), x0)


def test_loss_with_a_reference_uses_the_stable_target_below_log_snr_0_only():
    """recipe_loss(reference=...) regresses on the stable target where log-SNR < 0 and on the
    usual (x0, eps) above it: a model that outputs the stable target's v has zero loss."""
    s = Schedule.make("linear", zero_snr=True)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 3, 4, 4, generator=g) * 2 - 1
    reference = torch.rand(30, 3, 4, 4, generator=g) * 2 - 1
    t = torch.tensor([999, 900, 700, 500, 400, 300, 100, 0])
    noise = torch.randn(x0.shape, generator=g)
    ab = s.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    x_t = q_sample(x0, ab, noise)
    hidden = (s.log_snr[t] < 0).reshape(-1, 1, 1, 1)
    assert 0 < hidden.sum() < len(t)
    x0_goal = torch.where(hidden, stable_target(x0, x_t, ab, reference), x0)
    eps_goal = (x_t - ab.sqrt() * x0_goal) / (1 - ab).sqrt()

    def oracle(x, t_, y=None):
        return from_x0_eps("v", x0_goal, eps_goal, ab)

    loss = recipe_loss(oracle, x0, s, "v", t=t, noise=noise, reference=(reference, None))
    assert float(loss) < 1e-9
    assert float(diffusion_loss(oracle, x0, s, "v", t=t, noise=noise)) > 1e-3  # the plain target differs


def test_level_mean_with_a_reference_divides_by_the_plain_targets_loss():
    """With the Stable Target Field, weighting level_mean keeps each level's weight of the plain
    target (its running mean tracks the plain loss), so a level whose target lost its noise does not
    weigh more: the returned loss is the stable-target loss over the plain one, per level."""
    s = Schedule.make("linear", zero_snr=True)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 3, 4, 4, generator=g) * 2 - 1
    reference = torch.rand(30, 3, 4, 4, generator=g) * 2 - 1
    t = torch.tensor([999, 960, 900, 10])  # three bins of noisy levels and a clean one
    noise = torch.randn(x0.shape, generator=g)

    def zero(x, t_, y=None):
        return torch.zeros_like(x)

    levels = LossPerLevel(1000, num_bins=50)
    weighted = recipe_loss(zero, x0, s, "v", t=t, noise=noise, weighting="level_mean", loss_per_level=levels,
                           reference=(reference, None))
    ab = s.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    x_t = q_sample(x0, ab, noise)
    hidden = (s.log_snr[t] < 0).reshape(-1, 1, 1, 1)
    x0_goal = torch.where(hidden, stable_target(x0, x_t, ab, reference), x0)
    eps_goal = (x_t - ab.sqrt() * x0_goal) / (1 - ab).sqrt()
    stf_loss = target("v", x0_goal, eps_goal, ab).square().flatten(1).mean(1)
    plain_loss = target("v", x0, noise, ab).square().flatten(1).mean(1)
    torch.testing.assert_close(levels.mean_loss[levels.bins(t)].float(), plain_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weighted, (stf_loss / plain_loss).mean(), atol=1e-6, rtol=1e-5)
    assert float(stf_loss[0]) < 0.2 * float(plain_loss[0])  # at zero SNR: the reference's mean, not one image
