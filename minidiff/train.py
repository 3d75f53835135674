"""Pixel-space diffusion training: one file to read top to bottom (run it as `train_cifar.py`).

    config       every flag, with a recipe of defaults per dataset (RECIPES)
    setup        DDP when launched by torchrun, seeds, data held as one tensor, UNet, EMA, Adam
    the loop     batch(step) -> diffusion_loss -> backward -> clip -> Adam -> EMA, with a progress bar
    outputs      metrics.jsonl, loss.png, samples/step_*.png from the EMA model, checkpoint.pt

Defaults for CIFAR-10 are DDPM's recipe (Ho et al. 2020, Sec. 4 and App. B): the 35.7M UNet with
dropout 0.1, Adam at lr 2e-4 after a 5000-step linear warm-up, batch 128, gradient norm clipped
at 1, EMA decay 0.9999, random horizontal flips. The noise schedule, prediction target and
sampler spacing default to Lin et al.'s fixes (zero terminal SNR, v prediction, trailing spacing);
`--no-zero-snr --prediction eps` gives back DDPM's own choice, one flag each.

The checkpoint is one file holding model, EMA, optimiser, step, RNG states and the full config, all
tensors and plain types (it loads with torch.load(weights_only=True)), written to a temporary file
and renamed so a crash never leaves half a checkpoint. The data order is a function of (seed,
step) alone (see data.Batches), so `--resume` continues bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data as datasets
from .cli import add_common_flags
from . import runtime
from .ema import EMA
from .objectives import (PREDICTIONS, TIMESTEP_DISTRIBUTIONS, WEIGHTINGS, check_prediction, check_weighting,
                         diffusion_loss, timestep_probabilities)
from .runtime import CHECKPOINT, LR_DECAYS, TrainingError, UsageError, require  # noqa: F401 (re-exported)
from .samplers import SPACINGS, sample
from .schedules import BETA_SCHEDULES, Schedule
from .unet import PRESETS, UNet


# Defaults that depend on the dataset. CIFAR-10 is DDPM's recipe. The built-in set's recipe is
# chosen by measurement so that the README's main job (no flags) gives recognisable samples in a
# 10-minute run on a 2-core CPU; docs/training.md has the figures.
UNIFORM_SHARE = 0.1  # chosen by benchmarks/quality.py (docs/training.md): 0.3 and 0.5 drew worse shapes
RECIPES = {
    "cifar10": dict(preset="ddpm-cifar10", batch_size=128, lr=2e-4, warmup=5000, ema_decay=0.9999,
                    max_steps=800_000, minutes=None, class_cond=False, sample_every=10_000,
                    ckpt_every=5_000, sample_steps=50, judge_samples=0, timesteps="uniform",
                    timesteps_uniform=1.0, guidance=1.0),
    "builtin": dict(preset="small", batch_size=32, lr=2e-3, warmup=100, ema_decay=0.98,
                    max_steps=100_000, minutes=10.0, class_cond=True, sample_every=500,
                    ckpt_every=500, sample_steps=25, judge_samples=500, timesteps="logsnr_normal",
                    timesteps_uniform=UNIFORM_SHARE, guidance=3.0),
    "folder": dict(preset="small", batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999,
                   max_steps=100_000, minutes=None, class_cond=False, sample_every=2_000,
                   ckpt_every=2_000, sample_steps=50, judge_samples=500, timesteps="logsnr_normal",
                   timesteps_uniform=UNIFORM_SHARE, guidance=1.0),
}
# Flags that define what is being trained: a resumed run must not change them.
IDENTITY = ("dataset", "data_root", "num_images", "preset", "unet", "schedule", "zero_snr", "prediction",
            "class_cond", "label_dropout", "batch_size", "seed", "lr", "warmup", "lr_decay", "ema_decay",
            "grad_clip", "resolution", "offset_noise", "weighting", "timesteps", "timesteps_uniform", "dropout")


@dataclass
class TrainConfig:
    """Every setting of a training run. None means "from the dataset's recipe" (RECIPES)."""

    dataset: str = "builtin"
    data_root: str | None = None
    download: bool = True
    num_images: int = 20_000          # size of the built-in set
    resolution: int | None = None     # default: the preset's image_size
    preset: str | None = None
    unet: dict | None = None          # overrides of the preset's UNet config, e.g. {"base_channels": 32}
    schedule: str = "linear"
    zero_snr: bool = True
    prediction: str = "v"
    spacing: str = "trailing"         # for the sample grids drawn during training
    sample_steps: int | None = None
    batch_size: int | None = None     # global batch, split across DDP processes
    lr: float | None = None
    warmup: int | None = None
    lr_decay: str = "constant"        # after the warm-up: constant (DDPM) or cosine to 0 at the run's end
    grad_clip: float = 1.0
    weighting: str = "none"           # loss weight per timestep: none (Lin et al.'s v loss) or min-SNR
    timesteps: str | None = None      # training timesteps: uniform (DDPM) or logsnr_normal (EDM-like)
    timesteps_uniform: float | None = None  # with logsnr_normal: the share of uniform timesteps mixed in
    offset_noise: float = 0.0         # Guttenberg's offset noise (Lin et al. Sec. 5.4); 0 = plain N(0, I)
    max_steps: int | None = None
    minutes: float | None = None      # wall-clock budget; 0 or None means no limit
    class_cond: bool | None = None
    label_dropout: float = 0.1        # P(label -> null class): trains the unconditional model for CFG
    ema_decay: float | None = None
    dropout: float | None = None      # default: the preset's
    seed: int = 0
    device: str | None = None         # default: cuda if available, else cpu
    threads: int | None = None        # CPU threads for torch (default: torch's choice)
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    sample_every: int | None = None
    ckpt_every: int | None = None
    log_every: int = 10
    num_samples: int = 100
    guidance: float | None = None     # classifier-free guidance of the grids and the quality measure (1: none)
    guidance_rescale: float = 0.7     # Lin et al.'s rescale of guided samples (phi of Algorithm 2)
    judge_samples: int | None = None  # samples the end-of-run quality measure draws (minidiff.metrics); 0: none
    out: str | None = None
    resume: bool = False

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled from the recipe of `self.dataset`."""
        require(self.dataset in RECIPES, f"unknown dataset {self.dataset!r}; choose one of {', '.join(RECIPES)}")
        recipe = RECIPES[self.dataset]
        filled = {k: (recipe[k] if getattr(self, k) is None and k in recipe else getattr(self, k))
                  for k in (f.name for f in dataclasses.fields(self))}
        cfg = TrainConfig(**filled)
        require(cfg.preset in PRESETS, f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
        if cfg.resolution is None:
            cfg.resolution = native_resolution(cfg) or PRESETS[cfg.preset]["image_size"]
        if cfg.device is None:
            cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
        if cfg.out is None:
            cfg.out = str(Path("runs") / default_run_name(cfg))
        return cfg


def native_resolution(cfg: TrainConfig) -> int | None:
    """A folder of square images that all share one size trains at that size when the preset's UNet
    can take it (a 28 x 28 set on the small preset: 28 -> 14 -> 7), rather than being resized."""
    if cfg.dataset != "folder" or not cfg.data_root:
        return None
    size = datasets.folder_image_size(cfg.data_root)
    if size is None or size[0] != size[1]:
        return None
    try:
        with torch.device("meta"):
            UNet.from_preset(cfg.preset, image_size=size[0])
    except ValueError:
        return None
    return size[0]


def default_run_name(cfg: TrainConfig) -> str:
    """e.g. builtin-small-linear-zsnr-v: the choices that the two papers are about."""
    snr = "zsnr" if cfg.zero_snr else "snr"
    return f"{cfg.dataset}-{cfg.preset}-{cfg.schedule}-{snr}-{cfg.prediction}"


# --------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(
        prog="train_cifar.py",
        description="Train a pixel-space diffusion UNet (DDPM's recipe, Lin et al.'s fixes as flags).",
        formatter_class=_HelpFormatter)
    d = TrainConfig()
    flag = argparse.BooleanOptionalAction
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=datasets.DATASETS, default=d.dataset, help="what to train on")
    data.add_argument("--data-root", help="CIFAR-10 folder (holds cifar-10-batches-py) or image folder")
    data.add_argument("--download", action=flag, default=d.download, help="download CIFAR-10 if missing")
    data.add_argument("--num-images", type=int, default=d.num_images, help="size of the built-in set")
    data.add_argument("--resolution", type=int, help="image side (default: the preset's)")
    model = p.add_argument_group("model and diffusion")
    model.add_argument("--preset", choices=sorted(PRESETS), help="UNet preset (recipe: cifar10 -> ddpm-cifar10, else small)")
    model.add_argument("--dropout", type=float, help="override the preset's dropout")
    model.add_argument("--schedule", choices=BETA_SCHEDULES, default=d.schedule, help="beta schedule")
    model.add_argument("--zero-snr", action=flag, default=d.zero_snr, help="rescale to zero terminal SNR (Lin et al. Alg. 1)")
    model.add_argument("--prediction", choices=PREDICTIONS, default=d.prediction, help="model output (v: Lin et al. Sec. 3.2)")
    model.add_argument("--class-cond", action=flag, help="condition on class labels (recipe: on for builtin)")
    model.add_argument("--label-dropout", type=float, default=d.label_dropout, help="P(null label), for classifier-free guidance")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, help="global batch size")
    opt.add_argument("--lr", type=float, help="Adam learning rate")
    opt.add_argument("--warmup", type=int, help="linear learning-rate warm-up steps")
    opt.add_argument("--lr-decay", choices=LR_DECAYS, default=d.lr_decay,
                     help="after the warm-up: constant, or cosine to 0 at the end (of --max-steps or --minutes)")
    opt.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm")
    opt.add_argument("--weighting", choices=WEIGHTINGS, default=d.weighting, help="loss weight per timestep")
    opt.add_argument("--timesteps", choices=TIMESTEP_DISTRIBUTIONS,
                     help="how training timesteps are drawn (logsnr_normal: log-SNR ~ N(2.4, 2.4), mixed with uniform)")
    opt.add_argument("--timesteps-uniform", type=float,
                     help="with --timesteps logsnr_normal: the share of uniform timesteps (they train the noisy end)")
    opt.add_argument("--offset-noise", type=float, default=d.offset_noise,
                     help="offset-noise strength (the earlier brightness fix Lin et al. compare against; 0.1 is usual)")
    opt.add_argument("--ema-decay", type=float, help="EMA decay per step")
    opt.add_argument("--max-steps", type=int, help="training steps (recipe: 800k for cifar10)")
    opt.add_argument("--minutes", type=float, help="wall-clock budget: stop cleanly after this many minutes (0: none)")
    run = p.add_argument_group("running")
    add_common_flags(run)  # --seed, --device
    run.add_argument("--threads", type=int, help="CPU threads for torch; 1 is fastest on a CPU busy with other jobs")
    run.add_argument("--bf16", action=flag, default=d.bf16, help="bfloat16 autocast")
    run.add_argument("--channels-last", action=flag, default=d.channels_last, help="channels_last memory format")
    run.add_argument("--compile", action=flag, default=d.compile, help="torch.compile the model")
    run.add_argument("--out", help="run folder (default: runs/<dataset>-<preset>-<schedule>-<snr>-<prediction>)")
    run.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    run.add_argument("--sample-every", type=int, help="steps between EMA sample grids")
    run.add_argument("--sample-steps", type=int, help="DDIM steps for those grids (recipe: 25 builtin, 50 else)")
    run.add_argument("--spacing", choices=SPACINGS, default=d.spacing, help="timestep spacing for those grids")
    run.add_argument("--num-samples", type=int, default=d.num_samples, help="images per grid")
    run.add_argument("--guidance", type=float,
                     help="classifier-free guidance weight of the grids and the quality measure (recipe: 3 builtin, else 1)")
    run.add_argument("--guidance-rescale", type=float, default=d.guidance_rescale,
                     help="Lin et al.'s rescale of guided samples")
    run.add_argument("--judge-samples", type=int,
                     help="samples scored at the end by minidiff.metrics (recipe: 500 builtin and labelled folders; 0: none)")
    run.add_argument("--ckpt-every", type=int, help="steps between checkpoints")
    run.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics lines")
    args = p.parse_args(argv)
    return TrainConfig(**vars(args))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except where it is None (filled from the dataset's recipe)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv: list[str] | None = None) -> None:
    runtime.run_command(train, parse_args(argv))


def check_config(cfg: TrainConfig) -> None:
    """Every setting in range, before any work starts: a UsageError names the flag and the fix."""
    def positive(name, value):
        require(value is not None and value > 0 and math.isfinite(value),
                f"--{name.replace('_', '-')} must be a positive number, got {value}")

    for name in ("batch_size", "max_steps", "num_images", "log_every", "sample_steps", "resolution"):
        require(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    positive("lr", cfg.lr)
    positive("grad_clip", cfg.grad_clip)
    require(cfg.lr < 1, f"--lr {cfg.lr} is far too large for Adam (1e-4 to 1e-2 is usual)")
    require(cfg.warmup >= 0, f"--warmup must be 0 or more steps, got {cfg.warmup}")
    require(0 <= cfg.ema_decay < 1, f"--ema-decay must lie in [0, 1), got {cfg.ema_decay}")
    require(0 <= cfg.label_dropout < 1, f"--label-dropout must lie in [0, 1), got {cfg.label_dropout}")
    require(cfg.dropout is None or 0 <= cfg.dropout < 1, f"--dropout must lie in [0, 1), got {cfg.dropout}")
    require(cfg.offset_noise >= 0, f"--offset-noise must be 0 or more, got {cfg.offset_noise}")
    require(0 < cfg.timesteps_uniform <= 1,
            f"--timesteps-uniform must lie in (0, 1]: without uniform timesteps the zero-SNR step is never trained, "
            f"got {cfg.timesteps_uniform}")
    require(cfg.minutes is None or (cfg.minutes >= 0 and math.isfinite(cfg.minutes)),
            f"--minutes must be 0 (no limit) or a positive number, got {cfg.minutes}")
    require(cfg.sample_steps <= 1000, f"--sample-steps must be at most 1000 (the training steps), got {cfg.sample_steps}")
    require(cfg.num_samples >= 1, f"--num-samples must be at least 1, got {cfg.num_samples}")
    require(cfg.guidance >= 0 and 0 <= cfg.guidance_rescale <= 1,
            f"--guidance must be 0 or more and --guidance-rescale in [0, 1], got {cfg.guidance}, {cfg.guidance_rescale}")
    require(cfg.judge_samples == 0 or cfg.judge_samples >= 2, f"--judge-samples must be 0 (none) or at least 2, got {cfg.judge_samples}")
    for name in ("sample_every", "ckpt_every"):
        require(getattr(cfg, name) >= 0, f"--{name.replace('_', '-')} must be 0 (never) or more, got {getattr(cfg, name)}")
    require(cfg.threads is None or cfg.threads >= 1, f"--threads must be at least 1, got {cfg.threads}")
    try:  # the UNet checks the resolution against its levels and attention; no weights are made
        with torch.device("meta"):
            build_model(cfg, num_classes=1)
    except ValueError as err:
        raise UsageError(f"--resolution {cfg.resolution} does not fit the {cfg.preset} preset: {err}") from None
    require(cfg.dataset != "folder" or cfg.data_root, "--dataset folder needs --data-root DIR (a folder of images)")
    require(not cfg.device.startswith("cuda") or torch.cuda.is_available(),
            f"--device {cfg.device}: no CUDA GPU is visible here; use --device cpu")
    schedule = make_schedule(cfg)
    check_prediction(cfg.prediction, schedule)  # eps with zero SNR is refused, with the reason
    check_weighting(cfg.weighting, schedule)    # so is min-SNR: it would never train t = T-1
    runtime.check_output_folder(cfg.out, "--out")


def make_schedule(cfg: TrainConfig) -> Schedule:
    return Schedule.make(cfg.schedule, 1000, zero_snr=cfg.zero_snr)


# ------------------------------------------------------------------------------------ setup


def build_model(cfg: TrainConfig, num_classes: int, channels: int = 3) -> UNet:
    overrides = dict(cfg.unet or {}, image_size=cfg.resolution, num_classes=num_classes if cfg.class_cond else None,
                     in_channels=channels, out_channels=channels)
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    return UNet.from_preset(cfg.preset, **overrides)


def learning_rate(cfg: TrainConfig, step: int, progress: float = 0.0) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup steps (DDPM, App. B), then cfg.lr_decay."""
    return runtime.learning_rate(step, lr=cfg.lr, warmup=cfg.warmup, decay=cfg.lr_decay, progress=progress)


def drop_labels(y: torch.Tensor, p: float, null: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null class with probability p (Ho and Salimans 2022, Alg. 1)."""
    drop = torch.rand(y.shape, generator=generator, device=generator.device).to(y.device) < p
    return torch.where(drop, torch.full_like(y, null), y)


def training_step(forward, model, optimizer, ema: EMA, schedule: Schedule, cfg: TrainConfig,
                  x: torch.Tensor, y: torch.Tensor, step: int, noise_gen: torch.Generator,
                  null_class: int, progress: float = 0.0, timestep_probs: torch.Tensor | None = None) -> torch.Tensor:
    """One step of DDPM's Algorithm 1 with Adam: loss, backward, clip, update, EMA.

    `forward` is what computes the loss (the model, or its compiled / DDP wrapper); `model` is
    the plain module whose weights the optimiser and the EMA hold. `timestep_probs` is p(t)
    (made once by timestep_probabilities; None: uniform). Returns the loss (detached).
    """
    if cfg.class_cond:
        y = drop_labels(y, cfg.label_dropout, null_class, noise_gen)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(cfg, step, progress)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=cfg.bf16):
        loss = diffusion_loss(forward, x, schedule, cfg.prediction,
                              y=y if cfg.class_cond else None, generator=noise_gen,
                              weighting=cfg.weighting, offset_noise_strength=cfg.offset_noise,
                              timestep_probs=timestep_probs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    ema.update(model)
    return loss.detach()


# ------------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A pixel-space training checkpoint, loaded without running pickled code (weights_only)."""
    return runtime.load_checkpoint(path, kind="pixel")


def plain_config(cfg: TrainConfig) -> dict:
    """The config as plain Python types (what weights_only loading accepts)."""
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------- outputs


@torch.no_grad()
def sample_grid(model, cfg: TrainConfig, schedule: Schedule, num_classes: int, path: Path,
                device: torch.device, channels: int = 3) -> torch.Tensor:
    """Draw cfg.num_samples images from `model` (the EMA model) with a fixed seed and save a grid.

    With class conditioning, row r of the grid holds class r (mod the number of classes).
    """
    import torchvision

    n = cfg.num_samples
    nrow = math.ceil(math.sqrt(n))
    y = (torch.arange(n, device=device) // nrow) % num_classes if cfg.class_cond else None
    shape = (n, channels, cfg.resolution, cfg.resolution)
    gen = torch.Generator(device).manual_seed(cfg.seed + 12345)
    with torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16):
        guided = cfg.class_cond and cfg.guidance != 1.0
        x = sample(model, shape, schedule, prediction=cfg.prediction, steps=cfg.sample_steps,
                   spacing=cfg.spacing, y=y, uncond_y=torch.full_like(y, num_classes) if guided else None,
                   guidance=cfg.guidance if guided else 1.0, guidance_rescale=cfg.guidance_rescale,
                   generator=gen, device=device, progress=False)
    images = datasets.to_uint8(x.float()).cpu()
    torchvision.utils.save_image(images.float() / 255, path, nrow=nrow, padding=1)
    return images


# --------------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training. Returns a summary: step, last loss, images/s, run folder."""
    cfg = cfg.resolved()
    check_config(cfg)
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    saved = runtime.start_or_resume(out, resume=cfg.resume, kind="pixel", config=plain_config(cfg),
                                    keys=IDENTITY, max_steps=cfg.max_steps, out_flag="--out")
    if saved is not None and saved["step"] >= cfg.max_steps:
        return dict(step=saved["step"], loss=math.nan, images_per_s=math.nan, out=str(out), finished=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    rank, world, device = runtime.setup_distributed(cfg.device)
    master = rank == 0
    require(cfg.batch_size % world == 0, f"--batch-size {cfg.batch_size} must divide by the {world} processes")
    schedule = make_schedule(cfg)

    # Seeds: the model is built from `seed` on every rank (identical weights); dropout and the
    # diffusion noise differ per rank.
    torch.manual_seed(cfg.seed)
    data = datasets.load_dataset(cfg.dataset, data_root=cfg.data_root, resolution=cfg.resolution,
                                 download=cfg.download, seed=cfg.seed, num=cfg.num_images)
    batches = datasets.Batches(data, cfg.batch_size // world, seed=cfg.seed, device=device,
                               rank=rank, world_size=world)
    model = build_model(cfg, data.num_classes, data.channels).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    torch.manual_seed(cfg.seed + 1000 * rank)
    noise_gen = torch.Generator(device).manual_seed(cfg.seed + 1 + 1000 * rank)
    timestep_probs = None if cfg.timesteps == "uniform" else \
        timestep_probabilities(schedule, cfg.timesteps, uniform_share=cfg.timesteps_uniform).float().to(device)
    streams = {"noise": noise_gen}

    step = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"], saved.get("ema_updates"))
        optimizer.load_state_dict(saved["optimizer"])
        ranks = saved["rng_ranks"]
        if len(ranks) == world:
            runtime.set_rng_states(ranks[rank], streams)
        else:  # a different process count: valid, fresh per-rank streams, but not bit for bit
            noise_gen.manual_seed(cfg.seed + 1 + 1000 * rank + saved["step"])
            if master:
                print(f"note: checkpoint written by {len(ranks)} process(es), resumed with {world}: "
                      "the run continues correctly but not bit for bit")
        step = saved["step"]
        del saved

    forward = torch.compile(model) if cfg.compile else model
    if world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None)

    if master:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(plain_config(cfg), indent=2) + "\n")
    metrics = runtime.MetricsLog(out / "metrics.jsonl")
    if master:
        metrics.truncate(step)

    def checkpoint() -> None:
        # Every rank draws its own timesteps, noise and dropout: keep each rank's streams so that
        # a resumed DDP run continues bit for bit. (All ranks reach this line together.)
        ranks = runtime.gather_objects(runtime.rng_states(streams), world)
        if master:
            runtime.save_checkpoint(ckpt_path, dict(
                kind="pixel", model=model.state_dict(), ema=ema.state_dict(), ema_updates=ema.updates,
                optimizer=optimizer.state_dict(), step=step, rng_ranks=ranks, config=plain_config(cfg),
                model_config=_plain(model.config), channels=data.channels,
                data_order="data.Batches: a function of (config.seed, step)"))

    def grid(step: int) -> None:
        sample_grid(ema.model, cfg, schedule, data.num_classes, out / "samples" / f"step_{step:07d}.png",
                    device, data.channels)

    from tqdm.auto import tqdm

    budget_s = cfg.minutes * 60 if cfg.minutes else math.inf
    start = time.perf_counter()
    losses, window_start, window_images = [], time.perf_counter(), 0
    last_loss, images_per_s, out_of_time = math.nan, math.nan, False
    first_step = step

    def progress() -> float:
        """How much of this run is done, for a learning rate that decays to its end."""
        return max(step / cfg.max_steps, (time.perf_counter() - start) / budget_s)

    # With a wall-clock budget the bar counts seconds of it; otherwise steps.
    timed = budget_s < math.inf
    bar = tqdm(total=round(budget_s) if timed else cfg.max_steps, initial=0 if timed else step,
               desc=f"training {out.name}", unit="s" if timed else "step", disable=not master,
               dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s{postfix}" if timed else None)
    model.train()
    with runtime.StopOnInterrupt() as interrupt:
        while step < cfg.max_steps:
            x, y = batches.batch(step)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            losses.append(training_step(forward, model, optimizer, ema, schedule, cfg, x, y, step,
                                        noise_gen, null_class=data.num_classes, progress=progress(),
                                        timestep_probs=timestep_probs))
            step += 1
            window_images += cfg.batch_size
            bar.update(min(bar.total, round(time.perf_counter() - start)) - bar.n if timed else 1)

            # Every log_every steps: one sync to read the losses, the NaN check, a metrics line.
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                values = runtime.mean_over_ranks(torch.stack(losses).float(), world).cpu()
                runtime.check_finite(values, step, ckpt_path)
                elapsed = time.perf_counter() - window_start
                last_loss, images_per_s = values.mean().item(), window_images / elapsed
                if master:
                    metrics.write(dict(step=step, loss=last_loss, lr=learning_rate(cfg, step - 1, progress()),
                                       images_per_s=images_per_s, window=len(values),
                                       elapsed_s=time.perf_counter() - start))
                bar.set_postfix(step=step, loss=f"{last_loss:.4f}", img_s=f"{images_per_s:.0f}")
                losses, window_start, window_images = [], time.perf_counter(), 0

            out_of_time = time.perf_counter() - start > budget_s
            stop = runtime.any_rank(out_of_time or interrupt.requested, world, device)
            if stop or step == cfg.max_steps:
                break
            paused = time.perf_counter()  # time spent here does not count in images/s
            if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                checkpoint()
                if master:
                    metrics.plot(out / "loss.png")
            if master and cfg.sample_every and step % cfg.sample_every == 0:
                grid(step)
            window_start += time.perf_counter() - paused
    bar.close()
    checkpoint()
    if interrupt.requested:
        if master:
            print(f"interrupted: saved step {step} to {ckpt_path}; continue with --resume")
        runtime.cleanup_distributed(world)
        raise KeyboardInterrupt
    if master and out_of_time:
        print(f"stopped after {cfg.minutes} minutes at step {step} (--minutes)")
    quality = None
    if master:
        metrics.plot(out / "loss.png")
        grid(step)
        print(f"done: step {step} ({step - first_step} this run), loss {last_loss:.4f}, "
              f"{images_per_s:.0f} images/s; checkpoint {ckpt_path}, samples in {out / 'samples'}")
        quality = judge_samples(ema.model, cfg, data, out, device)
    runtime.cleanup_distributed(world)
    return dict(step=step, loss=last_loss, images_per_s=images_per_s, out=str(out), model=model, ema=ema,
                quality=quality)


def judge_samples(model, cfg: TrainConfig, data, out: Path, device) -> dict | None:
    """Draw cfg.judge_samples images from the EMA model (every class in turn, the grids' sampler)
    and print minidiff.metrics' report: Frechet distance in a small classifier's features, class
    accuracy and brightness W1, beside their calibration on real data. Saved to quality.json."""
    if not cfg.judge_samples or cfg.dataset == "cifar10":
        return None
    if data.num_classes < 2:
        print("quality: skipped (the measure needs a folder with one sub-folder per class)")
        return None
    from . import metrics
    from .sample import generate

    judge = metrics.Judge.for_dataset(cfg.dataset, data_root=cfg.data_root, resolution=cfg.resolution)
    labels = torch.arange(cfg.judge_samples) % data.num_classes if cfg.class_cond else None
    start = time.perf_counter()
    guidance = cfg.guidance if labels is not None else 1.0
    images = generate(model, plain_config(cfg), cfg.judge_samples, steps=cfg.sample_steps, labels=labels,
                      guidance=guidance, guidance_rescale=cfg.guidance_rescale if guidance != 1.0 else 0.0,
                      seed=cfg.seed + 777, device=device, progress=False)
    seconds = time.perf_counter() - start
    score = judge.score(images, labels)
    print(f"quality of {cfg.judge_samples} EMA samples ({cfg.sample_steps} DDIM steps, guidance {guidance:g}"
          f"{f', rescale {cfg.guidance_rescale:g}' if guidance != 1.0 else ''}; drawn in {seconds:.0f} s):")
    print(metrics.format_table(score, judge.calibration(score["num"]), judge.describe()))
    result = dict(score, calibration=judge.calibration(score["num"]), sample_steps=cfg.sample_steps,
                  guidance=guidance, sampling_s=seconds)
    (out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _plain(value):
    """Tuples to lists, recursively: a config that any loader reads back as plain types."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


if __name__ == "__main__":
    main()
