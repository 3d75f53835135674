"""What a training run shows of its model: its settings at the start, sample grids during the run, a
quality report at its end.

    describe        the resolved settings, a line each with the function that carries it out

    sample_grid     cfg.num_samples images from the EMA model with a fixed seed, saved as one PNG
    judge_samples   cfg.judge_samples images scored by minidiff.evaluation.metrics beside its calibration,
                    and checked for copies of training images; printed and saved to quality.json

The report's sampler settings come from `sample.report_sampling`; the checkpoint keeps them, so
that `minidiff sample CKPT` with no flags draws what the run was judged on.

Both are called by the loop in minidiff.training.train.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ..samplers import sample
from ..schedules import Schedule
from ..unet import UNet
from . import data as datasets
from .config import TrainConfig, plain_config
from .loss import LOW_SNR
from .sample import describe_sampling, report_sampling, sampler_kwargs


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
    settings = sampler_kwargs(report_sampling(plain_config(cfg)))  # the grids draw as the report does
    with torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16):
        guided = settings["guidance"] != 1.0
        x = sample(model, shape, schedule, prediction=cfg.prediction, y=y,
                   uncond_y=torch.full_like(y, num_classes) if guided else None, generator=gen, device=device,
                   progress=False, **settings)
    images = datasets.to_uint8(x.float()).cpu()
    torchvision.utils.save_image(images.float() / 255, path, nrow=nrow, padding=1)
    return images


def judge_samples(model, cfg: TrainConfig, data, out: Path, device) -> dict | None:
    """Draw cfg.judge_samples images from the EMA model (every class in turn, the grids' sampler)
    and print minidiff.evaluation.metrics' report: Frechet distance in the features of a small
    network trained on the real images (a classifier when they have classes, else one trained
    without labels), class accuracy and brightness W1, beside their calibration on real data; then
    the copy check (how near the samples come to the training images, against real images).
    Saved to quality.json."""
    if not cfg.judge_samples or cfg.dataset == "cifar10":
        return None
    from ..evaluation import metrics
    from ..evaluation.copies import copy_check, format_copy_check
    from .sample import generate

    if cfg.dataset == "builtin":
        judge = metrics.Judge.for_dataset("builtin", resolution=cfg.resolution)
    else:  # the images the model trained on, as they are in memory: labelled or not
        where = str(Path(cfg.data_root).expanduser().resolve()) if cfg.data_root else ""
        source = where if cfg.dataset == "folder" else "-".join(filter(None, (cfg.dataset, where)))
        judge = metrics.Judge.for_images(data.images, data.labels, data.classes, source, flip=cfg.flip)
    labels = torch.arange(cfg.judge_samples) % data.num_classes if cfg.class_cond else None
    start = time.perf_counter()
    settings = report_sampling(plain_config(cfg))
    images = generate(model, plain_config(cfg), cfg.judge_samples, labels=labels, seed=cfg.seed + 777,
                      device=device, progress=False, **settings)
    seconds = time.perf_counter() - start
    score = judge.score(images, labels)
    copies = copy_check(metrics.as_uint8_images(images, channels=data.channels, resolution=data.resolution)[0],
                        data.images)
    print(f"quality of {cfg.judge_samples} EMA samples ({describe_sampling(settings)}; drawn in {seconds:.0f} s):")
    print(metrics.format_table(score, judge.calibration(score["num"]), judge.describe()))
    print(format_copy_check(copies))
    result = dict(score, calibration=judge.calibration(score["num"]), copies=copies, sampling=settings,
                  sample_steps=settings["steps"], guidance=settings["guidance"], sampling_s=seconds,
                  features="classifier" if judge.real.labelled else "self-supervised")
    (out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def describe(cfg: TrainConfig, model: UNet) -> list[str]:
    """The run's resolved settings, a line each, with the file and function that does each one:
    printed when a run starts (docs/main_job.md explains the main job's)."""
    unet = model.config
    width = f"{unet['base_channels']} x {list(unet['channel_mults'])}, patch {unet['patch_size']}"
    zsnr = ", rescaled to zero terminal SNR (schedules.rescale_zero_terminal_snr)" if cfg.zero_snr else ""
    if cfg.timesteps == "uniform":
        density = "uniform (loss.draw_timesteps)"
    else:
        law = f"log-SNR ~ N({cfg.timesteps_mean:g}, 2.4)" if cfg.timesteps == "logsnr_normal" else "logit(s) ~ N(0, 1)"
        density = (f"{law}, {cfg.timesteps_low_snr:.0%} at N{LOW_SNR}, {cfg.timesteps_uniform:.0%} uniform "
                   "(loss.timestep_probabilities)")
    ema = (f"power EMA over {cfg.ema_share:.3g} of the steps so far" if cfg.ema_share else f"decay {cfg.ema_decay}")
    guided = cfg.class_cond and cfg.guidance != 1
    guidance = (f"{cfg.guidance:g}, rescale {cfg.guidance_rescale:g}, from log-SNR {cfg.guidance_from:g} "
                "(guidance.cfg via samplers.guided_output)" if guided else "none")
    rows = [
        ("data", f"{cfg.dataset}, {cfg.resolution}x{cfg.resolution}, batch {cfg.batch_size}, "
                 f"{'random horizontal flips' if cfg.flip else 'no flips'} (data.Batches)"
                 + (f", {cfg.label_dropout:.0%} of labels dropped (train.drop_labels)" if cfg.class_cond else "")),
        ("network", f"UNet preset {cfg.preset}: {width}, {model.num_parameters() / 1e6:.2f}M parameters (unet.UNet)"),
        ("schedule", f"{cfg.schedule}{zsnr}"),
        ("target", f"{cfg.prediction} (objectives.target)"),
        ("timesteps", density),
        ("weighting", f"{cfg.weighting} (loss.recipe_loss" + (", loss.LossPerLevel)" if cfg.weighting == "level_mean" else ")")),
        ("target field", f"Stable Target Field over {cfg.stf_reference} images below log-SNR 0 (loss.stable_target)"
                         if cfg.stf_reference else "off"),
        ("optimiser", f"Adam lr {cfg.lr:g}, beta2 {cfg.adam_beta2:g}, warm-up {cfg.warmup}, decay {cfg.lr_decay}, "
                      f"clip {cfg.grad_clip:g} (runtime.learning_rate)"),
        ("EMA", f"{ema} (ema.EMA)"),
        ("length", f"{cfg.minutes:g} minutes or {cfg.max_steps} steps" if cfg.minutes else f"{cfg.max_steps} steps"),
        ("sampler", f"{cfg.sampler}, {cfg.sample_steps} {cfg.spacing} steps (samplers.sample)"),
        ("guidance", guidance),
    ]
    return [f"  {name:13s}{value}" for name, value in rows]
