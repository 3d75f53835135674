"""Training: DDPM's recipe as defaults, the loss going down, exact resume, NaN stop, Ctrl-C,
wall-clock budget, checkpoints without pickle, and a two-process DDP step on CPU (gloo)."""

import json
import math
import signal

import pytest
import torch

from minidiff.training import data, train as T
from minidiff.training.ema import EMA
from minidiff.schedules import Schedule
from minidiff.unet import PRESETS, UNet


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(out, **overrides) -> T.TrainConfig:
    """A run of the tiny preset (16x16) on 64 built-in images, with dropout so the global RNG matters."""
    cfg = dict(dataset="builtin", num_images=64, preset="tiny", dropout=0.1, class_cond=True,
               batch_size=8, lr=1e-3, warmup=2, ema_decay=0.9, max_steps=4, minutes=0,
               sample_every=0, ckpt_every=0, num_samples=4, sample_steps=2, log_every=2,
               device="cpu", judge_samples=0, out=str(out))
    return T.TrainConfig(**{**cfg, **overrides})


def test_cifar10_defaults_are_ddpm_recipe():
    """Ho et al. 2020, Sec. 4 / App. B: Adam 2e-4, warm-up 5000, batch 128, clip 1, EMA 0.9999,
    dropout 0.1 in the 35.7M network, random flips (data.Batches flips by default)."""
    cfg = T.parse_args(["--dataset", "cifar10"]).resolved()
    assert (cfg.lr, cfg.warmup, cfg.batch_size, cfg.grad_clip, cfg.ema_decay) == (2e-4, 5000, 128, 1.0, 0.9999)
    assert cfg.preset == "ddpm-cifar10" and PRESETS[cfg.preset]["dropout"] == 0.1
    assert cfg.class_cond is False and cfg.minutes is None and cfg.lr_decay == "constant"
    assert cfg.adam_beta2 == 0.999  # PyTorch's Adam default, which DDPM used
    # Lin et al.'s fixes are the default; each is one flag away.
    assert (cfg.zero_snr, cfg.prediction, cfg.spacing) == (True, "v", "trailing")
    flawed = T.parse_args(["--dataset", "cifar10", "--no-zero-snr", "--prediction", "eps"]).resolved()
    assert (flawed.zero_snr, flawed.prediction) == (False, "eps")
    assert flawed.out == "runs/cifar10-ddpm-cifar10-linear-snr-eps"


def test_main_job_defaults():
    cfg = T.parse_args([]).resolved()
    assert (cfg.dataset, cfg.preset, cfg.class_cond, cfg.minutes) == ("builtin", "small-patch2", True, 10.0)
    assert (cfg.weighting, cfg.timesteps, cfg.timesteps_low_snr, cfg.timesteps_uniform) == \
        ("level_mean", "logsnr_normal", 0.08, 0.05)
    assert (cfg.lr_decay, cfg.sampler, cfg.guidance, cfg.guidance_rescale, cfg.guidance_from) == ("wsd", "dpmpp_2m", 2.5, 0.0, -3.0)
    assert T.parse_args(["--guidance-from=-inf"]).resolved().guidance_from == -math.inf
    assert T.parse_args(["--lr-decay", "constant"]).resolved().lr_decay == "constant"
    assert cfg.out == "runs/builtin-small-patch2-linear-zsnr-v"


def test_learning_rate_warmup_is_linear():
    cfg = T.TrainConfig(lr=2e-4, warmup=5000, lr_decay="constant")
    assert T.learning_rate(cfg, 0) == pytest.approx(2e-4 / 5000)
    assert T.learning_rate(cfg, 2499) == pytest.approx(1e-4)
    assert T.learning_rate(cfg, 4999) == T.learning_rate(cfg, 10**6) == 2e-4


def test_training_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    cfg = tiny(tmp_path, dropout=0.0, lr=1e-2, timesteps="uniform", weighting="none").resolved()
    model = T.build_model(cfg, num_classes=10)
    ema, optimizer = EMA(model, cfg.ema_decay), torch.optim.Adam(model.parameters(), lr=cfg.lr)
    initial = [p.clone() for p in model.parameters()]
    schedule = Schedule.make("linear", zero_snr=True)
    x, y = data.Batches(data.builtin_shapes(8, resolution=16), 8, flip=False).batch(0)
    gen = torch.Generator()
    losses = []
    for step in range(25):
        gen.manual_seed(0)  # the same timesteps, noise and dropped labels every step
        losses.append(T.training_step(model, model, optimizer, ema, schedule, cfg, x, y, step, gen, 10).item())
    assert losses[-1] < 0.5 * losses[0], losses[::5]
    # The EMA lies between the start and the live weights: moved, but not all the way.
    for p0, p, e in zip(initial, model.parameters(), ema.model.parameters()):
        if not torch.equal(p0, p):
            assert not torch.equal(e, p0) and not torch.equal(e, p)


@pytest.mark.parametrize("weighting,stf", [("none", 0), ("level_mean", 0), ("level_mean", 16)])
def test_resume_is_bit_for_bit(tmp_path, weighting, stf):
    """N steps straight == N/2 steps, stop, resume for N/2 (same seed): every weight, EMA weight
    and Adam moment equal exactly (and the per-level loss means of --weighting level_mean).
    Dropout, label dropout and flips are all on; with --stf-reference the reference sets too."""
    straight = T.train(tiny(tmp_path / "a", max_steps=6, weighting=weighting, stf_reference=stf))
    T.train(tiny(tmp_path / "b", max_steps=3, weighting=weighting, stf_reference=stf))
    resumed = T.train(tiny(tmp_path / "b", max_steps=6, resume=True, weighting=weighting, stf_reference=stf))
    assert resumed["step"] == straight["step"] == 6
    for name in ("model", "ema"):
        a, b = straight[name].state_dict(), resumed[name].state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k} differs after resume"
    a = T.load_checkpoint(tmp_path / "a" / T.CHECKPOINT)["optimizer"]["state"]
    b = T.load_checkpoint(tmp_path / "b" / T.CHECKPOINT)["optimizer"]["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    levels = [T.load_checkpoint(tmp_path / r / T.CHECKPOINT)["loss_per_level"] for r in "ab"]
    assert levels[0] is None if weighting == "none" else torch.equal(levels[0]["mean_loss"], levels[1]["mean_loss"])
    # The metrics log continues: one line per log_every steps, no gap and no repeat.
    steps = [int(line.split('"step": ')[1].split(",")[0])
             for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 3, 4, 6]


def test_adam_beta2_reaches_the_optimizer(tmp_path):
    """After Adam's first step the second moment is (1 - beta2) g^2. Two runs that differ only in
    --adam-beta2 take the same first gradient, so their moments differ by (1 - 0.9) / (1 - 0.99) = 10."""
    moments = {}
    for beta2 in (0.9, 0.99):
        T.train(tiny(tmp_path / str(beta2), max_steps=1, adam_beta2=beta2))
        optimizer = T.load_checkpoint(tmp_path / str(beta2) / T.CHECKPOINT)["optimizer"]
        assert optimizer["param_groups"][0]["betas"] == (0.9, beta2)
        moments[beta2] = torch.cat([s["exp_avg_sq"].flatten() for s in optimizer["state"].values()])
    assert T.RECIPES["builtin"]["adam_beta2"] == 0.99 and tiny(tmp_path).resolved().adam_beta2 == 0.99
    moved = moments[0.99] > 1e-20
    assert moved.sum() >= 10  # the zero-initialised output layers keep most gradients at 0 on step 1
    torch.testing.assert_close(moments[0.9][moved] / moments[0.99][moved],
                               torch.full((int(moved.sum()),), 10.0), rtol=1e-4, atol=0)


def test_the_builtin_ema_is_a_share_of_the_run_unless_a_decay_is_given(tmp_path):
    cfg = T.TrainConfig(out=str(tmp_path)).resolved()
    assert cfg.ema_share == T.EMA_SHARE == 1 / 30
    assert T.TrainConfig(ema_decay=0.99, out=str(tmp_path)).resolved().ema_share == 0.0  # --ema-decay: fixed
    assert T.TrainConfig(dataset="cifar10", out=str(tmp_path)).resolved().ema_share == 0.0  # DDPM's 0.9999
    with pytest.raises(T.UsageError, match="both set the EMA"):
        T.TrainConfig(ema_decay=0.99, ema_share=0.1, out=str(tmp_path)).resolved()


def test_timesteps_mean_moves_the_median_training_log_snr(tmp_path):
    """--timesteps-mean m centres the log-SNR normal at m: with few uniform draws the median
    log-SNR of the training timesteps lies within a step's width of m."""
    medians = []
    for mean in (0.0, 2.4):
        cfg = tiny(tmp_path, timesteps="logsnr_normal", timesteps_uniform=0.01, timesteps_low_snr=0.0,
                   timesteps_mean=mean).resolved()
        schedule = T.make_schedule(cfg)
        p = T.training_timesteps(cfg, schedule)
        t_median = int(torch.searchsorted(p.cumsum(0), 0.5))
        medians.append(schedule.log_snr[t_median].item())
        assert abs(medians[-1] - mean) < 0.1, (mean, medians[-1])
    assert T.training_timesteps(tiny(tmp_path, timesteps="uniform").resolved(), schedule) is None


def test_timesteps_low_snr_centres_its_share_at_log_snr_minus_6(tmp_path):
    """--timesteps-low-snr draws its share at log-SNR ~ N(-6, 2) (loss.LOW_SNR): with nearly every
    draw in that share, the median training log-SNR lies within a step's width of -6, and the share
    below log-SNR -9 is 0.99 P(z < -1.5) = 0.066, plus the uniform draws' bit."""
    cfg = tiny(tmp_path, timesteps="logsnr_normal", timesteps_uniform=0.01, timesteps_low_snr=0.99).resolved()
    schedule = T.make_schedule(cfg)
    p = T.training_timesteps(cfg, schedule)
    t_median = int(torch.searchsorted(p.cumsum(0), 0.5))
    assert abs(schedule.log_snr[t_median].item() + 6.0) < 0.1, schedule.log_snr[t_median]
    below = float(p[schedule.log_snr < -9].sum())
    assert abs(below - 0.99 * 0.0668) < 0.005, below


def test_checkpoint_loads_without_pickle_and_rebuilds_the_model(tmp_path):
    result = T.train(tiny(tmp_path, max_steps=2))
    ckpt = torch.load(tmp_path / T.CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["config"]["preset"] == "tiny"
    assert ckpt["kind"] == "pixel" and ckpt["ema_updates"] == 2
    rng = ckpt["rng_ranks"][0]
    assert set(rng) >= {"torch", "noise"} and rng["torch"].dtype == torch.uint8
    model = UNet(**ckpt["model_config"])
    model.load_state_dict(ckpt["ema"])
    for k, v in result["ema"].state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    assert not (tmp_path / (T.CHECKPOINT + ".tmp")).exists()  # written atomically, tmp renamed
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert (tmp_path / "samples" / "step_0000002.png").exists()
    # Starting again in the same folder without --resume is refused rather than overwriting.
    with pytest.raises(T.UsageError, match="--resume"):
        T.train(tiny(tmp_path, max_steps=2))


def test_nan_loss_stops_and_names_the_step(tmp_path, monkeypatch):
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = T_diffusion_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    T_diffusion_loss = T.recipe_loss
    monkeypatch.setattr(T, "recipe_loss", poisoned)
    with pytest.raises(T.TrainingError, match="at step 3"):
        T.train(tiny(tmp_path, max_steps=8))


def test_ctrl_c_finishes_the_step_and_saves(tmp_path, monkeypatch):
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # as if Ctrl-C arrived during step 2
        return real(*args, **kwargs)

    real = T.recipe_loss
    monkeypatch.setattr(T, "recipe_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        T.train(tiny(tmp_path, max_steps=8))
    assert T.load_checkpoint(tmp_path / T.CHECKPOINT)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_wall_clock_budget_stops_cleanly(tmp_path):
    result = T.train(tiny(tmp_path, max_steps=1000, minutes=1e-9))
    assert result["step"] == 1
    assert T.load_checkpoint(tmp_path / T.CHECKPOINT)["step"] == 1


def test_eps_with_zero_snr_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="eps"):
        T.train(tiny(tmp_path, prediction="eps", zero_snr=True))


# ------------------------------------------------------------------------- DDP on two CPUs


def _ddp_worker(rank: int, out: str, port: int) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = T.train(tiny(out, max_steps=2, batch_size=8))
    torch.save(result["model"].state_dict(), f"{out}/rank{rank}.pt")


def test_two_process_ddp_step_keeps_ranks_identical(tmp_path):
    """torchrun-style launch of two CPU processes (gloo): after 2 steps on different halves of the
    batch, both ranks hold exactly the same weights, and those weights moved from the start."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(str(tmp_path), port), nprocs=2, start_method="spawn")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    torch.manual_seed(0)
    start = T.build_model(tiny(tmp_path).resolved(), num_classes=10).state_dict()
    assert any(not torch.equal(start[k], r0[k]) for k in r0)
    # Only rank 0 writes: one checkpoint, at step 2, holding each rank's own random streams.
    ckpt = T.load_checkpoint(tmp_path / T.CHECKPOINT)
    assert ckpt["step"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert not torch.equal(ckpt["rng_ranks"][0]["noise"], ckpt["rng_ranks"][1]["noise"])


def test_bf16_and_channels_last_train(tmp_path):
    result = T.train(tiny(tmp_path, max_steps=2, bf16=True, channels_last=True))
    assert result["step"] == 2 and 0 < result["loss"] < 10


@pytest.mark.slow
def test_compiled_model_trains_like_eager(tmp_path):
    eager = T.train(tiny(tmp_path / "eager", max_steps=3, dropout=0.0))
    compiled = T.train(tiny(tmp_path / "compiled", max_steps=3, dropout=0.0, compile=True))
    for k, v in eager["model"].state_dict().items():
        torch.testing.assert_close(compiled["model"].state_dict()[k], v, rtol=1e-4, atol=1e-5)


def test_offset_noise_flag_reaches_the_loss(tmp_path):
    """--offset-noise changes the noise the loss draws (same seed, same batch, another loss)."""
    # (plain v loss: under level_mean a level's first loss is divided by itself, so it reads 1 either way)
    plain = T.train(tiny(tmp_path / "plain", max_steps=1, weighting="none"))
    offset = T.train(tiny(tmp_path / "offset", max_steps=1, offset_noise=1.0, weighting="none"))
    assert plain["loss"] != offset["loss"]
    assert T.parse_args(["--offset-noise", "0.1"]).offset_noise == 0.1


def test_threads_flag_sets_torch_threads(tmp_path):
    torch.set_num_threads(2)
    T.train(tiny(tmp_path, max_steps=1, threads=1))
    assert torch.get_num_threads() == 1


def test_end_of_run_quality_report_prints_the_measure_with_its_calibration(tmp_path, monkeypatch, capsys):
    """The main job ends by scoring its EMA samples with minidiff.evaluation.metrics (Frechet distance in a
    classifier's features, class accuracy, brightness W1) beside real-data calibration rows."""
    import functools

    from minidiff.evaluation import metrics

    judge = functools.partial(metrics.Judge.for_dataset.__func__, metrics.Judge, num=2000, num_reference=200,
                              cache_dir=tmp_path / "cache", progress=False)
    monkeypatch.setattr(metrics.Judge, "for_dataset", judge)
    result = T.train(tiny(tmp_path / "run", max_steps=2, judge_samples=20))
    out = capsys.readouterr().out
    assert "quality of 20 EMA samples" in out and "Frechet distance" in out and "calibration" in out
    saved = json.loads((tmp_path / "run" / "quality.json").read_text())
    q = result["quality"]
    assert saved["num"] == 20 and saved["frechet"] == q["frechet"] > 0 and 0 <= q["accuracy"] <= 1
    cal = saved["calibration"]
    # a 2-step model is worse than real images and the calibration ranks real below noise
    assert cal["real"]["frechet"] < q["frechet"] and cal["real"]["frechet"] < cal["noise"]["frechet"]


def test_guidance_from_nan_or_plus_inf_is_refused_before_work():
    for bad in ("nan", "inf"):
        with pytest.raises(T.UsageError, match="--guidance-from must be a log-SNR"):
            T.check_config(T.parse_args(["--guidance-from", bad]).resolved())
