"""The shared training runtime and what each trainer must survive: bad input (one line, exit 2,
nothing written), resume rules, a finished run, a foreign or truncated checkpoint, a full disk,
SIGKILL at random moments, and the EMA warm-up."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minidiff.training import runtime, train as T
from minidiff.training.ema import EMA, ema_decay
from minidiff.objectives import diffusion_loss

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_args(out, *extra):
    return ["--num-images", "64", "--preset", "tiny", "--batch-size", "8", "--lr", "1e-3", "--warmup", "2",
            "--max-steps", "4", "--minutes", "0", "--sample-every", "0", "--ckpt-every", "0",
            "--num-samples", "4", "--sample-steps", "2", "--log-every", "2", "--device", "cpu", "--judge-samples", "0",
            "--out", str(out), *extra]


def run_main(main, argv, capsys):
    """(exit status, stderr) of a command line's main(argv)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", "--batch-size must be at least 1"),
    ("--lr", "-1", "--lr must be a positive number"),
    ("--lr", "nan", "--lr must be a positive number"),
    ("--max-steps", "0", "--max-steps must be at least 1"),
    ("--minutes", "-5", "--minutes must be 0"),
    ("--ema-decay", "1", "--ema-decay must lie in"),
    ("--adam-beta2", "1", "--adam-beta2 must lie in (0, 1)"),
    ("--lr-cooldown", "0", "--lr-cooldown must lie in (0, 1]"),
    ("--ema-share", "2", "--ema-share must lie in [0, 1]"),
    ("--timesteps-mean", "nan", "--timesteps-mean must be a log-SNR"),
    ("--label-dropout", "1.5", "--label-dropout must lie in"),
    ("--warmup", "-1", "--warmup must be 0 or more"),
    ("--sample-steps", "2000", "--sample-steps must be at most 1000"),
    ("--resolution", "12", "--resolution 12 does not fit the tiny preset: attn_resolutions [8] never occur"),
    ("--resolution", "15", "--resolution 15 does not fit the tiny preset: image_size 15 is not divisible by 2"),
    ("--num-images", "0", "--num-images must be at least 1"),
    ("--threads", "0", "--threads must be at least 1"),
])
def test_pixel_trainer_refuses_out_of_range_flags_before_any_work(tmp_path, capsys, flag, value, message):
    code, err = run_main(T.main, tiny_args(tmp_path / "run", flag, value), capsys)
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err  # one line
    assert not (tmp_path / "run").exists()  # nothing written


def test_bad_input_is_one_line_without_traceback_in_a_real_process(tmp_path):
    """train_cifar.py --batch-size 0 used to end in a ZeroDivisionError traceback."""
    proc = subprocess.run([sys.executable, str(ROOT / "train_cifar.py"), *tiny_args(tmp_path / "r", "--batch-size", "0")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --batch-size must be at least 1, got 0"


def test_output_path_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    code, err = run_main(T.main, tiny_args(tmp_path / "file"), capsys)
    assert code == 2 and "is a file" in err


def test_batch_larger_than_the_data_is_refused(tmp_path, capsys):
    code, err = run_main(T.main, tiny_args(tmp_path / "r", "--batch-size", "128"), capsys)
    assert code == 2 and "exceeds the dataset size 64" in err


def test_resume_with_nothing_to_resume(tmp_path, capsys):
    code, err = run_main(T.main, tiny_args(tmp_path / "r", "--resume"), capsys)
    assert code == 2 and "nothing to resume" in err


def test_resume_with_changed_settings_names_them(tmp_path, capsys):
    T.main(tiny_args(tmp_path / "r", "--max-steps", "2"))
    code, err = run_main(T.main, tiny_args(tmp_path / "r", "--resume", "--lr", "5e-4", "--seed", "3"), capsys)
    assert code == 2 and "lr: 0.0005 now, 0.001 in the checkpoint" in err and "seed: 3 now, 0" in err


def test_resuming_a_finished_run_says_so_and_exits_0(tmp_path, capsys):
    """It used to end in UnboundLocalError: 'out_of_time'."""
    T.main(tiny_args(tmp_path / "r", "--max-steps", "3"))
    capsys.readouterr()
    T.main(tiny_args(tmp_path / "r", "--max-steps", "1", "--resume"))  # returns: exit status 0
    assert "is finished: it reached step 3" in capsys.readouterr().out
    assert T.load_checkpoint(tmp_path / "r" / runtime.CHECKPOINT)["step"] == 3


def test_checkpoint_from_another_kind_of_run_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    runtime.save_checkpoint(run / runtime.CHECKPOINT, {"kind": "latent", "step": 5})
    code, err = run_main(T.main, tiny_args(run, "--resume"), capsys)
    assert code == 2 and "written by latent training, not pixel training" in err


def test_truncated_checkpoint_is_refused_with_advice(tmp_path, capsys):
    T.main(tiny_args(tmp_path / "r", "--max-steps", "2"))
    path = tmp_path / "r" / runtime.CHECKPOINT
    path.write_bytes(path.read_bytes()[:1000])
    code, err = run_main(T.main, tiny_args(tmp_path / "r", "--resume"), capsys)
    assert code == 2 and "not a readable checkpoint" in err


def test_unreadable_images_in_a_folder_are_skipped_and_named(tmp_path, capsys):
    """A file a.png that is not an image used to end in PIL.UnidentifiedImageError."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(16):
        Image.new("RGB", (20, 20), (16 * i, 0, 0)).save(folder / f"{i:02d}.png")
    (folder / "a.png").write_text("this is not an image")
    good = folder / "00.png"
    (folder / "truncated.png").write_bytes(good.read_bytes()[:40])
    T.main(tiny_args(tmp_path / "r", "--dataset", "folder", "--data-root", str(folder), "--max-steps", "1"))
    out = capsys.readouterr().out
    assert "skipped 2 of 18 files" in out and "a.png" in out and "truncated.png" in out
    # a folder where nothing is an image is refused
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("nope")
    code, err = run_main(T.main, tiny_args(tmp_path / "r2", "--dataset", "folder", "--data-root", str(bad)), capsys)
    assert code == 2 and "could be read as an image" in err and "x.png" in err


# ----------------------------------------------------------------------------- checkpoints


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    runtime.save_checkpoint(path, {"kind": "pixel", "step": 1, "w": torch.ones(3)})

    def fill_up(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runtime.torch, "save", fill_up)
    with pytest.raises(runtime.TrainingError, match="disk full.*previous checkpoint is intact"):
        runtime.save_checkpoint(path, {"kind": "pixel", "step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = runtime.load_checkpoint(path, kind="pixel")
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert not path.with_name(path.name + ".tmp").exists()


def test_sigkill_at_random_moments_leaves_a_loadable_checkpoint_and_resume_goes_on(tmp_path):
    """Training that checkpoints every step is killed with SIGKILL three times at random moments
    (while it may be writing): every checkpoint on disk loads, and --resume always goes on."""
    out = tmp_path / "run"
    args = tiny_args(out, "--max-steps", "100000", "--ckpt-every", "1", "--threads", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    steps = []
    for attempt in range(3):
        cmd = [sys.executable, str(ROOT / "train_cifar.py"), *args, *(["--resume"] if attempt else [])]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        # wait until the first (or a new) checkpoint exists, then kill at a random moment
        deadline = time.time() + 120
        ckpt = out / runtime.CHECKPOINT
        while time.time() < deadline and (not ckpt.exists() or (steps and ckpt.stat().st_mtime <= steps[-1][1])):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = runtime.load_checkpoint(ckpt, kind="pixel")  # loads: never half written
        steps.append((state["step"], ckpt.stat().st_mtime))
    assert all(a[0] <= b[0] for a, b in zip(steps, steps[1:])) and steps[-1][0] >= 1
    final = steps[-1][0] + 2
    done = subprocess.run([sys.executable, str(ROOT / "train_cifar.py"),
                           *tiny_args(out, "--max-steps", str(final), "--ckpt-every", "1", "--resume")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert runtime.load_checkpoint(out / runtime.CHECKPOINT)["step"] == final
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged))  # no step logged twice after the kills


def test_the_resume_rule_allows_length_and_refuses_what_is_trained():
    saved = {"lr": 1e-3, "seed": 0, "minutes": 10}
    runtime.check_resume(saved, {"lr": 1e-3, "seed": 0, "minutes": 20}, ["lr", "seed"])  # longer: fine
    with pytest.raises(runtime.UsageError, match="seed: 1 now, 0 in the checkpoint"):
        runtime.check_resume(saved, {"lr": 1e-3, "seed": 1}, ["lr", "seed"])


def test_a_checkpoint_from_before_a_key_was_recorded_resumes_with_the_old_value(tmp_path, capsys):
    """Checkpoints written before --adam-beta2 existed were trained with Adam's 0.999: resuming one
    under the built-in recipe's 0.99 is refused and names 0.999; passing it resumes."""
    T.main(tiny_args(tmp_path / "r", "--max-steps", "2"))
    path = tmp_path / "r" / T.CHECKPOINT
    state = T.load_checkpoint(path)
    assert state["config"].pop("adam_beta2") == 0.99  # as an older minidiff wrote it
    for group in state["optimizer"]["param_groups"]:
        group["betas"] = (0.9, 0.999)
    runtime.save_checkpoint(path, state)
    code, err = run_main(T.main, tiny_args(tmp_path / "r", "--max-steps", "3", "--resume"), capsys)
    assert code == 2 and "adam_beta2: 0.99 now, 0.999 in the checkpoint" in err
    T.main(tiny_args(tmp_path / "r", "--max-steps", "3", "--resume", "--adam-beta2", "0.999"))
    resumed = T.load_checkpoint(path)
    assert resumed["step"] == 3 and resumed["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_a_checkpoint_with_a_setting_main_no_longer_has_resumes_with_a_note(tmp_path, capsys):
    """An option that a study retired (here one named as an older minidiff wrote it) is ignored on
    resume, with a note that shows its value and the commit that still has its code; the run then
    continues bit for bit as one without it."""
    T.main(tiny_args(tmp_path / "r", "--max-steps", "2"))
    T.main(tiny_args(tmp_path / "plain", "--max-steps", "3"))
    path = tmp_path / "r" / T.CHECKPOINT
    state = T.load_checkpoint(path)
    state["config"]["adam_beta2_late"] = None  # as a minidiff of commit 7c7df62 wrote it
    runtime.save_checkpoint(path, state)
    capsys.readouterr()
    T.main(tiny_args(tmp_path / "r", "--max-steps", "3", "--resume"))
    out = capsys.readouterr().out
    assert "note: ignoring settings" in out and "adam_beta2_late=None" in out and runtime.RETIRED_AT in out
    resumed, plain = T.load_checkpoint(path), T.load_checkpoint(tmp_path / "plain" / T.CHECKPOINT)
    assert resumed["step"] == 3 and all(torch.equal(resumed["model"][k], plain["model"][k]) for k in plain["model"])


# -------------------------------------------------------------------------------- schedules


def test_learning_rate_warmup_then_cosine_to_zero():
    assert runtime.learning_rate(0, lr=1.0, warmup=4) == 0.25
    assert runtime.learning_rate(10, lr=1.0, warmup=4) == 1.0
    assert runtime.learning_rate(10, lr=1.0, warmup=4, decay="cosine", progress=0.5) == pytest.approx(0.5)
    assert runtime.learning_rate(10, lr=1.0, warmup=4, decay="cosine", progress=1.0) == pytest.approx(0.0)


def test_learning_rate_wsd_holds_then_falls_linearly_over_the_last_fifth():
    assert runtime.WSD_COOLDOWN == 0.2
    assert runtime.learning_rate(0, lr=1.0, warmup=4, decay="wsd", progress=0.0) == 0.25  # the warm-up is the same
    assert runtime.learning_rate(10, lr=1.0, warmup=4, decay="wsd", progress=0.8) == pytest.approx(1.0)
    assert runtime.learning_rate(10, lr=1.0, warmup=4, decay="wsd", progress=0.9) == pytest.approx(0.5)
    assert runtime.learning_rate(10, lr=1.0, warmup=4, decay="wsd", progress=0.95) == pytest.approx(0.25)
    assert runtime.learning_rate(10, lr=1.0, warmup=4, decay="wsd", progress=1.0) == pytest.approx(0.0)
    # --lr-cooldown 0.5: the fall starts at half the run
    assert runtime.learning_rate(10, lr=1.0, warmup=4, decay="wsd", progress=0.5, cooldown=0.5) == pytest.approx(1.0)
    assert runtime.learning_rate(10, lr=1.0, warmup=4, decay="wsd", progress=0.75, cooldown=0.5) == pytest.approx(0.5)
    cfg = T.TrainConfig(lr=2.0, warmup=0, lr_decay="wsd", lr_cooldown=0.5)
    assert T.learning_rate(cfg, 10, progress=0.75) == pytest.approx(1.0)  # the trainer passes its cooldown on
    with pytest.raises(ValueError, match="unknown learning-rate decay 'linear'"):
        runtime.learning_rate(10, lr=1.0, warmup=4, decay="linear", progress=0.5)


def test_step_order_is_the_same_for_both_trainers_and_covers_each_epoch():
    order = runtime.StepOrder(20, 4, seed=7)
    epoch = torch.cat([order.indices(k) for k in range(5)])
    assert sorted(epoch.tolist()) == list(range(20))
    assert torch.equal(runtime.StepOrder(20, 4, seed=7).indices(3), order.indices(3))  # resume at step 3


# -------------------------------------------------------------------------------------- EMA


def test_ema_warmup_forgets_the_initial_network():
    """decay_n = min(d, (1 + n) / (10 + n)): after n updates the initial weights keep
    prod (1 + k) / (10 + k) = 9! n! / (n + 9)!, 1.1e-5 at n = 10 (0.999^10 = 0.990 without it)."""
    net = torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, 0.999)
    with torch.no_grad():
        net.weight.fill_(1.0)
    for _ in range(10):
        ema.update(net)
    kept = 1 - ema.model.weight.item()
    assert kept == pytest.approx(362880 * 3628800 / 121645100408832000, rel=1e-9)  # 9! 10! / 19!
    assert kept < 1.1e-5 and ema.updates == 10
    assert ema_decay(0.999, 10**6) == 0.999  # long runs: the decay asked for
    assert EMA(net, 0.999, warmup=False).decay == 0.999 and ema_decay(0.999, 0, warmup=False) == 0.999


def test_power_ema_is_the_weighted_mean_of_all_steps_so_far():
    """With share s the update-n decay (n / (n + 1)) ** (1 / s) leaves, after t updates, the weights
    of step k with weight (k^g - (k-1)^g) / t^g, g = 1 / s (Karras et al. 2024, power EMA):
    the identity holds exactly for any sequence of weights."""
    net = torch.nn.Linear(3, 2).double()
    ema = EMA(net, 0.0, share=0.25)  # g = 4
    steps = [torch.randn(8, dtype=torch.float64) for _ in range(7)]
    for theta in steps:
        torch.nn.utils.vector_to_parameters(theta, net.parameters())
        ema.update(net)
    t, g = len(steps), 4
    expected = sum((k ** g - (k - 1) ** g) * theta for k, theta in enumerate(steps, start=1)) / t ** g
    torch.testing.assert_close(torch.nn.utils.parameters_to_vector(ema.model.parameters()), expected)
    # like a fixed decay over the last s * t steps: a thirtieth of 6,000 steps is 1 - 1/200
    assert ema_decay(0.0, 5999, share=1 / 30) == pytest.approx(0.995, abs=3e-5)
    assert ema_decay(0.0, 1999, share=1 / 30) == pytest.approx(1 - 1 / 66.7, abs=3e-4)
    with pytest.raises(ValueError, match="EMA share must lie in"):
        EMA(net, 0.0, share=1.5)


def test_ema_of_a_short_eps_run_denoises_as_well_as_its_live_weights(tmp_path):
    """The folder recipe's EMA 0.999 without warm-up kept 11% of the initial network after 2,204
    steps, and an eps sampler amplifies that network's zero output into noise. With the warm-up,
    a 40-step eps run's EMA weights do as well as its live weights on held-out denoising."""
    cfg = T.TrainConfig(dataset="builtin", num_images=128, preset="tiny", class_cond=False, batch_size=16,
                        lr=2e-3, warmup=5, ema_decay=0.999, max_steps=40, minutes=0, sample_every=0,
                        ckpt_every=0, num_samples=4, sample_steps=2, log_every=10, device="cpu", judge_samples=0,
                        out=str(tmp_path), schedule="scaled_linear", zero_snr=False, prediction="eps")
    result = T.train(cfg)
    schedule = T.make_schedule(cfg.resolved())
    from minidiff.training import data

    x0 = data.to_float(data.builtin_shapes(64, seed=99, resolution=16).images)

    def held_out(model):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return diffusion_loss(model.eval(), x0, schedule, "eps", generator=g).item()

    torch.manual_seed(0)
    initial = T.build_model(cfg.resolved(), num_classes=10)
    live, ema, start = held_out(result["model"]), held_out(result["ema"].model), held_out(initial)
    assert live < 0.8 * start
    assert ema < 1.1 * live


# ----------------------------------------------------------------------------- sampling CLIs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    torch.set_num_threads(1)
    T.main(tiny_args(out, "--max-steps", "2", "--class-cond"))
    return out / runtime.CHECKPOINT


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be from 1 to 1000"),
    (["--num", "0"], "--num and --batch-size must be at least 1"),
    (["--guidance-rescale", "1.5"], "--guidance-rescale must lie in [0, 1]"),
    (["--sampler", "dpmpp_2m", "--eta", "0.5"], "--eta is DDIM's noise"),
    (["--device", "cuda:7"], "--device cuda:7 asks for CUDA") if not torch.cuda.is_available() else
    (["--steps", "-1"], "--steps must be from 1"),
    (["--class", "12"], "classes [12] out of range"),
])
def test_sample_cli_refuses_bad_flags_in_one_line(tiny_run, tmp_path, capsys, flags, message):
    from minidiff.training import sample

    code, err = run_main(sample.main, [str(tiny_run), "--png", str(tmp_path / "g.png"), *flags], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "g.png").exists()


def test_sample_cli_refuses_a_missing_or_latent_checkpoint(tmp_path, capsys):
    from minidiff.training import sample

    code, err = run_main(sample.main, [str(tmp_path / "none.pt")], capsys)
    assert code == 2 and "no checkpoint at" in err
    runtime.save_checkpoint(tmp_path / "latent.pt", {"kind": "latent", "step": 1})
    code, err = run_main(sample.main, [str(tmp_path / "latent.pt")], capsys)
    assert code == 2 and "written by latent training, not pixel training" in err
