"""Pixel-space diffusion training: the loop, to read top to bottom (run it as `train_cifar.py`).

    config       every flag, with a recipe of defaults per dataset: minidiff.training.config
    setup        DDP when launched by torchrun, seeds, data held as one tensor, UNet, EMA, Adam
    the loop     batch(step) -> recipe_loss -> backward -> clip -> Adam -> EMA, with a progress bar
    outputs      metrics.jsonl, loss.png, checkpoint.pt; samples/step_*.png from the EMA model and
                 the end-of-run quality.json (minidiff.training.report)

Defaults for CIFAR-10 are DDPM's recipe (Ho et al. 2020, Sec. 4 and App. B): the 35.7M UNet with
dropout 0.1, Adam at lr 2e-4 after a 5000-step linear warm-up, batch 128, gradient norm clipped
at 1, EMA decay 0.9999, random horizontal flips. The noise schedule, prediction target and
sampler spacing default to Lin et al.'s fixes (zero terminal SNR, v prediction, trailing spacing);
`--no-zero-snr --prediction eps` gives back DDPM's own choice, one flag each.

The checkpoint is one file holding model, EMA, optimiser, step, RNG states and the full config, all
tensors and plain types (it loads with torch.load(weights_only=True)), written to a temporary file
and renamed so a crash never leaves half a checkpoint. The data order is a function of (seed,
step) alone (see data.Batches), so `--resume` continues bit for bit.

The config's names (TrainConfig, RECIPES, parse_args, check_config, ...) and the report's
(sample_grid, judge_samples) are importable from here too.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ..schedules import Schedule
from . import budget, runtime
from . import data as datasets
from .config import (EMA_SHARE, IDENTITY, RECIPES, UNRECORDED, TrainConfig,  # noqa: F401 (re-exported)
                     build_model, check_config, default_run_name, make_schedule, native_resolution, parse_args,
                     plain_config)
from .ema import EMA
from .loss import LossPerLevel, logsnr_band_shares, recipe_loss, timestep_probabilities
from .report import describe, judge_samples, report_sampling, sample_grid  # noqa: F401 (re-exported)
from .runtime import CHECKPOINT, LR_DECAYS, TrainingError, UsageError, require  # noqa: F401 (re-exported)


# ------------------------------------------------------------------------------------ setup


def learning_rate(cfg: TrainConfig, step: int, progress: float = 0.0) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup steps (DDPM, App. B), then cfg.lr_decay."""
    return runtime.learning_rate(step, lr=cfg.lr, warmup=cfg.warmup, decay=cfg.lr_decay, progress=progress,
                                 cooldown=cfg.lr_cooldown)


def drop_labels(y: torch.Tensor, p: float, null: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null class with probability p (Ho and Salimans 2022, Alg. 1)."""
    drop = torch.rand(y.shape, generator=generator, device=generator.device).to(y.device) < p
    return torch.where(drop, torch.full_like(y, null), y)


def training_timesteps(cfg: TrainConfig, schedule: Schedule) -> torch.Tensor | None:
    """p(t) of the training timesteps (float64), or None for uniform (loss.timestep_probabilities)."""
    if cfg.timesteps == "uniform":
        return None
    return timestep_probabilities(schedule, cfg.timesteps, mean=cfg.timesteps_mean, uniform_share=cfg.timesteps_uniform,
                                  low_snr_share=cfg.timesteps_low_snr)


def training_step(forward, model, optimizer, ema: EMA, schedule: Schedule, cfg: TrainConfig,
                  x: torch.Tensor, y: torch.Tensor, step: int, noise_gen: torch.Generator,
                  null_class: int, progress: float = 0.0, timestep_probs: torch.Tensor | None = None,
                  loss_per_level: LossPerLevel | None = None, reference=None) -> torch.Tensor:
    """One step of DDPM's Algorithm 1 with Adam: loss, backward, clip, update, EMA.

    `forward` is what computes the loss (the model, or its compiled / DDP wrapper); `model` is
    the plain module whose weights the optimiser and the EMA hold. `timestep_probs` is p(t)
    (made once by timestep_probabilities; None: uniform); `loss_per_level` holds the running
    means of weighting "level_mean"; `reference` (images, labels) the Stable Target Field's set
    (--stf-reference). Returns the plain (unweighted) loss, detached.
    """
    if cfg.class_cond:
        y = drop_labels(y, cfg.label_dropout, null_class, noise_gen)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(cfg, step, progress)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=cfg.bf16):
        loss = recipe_loss(forward, x, schedule, cfg.prediction, y=y if cfg.class_cond else None,
                           generator=noise_gen, timestep_probs=timestep_probs, offset=cfg.offset_noise,
                           weighting=cfg.weighting, loss_per_level=loss_per_level, reference=reference,
                           null_class=null_class)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    ema.update(model)
    if loss_per_level is None:
        return loss.detach()
    # What the metrics log: the plain loss (level_mean's weighted one sits near 1 by construction),
    # unless the optimised loss is not finite, so that the NaN check still sees it (no sync here).
    return torch.where(torch.isfinite(loss), loss_per_level.last_unweighted, loss).detach()


# ------------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A pixel-space training checkpoint, loaded without running pickled code (weights_only)."""
    return runtime.load_checkpoint(path, kind="pixel")


def _plain(value):
    """Tuples to lists, recursively: a config that any loader reads back as plain types."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training. Returns a summary: step, last loss, images/s, run folder."""
    cfg = budget.settle(cfg).resolved()  # the folder recipe's network, from --minutes and measured speed
    check_config(cfg)
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    saved = runtime.start_or_resume(out, resume=cfg.resume, kind="pixel", config=plain_config(cfg),
                                    keys=IDENTITY, max_steps=cfg.max_steps, out_flag="--out",
                                    unrecorded=UNRECORDED)
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
    batches = datasets.Batches(data, cfg.batch_size // world, seed=cfg.seed, device=device, flip=cfg.flip,
                               rank=rank, world_size=world)
    model = build_model(cfg, data.num_classes, data.channels).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay, share=cfg.ema_share)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, cfg.adam_beta2))
    torch.manual_seed(cfg.seed + 1000 * rank)
    noise_gen = torch.Generator(device).manual_seed(cfg.seed + 1 + 1000 * rank)
    timestep_probs = training_timesteps(cfg, schedule)
    timestep_probs = None if timestep_probs is None else timestep_probs.float().to(device)
    if master:
        print(f"{out}: " + ("resuming" if saved is not None else "a new run") + " with\n" + "\n".join(describe(cfg, model)))
    if master and timestep_probs is not None:
        bands = logsnr_band_shares(schedule, timestep_probs.double().cpu())
        print("training timesteps by log-SNR band: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in bands.items()))
    streams = {"noise": noise_gen}
    loss_per_level = LossPerLevel(schedule.num_timesteps).to(device) if cfg.weighting == "level_mean" else None

    step = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"], saved.get("ema_updates"))
        if loss_per_level is not None:
            loss_per_level.load_state_dict(saved["loss_per_level"])
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
                loss_per_level=None if loss_per_level is None else loss_per_level.state_dict(),
                model_config=_plain(model.config), channels=data.channels,
                sampling=report_sampling(plain_config(cfg)),  # what `minidiff sample` defaults to
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
            reference = None
            if cfg.stf_reference:
                ref_x, ref_y = batches.reference(step, cfg.stf_reference)
                reference = (ref_x, ref_y if cfg.class_cond else None)
            losses.append(training_step(forward, model, optimizer, ema, schedule, cfg, x, y, step,
                                        noise_gen, null_class=data.num_classes, progress=progress(),
                                        timestep_probs=timestep_probs, loss_per_level=loss_per_level,
                                        reference=reference))
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


def main(argv: list[str] | None = None) -> None:
    runtime.run_command(train, parse_args(argv))


if __name__ == "__main__":
    main()