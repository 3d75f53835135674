"""benchmarks/ema_lengths.py: several EMA decays carried by one run leave the training untouched,
and each saved average is the EMA of that decay (decay 0 is the live network itself)."""

import pytest
import torch

from minidiff.training import train as T
from minidiff.training.sample import load_run
from scripts import load_script

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def ema_lengths():
    return load_script("benchmarks/ema_lengths.py")


def tiny(out, **overrides) -> T.TrainConfig:
    cfg = dict(dataset="builtin", num_images=64, preset="tiny", dropout=0.1, class_cond=True, batch_size=8,
               lr=1e-3, warmup=2, ema_decay=0.9, max_steps=5, minutes=0, sample_every=0, ckpt_every=0,
               num_samples=4, sample_steps=2, log_every=5, device="cpu", judge_samples=0, out=str(out))
    return T.TrainConfig(**{**cfg, **overrides})


def test_companion_averages_leave_training_alone_and_are_the_emas_of_their_decays(tmp_path):
    m = ema_lengths()
    paths = m.train_with_decays(tiny(tmp_path / "with"), [0.9, 0.0, 0.5])
    T.train(tiny(tmp_path / "alone", ema_decay=0.5))  # the same run with 0.5 as its own EMA
    plain = torch.load(tmp_path / "alone" / T.CHECKPOINT, weights_only=False)
    main = torch.load(paths[0.9], weights_only=False)
    for name, weight in plain["model"].items():  # the EMAs never fed back into training
        assert torch.equal(weight, main["model"][name]), name
    half = torch.load(paths[0.5], weights_only=False)
    for name, weight in plain["ema"].items():  # the companion is what the run's own EMA would be
        assert torch.equal(weight, half["ema"][name]), name
    assert half["config"]["ema_decay"] == 0.5 and half["ema_updates"] == plain["ema_updates"] == 5
    live = torch.load(paths[0.0], weights_only=False)
    for name, weight in main["model"].items():  # decay 0 averages nothing: the live weights
        assert torch.equal(weight, live["ema"][name]), name
    # ... and the 0.9 average is not (so the check above could fail)
    assert any(not torch.equal(weight, main["ema"][name]) for name, weight in main["model"].items())
    model, config, settings = load_run(paths[0.5])  # a companion is an ordinary checkpoint
    assert config["ema_decay"] == 0.5 and settings["sampler"] == config["sampler"]


def test_a_power_companion_is_the_runs_own_power_ema(tmp_path):
    m = ema_lengths()
    paths = m.train_with_decays(tiny(tmp_path / "with"), [0.9], shares=[0.5])
    T.train(tiny(tmp_path / "alone", ema_decay=None, ema_share=0.5))  # --ema-share 0.5 as the run's own
    own = torch.load(tmp_path / "alone" / T.CHECKPOINT, weights_only=False)
    power = torch.load(paths["share0.5"], weights_only=False)
    assert paths["share0.5"].name == "checkpoint-ema-share0.5.pt" and power["config"]["ema_share"] == 0.5
    for name, weight in own["ema"].items():
        assert torch.equal(weight, power["ema"][name]), name
    fixed = torch.load(paths[0.9], weights_only=False)
    assert any(not torch.equal(w, fixed["ema"][n]) for n, w in power["ema"].items())


@pytest.mark.parametrize("argv, message", [
    (["--decays", "0.9", "1.0"], "must lie in"),
    (["--decays", "0.9", "0.9"], "repeated"),
    (["--steps", "0"], "at least 1"),
    (["--shares", "0"], "--shares must lie in (0, 1]"),
    (["--set", "lr=-1"], "lr"),
])
def test_bad_flags_are_one_line_before_training(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        ema_lengths().main(argv + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
