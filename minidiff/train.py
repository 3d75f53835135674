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
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from . import data as datasets
from .ema import EMA
from .objectives import PREDICTIONS, check_prediction, diffusion_loss
from .samplers import SPACINGS, sample
from .schedules import Schedule
from .unet import PRESETS, UNet

SCHEDULES = ("linear", "cosine", "scaled_linear")
CHECKPOINT = "checkpoint.pt"

# Defaults that depend on the dataset. CIFAR-10 is DDPM's recipe. The built-in set's recipe is
# chosen by measurement so that the README's main job (no flags) gives recognisable samples in a
# 10-minute run on a 2-core CPU; docs/training.md has the figures.
RECIPES = {
    "cifar10": dict(preset="ddpm-cifar10", batch_size=128, lr=2e-4, warmup=5000, ema_decay=0.9999,
                    max_steps=800_000, minutes=None, class_cond=False, sample_every=10_000,
                    ckpt_every=5_000, sample_steps=50),
    "builtin": dict(preset="small", batch_size=32, lr=2e-3, warmup=100, ema_decay=0.98,
                    max_steps=100_000, minutes=10.0, class_cond=True, sample_every=500,
                    ckpt_every=500, sample_steps=25),
    "folder": dict(preset="small", batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999,
                   max_steps=100_000, minutes=None, class_cond=False, sample_every=2_000,
                   ckpt_every=2_000, sample_steps=50),
}
# Flags that define what is being trained: a resumed run must not change them.
IDENTITY = ("dataset", "data_root", "num_images", "preset", "schedule", "zero_snr", "prediction",
            "class_cond", "label_dropout", "batch_size", "seed", "lr", "warmup", "ema_decay",
            "grad_clip", "resolution", "offset_noise")


@dataclass
class TrainConfig:
    """Every setting of a training run. None means "from the dataset's recipe" (RECIPES)."""

    dataset: str = "builtin"
    data_root: str | None = None
    download: bool = True
    num_images: int = 20_000          # size of the built-in set
    resolution: int | None = None     # default: the preset's image_size
    preset: str | None = None
    schedule: str = "linear"
    zero_snr: bool = True
    prediction: str = "v"
    spacing: str = "trailing"         # for the sample grids drawn during training
    sample_steps: int | None = None
    batch_size: int | None = None     # global batch, split across DDP processes
    lr: float | None = None
    warmup: int | None = None
    grad_clip: float = 1.0
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
    out: str | None = None
    resume: bool = False

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled from the recipe of `self.dataset`."""
        if self.dataset not in RECIPES:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(RECIPES)}")
        recipe = RECIPES[self.dataset]
        filled = {k: (recipe[k] if getattr(self, k) is None and k in recipe else getattr(self, k))
                  for k in (f.name for f in dataclasses.fields(self))}
        cfg = TrainConfig(**filled)
        if cfg.preset not in PRESETS:
            raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
        if cfg.resolution is None:
            cfg.resolution = PRESETS[cfg.preset]["image_size"]
        if cfg.device is None:
            cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
        if cfg.out is None:
            cfg.out = str(Path("runs") / default_run_name(cfg))
        return cfg


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
    model.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="beta schedule")
    model.add_argument("--zero-snr", action=flag, default=d.zero_snr, help="rescale to zero terminal SNR (Lin et al. Alg. 1)")
    model.add_argument("--prediction", choices=PREDICTIONS, default=d.prediction, help="model output (v: Lin et al. Sec. 3.2)")
    model.add_argument("--class-cond", action=flag, help="condition on class labels (recipe: on for builtin)")
    model.add_argument("--label-dropout", type=float, default=d.label_dropout, help="P(null label), for classifier-free guidance")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, help="global batch size")
    opt.add_argument("--lr", type=float, help="Adam learning rate")
    opt.add_argument("--warmup", type=int, help="linear learning-rate warm-up steps")
    opt.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm")
    opt.add_argument("--offset-noise", type=float, default=d.offset_noise,
                     help="offset-noise strength (the earlier brightness fix Lin et al. compare against; 0.1 is usual)")
    opt.add_argument("--ema-decay", type=float, help="EMA decay per step")
    opt.add_argument("--max-steps", type=int, help="training steps (recipe: 800k for cifar10)")
    opt.add_argument("--minutes", type=float, help="wall-clock budget: stop cleanly after this many minutes (0: none)")
    opt.add_argument("--seed", type=int, default=d.seed, help="seeds the model, data order, noise")
    run = p.add_argument_group("running")
    run.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
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
    run.add_argument("--ckpt-every", type=int, help="steps between checkpoints")
    run.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics lines")
    args = p.parse_args(argv)
    return TrainConfig(**vars(args))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except where it is None (filled from the dataset's recipe)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv: list[str] | None = None) -> None:
    try:
        train(parse_args(argv))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except (TrainingError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None


class TrainingError(RuntimeError):
    """A run that cannot go on (a NaN loss, a checkpoint that does not match the flags)."""


# ------------------------------------------------------------------------------------ setup


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group:
    nccl on CUDA with one GPU per local rank, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def build_model(cfg: TrainConfig, num_classes: int) -> UNet:
    overrides = dict(image_size=cfg.resolution, num_classes=num_classes if cfg.class_cond else None)
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    return UNet.from_preset(cfg.preset, **overrides)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup steps, then constant (DDPM, App. B)."""
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))


def drop_labels(y: torch.Tensor, p: float, null: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null class with probability p (Ho and Salimans 2022, Alg. 1)."""
    drop = torch.rand(y.shape, generator=generator, device=generator.device).to(y.device) < p
    return torch.where(drop, torch.full_like(y, null), y)


def training_step(forward, model, optimizer, ema: EMA, schedule: Schedule, cfg: TrainConfig,
                  x: torch.Tensor, y: torch.Tensor, step: int, noise_gen: torch.Generator,
                  null_class: int) -> torch.Tensor:
    """One step of DDPM's Algorithm 1 with Adam: loss, backward, clip, update, EMA.

    `forward` is what computes the loss (the model, or its compiled / DDP wrapper); `model` is
    the plain module whose weights the optimiser and the EMA hold. Returns the loss (detached).
    """
    if cfg.class_cond:
        y = drop_labels(y, cfg.label_dropout, null_class, noise_gen)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(cfg, step)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=cfg.bf16):
        loss = diffusion_loss(forward, x, schedule, cfg.prediction,
                              y=y if cfg.class_cond else None, generator=noise_gen,
                              offset_noise_strength=cfg.offset_noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    ema.update(model)
    return loss.detach()


# ------------------------------------------------------------------------------- checkpoints


def rng_states(noise_gen: torch.Generator) -> dict:
    """Every random stream the loop draws from, as tensors: the global CPU and CUDA generators
    (dropout) and the generator for timesteps, noise and label dropout."""
    states = {"torch": torch.get_rng_state(), "noise": noise_gen.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return states


def set_rng_states(states: dict, noise_gen: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    noise_gen.set_state(states["noise"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))


def save_checkpoint(path: Path, **state) -> None:
    """torch.save to a temporary file, then rename: the old checkpoint survives a crash mid-write."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the checkpoint
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint without running any pickled code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path.resolve()}")
    return torch.load(path, map_location=map_location, weights_only=True)


def plain_config(cfg: TrainConfig) -> dict:
    """The config as plain Python types (what weights_only loading accepts)."""
    return dataclasses.asdict(cfg)


def merge_resumed_config(cfg: TrainConfig, saved: dict) -> TrainConfig:
    """The saved run's config, with the flags that may change on resume (length, logging, device,
    speed switches) taken from `cfg`. The flags that define the run (IDENTITY) come from the
    checkpoint; where the command line says otherwise, a note says which value is used."""
    for k in IDENTITY:
        if saved.get(k) != getattr(cfg, k):
            print(f"note: resuming with {k}={saved.get(k)!r} from the checkpoint (not {getattr(cfg, k)!r})")
    return TrainConfig(**{**saved, **{k: getattr(cfg, k) for k in saved if k not in IDENTITY}})


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after `step` (a run killed after its last checkpoint logged them)."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(line + "\n" for line in rows if json.loads(line)["step"] <= step))


# ---------------------------------------------------------------------------------- outputs


def write_metrics(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def plot_loss(metrics: Path, out: Path) -> None:
    """Loss against step from metrics.jsonl (log scale), with a running mean, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    loss = torch.tensor([r["loss"] for r in rows])
    window = max(1, len(rows) // 20)
    smooth = torch.nn.functional.avg_pool1d(loss[None, None], window, 1, padding=0)[0, 0]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, loss.tolist(), lw=0.6, alpha=0.5, label=f"loss (mean of {rows[0].get('window', 1)} steps)")
    ax.plot(steps[window - 1:], smooth.tolist(), lw=1.5, label=f"running mean ({window} points)")
    ax.set_yscale("log")
    ax.set_title(metrics.parent.name, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("diffusion loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


@torch.no_grad()
def sample_grid(model, cfg: TrainConfig, schedule: Schedule, num_classes: int, path: Path,
                device: torch.device) -> torch.Tensor:
    """Draw cfg.num_samples images from `model` (the EMA model) with a fixed seed and save a grid.

    With class conditioning, row r of the grid holds class r (mod the number of classes).
    """
    import torchvision

    n = cfg.num_samples
    nrow = math.ceil(math.sqrt(n))
    y = (torch.arange(n, device=device) // nrow) % num_classes if cfg.class_cond else None
    shape = (n, 3, cfg.resolution, cfg.resolution)
    gen = torch.Generator(device).manual_seed(cfg.seed + 12345)
    with torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16):
        x = sample(model, shape, schedule, prediction=cfg.prediction, steps=cfg.sample_steps,
                   spacing=cfg.spacing, y=y, generator=gen, device=device, progress=False)
    images = datasets.to_uint8(x.float()).cpu()
    torchvision.utils.save_image(images.float() / 255, path, nrow=nrow, padding=1)
    return images


# --------------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training. Returns a summary: step, last loss, images/s, run folder."""
    cfg = cfg.resolved()
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    saved = None
    if cfg.resume:
        saved = load_checkpoint(ckpt_path)
        cfg = merge_resumed_config(cfg, saved["config"])
    elif ckpt_path.exists():
        raise TrainingError(f"{ckpt_path} exists: pass --resume to continue that run, or choose "
                            "another --out (or delete the folder) to start afresh.")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    rank, world, device = setup_distributed(cfg.device)
    master = rank == 0
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} must divide by the {world} processes")
    schedule = Schedule.make(cfg.schedule, 1000, zero_snr=cfg.zero_snr)
    check_prediction(cfg.prediction, schedule)  # eps with zero SNR is refused here, with the reason

    # Seeds: the model is built from `seed` on every rank (identical weights); dropout and the
    # diffusion noise differ per rank.
    torch.manual_seed(cfg.seed)
    data = datasets.load_dataset(cfg.dataset, data_root=cfg.data_root, resolution=cfg.resolution,
                                 download=cfg.download, seed=cfg.seed, num=cfg.num_images)
    batches = datasets.Batches(data, cfg.batch_size // world, seed=cfg.seed, device=device,
                               rank=rank, world_size=world)
    model = build_model(cfg, data.num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    torch.manual_seed(cfg.seed + 1000 * rank)
    noise_gen = torch.Generator(device).manual_seed(cfg.seed + 1 + 1000 * rank)

    step = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        ranks = saved.get("rng_ranks") or [saved["rng"]]
        if len(ranks) == world:
            set_rng_states(ranks[rank], noise_gen)
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
    metrics = out / "metrics.jsonl"
    if master:
        truncate_metrics(metrics, step)

    def checkpoint() -> None:
        # Every rank draws its own timesteps, noise and dropout: keep each rank's streams so that
        # a resumed DDP run continues bit for bit. (All ranks reach this line together.)
        ranks = [rng_states(noise_gen)]
        if world > 1:
            ranks = [None] * world
            dist.all_gather_object(ranks, {k: v.cpu() for k, v in rng_states(noise_gen).items()})
        if master:
            save_checkpoint(ckpt_path, model=model.state_dict(), ema=ema.state_dict(),
                            optimizer=optimizer.state_dict(), step=step, rng=ranks[0], rng_ranks=ranks,
                            config=plain_config(cfg), model_config=_plain(model.config),
                            data_order="data.Batches: a function of (config.seed, step)")

    def finish_outputs() -> None:
        if master:
            if metrics.exists():
                plot_loss(metrics, out / "loss.png")
            sample_grid(ema.model, cfg, schedule, data.num_classes, out / "samples" / f"step_{step:07d}.png", device)

    from tqdm.auto import tqdm

    budget_s = cfg.minutes * 60 if cfg.minutes else math.inf
    start = time.perf_counter()
    losses, window_start, window_images = [], time.perf_counter(), 0
    last_loss, images_per_s = math.nan, math.nan
    # With a wall-clock budget the bar counts seconds of it; otherwise steps.
    timed = budget_s < math.inf
    bar = tqdm(total=round(budget_s) if timed else cfg.max_steps, initial=0 if timed else step,
               desc=f"training {out.name}", unit="s" if timed else "step", disable=not master,
               dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s{postfix}" if timed else None)
    model.train()
    with StopOnInterrupt() as interrupt:
        while step < cfg.max_steps:
            x, y = batches.batch(step)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            losses.append(training_step(forward, model, optimizer, ema, schedule, cfg, x, y, step,
                                        noise_gen, null_class=data.num_classes))
            step += 1
            window_images += cfg.batch_size
            bar.update(min(bar.total, round(time.perf_counter() - start)) - bar.n if timed else 1)

            # Every log_every steps: one sync to read the losses, the NaN check, a metrics line.
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                values = _mean_over_ranks(torch.stack(losses).float(), world).cpu()
                check_finite(values, step, ckpt_path)
                elapsed = time.perf_counter() - window_start
                last_loss, images_per_s = values.mean().item(), window_images / elapsed
                if master:
                    write_metrics(metrics, dict(step=step, loss=last_loss, lr=learning_rate(cfg, step - 1),
                                                images_per_s=images_per_s, window=len(values),
                                                elapsed_s=time.perf_counter() - start))
                bar.set_postfix(step=step, loss=f"{last_loss:.4f}", img_s=f"{images_per_s:.0f}")
                losses, window_start, window_images = [], time.perf_counter(), 0

            out_of_time = time.perf_counter() - start > budget_s
            stop = _any_rank(out_of_time or interrupt.requested, world, device)
            if stop or step == cfg.max_steps:
                break
            paused = time.perf_counter()  # time spent here does not count in images/s
            if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                checkpoint()
                if master:
                    plot_loss(metrics, out / "loss.png")
            if master and cfg.sample_every and step % cfg.sample_every == 0:
                sample_grid(ema.model, cfg, schedule, data.num_classes, out / "samples" / f"step_{step:07d}.png", device)
            window_start += time.perf_counter() - paused
    bar.close()
    checkpoint()
    if interrupt.requested:
        if master:
            print(f"interrupted: saved step {step} to {ckpt_path}; continue with --resume")
        _cleanup(world)
        raise KeyboardInterrupt
    if master and out_of_time:
        print(f"stopped after {cfg.minutes} minutes at step {step} (--minutes)")
    finish_outputs()
    if master:
        print(f"done: step {step}, loss {last_loss:.4f}, {images_per_s:.0f} images/s; "
              f"checkpoint {ckpt_path}, samples in {out / 'samples'}")
    _cleanup(world)
    return dict(step=step, loss=last_loss, images_per_s=images_per_s, out=str(out), model=model, ema=ema)


def check_finite(losses: torch.Tensor, step: int, ckpt_path: Path) -> None:
    """Stop on the first NaN/inf among the losses of steps step-len(losses)+1 .. step."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        first = int(bad[0])
        raise TrainingError(
            f"loss became {losses[first].item()} at step {step - len(losses) + first + 1}; stopping "
            f"without saving. The last good checkpoint is {ckpt_path} (try a lower --lr, or drop --bf16).")


class StopOnInterrupt:
    """Turns the first Ctrl-C into a request that the loop honours after the current step (so the
    checkpoint it then saves is exact); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to quit now)")

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _mean_over_ranks(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(values)  # a NaN on any rank shows on every rank, at the same step
        values /= world
    return values


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank if it is true on any (all ranks must stop at the same step)."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _plain(value):
    """Tuples to lists, recursively: a config that any loader reads back as plain types."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _cleanup(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
