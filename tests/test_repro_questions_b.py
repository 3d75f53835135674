"""The questions lab's thresholding, zero-snr-designs and weighting experiments.

Each runs end to end at the `test` scale (tiny models, one shared cache in a temporary folder) and
must write a JSON of finite numbers. Around them, facts that would fail if the code were wrong: the
tail rescale reaches alpha_bar = 0 exactly, falls at every step and leaves the schedule bit for bit
alone below its start; dynamic thresholding leaves an x0 inside [-1, 1] untouched, so a sampler whose
predictions stay in range draws the same samples with it; the exact denoiser on SD's schedule keeps
the brightness spread at 1 / sqrt(1 + SNR_T lam) of the data's, as the probability-flow ODE predicts.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from minidiff.exact.analytic import gaussian_flow_moments
from minidiff.guidance import dynamic_threshold
from minidiff.repro import __main__ as repro
from minidiff.repro import thresholding, weighting, zero_snr_designs as zsd
from minidiff.repro.common import finite
from minidiff.samplers import sample
from minidiff.schedules import Schedule, make_betas

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """One model cache for the module: each tiny model is trained by the first test that needs it."""
    return tmp_path_factory.mktemp("models")


def trained(name, out, models_dir, *args):
    repro.main([name, "--out", str(out), "--scale", "test", "--models", str(models_dir), "--threads", "1", *map(str, args)])
    return json.loads(next(out.glob("*.json")).read_text())


# ----------------------------------------------------------------------------------- thresholding


def test_dynamic_threshold_leaves_an_x0_in_range_untouched_and_divides_by_the_percentile():
    gen = torch.Generator().manual_seed(0)
    inside = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1
    assert torch.equal(dynamic_threshold(inside, 0.9), inside)
    wide = 3 * torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    s = torch.tensor([float(torch.quantile(w.abs().flatten(), 0.995)) for w in wide], dtype=torch.float64)
    s = s.reshape(-1, 1, 1, 1)
    assert torch.allclose(dynamic_threshold(wide, 0.995), wide.clamp(-s, s) / s, rtol=0, atol=1e-15)


def test_a_sampler_whose_x0_stays_in_range_draws_the_same_samples_with_thresholding():
    schedule = Schedule.make("scaled_linear", zero_snr=True)

    def model(x, t, y=None):  # an x0 predictor that never leaves (-0.9, 0.9)
        return 0.9 * torch.tanh(x)

    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plain = sample(model, x_T.shape, schedule, prediction="x0", steps=10, x_T=x_T, progress=False)
    for p in (0.9, 0.995):
        assert torch.equal(sample(model, x_T.shape, schedule, prediction="x0", steps=10, x_T=x_T, threshold=p,
                                  progress=False), plain)


def test_thresholding_runs_and_agrees_with_cfg_rescale_on_the_shared_rows(tmp_path, models_dir):
    res = trained("thresholding", tmp_path / "thr", models_dir, "--guidance", 1, 2)
    assert finite(res) and len(res["rows"]) == 2 * len(thresholding.METHODS)
    rows = {(r["method"], r["guidance"]): r for r in res["rows"]}
    for w in (1.0, 2.0):  # clipping x0 at every step leaves the last one, the sample itself, inside [-1, 1]
        for key in ("clip", "dyn-0.9", "dyn-0.995", "rescale+dyn"):
            assert rows[(key, w)]["saturated_share"] == 0.0 and rows[(key, w)]["max_abs"] <= 1.0
    assert all(r["edge_share"] >= r["saturated_share"] for r in res["rows"])  # a pixel beyond the edge is at it
    assert thresholding.edge_share(torch.tensor([-1.2, -0.99, 0.0, 0.5, 0.9961, 1.0, 3.0, 0.2])) == 0.5
    # the same noises as cfg-rescale: its plain and phi 0.7 rows at w = 2 are these rows
    (tmp_path / "cfg").mkdir()
    cfg = trained("cfg-rescale", tmp_path / "cfg", models_dir, "--guidance", 2, "--guidance-rescale", 0, 0.7)
    ref = {r["guidance_rescale"]: r for r in cfg["rows"]}
    for key, phi in (("plain", 0.0), ("rescale", 0.7)):
        for field in ("saturated_share", "std_ratio", "brightness_w1"):
            assert rows[(key, 2.0)][field] == ref[phi][field]
    assert (tmp_path / "thr" / "thresholding_grid.png").stat().st_size > 0


# ------------------------------------------------------------------------------ zero-SNR designs


@pytest.mark.parametrize("kind", ["scaled_linear", "linear", "cosine"])
def test_the_tail_rescale_reaches_zero_falls_everywhere_and_keeps_the_head_bit_for_bit(kind):
    betas = make_betas(kind)
    old, new = Schedule(betas), Schedule(zsd.tail_rescale_zero_terminal_snr(betas, 0.9))
    assert new.alphas_cumprod[-1] == 0.0 and new.betas[-1] == 1.0
    assert (new.alphas_cumprod.diff() < 0).all()
    assert torch.equal(new.alphas_cumprod[:900], old.alphas_cumprod[:900])
    # the tail follows its defining equation, log-SNR' = log-SNR + 2 log(1 - r), through the betas' round trip
    r = zsd.tail_ramp(1000, 0.9)
    assert r[899] == 0.0 and r[900] > 0 and r[-1] == 1.0
    tail = slice(900, 999)
    assert torch.allclose(new.log_snr[tail], old.log_snr[tail] + 2 * torch.log1p(-r[tail]), rtol=0, atol=1e-9)


def test_schedule_changes_algorithm_1_moves_the_middle_the_tail_rescale_does_not():
    table = zsd.schedules(0.9)
    lin = zsd.schedule_change(table["sd-alg1"][1], table["sd"][1])
    tail = zsd.schedule_change(table["sd-tail"][1], table["sd"][1])
    assert tail["max_abs_dlogsnr_below_tail"] == 0.0 and tail["snr_rel_change_middle"] == 0.0
    assert lin["snr_rel_change_middle"] < -0.1  # the linear map lowers every SNR after the first
    # cosine: rescaling the clipped schedule moves sqrt(alpha_bar) by at most its last value (Table 1: 4.93e-5)
    cos = zsd.schedule_change(table["cosine-alg1"][1], table["cosine-noclip"][1])
    last = float(Schedule.make("cosine").alphas_cumprod[-1].sqrt())
    assert 0 < cos["max_abs_dsqrt_alpha_bar"] <= last * (1 + 1e-9)


def test_exact_denoiser_on_sd_keeps_the_flow_odes_spread_and_zero_snr_recovers_the_data():
    lam = zsd.EXACT_VARIANCES["brightness"]
    rows = {r["schedule"]: r for r in zsd.exact_std_ratios(zsd.schedules(), steps_list=(1000,))}
    ab_T = float(Schedule.make("scaled_linear").alphas_cumprod[-1])
    _, var = gaussian_flow_moments(lam, 0.0, ab_T, 1.0)  # the ODE from N(0, 1) at SD's last step
    assert rows["sd"]["brightness_std_ratio"] == pytest.approx(math.sqrt(float(var) / lam), rel=0.01)
    assert rows["sd"]["brightness_std_ratio"] == pytest.approx(1 / math.sqrt(ab_T * lam + 1 - ab_T), rel=0.01)
    for key in ("sd-alg1", "sd-tail", "cosine-noclip", "flow"):
        assert rows[key]["brightness_std_ratio"] == pytest.approx(1.0, abs=0.01)


def test_zero_snr_designs_runs_end_to_end(tmp_path, models_dir):
    res = trained("zero-snr-designs", tmp_path, models_dir)
    assert finite(res)
    assert [r["model"] for r in res["trained"]] == [name for name, _ in zsd.TRAINED]
    assert res["schedule_changes"]["sd-tail vs sd"]["max_abs_dlogsnr_below_tail"] == 0.0
    assert (tmp_path / "zero_snr_designs.png").stat().st_size > 0


# ------------------------------------------------------------------------------------- weighting


def test_weighting_runs_and_records_the_min_snr_refusal(tmp_path, models_dir):
    res = trained("weighting", tmp_path, models_dir, "--phis", 0, 0.7)
    assert finite(res)
    refused = res["min_snr_with_zero_snr"]
    assert refused["zero_snr"]["weight_last_step"] == 0.0 and "min-SNR" in refused["refusal"]
    assert refused["sd"]["weight_last_step"] > 0
    assert res["weights_every_100"]["min_snr (zero SNR, refused)"][-1] == 0.0
    assert [r["weighting"] for r in res["models"]] == ["none", "min_snr", "none", "level_mean"]
    assert [r["phi"] for r in res["phi_sweep"]["rows"]] == [0.0, 0.7]
    assert (tmp_path / "weighting.png").stat().st_size > 0


def test_level_mean_weights_are_one_over_the_running_mean_of_their_bin(models_dir):
    from minidiff.repro.common import SCALES, trained_model
    from minidiff.training.train import CHECKPOINT, load_checkpoint

    folder = Path(trained_model("zsnr-v-level", {**SCALES["test"], "device": "cpu"}, models_dir).folder)
    state = load_checkpoint(folder / CHECKPOINT)["loss_per_level"]
    w = weighting.level_mean_weights(folder)
    for b in torch.nonzero(state["seen"]).flatten()[:5]:
        t = int(b) * 1000 // len(state["seen"])  # the first timestep of bin b
        assert float(w[t]) == pytest.approx(1 / float(state["mean_loss"][b]), rel=1e-12)


@pytest.mark.parametrize("argv", [["zero-snr-designs", "--tail-start", "1.5"], ["weighting", "--phis", "1.2"],
                                  ["thresholding", "--guidance", "-1"]])
def test_bad_settings_exit_2_before_any_work(argv, tmp_path):
    with pytest.raises(SystemExit) as err:
        repro.main([*argv, "--out", str(tmp_path), "--scale", "test", "--models", str(tmp_path / "m")])
    assert err.value.code == 2
    assert not (tmp_path / "m").exists()
