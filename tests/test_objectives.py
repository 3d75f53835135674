"""Objectives: targets, conversions at the ends of the schedule, losses (Lin et al. Sec. 3.2)."""

import pytest
import torch

from minidiff.objectives import diffusion_loss, from_x0_eps, q_sample, target, to_x0_eps
from minidiff.schedules import Schedule


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("ab", [0.0, 0.3, 1.0])
def test_v_round_trip_exact_at_every_alpha_bar(ab):
    x0, eps = _pair()
    x_t = q_sample(x0, ab, eps)
    v = target("v", x0, eps, ab)
    x0_hat, eps_hat = to_x0_eps("v", v, x_t, ab)
    assert torch.allclose(x0_hat, x0, atol=1e-12) and torch.allclose(eps_hat, eps, atol=1e-12)


def test_v_at_zero_snr_is_minus_x0_and_input_is_noise():
    x0, eps = _pair()
    assert torch.equal(q_sample(x0, 0.0, eps), eps)
    assert torch.equal(target("v", x0, eps, 0.0), -x0)


@pytest.mark.parametrize("ab", [0.3, 1.0])
def test_eps_round_trip_where_defined(ab):
    x0, eps = _pair(1)
    x_t = q_sample(x0, ab, eps)
    x0_hat, eps_hat = to_x0_eps("eps", eps, x_t, ab)
    assert torch.allclose(x0_hat, x0, atol=1e-12) and torch.equal(eps_hat, eps)


@pytest.mark.parametrize("ab", [0.0, 0.3])
def test_x0_round_trip_where_defined(ab):
    x0, eps = _pair(2)
    x_t = q_sample(x0, ab, eps)
    x0_hat, eps_hat = to_x0_eps("x0", x0, x_t, ab)
    assert torch.equal(x0_hat, x0) and torch.allclose(eps_hat, eps, atol=1e-12)


def test_undefined_conversions_raise():
    x0, eps = _pair()
    with pytest.raises(ValueError, match="zero SNR"):
        to_x0_eps("eps", eps, eps, 0.0)
    with pytest.raises(ValueError, match="alpha_bar = 1"):
        to_x0_eps("x0", x0, x0, 1.0)


@pytest.mark.parametrize("src", ["eps", "x0", "v"])
@pytest.mark.parametrize("dst", ["eps", "x0", "v"])
def test_conversion_between_all_parameterisations(src, dst):
    x0, eps = _pair(3)
    ab = torch.tensor([0.05, 0.3, 0.7, 0.99], dtype=torch.float64).reshape(4, 1, 1, 1)
    x_t = q_sample(x0, ab, eps)
    out = from_x0_eps(src, x0, eps, ab)
    x0_hat, eps_hat = to_x0_eps(src, out, x_t, ab)
    assert torch.allclose(from_x0_eps(dst, x0_hat, eps_hat, ab), target(dst, x0, eps, ab), atol=1e-10)


def test_v_loss_is_snr_plus_one_weighted_x0_loss():
    """|v - v_hat|^2 = (SNR + 1) |x0 - x0_hat|^2 at fixed x_t: the identity behind loss.min_snr_weight."""
    x0, eps = _pair(4)
    ab = 0.4
    x_t = q_sample(x0, ab, eps)
    v_hat = target("v", x0, eps, ab) + 0.1 * torch.randn_like(x0)
    x0_hat, _ = to_x0_eps("v", v_hat, x_t, ab)
    snr = ab / (1 - ab)
    lhs = (v_hat - target("v", x0, eps, ab)).pow(2).sum()
    assert lhs.item() == pytest.approx((snr + 1) * (x0_hat - x0).pow(2).sum().item(), rel=1e-10)


class _Perfect:
    """A 'model' that returns the exact target: the loss must be 0."""

    def __init__(self, x0, eps, schedule, prediction):
        self.x0, self.eps, self.s, self.p = x0, eps, schedule, prediction

    def __call__(self, x, t, y=None):
        ab = self.s.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(x.dtype)
        return target(self.p, self.x0, self.eps, ab)


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("zero_snr", [True, False])
def test_loss_zero_for_perfect_model_and_finite_at_last_step(prediction, zero_snr):
    s = Schedule.make("scaled_linear", zero_snr=zero_snr)
    x0, eps = _pair(5)
    t = torch.tensor([999, 999, 0, 500])
    loss = diffusion_loss(_Perfect(x0, eps, s, prediction), x0, s, prediction, t=t, noise=eps)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    zero = diffusion_loss(lambda x, t, y=None: torch.zeros_like(x), x0, s, prediction, t=t, noise=eps)
    assert torch.isfinite(zero) and zero.item() > 0


def test_loss_is_the_mean_squared_error_to_the_target_times_the_weight():
    """Eq. 12 by hand: x_t from eq. 4, the v target, the squared error averaged per sample, then
    the weighted mean over the batch."""
    s = Schedule.make("linear", zero_snr=True)
    x0, eps = (a.float() for a in _pair(2))
    t, w = torch.tensor([999, 700, 300, 0]), torch.tensor([1.0, 0.5, 2.0, 0.0])
    model = lambda x, t, y=None: 0.3 * x  # noqa: E731
    ab = s.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    per_sample = ((0.3 * x_t - (ab.sqrt() * eps - (1 - ab).sqrt() * x0)) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(diffusion_loss(model, x0, s, "v", t=t, noise=eps), per_sample.mean())
    torch.testing.assert_close(diffusion_loss(model, x0, s, "v", t=t, noise=eps, weight=w), (w * per_sample).mean())


def test_eps_with_zero_snr_refused_with_advice():
    s = Schedule.make("linear", zero_snr=True)
    with pytest.raises(ValueError, match="prediction='v'"):
        diffusion_loss(lambda x, t, y=None: x, torch.zeros(2, 1, 4, 4), s, "eps")


def test_loss_reproducible_with_generator():
    s = Schedule.make("linear")
    x0 = torch.randn(8, 1, 4, 4)
    model = lambda x, t, y=None: x * 0.5  # noqa: E731
    a = diffusion_loss(model, x0, s, "v", generator=torch.Generator().manual_seed(3))
    b = diffusion_loss(model, x0, s, "v", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
