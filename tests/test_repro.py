"""The reproduction commands (`minidiff repro NAME`), each run in a tiny configuration.

The runner lists every experiment of both papers and refuses an unknown one; every experiment
writes under runs/repro/NAME unless told otherwise. table1 / table2 must print the paper's numbers;
the high-dimensional experiments must print the rows of docs/highdim.md's table; the trained-model experiments run with the `test`
scale (the tiny UNet, 8 training steps, 10 samples), sharing one model cache, and must write a
JSON with every field present and every number finite. The brightness maths is checked against
exact answers.
"""

import importlib
import json
import re

import pytest
import torch

from minidiff.repro import __main__ as repro
from minidiff.repro.common import MODELS, brightness_stats, finite, image_brightness, wasserstein1


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """One model cache for the whole module: each model is trained by the first test that needs it."""
    return tmp_path_factory.mktemp("models")


def run(name, out, *args):
    repro.main([name, "--out", str(out), *map(str, args)])
    return json.loads(next(out.glob("*.json")).read_text())


def trained(name, out, models_dir, *args):
    return run(name, out, "--scale", "test", "--models", models_dir, *args)


# ------------------------------------------------------------------------------- the paper's tables


def test_table1_prints_the_papers_terminal_snr(tmp_path):
    rows = {r["schedule"]: r for r in run("table1", tmp_path)["rows"]}
    # Table 1, linear and Stable Diffusion rows: every printed digit, float64.
    assert rows["linear"]["snr_T"] == pytest.approx(4.035993e-05, rel=2e-7)
    assert rows["linear"]["sqrt_alpha_bar_T"] == pytest.approx(0.006353, abs=5e-7)
    assert rows["scaled_linear"]["snr_T"] == pytest.approx(0.004682, abs=5e-7)
    assert rows["scaled_linear"]["sqrt_alpha_bar_T"] == pytest.approx(0.068265, abs=5e-7)
    # Cosine row: exact in float32 (as the paper computed it), within 1.3e-5 relative in float64.
    assert rows["cosine"]["snr_T_float32_betas"] == pytest.approx(2.428735e-09, rel=3e-7)
    assert rows["cosine"]["sqrt_alpha_bar_T_float32_betas"] == pytest.approx(4.928220e-05, rel=2e-7)
    assert rows["cosine"]["snr_T"] == pytest.approx(2.428735e-09, rel=1e-4)
    for r in rows.values():  # Algorithm 1: zero terminal SNR, last beta 1, first beta kept
        assert r["rescaled_snr_T"] == 0 and r["rescaled_last_beta"] == 1.0
        assert r["rescaled_first_beta_rel_change"] < 1e-12
    assert (tmp_path / "schedules_snr.png").stat().st_size > 0


def test_table2_prints_the_papers_timesteps(tmp_path):
    res = run("table2", tmp_path)
    rows = {r["spacing"]: r["timesteps_1_indexed"] for r in res["rows"]}
    assert rows["leading"] == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    assert rows["linspace"] == [1, 112, 223, 334, 445, 556, 667, 778, 889, 1000]
    assert rows["trailing"] == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    # Only trailing (and here linspace) starts at the last training step, where SD's schedule still
    # has sqrt(alpha_bar) = 0.068265 and the zero-SNR one has exactly 0.
    for r in res["first_step"]:
        if r["spacing"] == "trailing":
            assert r["first_t"] == 999 and r["sqrt_alpha_bar_first_sd_zero_snr"] == 0.0
            assert r["sqrt_alpha_bar_first_sd"] == pytest.approx(0.068265, abs=5e-7)
        if r["spacing"] == "leading":
            assert r["first_t"] == 1000 - 1000 // r["steps"]


def test_leakage_measures_the_brightness_that_survives(tmp_path):
    res = run("leakage", tmp_path, "--num-images", 400, "--resolution", 16)
    rows = {r["schedule"]: r for r in res["rows"]}
    assert rows["scaled_linear"]["sqrt_alpha_bar_T"] == pytest.approx(0.068265, abs=5e-7)
    assert rows["scaled_linear_zero_snr"]["r2_mean"] == 0.0
    # SD's schedule leaks the image mean far more than linear, which leaks more than cosine.
    predicted = [rows[k]["mean_snr_predicted"] for k in ("scaled_linear", "linear", "cosine")]
    assert predicted == sorted(predicted, reverse=True) and predicted[0] > 100 * predicted[1]
    assert rows["scaled_linear"]["r2_mean"] > 0.3 > 0.05 > rows["linear"]["r2_mean"]
    # ... by the amount the formula SNR(T) D Var(b) predicts (400 images: a loose tolerance).
    assert rows["scaled_linear"]["r2_mean"] == pytest.approx(rows["scaled_linear"]["mean_snr_predicted_r2"], abs=0.1)
    assert finite(res)


# ---------------------------------------------------------------------------- brightness maths


def test_wasserstein1_exact_values():
    a = torch.tensor([0.0, 1.0, 2.0])
    assert wasserstein1(a, a + 0.5) == pytest.approx(0.5)          # a shift moves every unit of mass
    assert wasserstein1(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.0)
    assert wasserstein1(torch.tensor([0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(0.5)
    assert wasserstein1(a, a.flip(0)) == 0.0                         # order does not matter


def test_brightness_stats_count_the_ends():
    images = torch.stack([torch.full((3, 4, 4), v) for v in (-0.9, -0.8, 0.0, 0.3, 0.75, 0.95)])
    assert image_brightness(images).tolist() == pytest.approx([-0.9, -0.8, 0.0, 0.3, 0.75, 0.95])
    s = brightness_stats(images, image_brightness(images))
    assert s["wasserstein1"] == 0.0
    assert s["dark_share"] == pytest.approx(2 / 6) and s["bright_share"] == pytest.approx(2 / 6)
    # uint8 images are read in the library's [-1, 1] convention
    assert image_brightness(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)).item() == 1.0


def test_zero_snr_models_predict_v():
    """Lin et al. Sec. 3.2: zero SNR needs v (or x0); the library refuses eps there."""
    assert all(m.prediction == "v" for m in MODELS.values() if m.zero_snr)


# ------------------------------------------------------------------- the trained-model experiments


def test_brightness_command(tmp_path, models_dir):
    res = trained("brightness", tmp_path, models_dir, "--offset-noise")
    assert [r["setup"] for r in res["setups"]] == ["flawed", "trailing", "v", "zero-snr", "all", "offset"]
    for r in res["setups"]:
        assert r["wasserstein1"] >= 0 and 0 <= r["dark_share"] <= 1 and 0 <= r["bright_share"] <= 1
    flawed, fixed = res["setups"][0], res["setups"][4]
    assert (flawed["model"], flawed["spacing"]) == ("sd-eps", "leading")
    assert (fixed["model"], fixed["spacing"]) == ("zsnr-v", "trailing")
    assert set(res["train_seconds"]) == {"sd-eps", "sd-v", "zsnr-v", "sd-eps-offset"}
    assert set(res["trained_now"]) <= set(res["train_seconds"])
    assert finite(res)
    for png in ("brightness_hist.png", "brightness_range.png"):
        assert (tmp_path / png).stat().st_size > 0
    # A second run finds every model in the cache and trains nothing.
    again = trained("brightness", tmp_path / "again", models_dir, "--offset-noise")
    assert again["trained_now"] == [] and again["train_seconds"] == res["train_seconds"]
    assert again["setups"] == res["setups"]  # same seeds, same models: the same numbers


def test_at_T_command(tmp_path, models_dir):
    res = trained("at-T", tmp_path, models_dir, "--num-noises", 4)
    assert set(res["models"]) == {"zsnr-v", "sd-eps"}
    for r in res["models"].values():
        assert len(r["spread_rms_per_label"]) == 11  # ten classes and the null class
    assert finite(res)


def test_spacing_command(tmp_path, models_dir):
    res = trained("spacing", tmp_path, models_dir)
    assert {(r["spacing"], r["steps"]) for r in res["trained"]} == {
        (s, n) for s in ("leading", "linspace", "trailing") for n in (5, 10, 25, 50)}
    exact = {(r["schedule"], r["spacing"], r["steps"]): r for r in res["exact"]["rows"]}
    # Exact DDIM on zero-SNR: the brightness spread approaches the data's from below as steps grow.
    ratios = [exact[("zero_snr", "trailing", n)]["brightness_std_ratio"] for n in (5, 10, 25, 50)]
    assert ratios == sorted(ratios) and ratios[-1] < 1.0
    # Without the rescale it stays too small however many steps (the brightness effect, exactly).
    assert exact[("sd", "trailing", 50)]["brightness_std_ratio"] < exact[("zero_snr", "trailing", 50)]["brightness_std_ratio"]
    assert finite(res)


def test_cfg_rescale_command(tmp_path, models_dir):
    res = trained("cfg-rescale", tmp_path, models_dir, "--guidance", 1, 3, "--guidance-rescale", 0, 0.7)
    rows = {(r["guidance"], r["guidance_rescale"]): r for r in res["rows"]}
    assert set(rows) == {(1.0, 0.0), (1.0, 0.7), (3.0, 0.0), (3.0, 0.7)}
    # without guidance the rescale changes nothing
    assert rows[(1.0, 0.0)] == {**rows[(1.0, 0.7)], "guidance_rescale": 0.0}
    assert all(0 <= r["saturated_share"] <= 1 for r in rows.values())
    assert finite(res)


# --------------------------------------------------------------------------------------- the runner


def test_help_lists_every_experiment_of_both_papers(capsys):
    with pytest.raises(SystemExit) as exit_:
        repro.main(["--help"])
    assert exit_.value.code == 0
    listed = dict(re.findall(r"^  (\S+)\s+(.+)$", capsys.readouterr().out, flags=re.M))
    assert list(listed) == list(repro.EXPERIMENTS)
    # Lin et al.'s experiments and Aranguri et al.'s four (their names are fixed by DESIGN.md)
    assert {"table1", "table2", "brightness", "cfg-rescale", "highdim-trajectories", "highdim-features",
            "highdim-table", "highdim-bridge"} <= set(listed)
    assert all(len(line) > 20 and line != "(module not found)" for line in listed.values())


def test_unknown_experiment_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        repro.main(["table3"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "'table3'" in err and "highdim-table" in err


@pytest.mark.parametrize("name", list(repro.EXPERIMENTS))
def test_every_experiment_writes_under_runs_repro_name(name, capsys, monkeypatch):
    """The default --out of every experiment is runs/repro/NAME, and --figures-dir (off by default)
    is the only way into docs/."""
    monkeypatch.setenv("COLUMNS", "400")  # one option per line in argparse's help
    with pytest.raises(SystemExit):
        repro.main([name, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: runs/repro/{name})" in text
    assert re.search(r"--figures-dir FIGURES_DIR [^-]*default: none\)", text)
    assert "default: docs" not in text


def test_importing_the_experiments_leaves_the_unet_presets_alone():
    from minidiff import unet
    from minidiff.repro import common

    before = dict(unet.PRESETS)
    importlib.reload(common)
    assert unet.PRESETS == before and "repro-mini" not in unet.PRESETS
    assert common.network_config("repro-mini")["norm_groups"] == 16


def test_figures_dir_gets_a_copy_of_the_figures(tmp_path):
    run("table1", tmp_path / "out", "--figures-dir", tmp_path / "figures")
    assert (tmp_path / "figures" / "schedules_snr.png").read_bytes() == (tmp_path / "out" / "schedules_snr.png").read_bytes()


# ----------------------------------------------------------------- Aranguri et al.'s experiments


def test_highdim_table_reproduces_the_docs_rows(tmp_path):
    """docs/highdim.md, headline table: the mixture rows d = 1e2 and 1e4, the Curie-Weiss row d = 1e2."""
    res = run("highdim-table", tmp_path, "--dims", "1e2,1e4", "--cw-dims", "100", "--max-steps", 2000,
              "--cw-max-steps", 200, "--no-progress")
    names = ("vp_uniform", "vp_dilated", "ve_uniform", "ve_dilated")
    assert [[row[n] for n in names] for row in res["mixture"]] == [[24, 20, 96, 58], [228, 28, 768, 48]]
    assert [[row[n] for n in names] for row in res["curie_weiss"]] == [[12, 12, 34, 20]]
    assert (tmp_path / "highdim_table.png").stat().st_size > 0


def test_highdim_trajectories_vp_picks_the_majority_ve_collapses_the_spread(tmp_path):
    """d = 1e4, 16 uniform steps: VP puts every sample in the + mode (p = 0.8), VE ends on the mode centres."""
    res = run("highdim-trajectories", tmp_path, "--cw-d", 100, "--samples", 1000)
    setups = res["setups"]
    assert setups["vp_uniform"]["mixture"]["high"] > 0.99
    assert setups["vp_dilated"]["mixture"]["high"] == pytest.approx(0.8, abs=0.05)
    assert setups["ve_uniform"]["mixture"]["low"] < 0.1 < 0.3 < setups["ve_dilated"]["mixture"]["low"]
    assert finite(res) and (tmp_path / "highdim_trajectories.png").stat().st_size > 0


def test_highdim_features_curves(tmp_path):
    res = run("highdim-features", tmp_path, "--dims", "1e2", "--max-steps", 64)
    assert res["steps"][:4] == [2, 4, 6, 8] and res["steps"][-1] <= 64
    vp_uniform = res["curves"]["vp_uniform_d100"]
    assert vp_uniform[0]["high"] > 0.99 and vp_uniform[-1]["high"] == pytest.approx(0.8, abs=0.03)
    assert (tmp_path / "highdim_features.png").stat().st_size > 0


def test_highdim_bridge_dilated_ddim_recovers_the_mode_weight(tmp_path):
    res = run("highdim-bridge", tmp_path, "--bridge-steps", "10", "--samples-ddim", 4000)
    zero_snr, plain = res["schedules"]["linear_zero_snr"]["runs"], res["schedules"]["linear"]["runs"]
    assert zero_snr["trailing_10"]["high"] > 0.99
    assert zero_snr["dilated_10"]["high"] == pytest.approx(0.8, abs=0.05)
    assert "zero terminal SNR" in plain["dilated_10"]["error"]  # refused, with the reason
    assert (tmp_path / "highdim_bridge.png").stat().st_size > 0


def test_brightness_main_recipe_trains_fixed_and_flawed_one_flag_set_apart(tmp_path):
    """--recipe main: the two runs differ only in Lin et al.'s fixes, each is judged with the
    sampler settings its own run reports (flawed: leading steps, x0 clipped as DDPM's sampler
    does), and the JSON's ratio is the two W1s' ratio."""
    from minidiff.repro import brightness_main
    from minidiff.training import train as T

    from minidiff.evaluation import metrics

    judge = metrics.Judge.for_dataset("builtin", resolution=32, num=500, num_reference=200, cache_dir=None, progress=False)
    res = brightness_main.run(tmp_path / "out", tmp_path / "models", max_steps=1, num_samples=10, threads=1, judge=judge)
    fixed, flawed = res["runs"]["fixed"], res["runs"]["flawed"]
    assert fixed["sampling"]["spacing"] == "trailing" and not fixed["sampling"]["clip_x0"]
    assert flawed["sampling"]["spacing"] == "leading" and flawed["sampling"]["clip_x0"]
    assert fixed["sampling"]["guidance"] == flawed["sampling"]["guidance"] == 2.5
    assert fixed["sampling"]["guidance_from"] == flawed["sampling"]["guidance_from"] == -3.0
    configs = [T.load_checkpoint(tmp_path / "models" / f"main-{n}" / T.CHECKPOINT)["config"] for n in ("fixed", "flawed")]
    differ = {k for k in configs[0] if configs[0][k] != configs[1][k]}
    assert differ == {"zero_snr", "prediction", "spacing", "clip_x0", "out"}
    assert res["w1_ratio"] == pytest.approx(flawed["brightness_w1"] / fixed["brightness_w1"])
    assert (tmp_path / "out" / "brightness_main.png").stat().st_size > 0


def test_brightness_main_refuses_a_model_of_an_older_recipe_and_names_models(tmp_path):
    """A main-* model trained before the recipe's Adam beta2 changed is not resumed as if it were
    the recipe's: the refusal names the setting and the --models flag."""
    from minidiff.evaluation import metrics
    from minidiff.training import runtime
    from minidiff.training import train as T
    from minidiff.repro import brightness_main

    judge = metrics.Judge.for_dataset("builtin", resolution=32, num=500, num_reference=200, cache_dir=None, progress=False)
    brightness_main.run(tmp_path / "out", tmp_path / "models", max_steps=1, num_samples=10, threads=1, judge=judge)
    path = tmp_path / "models" / "main-fixed" / T.CHECKPOINT
    state = T.load_checkpoint(path)
    del state["config"]["adam_beta2"]  # as a checkpoint of the recipe before recorded it
    runtime.save_checkpoint(path, state)
    with pytest.raises(T.UsageError, match=r"adam_beta2: 0.99 now, 0.999 in the checkpoint.*another --models folder"):
        brightness_main.run(tmp_path / "out", tmp_path / "models", max_steps=2, num_samples=10, threads=1, judge=judge)


def test_last_step_mean_snr_from_ddpm_and_stable_diffusion_betas():
    """The SNR of a 32x32x3 image's mean brightness at t = T without the rescale, from betas written
    out here: DDPM's linspace(1e-4, 0.02) and Stable Diffusion's linspace(sqrt 0.00085, sqrt 0.012)^2.
    The built-in mean brightness is uniform on [-0.9, 0.9] (variance 0.27): 0.033 and 3.88."""
    from minidiff.repro.brightness_main import last_step_mean_snr

    for name, betas in [("linear", torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)),
                        ("scaled_linear", torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2)]:
        ab = torch.prod(1 - betas).item()
        assert last_step_mean_snr(name) == pytest.approx(ab / (1 - ab) * 0.27 * 3072, rel=1e-6)
    assert last_step_mean_snr("linear") == pytest.approx(0.033, abs=0.001)
    assert last_step_mean_snr("scaled_linear") == pytest.approx(3.88, abs=0.01)


def test_brightness_main_with_another_schedule_keeps_its_own_runs(tmp_path):
    from minidiff.evaluation import metrics
    from minidiff.training import train as T
    from minidiff.repro import brightness_main

    judge = metrics.Judge.for_dataset("builtin", resolution=32, num=500, num_reference=200, cache_dir=None, progress=False)
    res = brightness_main.run(tmp_path / "out", tmp_path / "models", max_steps=1, num_samples=10, threads=1, judge=judge,
                              schedule="scaled_linear")
    assert res["schedule"] == "scaled_linear" and res["runs"]["flawed"]["flags"].startswith("--schedule scaled_linear")
    for n in ("fixed", "flawed"):
        assert T.load_checkpoint(tmp_path / "models" / f"main-{n}-scaled_linear" / T.CHECKPOINT)["config"]["schedule"] == "scaled_linear"
    assert (tmp_path / "out" / "brightness_main-scaled_linear.png").stat().st_size > 0
