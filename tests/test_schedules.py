"""Schedules: Lin et al. Table 1 and Algorithm 1."""

import pytest
import torch

from minidiff.schedules import Schedule, alphas_cumprod, make_betas, rescale_zero_terminal_snr, snr

# Table 1 (T = 1000): SNR(T) and sqrt(alpha_bar_T)
TABLE1 = {
    "linear": (4.035993e-05, 0.006353),
    "scaled_linear": (0.004682, 0.068265),
}


@pytest.mark.parametrize("kind", list(TABLE1))
def test_table1_linear_and_stable_diffusion_rows(kind):
    ab = alphas_cumprod(make_betas(kind))
    snr_T, sqrt_ab_T = TABLE1[kind]
    # to every printed digit
    assert snr(ab)[-1].item() == pytest.approx(snr_T, abs=5e-7 * snr_T / 4.035993e-05 if kind == "linear" else 5e-7)
    assert round(ab[-1].sqrt().item(), 6) == sqrt_ab_T


def test_table1_cosine_row():
    """Table 1, cosine row: 2.428735e-09 and 4.928220e-05. The printed digits come from a
    schedule kept in float32 (betas, alphas and their cumulative product, as common tooling
    does); in float64 throughout the values differ by 1.3e-5 relative, so the float64
    schedule is checked to 1e-4 and the float32 one to every printed digit."""
    betas = make_betas("cosine")
    ab64 = alphas_cumprod(betas)
    assert snr(ab64)[-1].item() == pytest.approx(2.428735e-09, rel=1e-4)
    assert ab64[-1].sqrt().item() == pytest.approx(4.928220e-05, rel=1e-4)
    ab32 = torch.cumprod(1 - betas.float(), 0)
    assert f"{snr(ab32)[-1].item():.6e}" == "2.428735e-09"
    assert f"{ab32[-1].sqrt().item():.6e}" == "4.928220e-05"


def test_stable_diffusion_terminal_mix_eq10():
    """Eq. 10: x_T = 0.068265 x0 + 0.997667 eps."""
    ab_T = alphas_cumprod(make_betas("scaled_linear"))[-1]
    assert round(ab_T.sqrt().item(), 6) == 0.068265
    assert round((1 - ab_T).sqrt().item(), 6) == 0.997667


def test_schedule_definitions():
    lin = make_betas("linear")
    assert lin.dtype == torch.float64 and len(lin) == 1000
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    sl = make_betas("scaled_linear")
    assert sl[0].item() == pytest.approx(0.00085) and sl[-1].item() == pytest.approx(0.012)
    assert torch.allclose(sl.sqrt().diff(), sl.sqrt().diff()[0].expand(999))  # linear in sqrt(beta)
    assert make_betas("cosine").max().item() == pytest.approx(0.999)


def test_cosine_without_clip_is_already_zero_snr():
    sched = Schedule(make_betas("cosine", cosine_clip=None))
    assert sched.zero_terminal_snr and sched.betas[-1].item() == 1.0


@pytest.mark.parametrize("kind", ["linear", "cosine", "scaled_linear"])
def test_algorithm1_rescale(kind):
    betas = make_betas(kind)
    new = rescale_zero_terminal_snr(betas)
    ab_old, ab_new = alphas_cumprod(betas), alphas_cumprod(new)
    assert ab_new[-1].item() == 0.0  # exactly zero terminal SNR
    assert new[-1].item() == 1.0
    assert abs(new[0].item() - betas[0].item()) <= 1e-12 * betas[0].item()  # first beta held in float64
    assert ab_new[0].item() == pytest.approx(ab_old[0].item(), rel=1e-12)
    assert (ab_new.diff() < 0).all()  # still decreasing
    # sqrt(alpha_bar) is an affine map of the old one
    s_old, s_new = ab_old.sqrt(), ab_new.sqrt()
    expected = (s_old - s_old[-1]) * s_old[0] / (s_old[0] - s_old[-1])
    assert torch.allclose(s_new, expected, atol=1e-12)
    # applying it twice changes nothing
    assert torch.allclose(rescale_zero_terminal_snr(new), new, rtol=0, atol=1e-12)


def test_float32_rescale_loses_precision_float64_does_not():
    """Why the library stays in float64: in float32 the first beta drifts by ~1e-4 relative."""
    betas = make_betas("scaled_linear")
    ab = torch.cumprod(1 - betas.float(), 0).sqrt()
    ab = (ab - ab[-1]) * ab[0] / (ab[0] - ab[-1])
    first_beta_f32 = 1 - ab[0] ** 2
    assert abs(first_beta_f32.item() - betas[0].item()) / betas[0].item() > 1e-5


def test_schedule_object_and_errors():
    s = Schedule.make("scaled_linear", zero_snr=True)
    assert s.num_timesteps == 1000 and s.zero_terminal_snr
    assert s.snr[-1].item() == 0.0 and torch.isneginf(s.log_snr[-1])
    assert not Schedule.make("linear").zero_terminal_snr
    with pytest.raises(ValueError, match="unknown schedule kind"):
        make_betas("quadratic")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Schedule(torch.tensor([0.1, 1.5]))
