"""Questions lab, part A: frequencies (A 9, B 10), ve-terminal (A 8) and start-step (B 2).

Each experiment runs end to end into tmp_path; the facts below would fail if the maths were wrong:
Parseval and the DC coefficient, white noise staying white under the orthonormal DFT, the VE terminal
SNR and its VP twin, the mean's SNR growing with the pixel count, the start's brightness shrinkage
against the exact Gaussian sampler, and zero-SNR editing at full strength ignoring its input.
"""

import json
import math

import pytest
import torch

from minidiff.exact.analytic import gaussian_sampler_moments
from minidiff.repro import __main__ as repro
from minidiff.repro import frequencies as fq
from minidiff.repro import start_step as ss
from minidiff.repro import ve_terminal as ve
from minidiff.repro.common import finite
from minidiff.samplers import make_timesteps
from minidiff.schedules import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run(name, out, *args):
    repro.main([name, "--out", str(out), *map(str, args)])
    return json.loads(next(out.glob("*.json")).read_text())


# ------------------------------------------------------------------------------------ frequencies


def test_parseval_and_the_dc_coefficient():
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.3
    power = fq.fourier_power(x)
    # sum_k |X_k|^2 = sum_n x_n^2 per channel, and |X_0|^2 = d mean^2 with d = 64 pixels
    assert torch.allclose(power.sum(dim=(2, 3)), x.double().pow(2).sum(dim=(2, 3)), rtol=1e-12)
    assert torch.allclose(power[..., 0, 0], 64 * x.double().mean(dim=(2, 3)).pow(2), rtol=1e-12)


def test_the_orthonormal_dft_keeps_white_noise_at_variance_one():
    r = 8
    basis = torch.eye(r * r, dtype=torch.float64).reshape(r * r, 1, r, r)
    f = torch.fft.fft2(basis, norm="ortho").reshape(r * r, r * r)  # column n: the transform of pixel n
    assert torch.allclose(f @ f.conj().T, torch.eye(r * r, dtype=torch.complex128), atol=1e-12)  # unitary
    # hence E|X_k|^2 = 1 for every coefficient of white noise: every radial band has power ~1
    noise = torch.randn(4000, 1, r, r, generator=torch.Generator().manual_seed(1))
    bands = fq.radial_power(fq.fourier_power(noise))
    assert bands.sub(1).abs().max() < 0.06 and fq.radial_frequency(r).eq(0).sum() == 1


def test_the_dc_power_grows_with_the_pixel_count_and_its_share_does_not():
    x = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    x2 = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # the same pictures, 4x the pixels
    m, m2 = fq.measure(x), fq.measure(x2)
    assert m2["dc_power"] == pytest.approx(4 * m["dc_power"], rel=1e-12)
    assert m2["dc_share"] == pytest.approx(m["dc_share"], rel=1e-12)
    assert m2["dc_over_mean_coefficient"] == pytest.approx(4 * m["dc_over_mean_coefficient"], rel=1e-12)
    r, r2 = fq.schedule_rows(m)[2], fq.schedule_rows(m2)[2]  # Stable Diffusion's schedule
    assert r2["image_mean_snr_T"] == pytest.approx(4 * r["image_mean_snr_T"], rel=1e-12)


def test_hidden_from_finds_the_step_the_band_sinks_under_the_noise():
    curve = torch.tensor([10.0, 2.0, 0.5, 0.1], dtype=torch.float64)
    assert fq.hidden_from(curve, 1.0) == 2 and fq.hidden_from(curve, 0.05) == 0
    assert fq.hidden_from(curve, 20.0) is None  # still above 1 at T: never buried


def test_frequencies_command(tmp_path):
    res = run("frequencies", tmp_path, "--num-images", 40, "--resolutions", 8, 16)
    assert finite(res) and (tmp_path / "frequencies.png").stat().st_size > 0
    for m in res["measures"]:
        assert m["dc_power"] == pytest.approx(m["dc_power_from_mean"], rel=1e-9)  # Parseval on real images
    sd = {r["resolution"]: r for r in res["rows"] if r["schedule"] == "scaled_linear"}
    assert sd[16]["image_mean_snr_T"] > 3 * sd[8]["image_mean_snr_T"]


# ------------------------------------------------------------------------------------ ve-terminal


def test_ve_terminal_snr_and_its_vp_twin():
    for sigma in (50.0, 348.0, 1348.0, 80.0):
        assert ve.ve_snr(sigma) == pytest.approx(1 / sigma**2, rel=1e-15)
        ab = ve.vp_alpha_bar_of_sigma(sigma)  # the same state, VP-scaled: the same SNR
        assert ab / (1 - ab) == pytest.approx(ve.ve_snr(sigma), rel=1e-12)
        assert ve.sigma_of_vp_snr(ab / (1 - ab)) == pytest.approx(sigma, rel=1e-12)
    assert ve.sigma_of_vp_snr(0.0) == math.inf  # zero SNR is VE's sigma = infinity
    assert ve.mean_snr(0.01, 64, 0.3) == pytest.approx(4 * ve.mean_snr(0.01, 32, 0.3), rel=1e-15)


def test_start_std_ratio_matches_the_exact_sampler():
    """An exact probability-flow sampler from the pure-noise law: 1000 DDIM steps with the exact
    denoiser shrink a direction of variance lam by sqrt(1 / ((1 - ab_T)(1 + SNR(T) lam)))."""
    sd = Schedule.make("scaled_linear")
    ts = make_timesteps(1000, 1000, "trailing")
    ab_T = float(sd.alphas_cumprod[-1])
    for lam in (10.0, 300.0):
        _, var = gaussian_sampler_moments(torch.tensor([lam]), torch.tensor([0.0]), sd, ts)
        formula = ve.start_std_ratio(float(sd.snr[-1]) * lam, ab_T)
        assert (var[0] / lam).sqrt().item() == pytest.approx(formula, rel=3e-3)  # 1000 steps: near the ODE
    # VE: the same on the VP twin of a geometric sigma ladder, whose start N(0, sigma_max^2) is
    # N(0, 1 - ab_T) VP-scaled; the variance of a linear map's output scales with the start's
    ab = 1 / (1 + ve.ve_sigmas(0.01, 50.0) ** 2)
    twin = Schedule(torch.cat([1 - ab[:1], 1 - ab[1:] / ab[:-1]]))
    for lam in (3000.0, 30000.0):  # SNR at sigma_max = 50: S = 1.2 and 12
        _, var = gaussian_sampler_moments(torch.tensor([lam]), torch.tensor([0.0]), twin, ts)
        ratio = ((var[0] / lam) * (1 - ab[-1])).sqrt().item()
        assert ratio == pytest.approx(ve.start_std_ratio(ve.ve_snr(50.0, lam)), rel=3e-3)


def test_largest_distance_between_images():
    images = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]]).reshape(3, 1, 1, 2)
    assert ve.largest_distance(images) == pytest.approx(5.0)


def test_ve_terminal_command(tmp_path):
    res = run("ve-terminal", tmp_path, "--num-images", 200)
    assert finite(res) and (tmp_path / "ve_terminal.png").stat().st_size > 0
    rows = {r["schedule"]: r for r in res["rows"]}
    assert rows["smld_cifar10"]["snr_T_unit_var"] == pytest.approx(1 / 50**2)
    assert rows["scaled_linear"]["sqrt_alpha_bar_T"] == pytest.approx(0.068265, abs=5e-7)  # table1's row
    assert rows["scaled_linear_zero_snr"]["mean_snr_T"] == 0 and rows["scaled_linear_zero_snr"]["sigma_max"] is None
    # Song & Ermon's rule (sigma_max = the largest distance) holds the mean's SNR fixed across sides
    rule = [b["mean_snr_T"] for b in res["by_side"] if b["schedule"] == "largest_distance_rule"]
    assert max(rule) == pytest.approx(min(rule), rel=1e-12)


# ------------------------------------------------------------------------------------ start-step


def test_noise_start_timesteps():
    ts = ss.noise_start_timesteps(1000, 10, 899).tolist()
    assert ts == [899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ss.noise_start_timesteps(1000, 10, 999).tolist() == make_timesteps(1000, 10, "trailing").tolist()


def test_start_step_refuses_a_start_outside_0_1(capsys):
    with pytest.raises(SystemExit) as exit_:
        repro.main(["start-step", "--starts", "1.5"])
    assert exit_.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_start_step_command(tmp_path):
    res = run("start-step", tmp_path, "--scale", "test", "--models", tmp_path / "models", "--threads", 1)
    assert finite(res)
    assert [r["t_start"] for r in res["noise"] if r["model"] == "zsnr-v"] == [999, 899, 799, 599]
    edits = {(r["start"], r["strength"]): r for r in res["edit"]}
    # At zero terminal SNR, strength 1 starts from sqrt(0) x0 + eps = eps: the input is ignored, so the
    # real and the low-resolution inputs give the same samples (same noises, same labels)
    real, low = edits[("real", 1.0)], edits[("lowres", 1.0)]
    for key in ("wasserstein1", "brightness_mean", "brightness_std", "detail_ratio"):
        assert real[key] == low[key]
    calls = [edits[("real", s)]["model_calls"] for s in (1.0, 0.8, 0.6, 0.4, 0.2)]
    assert calls == sorted(calls, reverse=True)
    for png in ("start_step_metrics.png", "start_step_grid.png"):
        assert (tmp_path / png).stat().st_size > 0
