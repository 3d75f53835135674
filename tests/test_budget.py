"""The folder recipe's network by budget (minidiff/training/budget.py): the rule, its measurement,
and that a resumed run keeps the network its checkpoint was trained with."""

import math

import pytest
import torch

from minidiff.training import budget
from minidiff.training import train as T
from minidiff.training.recipes import BY_BUDGET, RECIPES


def never(preset):
    raise AssertionError(f"measured {preset} where there was no choice to make")


def test_the_patch_stem_needs_a_side_that_halves_three_times():
    assert budget.fits("small-patch2", 32) and budget.fits("medium-patch2", 64)
    assert not budget.fits("small-patch2", 28) and budget.fits("small", 28)
    assert budget.choose_network(28, 60, never)[0] == "small"  # Fashion-MNIST: no patch stem at any budget


def test_without_minutes_the_ten_minute_network_trains():
    assert budget.choose_network(32, None, never)[0] == budget.LADDER[0] == "small-patch2"
    assert budget.choose_network(32, 0, never)[0] == "small-patch2"


def test_the_larger_network_once_the_budget_buys_it_min_steps():
    seconds = 0.371  # medium-patch2 at batch 64 on the 2-core CPU it was chosen on
    preset, why = budget.choose_network(32, 60, lambda p: seconds)
    assert preset == "medium-patch2" and f"{60 * 60 / seconds:,.0f} steps" in why
    preset, why = budget.choose_network(32, 10, lambda p: seconds)
    assert preset == "small-patch2" and "fewer than the 5,000" in why
    exact = budget.MIN_STEPS * seconds / 60  # the minutes that buy exactly MIN_STEPS steps: enough
    assert budget.choose_network(32, exact * (1 + 1e-9), lambda p: seconds)[0] == "medium-patch2"
    assert budget.choose_network(32, exact * (1 - 1e-6), lambda p: seconds)[0] == "small-patch2"
    # a GPU's step: even ten minutes buy the larger network
    assert budget.choose_network(32, 10, lambda p: 0.02)[0] == "medium-patch2"


def test_a_measured_step_is_a_real_training_step():
    seconds = budget.seconds_per_step("tiny", size=16, batch=2, device="cpu", warmup=1, steps=1)
    assert 0 < seconds and math.isfinite(seconds)


def colour_folder(root, n=8, size=32):
    from PIL import Image
    root.mkdir(parents=True)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(images.numpy()):
        Image.fromarray(image).save(root / f"{i:03d}.png")
    return root


def test_settle_measures_only_for_the_folder_recipe_with_minutes(tmp_path, monkeypatch, capsys):
    assert RECIPES["folder"]["preset"] == BY_BUDGET
    folder = colour_folder(tmp_path / "c")
    monkeypatch.setattr(budget, "seconds_per_step", lambda preset, **kw: never(preset))
    for argv in (["--dataset", "builtin", "--minutes", "60"],  # an explicit recipe network
                 ["--dataset", "folder", "--data-root", str(folder), "--minutes", "60", "--preset", "small"]):
        cfg = T.parse_args(argv)
        assert budget.settle(cfg) is cfg
    assert budget.settle(T.parse_args(["--dataset", "folder", "--data-root", str(folder)])).preset == "small-patch2"
    measured = []
    monkeypatch.setattr(budget, "seconds_per_step", lambda preset, **kw: measured.append((preset, kw)) or 0.3)
    cfg = budget.settle(T.parse_args(["--dataset", "folder", "--data-root", str(folder), "--minutes", "30",
                                      "--device", "cpu"]))
    assert cfg.preset == "medium-patch2" and measured == [("medium-patch2", dict(size=32, batch=64, device="cpu"))]
    assert "network by budget: medium-patch2" in capsys.readouterr().out


def test_a_resumed_run_keeps_its_checkpoints_network(tmp_path, monkeypatch):
    folder = colour_folder(tmp_path / "c")
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"config": {"preset": "medium-patch2"}}, out / "checkpoint.pt")
    monkeypatch.setattr(budget, "seconds_per_step", lambda preset, **kw: 100.0)  # would choose small-patch2
    argv = ["--dataset", "folder", "--data-root", str(folder), "--minutes", "10", "--out", str(out)]
    assert budget.settle(T.parse_args(argv + ["--resume"])).preset == "medium-patch2"
    assert budget.settle(T.parse_args(argv)).preset == "small-patch2"


def test_a_colour_folder_run_records_the_chosen_network(tmp_path):
    folder = colour_folder(tmp_path / "c")
    cfg = T.parse_args(["--dataset", "folder", "--data-root", str(folder), "--max-steps", "1", "--batch-size", "2",
                        "--judge-samples", "0", "--sample-every", "0", "--ckpt-every", "0", "--device", "cpu",
                        "--out", str(tmp_path / "run")])
    T.train(cfg)
    saved = T.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["config"]["preset"] == "small-patch2" and saved["model_config"]["patch_size"] == 2
    with pytest.raises(SystemExit):
        T.parse_args(["--preset", BY_BUDGET])  # not a network a user names
