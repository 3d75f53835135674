"""benchmarks/gpu_check.py --smoke: the GPU check's code path, run on a CPU at tiny sizes.

One run of every section (module fixture, one thread) feeds most tests; the figures themselves
are CPU noise, so the tests check what must hold whatever the machine: every section ran, every
figure is finite and positive, the derived figures follow from the measured ones, and the
configurations are the ones the check claims to measure.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

HAS_LATENT = all(importlib.util.find_spec(m) is not None for m in ("diffusers", "transformers"))
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
KEY_FIGURE = {"train_throughput": "images_per_s", "sampling": "images_per_s", "colour_run": "images_per_s",
              "training_run": "sustained_images_per_s", "latent": "train_step_s"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("gpu_check")
    try:
        results = gpu_check.main(["--smoke", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return out, results


def numbers(obj, path=""):
    """Every int and float inside a JSON value (booleans are not figures), with where it is."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def test_every_section_ran_and_every_figure_is_finite_and_positive(smoke):
    out, results = smoke
    assert json.loads((out / "gpu_check.json").read_text()) == results
    meta = results["meta"]
    assert meta["torch"] == torch.__version__ and meta["smoke"] and meta["gpu"] and meta["date"]
    assert set(results["sections"]) == set(gpu_check.SECTION_TITLES)
    for key, sec in results["sections"].items():
        if key == "latent" and not HAS_LATENT:
            assert sec["status"] == "skipped" and "not installed" in sec["reason"]
            continue
        assert sec["status"] == "ok", (key, sec.get("error"), sec.get("traceback"))
        assert sec["rows"], key
        for row in sec["rows"]:
            assert "error" not in row, (key, row)
            assert row[KEY_FIGURE[key]] > 0
        for where, value in numbers(sec["rows"]):
            assert math.isfinite(value) and value > 0, (key, where, value)


def test_markdown_has_every_section_each_with_gpu_torch_and_date(smoke):
    out, results = smoke
    md = (out / "gpu_check.md").read_text()
    stamp = f"{results['meta']['gpu']} | torch {torch.__version__} | {results['meta']['date']}"
    for title in gpu_check.SECTION_TITLES.values():
        section = md.split(f"## {title}\n", 1)[1]
        assert section.lstrip().startswith(stamp)
        assert section.split("## ", 1)[0].count("|---") >= 1 or "skipped" in section.split("## ", 1)[0]


def test_diffusers_comparison_is_the_same_network_and_the_ratio_is_the_quotient(smoke):
    _, results = smoke
    sec = results["sections"]["train_throughput"]
    settings = ["fp32", "bf16", "bf16+channels_last", "bf16+compile"]
    assert [r["setting"] for r in sec["rows"] if r["model"] == "minidiff"] == settings
    if not HAS_DIFFUSERS:
        assert "not installed" in sec["note"] and not sec["minidiff_over_diffusers"]
        return
    for setting in settings:
        ours, theirs = (next(r for r in sec["rows"] if r["setting"] == setting and r["model"] == m)
                        for m in ("minidiff", "diffusers UNet2DModel"))
        assert ours["params"] == theirs["params"] == 11_767  # the tiny preset, built twice
        assert sec["minidiff_over_diffusers"][setting] == pytest.approx(ours["images_per_s"] / theirs["images_per_s"])


def test_diffusers_unet2dmodel_matches_every_preset_parameter_for_parameter():
    """DDPM's 35,746,307 (docs/unet.md) and every other preset (small-patch2 around its stem), built by diffusers."""
    pytest.importorskip("diffusers")
    from minidiff.unet import PRESETS, UNet

    for name in PRESETS:
        assert gpu_check.num_params(gpu_check.diffusers_unet(PRESETS[name])) == UNet.from_preset(name).num_parameters()
    assert gpu_check.num_params(gpu_check.diffusers_unet(PRESETS["ddpm-cifar10"])) == 35_746_307


def test_training_run_read_back_from_train_cifar(smoke):
    out, results = smoke
    sec = results["sections"]["training_run"]
    row = sec["rows"][0]
    rows = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert row["steps"] == rows[-1]["step"] and row["images"] == rows[-1]["step"] * sec["batch"]
    assert row["first_loss"] == rows[0]["loss"] and row["last_loss"] == rows[-1]["loss"]
    # DDPM's 800k steps of 128 images at the sustained rate
    assert row["ddpm_800k_hours"] * 3600 * row["sustained_images_per_s"] == pytest.approx(800_000 * 128)
    assert sec["loss_curve"][0] == [rows[0]["step"], rows[0]["loss"]]
    assert (out / "train_loss.png").stat().st_size > 0
    for flag in ("--preset tiny", "--batch-size 4", "--lr 2e-4", "--warmup 5000", "--ema-decay 0.9999"):
        assert flag in sec["command"]


def test_sustained_rate_is_taken_over_the_second_half():
    rows = [{"step": s, "elapsed_s": e} for s, e in [(10, 2.0), (20, 6.0), (30, 7.0), (40, 8.0), (60, 10.0)]]
    rate, first, last = gpu_check.sustained_rate(rows, batch=2)
    assert (first, last) == (20, 60) and rate == pytest.approx((60 - 20) * 2 / (10.0 - 6.0))


def test_sampling_batch_search_doubled_to_the_cap(smoke):
    _, results = smoke
    sec = results["sections"]["sampling"]
    sizes = gpu_check.SMOKE_SIZES
    assert [s["batch"] for s in sec["search"]] == [2, 4, 8]
    assert sec["rows"][0]["batch"] == sizes.sample_max_batch and sec["rows"][0]["steps"] == sizes.sample_steps
    assert sec["rows"][0]["finite"] and "cap" in sec["stopped_because"]


def test_latent_rows_cover_each_batch(smoke):
    if not HAS_LATENT:
        pytest.skip("diffusers or transformers missing: the section is skipped (checked above)")
    _, results = smoke
    sec = results["sections"]["latent"]
    assert [r["batch"] for r in sec["rows"]] == list(gpu_check.SMOKE_SIZES.latent_batches)
    for r in sec["rows"]:
        assert r["images_per_s_cached"] == pytest.approx(r["batch"] / r["train_step_s"])
        assert r["images_per_s"] < r["images_per_s_cached"]  # encoding live costs time


def test_sd21_base_configs_have_the_published_parameter_counts():
    """UNet 865,910,724, VAE 83,653,863, text encoder 340,387,840 (docs/latent.md), built on the
    meta device (no memory, no weights)."""
    if not HAS_LATENT:
        pytest.skip("needs diffusers and transformers")
    parts = gpu_check.build_sd_parts(gpu_check.SD21_BASE, torch.device("meta"))
    assert dict(zip(("unet", "vae", "text_encoder"), map(gpu_check.num_params, parts))) == gpu_check.SD21_BASE_PARAMS


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch, one_thread):
    def broken(*args, **kwargs):
        raise RuntimeError("compile unavailable")

    monkeypatch.setattr(gpu_check, "train_throughput", broken)
    results = gpu_check.main(["--smoke", "--out", str(tmp_path), "--sections", "train_throughput", "sampling"])
    assert results["sections"]["train_throughput"]["status"] == "error"
    assert results["sections"]["train_throughput"]["error"] == "RuntimeError: compile unavailable"
    assert results["sections"]["sampling"]["status"] == "ok"
    assert "RuntimeError: compile unavailable" in (tmp_path / "gpu_check.md").read_text()


def test_without_diffusers_the_latent_section_is_skipped_and_says_so(tmp_path, monkeypatch, one_thread):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    results = gpu_check.main(["--smoke", "--out", str(tmp_path), "--sections", "latent"])
    sec = results["sections"]["latent"]
    assert sec["status"] == "skipped" and "diffusers" in sec["reason"]
    assert "skipped" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--smoke", "--train-minutes", "0"], "--train-minutes must be positive"),
    (["--smoke", "--out-is-a-file"], "is a file"),
] + ([] if torch.cuda.is_available() else [([], "no CUDA device")]))
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("")
    argv = [a for a in argv if a != "--out-is-a-file"]
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(argv + ["--out", str(target if message == "is a file" else tmp_path / "o")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_the_colour_run_trains_the_folder_recipe_and_brings_its_samples_back(smoke):
    """Section 5 runs train_cifar.py on a colour folder with the CLI defaults (the folder recipe's
    network) and minidiff sample's defaults, and leaves the samples to score at home."""
    from minidiff.training.recipes import FOLDER

    out, results = smoke
    sec = results["sections"]["colour_run"]
    assert sec["status"] == "ok", sec.get("error")
    # the network the budget rule chose: 0.05 CPU-minutes buy no medium-patch2 steps to speak of
    assert FOLDER["preset"] == "by budget" and sec["rows"][0]["preset"] == "small-patch2"
    assert sec["rows"][0]["batch"] == FOLDER["batch_size"]
    assert "--dataset folder" in sec["command"] and "--preset" not in sec["command"]
    images = __import__("numpy").load(out / "colour_samples.npz")["images"]
    assert images.shape == (4, 32, 32, 3) and images.dtype.name == "uint8"
