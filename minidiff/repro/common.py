"""What the trained-model experiments share: run sizes, the model cache, sampling, brightness maths.

Lin et al.'s brightness experiment needs a handful of models that differ in one choice each
(schedule, prediction target, offset noise). `trained_model` trains one through the project's
own trainer (`minidiff.training.train.train`, the code behind `train_cifar.py`) the first time it is asked
for, and loads the checkpoint every later time, so `brightness`, `at-T`, `spacing` and
`cfg-rescale` share the same few models. The cache key is the full training config: change the
scale or a flag and a new model is trained beside the old one.

Scales (`--scale`):
    cpu      the default: a 0.27M-parameter UNet (`repro-mini`, like the `small` preset), 16x16
             built-in shapes, 600 steps per model: about 4 to 7 minutes a model on two CPU cores
    test     the `tiny` UNet, 8 steps: checks that every command runs (used by the tests)
    cifar10  DDPM's 35.7M UNet on CIFAR-10, 100k steps per model, bf16: hours on one GPU

Brightness (Lin et al. Sec. 1 and Fig. 1): the quantity the flawed schedules get wrong is the mean
of an image, its lowest frequency. `image_brightness` measures it, `wasserstein1` compares the
distribution of samples with the data's, and `brightness_stats` adds the share of very dark
(mean < -0.7) and very bright (mean > 0.7) images, the ends a flawed model cannot reach.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..samplers import sample
from ..schedules import Schedule
from ..training import data as datasets
from ..training.cli import HelpFormatter, add_common_flags, fail, resolve_device
from ..unet import PRESETS
from .figures import grid_figure, mosaic, pyplot, save_figure, to_display  # noqa: F401 (the experiments import them from here)

# The CPU scale's network (0.27M parameters, 0.03 GFLOP per 16x16 image): 16 base channels, levels
# 1-2-2 with one ResBlock each, attention only in the middle block, so that a model trains in
# minutes on two cores. Written out in full (not derived from the `small` preset, which may be
# retuned) so that the documented results stay reproducible. It is this module's own config:
# `unet.PRESETS` is not changed (see `network_config` and `_lent_to_trainer`).
NETWORKS = {
    "repro-mini": dict(
        in_channels=3, out_channels=3, image_size=16, base_channels=16, channel_mults=(1, 2, 2),
        num_res_blocks=1, attn_resolutions=(), dropout=0.0, num_heads=1, num_classes=None, norm_groups=16,
    ),
}

DARK, BRIGHT = -0.7, 0.7  # per-image mean brightness thresholds (images live in [-1, 1])

# Run sizes. Every trained-model experiment reads its sizes from here, so one flag scales them all.
# The device is --device's (cuda if available, else cpu); cifar10 refuses to start without a GPU
# unless --device cpu asks for it.
SCALES = {
    "cpu": dict(dataset="builtin", num_images=10_000, preset="repro-mini", resolution=16, batch_size=64,
                lr=2e-3, warmup=50, ema_decay=0.95, max_steps=600, bf16=False,
                num_samples=500, sample_batch=250, sample_steps=50),
    "test": dict(dataset="builtin", num_images=64, preset="tiny", resolution=16, batch_size=8,
                 lr=1e-3, warmup=2, ema_decay=0.9, max_steps=8, bf16=False,
                 num_samples=10, sample_batch=10, sample_steps=3),
    "cifar10": dict(dataset="cifar10", num_images=50_000, preset="ddpm-cifar10", resolution=32,
                    batch_size=128, lr=2e-4, warmup=5000, ema_decay=0.9999, max_steps=100_000,
                    bf16=True, num_samples=10_000, sample_batch=1000, sample_steps=50),
}


@dataclass(frozen=True)
class ModelSpec:
    """One training setup of the brightness study: what differs between the models."""

    name: str
    schedule: str = "scaled_linear"
    zero_snr: bool = False
    prediction: str = "eps"
    offset_noise: float = 0.0  # Guttenberg's offset noise (Lin et al. Sec. 5.4), the earlier fix
    weighting: str = "none"    # the loss weight per timestep (training.loss): none is Lin et al.'s v loss

    @property
    def label(self) -> str:
        names = {"scaled_linear": "SD schedule"}
        snr = ("zero-SNR " if self.zero_snr else "") + names.get(self.schedule, f"{self.schedule} schedule")
        snr = "zero-SNR" if snr == "zero-SNR SD schedule" else snr
        extra = f", offset noise {self.offset_noise:g}" if self.offset_noise else ""
        extra += f", {self.weighting} weighting" if self.weighting != "none" else ""
        return f"{snr}, {self.prediction}{extra}"


# The models of the study. Zero SNR comes with v only: eps prediction is refused on a zero-SNR
# schedule (objectives.check_prediction), because at the last step the input is the noise itself.
MODELS = {
    "sd-eps": ModelSpec("sd-eps"),                                          # Stable Diffusion's choice
    "sd-v": ModelSpec("sd-v", prediction="v"),                              # v alone
    "zsnr-v": ModelSpec("zsnr-v", zero_snr=True, prediction="v"),           # zero SNR (+ v, required)
    "sd-eps-offset": ModelSpec("sd-eps-offset", offset_noise=0.1),          # offset noise, the old fix
    # the questions lab's: zero SNR designed in (repro zero-snr-designs) and other loss weights (repro weighting)
    "cosine-zsnr-v": ModelSpec("cosine-zsnr-v", schedule="cosine", zero_snr=True, prediction="v"),
    "flow-v": ModelSpec("flow-v", schedule="flow", zero_snr=True, prediction="v"),
    "sd-v-minsnr": ModelSpec("sd-v-minsnr", prediction="v", weighting="min_snr"),
    "zsnr-v-level": ModelSpec("zsnr-v-level", zero_snr=True, prediction="v", weighting="level_mean"),
}


# ----------------------------------------------------------------------------------- arguments


class _ExperimentParser(argparse.ArgumentParser):
    """An experiment's parser that also refuses, in one line before any work, a folder flag
    (--out, --figures-dir, --models) that names an existing file."""

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        for flag in ("out", "figures_dir", "models"):
            path = getattr(parsed, flag, None)
            for p in (Path(path), *Path(path).parents) if path else ():
                if p.exists():
                    if not p.is_dir():
                        fail(f"--{flag.replace('_', '-')} {path} cannot be a folder: {p} is a file")
                    break
        return parsed


def experiment_parser(name: str, description: str, *, trained: bool = True) -> argparse.ArgumentParser:
    """The flags every experiment has: --out and --figures-dir; trained ones add --scale, --models,
    --seed and --device (`minidiff.training.cli`), and the size overrides."""
    p = _ExperimentParser(prog=f"minidiff repro {name}", description=description,
                          formatter_class=HelpFormatter)
    p.add_argument("--out", default=f"runs/repro/{name}", help="folder for the figures and the JSON")
    p.add_argument("--figures-dir", help="also copy the figures here (docs/figures updates the course's figures; default: none)")
    if trained:
        p.add_argument("--scale", choices=sorted(SCALES), default="cpu",
                       help="run size: cpu (default, minutes), test (seconds), cifar10 (a GPU, hours)")
        p.add_argument("--models", default="runs/repro/models",
                       help="cache of trained models, shared by the experiments")
        add_common_flags(p)
        p.add_argument("--train-steps", type=int, help="override the scale's training steps per model")
        p.add_argument("--num-samples", type=int, help="override the scale's samples per setup")
        p.add_argument("--threads", type=int,
                       help="CPU threads for torch (None: torch's choice; 1 is fastest on a CPU shared with other jobs)")
    return p


def scale_of(args) -> dict:
    """The scale's sizes with the command line's overrides and device applied."""
    if args.threads:
        torch.set_num_threads(args.threads)
    s = dict(SCALES[args.scale])
    s["device"] = str(resolve_device(args.device))
    if args.scale == "cifar10" and args.device is None and s["device"] == "cpu":
        fail("scale 'cifar10' trains for hours on a GPU, and CUDA is not available; "
             "pass --device cpu to run it anyway (days), or use --scale cpu")
    if args.train_steps:
        s["max_steps"] = args.train_steps
    if args.num_samples:
        s["num_samples"] = args.num_samples
    return s


def publish_figures(out: Path, figures_dir: str | None, names: list[str]) -> None:
    """Copy the run's figures `names` from `out` into `figures_dir` (--figures-dir), if given; the
    same folder given twice is written once (there is nothing to copy)."""
    if not figures_dir or Path(figures_dir).resolve() == Path(out).resolve():
        return
    Path(figures_dir).mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(Path(out) / name, Path(figures_dir) / name)
        print(f"copied {name} to {figures_dir}")


def write_json(out: Path, name: str, result: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


# -------------------------------------------------------------------------------- the models


def train_config(spec: ModelSpec, scale: dict, models_dir: Path, seed: int = 0):
    """The TrainConfig of `spec` at this scale, and the folder its checkpoint lives in.

    Every model is class-conditional with 10% label dropout (so the cfg-rescale experiment can
    guide it) and is trained for a fixed number of steps (not minutes), so a rerun gives the
    same model.
    """
    from ..training.train import UNRECORDED, TrainConfig

    cfg = TrainConfig(
        dataset=scale["dataset"], num_images=scale["num_images"], resolution=scale["resolution"],
        preset=scale["preset"], schedule=spec.schedule, zero_snr=spec.zero_snr,
        prediction=spec.prediction, batch_size=scale["batch_size"], lr=scale["lr"],
        warmup=scale["warmup"], adam_beta2=0.999, ema_decay=scale["ema_decay"], ema_share=0.0,
        max_steps=scale["max_steps"], minutes=0, class_cond=True, label_dropout=0.1, seed=seed,
        device=scale["device"], bf16=scale["bf16"], sample_every=0, ckpt_every=max(1000, scale["max_steps"] // 10),
        num_samples=20, sample_steps=10, log_every=10, offset_noise=spec.offset_noise, judge_samples=0,
        timesteps="uniform", timesteps_uniform=1.0, timesteps_low_snr=0.0, weighting=spec.weighting, guidance=1.0, stf_reference=0)
    # The key holds the network's full config too: a preset retuned under the same name is a new model.
    key = {**dataclasses.asdict(cfg), "network": network_config(cfg.preset)}
    key.pop("device")
    key.pop("out")
    key = {k: v for k, v in key.items() if k not in UNRECORDED or v != UNRECORDED[k]}  # newer settings: same key
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    cfg.out = str(models_dir / f"{spec.name}-{scale['preset']}-{scale['resolution']}px-{digest}")
    return cfg


def network_config(preset: str) -> dict:
    """The UNet config a scale's `preset` names: one of this module's NETWORKS, or a `unet.PRESETS` entry."""
    return NETWORKS[preset] if preset in NETWORKS else PRESETS[preset]


@contextlib.contextmanager
def _lent_to_trainer(preset: str):
    """`minidiff.training.train` builds its network by preset name: for the length of one training call, and
    only then, a network of this module is listed among the presets under its name."""
    if preset not in NETWORKS or preset in PRESETS:
        yield
        return
    PRESETS[preset] = NETWORKS[preset]
    try:
        yield
    finally:
        del PRESETS[preset]


@dataclass
class TrainedModel:
    """An EMA model ready to sample, with what sampling needs to know about it."""

    spec: ModelSpec
    model: torch.nn.Module
    schedule: Schedule
    num_classes: int
    image_size: int
    folder: str
    train_seconds: float  # how long its training took (recorded in the cache when it was trained)
    trained_now: bool     # False when it came from the cache

    @property
    def prediction(self) -> str:
        return self.spec.prediction


def trained_model(name: str, scale: dict, models_dir, seed: int = 0) -> TrainedModel:
    """The model `name` (a key of MODELS): loaded from the cache, or trained and cached first."""
    from ..training.train import CHECKPOINT, load_checkpoint, train
    from ..unet import UNet

    spec = MODELS[name]
    cfg = train_config(spec, scale, Path(models_dir), seed)
    ckpt = Path(cfg.out) / CHECKPOINT
    record = Path(cfg.out, "repro_spec.json")
    trained_now = not ckpt.exists() or load_checkpoint(ckpt)["step"] < cfg.max_steps
    if trained_now:
        cfg.resume = ckpt.exists()  # a run cut short continues where it stopped
        print(f"training {name} ({spec.label}) for {cfg.max_steps} steps -> {cfg.out}")
        start = time.perf_counter()
        with _lent_to_trainer(cfg.preset):
            train(cfg)
        record.write_text(json.dumps({**dataclasses.asdict(spec), "train_seconds": time.perf_counter() - start,
                                      "threads": torch.get_num_threads()}, indent=1) + "\n")
    seconds = json.loads(record.read_text())["train_seconds"] if record.exists() else math.nan
    saved = load_checkpoint(ckpt)
    model = UNet(**saved["model_config"])
    model.load_state_dict(saved["ema"])
    model = model.to(scale["device"]).eval()
    return TrainedModel(spec, model, Schedule.make(spec.schedule, 1000, zero_snr=spec.zero_snr),
                        model.config["num_classes"], model.config["image_size"], cfg.out, seconds, trained_now)


@functools.lru_cache(maxsize=2)
def _dataset(dataset: str, num_images: int, resolution: int, seed: int):
    return datasets.load_dataset(dataset, resolution=resolution, seed=seed, num=num_images)


def training_data(scale: dict, seed: int = 0) -> datasets.ImageSet:
    """The images the models were trained on (the reference every sample is compared with)."""
    return _dataset(scale["dataset"], scale["num_images"], scale["resolution"], seed)


# ---------------------------------------------------------------------------------- sampling


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ...: every class equally often."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def draw(tm: TrainedModel, n: int, scale: dict, *, steps: int, spacing: str, guidance: float = 1.0,
         guidance_rescale: float = 0.0, labels: torch.Tensor | None = None, seed: int = 0, desc: str = "",
         init: torch.Tensor | None = None, mask: torch.Tensor | None = None, **sample_kwargs) -> torch.Tensor:
    """n samples of `tm` (float [n, 3, H, W], on the CPU, not clamped), drawn with DDIM (eta = 0).

    The same seed gives the same starting noise x_T to every model and spacing, so differences
    between setups are the setups', not the noise's. Labels default to balanced classes.
    `init` ([n, 3, H, W] in [-1, 1]) and `mask` (one for all, or [n, ...]) edit images instead
    (samplers.sample's init and mask, split into the same batches); the other keywords (strength,
    resample, threshold, timesteps, ...) go to samplers.sample as they are.
    """
    from tqdm.auto import tqdm

    device = torch.device(scale["device"])
    labels = balanced_labels(n, tm.num_classes) if labels is None else labels
    gen = torch.Generator().manual_seed(seed)
    out = []
    batch = scale["sample_batch"]
    for start in tqdm(range(0, n, batch), desc=desc or f"{tm.spec.name} {spacing} {steps}", unit="batch",
                      leave=False):
        y = labels[start:start + batch].to(device)
        x_T = torch.randn((len(y), 3, tm.image_size, tm.image_size), generator=gen)
        edit = {}
        if init is not None:
            edit["init"] = init[start:start + batch]
        if mask is not None:
            edit["mask"] = mask[start:start + batch] if mask.ndim == 4 and len(mask) == n else mask
        with torch.autocast(device.type, torch.bfloat16, enabled=scale["bf16"]):
            x = sample(tm.model, x_T.shape, tm.schedule, prediction=tm.prediction, steps=steps,
                       spacing=spacing, y=y, uncond_y=torch.full_like(y, tm.num_classes),
                       guidance=guidance, guidance_rescale=guidance_rescale, x_T=x_T.to(device), device=device,
                       progress=False, generator=torch.Generator().manual_seed(seed * 1_000_003 + start),
                       **edit, **sample_kwargs)
        out.append(x.float().cpu())
    return torch.cat(out)


# -------------------------------------------------------------------------------- brightness


def image_brightness(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean over channels and pixels of images in [-1, 1] (float, clamped as when
    saved) or uint8 [0, 255] (converted first)."""
    x = datasets.to_float(images) if images.dtype == torch.uint8 else images.float().clamp(-1, 1)
    return x.flatten(1).mean(dim=1)


def wasserstein1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Wasserstein-1 distance between the empirical laws of two 1-D samples.

    W1 = integral |F_a(x) - F_b(x)| dx, with F the empirical CDFs: exact for any two sample
    sizes (the CDFs are step functions, so the integral is a finite sum over the merged points).
    """
    a, b = a.double().sort().values, b.double().sort().values
    points = torch.cat([a, b]).sort().values
    fa = torch.searchsorted(a, points, right=True).double() / len(a)
    fb = torch.searchsorted(b, points, right=True).double() / len(b)
    return float(((fa - fb).abs()[:-1] * points.diff()).sum())


def brightness_stats(samples: torch.Tensor, data_brightness: torch.Tensor) -> dict:
    """How far the samples' brightness law is from the data's, and how much of each end it reaches."""
    b = image_brightness(samples)
    return {
        "wasserstein1": wasserstein1(b, data_brightness),
        "dark_share": float((b < DARK).double().mean()),
        "bright_share": float((b > BRIGHT).double().mean()),
        "brightness_mean": float(b.mean()),
        "brightness_std": float(b.std()),
        "brightness_min": float(b.min()),
        "brightness_max": float(b.max()),
    }


def data_brightness_stats(data_brightness: torch.Tensor) -> dict:
    return {
        "dark_share": float((data_brightness < DARK).double().mean()),
        "bright_share": float((data_brightness > BRIGHT).double().mean()),
        "brightness_mean": float(data_brightness.mean()),
        "brightness_std": float(data_brightness.std()),
        "brightness_min": float(data_brightness.min()),
        "brightness_max": float(data_brightness.max()),
    }


# ----------------------------------------------------------------------------------- figures


def by_brightness(images: torch.Tensor, k: int) -> torch.Tensor:
    """k images at evenly spaced quantiles of brightness, darkest first: the range a set covers."""
    order = image_brightness(images).argsort()
    pick = torch.linspace(0, len(order) - 1, k).round().long()
    return images[order[pick]]


def brightness_strips(rows: list[tuple[str, torch.Tensor]], path: Path, title: str, k: int = 12,
                      row_height: float = 0.68, label_width: float = 3.2) -> None:
    """One labelled row per (label, images): k images at evenly spaced brightness quantiles."""
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(k * 0.55 + label_width, len(rows) * row_height))
    for ax, (label, images) in zip(axes, rows):
        ax.imshow(mosaic(by_brightness(images, k), nrow=k).numpy(), interpolation="nearest")
        ax.set(xticks=[], yticks=[])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    axes[0].set_title(title, fontsize=8)
    save_figure(fig, path, dpi=110)


def timer() -> callable:
    """seconds() since the call: for the run times reported in the JSON."""
    start = time.perf_counter()
    return lambda: round(time.perf_counter() - start, 1)


def finite(value) -> bool:
    """True when every number inside a JSON-like value is finite (what the tests check)."""
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True
