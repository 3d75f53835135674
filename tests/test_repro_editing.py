"""The editing experiments, `minidiff repro img2img` and `minidiff repro inpaint`, on the main job's
recipe trained for two steps (a model's quality does not matter to the facts checked here).

Facts: on the zero-SNR run, strength 1 with one shared noise gives two different inputs the same
output to the last bit, and on the flawed run it does not; the leak arithmetic (the correlation of
the noised input's mean with the input's, sqrt(SNR / (1 + SNR))) agrees with a Monte Carlo draw;
inpainting returns the known pixels exactly after the uint8 round trip; the region, seam and
correlation measures give their exact values on images built for them.
"""

import json
import math
import types

import pytest
import torch

from minidiff.repro import __main__ as repro
from minidiff.repro import brightness_main, img2img, inpaint
from minidiff.repro.common import finite

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """One cache for the module: img2img trains both runs (2 steps), inpaint reuses the fixed one."""
    return tmp_path_factory.mktemp("models")


def scale_test_runs(models_dir):
    return models_dir / "test-scale"  # where --scale test keeps its runs


def test_img2img_end_to_end_full_strength_is_generation_only_at_zero_snr(tmp_path, models_dir):
    out = tmp_path / "img2img"
    repro.main(["img2img", "--scale", "test", "--models", str(models_dir), "--out", str(out), "--threads", "1",
                "--inputs", "8", "--strengths", "0.5", "1"])
    res = json.loads((out / "img2img.json").read_text())
    assert finite(res) and res["num_inputs"] == 8 and res["strengths"] == [0.5, 1.0]
    fixed, flawed = res["runs"]["fixed"], res["runs"]["flawed"]
    for entry in (fixed, flawed):
        assert [e["strength"] for e in entry["strengths"]] == [0.5, 1.0]
        assert [e["start_timestep"] for e in entry["strengths"]] == [499, 999]
        assert all(math.isfinite(e["r"]) and -1 <= e["r"] <= 1 for e in entry["strengths"])
    assert res["r_at_strength_1"] == {"fixed": fixed["strengths"][1]["r"], "flawed": flawed["strengths"][1]["r"]}
    # zero SNR: x_{T-1} = sqrt(0) x + z = z, so the input cannot reach the output at all
    assert fixed["strength_one_max_abs_difference"] == 0.0 and fixed["leak"]["sqrt_alpha_bar_T"] == 0.0
    # Stable Diffusion's schedule: Table 1's sqrt(alpha_bar_T), and the input does reach the output
    assert flawed["leak"]["sqrt_alpha_bar_T"] == pytest.approx(0.068265, abs=5e-7)
    assert flawed["strength_one_max_abs_difference"] > 0.0
    # each run is sampled with its own report's settings: the flaw keeps leading steps and clipping
    assert flawed["sampling"]["spacing"] == "leading" and flawed["sampling"]["clip_x0"]
    assert fixed["sampling"]["spacing"] == "trailing" and not fixed["sampling"]["clip_x0"]
    for name in res["figures"]:
        assert (out / name).stat().st_size > 0


def test_a_finished_main_run_is_loaded_without_writing(models_dir):
    """main_model on a run that reached max_steps trains nothing and leaves its files as they were."""
    ckpt = scale_test_runs(models_dir) / "main-flawed-scaled_linear" / "checkpoint.pt"
    if not ckpt.exists():
        pytest.skip("needs the img2img test's models")
    before = {p.name: p.stat().st_mtime_ns for p in ckpt.parent.iterdir()}
    model, config, settings = brightness_main.main_model("flawed", ckpt.parent.parent, max_steps=2, schedule="scaled_linear",
                                                         threads=1)
    assert {p.name: p.stat().st_mtime_ns for p in ckpt.parent.iterdir()} == before
    assert config["prediction"] == "eps" and not config["zero_snr"] and settings["spacing"] == "leading"


def test_leak_correlation_matches_a_monte_carlo_draw():
    """The start's mean is sqrt(a) m + sqrt(1 - a) zbar with Var(zbar) = 1/d: its correlation with m is
    sqrt(SNR / (1 + SNR)), SNR = a / (1 - a) Var(m) d; one draw over 4,000 images agrees to 0.03."""
    g = torch.Generator().manual_seed(5)
    m = torch.rand(4000, generator=g) * 1.8 - 0.9
    images = m[:, None, None, None] + 0.1 * torch.randn(4000, 3, 8, 8, generator=g)
    images -= images.flatten(1).mean(1)[:, None, None, None] - m[:, None, None, None]  # mean exactly m
    a = 0.068265 ** 2
    leak = img2img.leak_at_start(images, a, seed=1)
    snr = a / (1 - a) * float(images.double().flatten(1).mean(1).var()) * 192
    assert leak["mean_snr_T"] == pytest.approx(snr, rel=1e-6)
    assert leak["r_predicted"] == pytest.approx(math.sqrt(snr / (1 + snr)), rel=1e-12)
    assert leak["r_measured"] == pytest.approx(leak["r_predicted"], abs=0.03)
    assert img2img.leak_at_start(images, 0.0, seed=1)["r_predicted"] == 0.0


def test_pearson_and_slope_against_torch():
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(300, generator=g, dtype=torch.float64), torch.randn(300, generator=g, dtype=torch.float64)
    y = 2 * x + 0.5 * noise + 1
    assert img2img.pearson(x, y) == pytest.approx(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), abs=1e-6)
    assert img2img.slope(x, 3 * x - 2) == pytest.approx(3.0, rel=1e-12)


def test_masks_regions_and_seam_measures_on_built_images():
    assert [float(inpaint.make_mask(n).mean()) for n in inpaint.MASKS] == [0.25, 0.5, 0.5]
    left = inpaint.make_mask("left", 8)
    image = torch.where(left.bool(), torch.tensor(0.6), torch.tensor(-0.2)).expand(2, 3, 8, 8)
    filled, known = inpaint.region_means(image, left)
    assert filled.tolist() == pytest.approx([0.6, 0.6]) and known.tolist() == pytest.approx([-0.2, -0.2])
    assert inpaint.seam_jump(image, left) == pytest.approx(0.8)  # the step sits exactly on the edge
    assert inpaint.seam_jump(torch.full((2, 3, 8, 8), 0.3), inpaint.make_mask("centre", 8)) == 0.0
    u8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x = u8.float() * 2 / 255 - 1
    assert inpaint.known_error(torch.where(left.bool(), torch.tensor(5.0), x), u8, left) == 0  # filled part ignored
    assert inpaint.known_error(x + 2 / 255, u8, left) == 1


def test_inpaint_end_to_end_keeps_the_known_pixels_exactly(tmp_path, models_dir):
    from minidiff.evaluation.classifier import Classifier

    torch.manual_seed(0)
    judge = types.SimpleNamespace(net=Classifier(3, 10).eval(), accuracy=math.nan)  # plumbing only: any classifier
    sizes = dict(inpaint.SIZES["test"], images=4)
    res = inpaint.run(tmp_path, scale_test_runs(models_dir), sizes=sizes, resample=(0, 1), masks=("centre", "left"), threads=1,
                      judge=judge)
    rows = [r for r in res["rows"] if "resample" in r]
    n = res["sampling"]["steps"]  # the run's report's, and twice as many for the control with resample 1's calls
    assert [(r["mask"], r["resample"], r["steps"]) for r in rows] == [(m, *rs) for m in ("centre", "left")
                                                                     for rs in ((0, n), (1, n), (0, 2 * n))]
    assert res["known_max_abs_diff"] == 0 and all(r["known_max_abs_diff"] == 0 for r in rows)
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("filled_known_r", "filled_mean_error", "seam_jump", "accuracy",
                                                "seconds", "seconds_ratio"))
    reals = [r for r in res["rows"] if r["setting"] == "real"]
    assert all(r["filled_mean_error"] == 0.0 for r in reals)  # the truth agrees with itself
    assert (tmp_path / "inpaint_grid.png").stat().st_size > 0


def test_bad_sizes_are_refused_in_one_line(tmp_path, capsys):
    for argv in (["img2img", "--strengths", "0", "1"], ["img2img", "--inputs", "1"], ["inpaint", "--resample", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            repro.main([*argv, "--out", str(tmp_path / "x"), "--models", str(tmp_path / "m")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: --")
    assert not (tmp_path / "m").exists()
