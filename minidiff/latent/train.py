"""The latent fine-tune's training loop: Stable Diffusion's UNet on the v loss, zero terminal SNR.

    python train_latent.py --pretrained DIR --data-dir my_images --output-dir out/latent ...

One optimizer step = grad_accum micro-batches of batch_size per process. The machinery around the
step (distributed set-up, learning rate, batch order, checkpoints, resume rule, Ctrl-C, metrics)
is `runtime.py`, shared with the pixel trainer; this file keeps only what is the fine-tune's own:
the frozen encoders, caption dropout, and the export of a diffusers folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..objectives import PREDICTIONS, check_prediction, diffusion_loss
from ..training import runtime
from ..training.cli import add_common_flags
from ..training.ema import EMA
from ..training.runtime import CHECKPOINT, require
from .data import CaptionedImages, cache_latents
from .stable_diffusion import (LatentComponents, LatentUNet, base_schedule, check_resolution, encode_images,
                               encode_prompts, generate, load_components, save_diffusers)


@dataclass
class LatentTrainConfig:
    """Everything a fine-tune needs; the defaults are the paper's fixes (Lin et al. Sec. 4)."""

    pretrained: str                      # folder in the diffusers layout, or a hub id
    data_dir: str                        # images with captions (.txt beside each, or metadata.jsonl)
    output_dir: str = "out/latent"
    resolution: int = 512
    # the four fixes: zero terminal SNR and v prediction here; trailing and the guidance rescale at sampling time
    zero_snr: bool = True
    prediction: str = "v"
    # optimisation
    max_steps: int = 1000                # optimizer steps
    batch_size: int = 1                  # per process and micro-batch
    grad_accum: int = 1                  # micro-batches per optimizer step
    lr: float = 1e-5
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    ema_decay: float = 0.999             # 0 turns EMA off; warmed up (ema.py), so short runs export what they learnt
    caption_dropout: float = 0.1         # replace the caption by "" (classifier-free guidance)
    vae_latent: str = "sample"           # "sample" or "mean" of q(z | x)
    # memory and speed
    bf16: bool = False
    gradient_checkpointing: bool = False
    cache_dir: str | None = None         # cache latents + text embeddings here (skips both encoders)
    workers: int = 2
    device: str | None = None           # None: cuda if available, else cpu
    threads: int | None = None           # CPU threads for torch (default: torch's; 1 is fastest on a busy CPU)
    # bookkeeping
    seed: int = 0
    checkpoint_every: int = 500
    resume: bool = False
    sample_every: int = 0                # 0: no sample images during training
    sample_prompts: list[str] = field(default_factory=lambda: ["a photograph of an astronaut riding a horse"])
    sample_steps: int = 25
    guidance: float = 7.5
    guidance_rescale: float = 0.7
    log_every: int = 10
    progress: bool = True


# Fields that decide what is trained (the batches, noise and updates a run sees): a resume must keep them.
RESUME_KEYS = ("pretrained", "resolution", "zero_snr", "prediction", "batch_size", "grad_accum", "lr",
               "warmup_steps", "weight_decay", "grad_clip", "ema_decay", "caption_dropout", "vae_latent",
               "bf16", "seed")


def check_config(cfg: LatentTrainConfig) -> None:
    """Every setting in range, before any model is loaded: a UsageError names the flag and the fix."""
    for name in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "sample_steps"):
        require(getattr(cfg, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    require(cfg.lr > 0 and math.isfinite(cfg.lr) and cfg.lr < 1, f"--lr must be a positive rate below 1, got {cfg.lr}")
    for name in ("warmup_steps", "workers", "sample_every"):
        require(getattr(cfg, name) >= 0, f"--{name.replace('_', '-')} must be 0 or more, got {getattr(cfg, name)}")
    require(cfg.threads is None or cfg.threads >= 1, f"--threads must be at least 1, got {cfg.threads}")
    require(cfg.weight_decay >= 0 and cfg.grad_clip >= 0, "--weight-decay and --grad-clip must be 0 or more")
    require(0 <= cfg.ema_decay < 1, f"--ema-decay must lie in [0, 1) (0 turns EMA off), got {cfg.ema_decay}")
    require(0 <= cfg.caption_dropout < 1, f"--caption-dropout must lie in [0, 1), got {cfg.caption_dropout}")
    require(cfg.resolution >= 8, f"--resolution must be at least 8 pixels, got {cfg.resolution}")
    require(cfg.sample_steps <= 1000, f"--sample-steps must be at most 1000, got {cfg.sample_steps}")
    require(cfg.prediction in PREDICTIONS, f"--prediction must be one of {', '.join(PREDICTIONS)}")
    require(cfg.vae_latent in ("sample", "mean"), "--vae-latent must be sample or mean")
    runtime.check_device(cfg.device)  # None: cuda, then mps, then cpu
    require(not Path(cfg.pretrained).is_file(), f"--pretrained {cfg.pretrained} is a file; give a diffusers "
                                                "folder or a hub id (a pixel checkpoint.pt is not a base model)")
    out = Path(cfg.output_dir).resolve()
    for flag, path in (("--pretrained", cfg.pretrained), ("--data-dir", cfg.data_dir)):
        require(out != Path(path).resolve() and Path(path).resolve() not in out.parents,
                f"--output-dir {cfg.output_dir} is or lies inside {flag} {path}: the export would overwrite "
                f"or mix into it. Choose another --output-dir.")
    require(not cfg.cache_dir or Path(cfg.cache_dir).resolve() != out,
            f"--cache-dir and --output-dir both name {cfg.output_dir}; give the cache its own folder")
    require(cfg.prediction != "eps" or not cfg.zero_snr,
            "--prediction eps cannot be trained on a zero-terminal-SNR schedule (at the last step the input "
            "is pure noise, so eps carries nothing about the image): use --prediction v, or --no-zero-snr")
    runtime.check_output_folder(cfg.output_dir, "--output-dir")


def learning_rate(cfg: LatentTrainConfig, step: int) -> float:
    """Linear warm-up over warmup_steps, then constant (a fine-tune starts from a good model)."""
    return runtime.learning_rate(step, lr=cfg.lr, warmup=cfg.warmup_steps)


def load_checkpoint(path: str | Path) -> dict:
    """A latent training checkpoint, loaded with weights_only=True (no pickled code runs)."""
    return runtime.load_checkpoint(path, kind="latent")


class MicroBatches(torch.utils.data.Sampler):
    """The index lists of micro-batches start, start + 1, ... in runtime.StepOrder's order."""

    def __init__(self, order: runtime.StepOrder, start: int):
        self.order, self.start = order, start

    def __iter__(self):
        k = self.start
        while True:
            yield self.order.indices(k).tolist()
            k += 1


@dataclass
class TrainResult:
    """What a run leaves behind: its step, the mean loss of each optimizer step it ran, the
    trained UNet (with EMA weights when EMA is on: the exported network) and the output folder.
    `unet` is None when a resumed run was already finished."""

    step: int
    losses: list[float]
    unet: nn.Module | None
    output_dir: Path


def _training_inputs(batch: dict, components: LatentComponents, cfg: LatentTrainConfig,
                     empty: torch.Tensor, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, text embeddings) of a micro-batch, with caption dropout: each caption is replaced
    by the empty one with probability caption_dropout, so the model also learns p(z | "") for
    classifier-free guidance. Live batches are encoded here; cached ones are read as they are."""
    if "latents" in batch:
        z, c = batch["latents"].to(device), batch["text_emb"].to(device)
    else:
        z = encode_images(components, batch["pixels"], cfg.vae_latent, generator)
        c = encode_prompts(components, batch["caption"])
    drop = torch.rand(len(c), generator=generator, device=generator.device).to(device) < cfg.caption_dropout
    c = torch.where(drop[:, None, None], empty.to(device), c)
    return z, c


def train(cfg: LatentTrainConfig) -> TrainResult:
    """Fine-tune the UNet of `cfg.pretrained` on `cfg.data_dir` with the v loss on a zero-SNR
    schedule, and export the result (EMA weights) as a diffusers folder in cfg.output_dir.

    Everything a resumed run needs is in output_dir/checkpoint.pt, so N steps in one go and
    N/2 + N/2 with --resume give the same weights bit for bit (on CPU; on GPU up to kernel
    nondeterminism).
    """
    from tqdm.auto import tqdm

    check_config(cfg)
    out = Path(cfg.output_dir)
    ckpt_path = out / CHECKPOINT
    state = runtime.start_or_resume(out, resume=cfg.resume, kind="latent", config=dataclasses.asdict(cfg),
                                    keys=RESUME_KEYS, max_steps=cfg.max_steps, out_flag="--output-dir")
    if state is not None and state["step"] >= cfg.max_steps:
        return TrainResult(state["step"], list(state["losses"]), None, out)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world_size, device = runtime.setup_distributed(cfg.device)
    master = rank == 0
    images = CaptionedImages(cfg.data_dir, cfg.resolution)  # refuses bad data before the model loads
    components = load_components(cfg.pretrained, device=device,
                                 encoder_dtype=torch.bfloat16 if cfg.bf16 else torch.float32)
    check_resolution(cfg.resolution, components.vae_factor)
    schedule = base_schedule(components.scheduler_config, cfg.zero_snr)
    check_prediction(cfg.prediction, schedule)
    unet = components.unet.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    ema = EMA(unet, cfg.ema_decay) if cfg.ema_decay > 0 else None
    model = LatentUNet(unet)
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # fused AdamW on CUDA updates in one kernel, without foreach's parameter-sized temporaries
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    generator = torch.Generator(device).manual_seed(cfg.seed * 1000 + rank)
    streams = {"noise": generator}

    # data: images encoded live, or latents and text embeddings cached once on disk
    out.mkdir(parents=True, exist_ok=True)
    if cfg.cache_dir:
        dataset = cache_latents(components, images, cfg.cache_dir, mode=cfg.vae_latent, seed=cfg.seed,
                                rank=rank, world_size=world_size, progress=cfg.progress and master)
        empty = dataset.empty_embedding()
    else:
        dataset, empty = images, encode_prompts(components, [""])[0]

    step, losses = 0, []
    if state is not None:
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"], state["ema_updates"])
        step, losses = state["step"], list(state["losses"])
        if len(state["rng_ranks"]) == world_size:
            runtime.set_rng_states(state["rng_ranks"][rank], streams)
        else:  # another number of processes: a valid continuation, but not the same batches or noise
            generator.manual_seed(cfg.seed * 1000 + rank + step)
        del state
    metrics = runtime.MetricsLog(out / "metrics.jsonl")
    if master:
        metrics.truncate(step)

    order = runtime.StepOrder(len(dataset), cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world_size)
    loader = iter(torch.utils.data.DataLoader(dataset, batch_sampler=MicroBatches(order, step * cfg.grad_accum),
                                              num_workers=cfg.workers, pin_memory=device.type == "cuda"))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    def checkpoint() -> None:
        ranks = runtime.gather_objects(runtime.rng_states(streams), world_size)
        if master:
            runtime.save_checkpoint(ckpt_path, {
                "kind": "latent", "unet": unet.state_dict(), "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "ema_updates": ema.updates if ema is not None else 0, "step": step, "losses": losses,
                "rng_ranks": ranks, "config": dataclasses.asdict(cfg)})
            metrics.plot(out / "loss.png")

    images_per_step = cfg.batch_size * cfg.grad_accum * world_size
    start, window_start = time.perf_counter(), time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=step, desc="fine-tuning", disable=not (cfg.progress and master))
    with runtime.StopOnInterrupt() as interrupt:
        while step < cfg.max_steps:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            total = 0.0
            for micro in range(cfg.grad_accum):
                z, c = _training_inputs(next(loader), components, cfg, empty, generator, device)
                # DDP averages gradients across processes only on the last micro-batch of the step
                sync = micro == cfg.grad_accum - 1 or world_size == 1
                with contextlib.nullcontext() if sync else model.no_sync():
                    with autocast:
                        loss = diffusion_loss(model, z, schedule, cfg.prediction, y=c, generator=generator)
                    (loss / cfg.grad_accum).backward()
                total += loss.item() / cfg.grad_accum
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(unet)
            step += 1
            losses.append(total)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                recent = torch.tensor(losses[-cfg.log_every:])
                window = runtime.mean_over_ranks(recent.to(device), world_size).cpu()  # nccl reduces on the GPU
                runtime.check_finite(window, step, ckpt_path)
                elapsed = time.perf_counter() - window_start
                if master:
                    metrics.write(dict(step=step, loss=window.mean().item(), lr=learning_rate(cfg, step - 1),
                                       images_per_s=len(recent) * images_per_step / elapsed, window=len(recent),
                                       elapsed_s=time.perf_counter() - start))
                bar.set_postfix(loss=f"{window.mean().item():.4f}")
                window_start = time.perf_counter()
            if runtime.any_rank(interrupt.requested, world_size, device):
                break
            if cfg.sample_every and step % cfg.sample_every == 0 and master:
                _save_samples(components, ema.model if ema is not None else unet.eval(), cfg, schedule,
                              out / "samples" / f"step_{step:07d}.png")
                unet.train()
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                checkpoint()
    bar.close()
    if interrupt.requested:
        checkpoint()
        if master:
            print(f"interrupted: saved step {step} to {ckpt_path}; continue with --resume")
        runtime.cleanup_distributed(world_size)
        raise KeyboardInterrupt

    final = (ema.model if ema is not None else unet).eval()  # the exported network is the average
    if master:
        save_diffusers(out, components, final, zero_snr=cfg.zero_snr, prediction=cfg.prediction)
    if world_size > 1:
        torch.distributed.barrier()
    return TrainResult(step, losses, final, out)


def _save_samples(components, unet, cfg, schedule, path: Path) -> None:
    """One image per sample prompt from `unet` (the EMA network when there is one), in a row."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = generate(dataclasses.replace(components, unet=unet), cfg.sample_prompts, height=cfg.resolution,
                      width=cfg.resolution, steps=cfg.sample_steps, guidance=cfg.guidance,
                      guidance_rescale=cfg.guidance_rescale, spacing="trailing", schedule=schedule,
                      prediction=cfg.prediction, seed=cfg.seed, bf16=cfg.bf16, progress=False)
    save_image((images + 1) / 2, path, nrow=len(images))


# ---------------------------------------------------------------------------- command line


def parse_args(argv=None) -> LatentTrainConfig:
    """The flags of `minidiff train-latent` (= python train_latent.py), one per LatentTrainConfig field."""
    d = LatentTrainConfig(pretrained="", data_dir="")  # the defaults
    p = argparse.ArgumentParser(prog="minidiff train-latent", description="Fine-tune Stable Diffusion in latent "
                                "space with Lin et al.'s fixes (zero terminal SNR, v prediction); also python train_latent.py.")
    a = p.add_argument
    a("--pretrained", required=True, help="base model: diffusers folder, or hub id with internet")
    a("--data-dir", required=True, help="images with captions (.txt beside each image, or metadata.jsonl)")
    a("--output-dir", default=d.output_dir, help="diffusers folder written here, plus checkpoint.pt and samples/")
    a("--resolution", type=int, default=d.resolution, help="square training size in pixels")
    # the fixes (trailing spacing and guidance rescale are sampling-time choices)
    a("--no-zero-snr", dest="zero_snr", action="store_false", help="keep the base's non-zero terminal SNR")
    a("--prediction", choices=("v", "eps", "x0"), default=d.prediction, help="training target (paper: v)")
    # optimisation
    a("--max-steps", type=int, default=d.max_steps, help="optimizer steps")
    a("--batch-size", type=int, default=d.batch_size, help="images per process per micro-batch")
    a("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step")
    a("--lr", type=float, default=d.lr)
    a("--warmup-steps", type=int, default=d.warmup_steps, help="linear learning-rate warm-up")
    a("--weight-decay", type=float, default=d.weight_decay)
    a("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0: off)")
    a("--ema-decay", type=float, default=d.ema_decay, help="0 turns EMA off")
    a("--caption-dropout", type=float, default=d.caption_dropout, help="probability of the empty caption")
    a("--vae-latent", choices=("sample", "mean"), default=d.vae_latent, help="draw from q(z|x) or take its mean")
    # memory and speed
    a("--bf16", action="store_true", help="bf16 autocast; frozen VAE and text encoder held in bf16")
    a("--gradient-checkpointing", action="store_true", help="recompute UNet activations in backward")
    a("--cache-dir", default=None, help="cache latents and text embeddings here (skips both encoders)")
    a("--workers", type=int, default=d.workers, help="data loader processes")
    a("--threads", type=int, default=d.threads, help="torch CPU threads (1 is fastest on a CPU busy with other jobs)")
    # bookkeeping
    add_common_flags(p)  # --seed, --device (torchrun: one GPU per process)
    a("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoint.pt writes")
    a("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    a("--sample-every", type=int, default=d.sample_every, help="steps between sample images (0: never)")
    a("--sample-prompts", nargs="+", default=d.sample_prompts)
    a("--sample-steps", type=int, default=d.sample_steps)
    a("--guidance", type=float, default=d.guidance, help="guidance weight of the sample images")
    a("--guidance-rescale", type=float, default=d.guidance_rescale, help="phi of the sample images")
    a("--log-every", type=int, default=d.log_every, help="steps between loss read-outs")
    a("--no-progress", dest="progress", action="store_false")
    return LatentTrainConfig(**vars(p.parse_args(argv)))


def main(argv=None) -> None:
    result = runtime.run_command(train, parse_args(argv))
    if result.unet is not None:
        print(f"step {result.step}: fine-tuned model written to {result.output_dir}")
