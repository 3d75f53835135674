"""The settings of a pixel-space training run: recipes, the config, its flags and their checks.

    RECIPES        defaults that depend on the dataset (minidiff/training/recipes.py, a block each)
    TrainConfig    every setting of a run; None means "from the recipe", filled by `resolved()`
    parse_args     the flags of `train_cifar.py`, one per field
    check_config   every setting in range before any work starts, with the flag and the fix
    make_schedule, build_model, plain_config   what a config describes: its schedule, its UNet,
                   itself as plain types (for a checkpoint)

The training loop that uses them is minidiff.training.train.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..objectives import PREDICTIONS
from ..samplers import SAMPLERS, SPACINGS
from ..schedules import SCHEDULES, Schedule
from ..unet import PRESETS, UNet
from . import data as datasets
from . import runtime
from .cli import HelpFormatter, add_common_flags, check_guidance_from
from .loss import LOW_SNR, TIMESTEP_DISTRIBUTIONS, WEIGHTINGS
from .budget import MIN_STEPS, choose_network, fits, image_size
from .recipes import BY_BUDGET, EMA_SHARE, LABELS, RECIPE_KEYS, RECIPES, recipe_values  # noqa: F401 (EMA_SHARE re-exported)
from .runtime import LR_DECAYS, UsageError, require


# Flags that define what is being trained: a resumed run must not change them.
IDENTITY = ("dataset", "data_root", "num_images", "flip", "preset", "unet", "schedule", "zero_snr", "prediction",
            "class_cond", "label_dropout", "batch_size", "seed", "lr", "warmup", "lr_decay", "lr_cooldown",
            "adam_beta2", "ema_decay", "ema_share", "grad_clip", "resolution",
            "offset_noise", "weighting", "timesteps", "timesteps_mean", "timesteps_uniform", "timesteps_low_snr",
            "stf_reference", "dropout")
# What checkpoints written before these flags were recorded were trained with.
UNRECORDED = {"adam_beta2": 0.999, "lr_cooldown": 0.2, "timesteps_mean": 2.4, "ema_share": 0.0, "stf_reference": 0,
              "flip": True}


@dataclass
class TrainConfig:
    """Every setting of a training run. None means "from the dataset's recipe" (RECIPES)."""

    dataset: str = "builtin"
    data_root: str | None = None
    download: bool = True
    num_images: int = 20_000          # size of the built-in set
    flip: bool | None = None          # random horizontal flips of the training batches (and the STF's references)
    resolution: int | None = None     # default: the preset's image_size
    preset: str | None = None
    unet: dict | None = None          # overrides of the preset's UNet config, e.g. {"base_channels": 32}
    schedule: str = "linear"
    zero_snr: bool = True
    prediction: str = "v"
    spacing: str = "trailing"         # for the sample grids drawn during training
    sampler: str | None = None        # the sampler of those grids and of the end-of-run report
    sample_steps: int | None = None
    batch_size: int | None = None     # global batch, split across DDP processes
    lr: float | None = None
    warmup: int | None = None
    lr_decay: str | None = None       # after the warm-up: constant (DDPM), cosine or wsd to 0 at the run's end
    lr_cooldown: float = runtime.WSD_COOLDOWN  # lr_decay wsd: the share of the run at its end over which it falls
    adam_beta2: float | None = None   # Adam's second-moment decay (PyTorch's and DDPM's 0.999; EDM2's 0.99)
    grad_clip: float = 1.0
    weighting: str | None = None      # loss weight per timestep: none (Lin et al.'s v loss), min_snr, or level_mean
    timesteps: str | None = None      # training timesteps: uniform (DDPM), logsnr_normal (EDM-like) or logit_normal (SD3)
    timesteps_mean: float = 2.4       # with logsnr_normal: the mean of the log-SNR normal (EDM's 2.4)
    timesteps_uniform: float | None = None  # with logsnr_normal: the share of uniform timesteps mixed in
    timesteps_low_snr: float | None = None  # with logsnr_normal: the share drawn at log-SNR ~ N(-6, 2) (loss.LOW_SNR)
    stf_reference: int | None = None  # > 0: the Stable Target Field's target over this many reference images; 0: off
    offset_noise: float = 0.0         # Guttenberg's offset noise (Lin et al. Sec. 5.4); 0 = plain N(0, I)
    max_steps: int | None = None
    minutes: float | None = None      # wall-clock budget; 0 or None means no limit
    class_cond: bool | None = None
    label_dropout: float = 0.1        # P(label -> null class): trains the unconditional model for CFG
    ema_decay: float | None = None
    ema_share: float | None = None    # > 0: EMA over about this share of the steps so far (power EMA); 0: ema_decay
    dropout: float | None = None      # default: the preset's
    seed: int = 0
    device: str | None = None         # default: cuda, then mps, then cpu (runtime.default_device)
    threads: int | None = None        # CPU threads for torch (default: torch's choice)
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    sample_every: int | None = None
    ckpt_every: int | None = None
    log_every: int = 10
    num_samples: int = 100
    guidance: float | None = None     # classifier-free guidance of the grids and the quality measure (1: none)
    guidance_rescale: float | None = None  # Lin et al.'s rescale of guided samples (phi of Algorithm 2)
    guidance_from: float | None = None  # guide only at log-SNR >= this (Kynkaenniemi et al. 2024); -inf: every step
    clip_x0: bool = False             # clip each predicted x0 to [-1, 1] when the grids and report sample
    judge_samples: int | None = None  # samples the end-of-run quality measure draws (minidiff.evaluation.metrics); 0: none
    out: str | None = None
    resume: bool = False

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled from the recipe of `self.dataset`."""
        require(self.dataset in RECIPES, f"unknown dataset {self.dataset!r}; choose one of {', '.join(RECIPES)}")
        recipe = RECIPES[self.dataset]
        require(self.ema_decay is None or not self.ema_share,
                f"--ema-decay {self.ema_decay} and --ema-share {self.ema_share} both set the EMA; give one")
        filled = {k: (recipe[k] if getattr(self, k) is None and k in recipe else getattr(self, k))
                  for k in (f.name for f in dataclasses.fields(self))}
        if self.ema_decay is not None and self.ema_share is None:
            filled["ema_share"] = 0.0  # an explicit --ema-decay means that fixed decay
        cfg = TrainConfig(**filled)
        if cfg.class_cond == LABELS:
            cfg.class_cond = has_labels(cfg.dataset, cfg.data_root)
        if cfg.preset == BY_BUDGET:  # not settled by the trainer (budget.settle): the ten-minute network
            cfg.preset = choose_network(image_size(cfg), None, None)[0]
        require(cfg.preset in PRESETS, f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
        if cfg.resolution is None:
            cfg.resolution = native_resolution(cfg) or PRESETS[cfg.preset]["image_size"]
        if cfg.device is None:
            cfg.device = runtime.default_device()
        if cfg.out is None:
            cfg.out = str(Path("runs") / default_run_name(cfg))
        return cfg


def has_labels(dataset: str, data_root: str | None) -> bool:
    """Whether `dataset` comes with classes: Fashion-MNIST and MNIST do, a folder does when its images
    sit in one sub-folder per class (at least two), the layout `data.image_folder` reads as labels."""
    if dataset in datasets.IDX_CLASSES:
        return True
    return dataset == "folder" and bool(data_root) and datasets.folder_classes(data_root) is not None


def native_resolution(cfg: TrainConfig) -> int | None:
    """A folder of square images that all share one size (and Fashion-MNIST and MNIST, 28 x 28) trains
    at that size when the preset's UNet can take it (28 on the small preset: 28 -> 14 -> 7), rather
    than being resized."""
    if cfg.dataset in datasets.IDX_CLASSES:
        size = (28, 28)
    elif cfg.dataset == "folder" and cfg.data_root:
        size = datasets.folder_image_size(cfg.data_root)
    else:
        return None
    if size is None or size[0] != size[1] or not fits(cfg.preset, size[0]):
        return None
    return size[0]


def default_run_name(cfg: TrainConfig) -> str:
    """e.g. builtin-small-patch2-linear-zsnr-v: the choices that the two papers are about."""
    snr = "zsnr" if cfg.zero_snr else "snr"
    return f"{cfg.dataset}-{cfg.preset}-{cfg.schedule}-{snr}-{cfg.prediction}"


# --------------------------------------------------------------------------------------- CLI


def parse_settings(items: list[str]) -> dict:
    """`--set` items -> TrainConfig fields: ["lr=2e-3", "unet.base_channels=64", "lr_decay=cosine"] ->
    {"lr": 0.002, "unet": {"base_channels": 64}, "lr_decay": "cosine"}.

    A value is read as a Python literal (2e-3, True, None, [1, 2]) or else kept as a word (cosine);
    `unet.KEY` sets one key of the preset's UNet config (minidiff.unet.PRESETS). A UsageError names
    an unknown field or key.
    """
    import ast

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unet_keys = sorted(set().union(*(PRESETS[name] for name in PRESETS)) | {"patch_size"})
    out: dict = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip().replace("-", "_")
        require(equals and key, f"--set {item!r}: write NAME=VALUE, e.g. --set lr=2e-3 or --set unet.base_channels=64")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            require(not text.lstrip().startswith(("{", "[", "(")),
                    f"--set {item}: {text!r} is not a Python literal; write it as Python does (True/False/None, "
                    "quoted strings, [1, 2])")
            value = text  # a plain word, e.g. cosine
        if key.startswith("unet."):
            name = key[len("unet."):]
            require(name in unet_keys, f"--set {item}: the UNet has no setting {name!r}; choose one of "
                                       f"{', '.join(unet_keys)}")
            out.setdefault("unet", {})[name] = tuple(value) if isinstance(value, list) else value
            continue
        require(key in fields, f"--set {item}: {key!r} is not a TrainConfig field (a setting of a run: "
                               "`minidiff train --help` lists them, a flag's name with _ for -)")
        kind = str(fields[key].type)
        if kind.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind.startswith("bool"):
            require(isinstance(value, bool), f"--set {item}: {key} is True or False")
        out[key] = value
    return out



def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = build_parser()
    args = vars(p.parse_args(argv))
    settings = args.pop("settings")
    try:
        chosen = parse_settings(settings)
    except UsageError as err:
        p.error(str(err))
    if "unet" in chosen:  # --set unet.a=1 --set unet.b=2 both count
        chosen["unet"] = {**(args.get("unet") or {}), **chosen["unet"]}
    return TrainConfig(**{**args, **chosen})


def build_parser() -> argparse.ArgumentParser:
    """The flags of `minidiff train`, one per TrainConfig field; a recipe-dependent flag's help ends
    with each recipe's value, read from RECIPES, so the help cannot drift from the recipes."""
    p = argparse.ArgumentParser(
        prog="minidiff train",
        description="Train a pixel-space diffusion UNet with the recipe of its dataset (minidiff/training/recipes.py: "
                    "builtin, the main job on the built-in shapes; folder, a folder of images, also the recipe of "
                    "fashion-mnist and mnist; cifar10, DDPM's; Lin et al.'s fixes on in each). A flag left out takes "
                    "the recipe's value, which its help names. Also python train_cifar.py.",
        formatter_class=HelpFormatter)
    d = TrainConfig()
    flag = argparse.BooleanOptionalAction
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=datasets.DATASETS, default=d.dataset, help="what to train on")
    data.add_argument("--data-root", help="CIFAR-10 folder (holds cifar-10-batches-py), the folder of the four idx files "
                                           "(fashion-mnist, mnist; Debian: /usr/share/datasets/fashion-mnist), or an image folder")
    data.add_argument("--download", action=flag, default=d.download, help="download CIFAR-10 or (Fashion-)MNIST if missing")
    data.add_argument("--num-images", type=int, default=d.num_images, help="size of the built-in set")
    data.add_argument("--resolution", type=int, help="image side (default: the preset's)")
    data.add_argument("--flip", action=flag,
                      help="random horizontal flips of the training images (DDPM's; off where images face one "
                           "way, as Fashion-MNIST's shoes)")
    model = p.add_argument_group("model and diffusion")
    model.add_argument("--preset", choices=sorted(PRESETS),
                       help=f"UNet preset; 'by budget' takes the largest network --minutes buys {MIN_STEPS:,} steps of at "
                            "the speed measured at the start: small-patch2, medium-patch2, or small for 28 x 28 "
                            "images (training/budget.py)")
    model.add_argument("--dropout", type=float, help="override the preset's dropout")
    model.add_argument("--schedule", choices=SCHEDULES, default=d.schedule,
                       help="noise schedule: a beta schedule, or flow, the rectified flow (zero terminal SNR by construction)")
    model.add_argument("--zero-snr", action=flag, default=d.zero_snr, help="rescale to zero terminal SNR (Lin et al. Alg. 1)")
    model.add_argument("--prediction", choices=PREDICTIONS, default=d.prediction, help="model output (v: Lin et al. Sec. 3.2; u = eps - x0: the flow's velocity, with --schedule flow)")
    model.add_argument("--class-cond", action=flag,
                       help="condition on class labels (--no-class-cond opts out)")
    model.add_argument("--label-dropout", type=float, default=d.label_dropout, help="P(null label), for classifier-free guidance")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=int, help="global batch size")
    opt.add_argument("--lr", type=float, help="Adam learning rate")
    opt.add_argument("--warmup", type=int, help="linear learning-rate warm-up steps")
    opt.add_argument("--lr-decay", choices=LR_DECAYS,
                     help="after the warm-up: constant, cosine to 0 at the end (of --max-steps or --minutes), or wsd: "
                          "constant, then linear to 0 over the last --lr-cooldown of the run")
    opt.add_argument("--lr-cooldown", type=float, default=d.lr_cooldown,
                     help="with --lr-decay wsd: the share of the run, at its end, over which the rate falls to 0")
    opt.add_argument("--adam-beta2", type=float,
                     help="Adam's second-moment decay: 1 / (1 - beta2) steps of squared gradients scale each "
                          "step")
    opt.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm")
    opt.add_argument("--weighting", choices=WEIGHTINGS, default=d.weighting,
                     help="loss weight per timestep (level_mean: each level's loss over its running mean, as EDM2's "
                          "learned weighting)")
    opt.add_argument("--timesteps", choices=TIMESTEP_DISTRIBUTIONS,
                     help="how training timesteps are drawn (logsnr_normal: log-SNR ~ N(--timesteps-mean, 2.4); logit_normal: "
                          "logit(s) ~ N(0, 1) of the flow's time s, as SD3; each mixed with uniform)")
    opt.add_argument("--timesteps-mean", type=float, default=d.timesteps_mean,
                     help="with --timesteps logsnr_normal: the mean of the log-SNR normal (lower: noisier levels)")
    opt.add_argument("--timesteps-uniform", type=float,
                     help="with --timesteps logsnr_normal: the share of uniform timesteps (they train the noisy end)")
    opt.add_argument("--timesteps-low-snr", type=float,
                     help=f"with --timesteps logsnr_normal: the share drawn at log-SNR ~ N{LOW_SNR}, where an "
                          "image's overall brightness is decided")
    opt.add_argument("--stf-reference", type=int, metavar="K",
                     help="train on the Stable Target Field (Xu et al. 2023): the target's x0 is E[x0 | x_t] over x0 "
                          "and K reference images, so the noisiest levels learn the data's mean, not one image (0: off)")
    opt.add_argument("--offset-noise", type=float, default=d.offset_noise,
                     help="offset-noise strength (the earlier brightness fix Lin et al. compare against; 0.1 is usual)")
    opt.add_argument("--ema-decay", type=float, help="EMA decay per step (a fixed length: 1 / (1 - d) steps)")
    opt.add_argument("--ema-share", type=float,
                     help="EMA over about this share of the steps so far, whenever the run stops (Karras et al. "
                          "2024's power EMA; 0: the fixed --ema-decay)")
    opt.add_argument("--max-steps", type=int, help="training steps")
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
    run.add_argument("--sampler", choices=SAMPLERS,
                     help="sampler of those grids and the quality report")
    run.add_argument("--sample-steps", type=int, help="sampler steps for those grids")
    run.add_argument("--spacing", choices=SPACINGS, default=d.spacing, help="timestep spacing for those grids")
    run.add_argument("--num-samples", type=int, default=d.num_samples, help="images per grid")
    run.add_argument("--guidance", type=float,
                     help="classifier-free guidance weight of the grids and the quality measure (1: none)")
    run.add_argument("--guidance-rescale", type=float,
                     help="Lin et al.'s rescale of guided samples")
    run.add_argument("--guidance-from", type=float,
                     help="guide only where log-SNR >= this, the report and the grids (-inf: every step; write "
                          "--guidance-from=-inf)")
    run.add_argument("--clip-x0", action=flag, default=d.clip_x0,
                     help="clip each predicted x0 to [-1, 1] when the grids and the report sample (DDPM's sampler "
                          "does; eps prediction without zero SNR needs it)")
    run.add_argument("--judge-samples", type=int,
                     help="samples scored at the end by minidiff.evaluation.metrics (0: none)")
    run.add_argument("--ckpt-every", type=int, help="steps between checkpoints")
    run.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics lines")
    run.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                     help="any setting of the run by its name, repeatable: --set lr=2e-3, --set unet.base_channels=64 "
                          "(a key of the UNet preset); the checkpoint's config records it")
    for action in p._actions:  # every recipe-dependent flag names each recipe's value, read from RECIPES
        if action.dest in RECIPE_KEYS:
            action.help += f" (recipe: {recipe_values(action.dest)})"
    return p


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
    require(0 <= cfg.ema_share <= 1, f"--ema-share must lie in [0, 1] (0: use --ema-decay), got {cfg.ema_share}")
    require(0 < cfg.adam_beta2 < 1, f"--adam-beta2 must lie in (0, 1), got {cfg.adam_beta2}")
    require(0 < cfg.lr_cooldown <= 1, f"--lr-cooldown must lie in (0, 1] (a share of the run), got {cfg.lr_cooldown}")
    require(math.isfinite(cfg.timesteps_mean) and abs(cfg.timesteps_mean) <= 20,
            f"--timesteps-mean must be a log-SNR between -20 and 20 (EDM: 2.4), got {cfg.timesteps_mean}")
    require(0 <= cfg.stf_reference <= 1_000_000,
            f"--stf-reference must be 0 (off) or a number of reference images, got {cfg.stf_reference}")
    require(0 <= cfg.label_dropout < 1, f"--label-dropout must lie in [0, 1), got {cfg.label_dropout}")
    require(cfg.dropout is None or 0 <= cfg.dropout < 1, f"--dropout must lie in [0, 1), got {cfg.dropout}")
    require(cfg.offset_noise >= 0, f"--offset-noise must be 0 or more, got {cfg.offset_noise}")
    require(0 < cfg.timesteps_uniform <= 1,
            f"--timesteps-uniform must lie in (0, 1]: without uniform timesteps the zero-SNR step is never trained, "
            f"got {cfg.timesteps_uniform}")
    require(0 <= cfg.timesteps_low_snr <= 1 - cfg.timesteps_uniform,
            f"--timesteps-low-snr must lie in [0, 1 - --timesteps-uniform] = [0, {1 - cfg.timesteps_uniform:g}], "
            f"got {cfg.timesteps_low_snr}")
    require(cfg.minutes is None or (cfg.minutes >= 0 and math.isfinite(cfg.minutes)),
            f"--minutes must be 0 (no limit) or a positive number, got {cfg.minutes}")
    require(cfg.sample_steps <= 1000, f"--sample-steps must be at most 1000 (the training steps), got {cfg.sample_steps}")
    require(cfg.num_samples >= 1, f"--num-samples must be at least 1, got {cfg.num_samples}")
    check_guidance_from(cfg.guidance_from)
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
    runtime.check_device(cfg.device)
    # the flag pairs objectives.check_prediction / loss.check_weighting refuse, said as flags
    require(cfg.schedule != "flow" or cfg.zero_snr,
            "--schedule flow reaches pure noise at its last step (zero terminal SNR by construction), so "
            "--no-zero-snr contradicts it. Drop --no-zero-snr, or choose a beta schedule.")
    require(cfg.prediction != "u" or cfg.schedule == "flow",
            f"--prediction u is the rectified flow's velocity; with --schedule {cfg.schedule} train v (Lin et al.), "
            "or use --schedule flow.")
    require(cfg.prediction != "eps" or not cfg.zero_snr,
            "--prediction eps cannot be trained with --zero-snr: at the last step the input is pure noise, so "
            "eps says nothing about the image. Use --prediction v (Lin et al.) or x0, or --no-zero-snr.")
    require(cfg.weighting != "min_snr" or not cfg.zero_snr,
            "--weighting min_snr gives the zero-SNR step a weight of 0, so --zero-snr's last step would never be "
            "trained. Use --weighting none (Lin et al.'s v loss), or --no-zero-snr.")
    runtime.check_output_folder(cfg.out, "--out")
    require(cfg.dataset != "folder" or not _same_or_inside(cfg.out, cfg.data_root),
            f"--out {cfg.out} lies inside --data-root {cfg.data_root}: the run's sample grids would become "
            "training images. Choose an --out outside the image folder.")


def _same_or_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` is `folder` or lies below it (after resolving links and '..')."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


# ------------------------------------------------------------------ what a config describes


def make_schedule(cfg: TrainConfig) -> Schedule:
    return Schedule.make(cfg.schedule, 1000, zero_snr=cfg.zero_snr)


def build_model(cfg: TrainConfig, num_classes: int, channels: int = 3) -> UNet:
    overrides = dict(cfg.unet or {}, image_size=cfg.resolution, num_classes=num_classes if cfg.class_cond else None,
                     in_channels=channels, out_channels=channels)
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    return UNet.from_preset(cfg.preset, **overrides)


def plain_config(cfg: TrainConfig) -> dict:
    """The config as plain Python types (what weights_only loading accepts)."""
    return dataclasses.asdict(cfg)

