"""Stable Diffusion in miniature: the same four parts, trained here on the built-in shapes.

    minidiff minisd build --out runs/minisd --threads 1   # 8 minutes on one busy CPU core
    minidiff minisd compare --base runs/minisd --tuned runs/minisd-fixed --guidance 1

Stable Diffusion is an autoencoder (pixels <-> latents), a text encoder (caption -> one vector
per token), a UNet that denoises latents while attending to those vectors, and a noise schedule.
The build trains each at a size a laptop trains in minutes and writes them in the diffusers
layout of SD 2.1-base, so `train_latent.py --pretrained`, `minidiff.latent.sample` and a stock
StableDiffusionPipeline load it unchanged:

    part           Stable Diffusion 2.1-base                 miniature (this file)
    images         512 x 512 x 3 photographs (LAION)         32 x 32 x 3 built-in shapes
    VAE            AutoencoderKL, 84M, 512 -> 64 x 64 x 4     AutoencoderKL, 0.24M, 32 -> 8 x 8 x 4
    tokenizer      CLIP BPE, 49,408 tokens                   CLIP BPE learnt from the captions
    text encoder   OpenCLIP ViT-H text tower, 340M, 1024-d   CLIPTextModel, 2 layers, 64-d
    UNet           UNet2DConditionModel, 866M                UNet2DConditionModel, 1.5M
    recipe         eps, scaled_linear (SNR(T) = 0.0047),     the same: eps, scaled_linear,
                   PNDM with leading steps                   PNDM with leading steps

The UNet is pre-trained with that flawed recipe on purpose: the base then stands where Stable
Diffusion stood before Lin et al., and `train_latent.py` fine-tunes it with the fixes. Captions
are made with the images ("a red disc on a nearly black background"), so nothing is downloaded.
Captions and tokenizer are `minisd_text.py`; measuring what the base and the fine-tune draw is
`minisd_eval.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..training.data import ImageSet, builtin_shapes, to_float
from ..training.runtime import check_output_folder, require, run_command
from .minisd_text import MAX_TOKENS, all_captions, captions_of, write_tokenizer

# ------------------------------------------------------------------------------------ networks

# Each is the SD 2.1-base configuration scaled down: same classes, same block types, fewer
# channels and levels. SD's VAE has 4 levels (factor 8), ours 3 (factor 4): 32 x 32 -> 8 x 8.
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  layers_per_block=1, norm_num_groups=8, sample_size=32)
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=MAX_TOKENS, hidden_act="gelu")
UNET_CONFIG = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   cross_attention_dim=TEXT_CONFIG["hidden_size"], attention_head_dim=8, norm_num_groups=16,
                   use_linear_projection=True)
# SD 2.1-base's scheduler/scheduler_config.json, the recipe the base is trained and sampled with
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    prediction_type="epsilon", set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
                    timestep_spacing="leading")


def make_networks(tokenizer, seed: int):
    """Randomly initialised VAE, text encoder and UNet (diffusers / transformers classes)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    ids = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=ids[0], eos_token_id=ids[1],
                                        pad_token_id=ids[1], **TEXT_CONFIG))
    return AutoencoderKL(**VAE_CONFIG), text, UNet2DConditionModel(**UNET_CONFIG)


# ------------------------------------------------------------------------------------ training


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """`steps` random index batches, a fresh permutation each epoch."""
    order = torch.empty(0, dtype=torch.int64)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def warmup_cosine(step: int, steps: int) -> float:
    """Learning-rate factor: linear warm-up over the first 5% of steps, then cosine to 0."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_vae(vae, images: torch.Tensor, *, steps: int, batch_size: int = 32, lr: float = 2e-3,
              kl_weight: float = 1e-6, seed: int = 0, progress: bool = True) -> list[float]:
    """Fit the autoencoder: squared error of the reconstruction from a sample of q(z | x), plus
    a tiny KL to N(0, I) (SD used 1e-6, with perceptual and adversarial terms we leave out).
    images: uint8 [N, 3, 32, 32]. Returns the loss per step."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps))
    vae.train()
    losses = []
    bar = tqdm(batches(len(images), batch_size, steps, g), total=steps, desc="1/3 VAE", disable=not progress)
    for index in bar:
        x = to_float(images[index])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        # both terms per pixel: SD's are both per image, so the ratio kl_weight is the same
        loss = F.mse_loss(recon, x) + kl_weight * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(mse=f"{losses[-1]:.4f}")
    return losses


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch_size: int = 256, generator=None, progress: bool = False) -> torch.Tensor:
    """Unscaled VAE latents (a sample of q(z | x), as SD's training used) of uint8 images."""
    from tqdm.auto import tqdm

    vae.eval()
    starts = tqdm(range(0, len(images), batch_size), desc="2/3 latents", disable=not progress)
    return torch.cat([vae.encode(to_float(images[i:i + batch_size])).latent_dist.sample(generator=generator)
                      for i in starts])


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor) -> torch.Tensor:
    """Decoded means of q(z | x), float [-1, 1]."""
    vae.eval()
    return vae.decode(vae.encode(to_float(images)).latent_dist.mean).sample.clamp(-1, 1)


def pretrain_unet(unet, text_encoder, tokenizer, latents: torch.Tensor, captions: list[str], *, steps: int,
                  batch_size: int = 64, lr: float = 1e-3, caption_dropout: float = 0.1, ema_decay: float = 0.995,
                  train_text_encoder: bool = True, seed: int = 0, progress: bool = True):
    """Stable Diffusion's pre-training recipe, flaws included: eps prediction on the scaled-linear
    schedule as it is (SNR(T) = 0.0047), t uniform, 10% empty captions (for guidance). The text
    encoder is trained with the UNet: kept at its random initialisation it gave the same held-out
    loss, but the UNet then hardly followed the background words (docs/latent.md). SD's was fixed,
    but it was CLIP, trained already. latents: scaled z [N, 4, 8, 8].
    Returns (EMA UNet, EMA text encoder, per-step losses)."""
    from tqdm.auto import tqdm

    from ..training.ema import EMA
    from .stable_diffusion import LatentUNet
    from ..objectives import diffusion_loss
    from ..schedules import Schedule, make_betas

    schedule = Schedule(make_betas("scaled_linear"))
    g = torch.Generator().manual_seed(seed)
    ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    text_encoder.requires_grad_(train_text_encoder)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text_encoder else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps))
    unet.train(), text_encoder.train()
    ema_unet, ema_text = EMA(unet, ema_decay), EMA(text_encoder, ema_decay)
    model = LatentUNet(unet)
    losses = []
    bar = tqdm(batches(len(latents), batch_size, steps, g), total=steps, desc="3/3 UNet (eps, SD schedule)",
               disable=not progress)
    for index in bar:
        drop = torch.rand(len(index), generator=g) < caption_dropout
        tokens = torch.where(drop[:, None], empty, ids[index])
        c = text_encoder(tokens)[0]
        loss = diffusion_loss(model, latents[index], schedule, "eps", y=c, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema_unet.update(unet), ema_text.update(text_encoder)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return ema_unet.model, ema_text.model, losses


# --------------------------------------------------------------------------------------- build


def write_captioned_images(folder: Path, data: ImageSet, captions: list[str]) -> None:
    """PNGs and a metadata.jsonl of captions: the folder layout train_latent.py --data-dir reads."""
    from PIL import Image

    folder.mkdir(parents=True)
    lines = []
    for i, (image, text) in enumerate(zip(data.images, captions)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
        lines.append(json.dumps({"file_name": f"{i:05d}.png", "text": text}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def check_build_args(out: Path, vae_steps: int, unet_steps: int, images: int) -> None:
    """Bad flags, before any work: one line naming the flag (exit 2 from the command line)."""
    check_output_folder(out, "--out")
    require(not (out.is_dir() and any(out.iterdir())),
            f"--out {out} already holds files; remove it or choose another --out (the build never writes into "
            "an existing model)")
    require(vae_steps >= 1 and unet_steps >= 1, f"--vae-steps and --unet-steps must be at least 1, got "
            f"{vae_steps} and {unet_steps}")
    require(images >= 100, f"--images must be at least 100, got {images}")


def build(out: str | Path, *, vae_steps: int = 600, unet_steps: int = 1200, images: int = 10_000,
          finetune_images: int = 2_000, heldout_images: int = 500, seed: int = 0, progress: bool = True) -> dict:
    """Train the miniature and write it to `out` as a diffusers Stable Diffusion folder, plus
    finetune_images/ and heldout_images/ (captioned PNGs from other seeds), reconstructions.png
    and minisd.json (what was measured). Everything is written under OUT.partial and renamed to
    OUT at the end, so a folder named OUT is always complete. Returns the report."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from .minisd_eval import background_brightness, caption_brightness, reconstruction_figure

    out = Path(out)
    check_build_args(out, vae_steps, unet_steps, images)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # a build that was interrupted
    clock, times = time.perf_counter(), {}

    train = builtin_shapes(images, seed=seed)
    held = builtin_shapes(heldout_images, seed=seed + 2)
    captions = captions_of(train)
    tokenizer = write_tokenizer(tmp / "tokenizer", all_captions())
    vae, text_encoder, unet = make_networks(tokenizer, seed)

    vae_losses = train_vae(vae, train.images, steps=vae_steps, seed=seed, progress=progress)
    recon = reconstruct(vae, held.images)
    real = to_float(held.images)
    mse = F.mse_loss(recon, real).item()
    times["vae_s"] = time.perf_counter() - clock

    # SD's scaling_factor (0.18215) is 1 / std of its latents: scale ours the same way
    z = encode(vae, train.images, generator=torch.Generator().manual_seed(seed), progress=progress)
    scaling = round(1.0 / z.std().item(), 5)
    vae.register_to_config(scaling_factor=scaling)
    times["latents_s"] = time.perf_counter() - clock - times["vae_s"]

    unet, text_encoder, unet_losses = pretrain_unet(unet, text_encoder, tokenizer, z * scaling, captions,
                                                    steps=unet_steps, seed=seed, progress=progress)
    times["unet_s"] = time.perf_counter() - clock - times["vae_s"] - times["latents_s"]

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=PNDMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp)
    tune = builtin_shapes(finetune_images, seed=seed + 1)
    write_captioned_images(tmp / "finetune_images", tune, captions_of(tune))
    write_captioned_images(tmp / "heldout_images", held, captions_of(held))
    reconstruction_figure(real[:16], recon[:16], tmp / "reconstructions.png")
    report = {
        "seed": seed, "images": images, "vae_steps": vae_steps, "unet_steps": unet_steps,
        "parameters": {name: sum(p.numel() for p in net.parameters())
                       for name, net in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet))},
        "vae_heldout_mse": mse, "vae_heldout_psnr_db": 10 * torch.log10(torch.tensor(4.0 / mse)).item(),
        "vae_heldout_background_error":
            (background_brightness(recon) - background_brightness(real)).abs().mean().item(),
        "scaling_factor": scaling, "vae_final_loss": sum(vae_losses[-50:]) / len(vae_losses[-50:]),
        "unet_final_loss": sum(unet_losses[-100:]) / len(unet_losses[-100:]),
        "caption_background": caption_brightness(train.images, captions),
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    (tmp / "minisd.json").write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)  # an empty `out` folder is replaced; a non-empty one was refused above
    return report


# -------------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="minidiff minisd", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the miniature and write it as a diffusers folder")
    b.add_argument("--out", default="runs/minisd", help="the folder to write (must not hold files yet)")
    b.add_argument("--vae-steps", type=int, default=600, help="autoencoder steps of batch 32")
    b.add_argument("--unet-steps", type=int, default=1200, help="UNet pre-training steps of batch 64")
    b.add_argument("--images", type=int, default=10_000, help="built-in images to pre-train on")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy CPU)")
    b.add_argument("--no-progress", dest="progress", action="store_false")
    c = sub.add_parser("compare", help="base against fine-tune on black and white prompts, with a figure")
    c.add_argument("--base", default="runs/minisd")
    c.add_argument("--tuned", default="runs/minisd-fixed")
    c.add_argument("--out", default="runs/minisd-compare", help="folder for compare.png and compare.json")
    c.add_argument("--steps", type=int, default=50)
    c.add_argument("--guidance", type=float, default=7.5)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def run(args: argparse.Namespace):
    require(args.threads is None or args.threads >= 1, f"--threads must be at least 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "compare":
        from .minisd_eval import compare

        require(1 <= args.steps <= 1000, f"--steps must be from 1 to 1000, got {args.steps}")
        require(args.guidance >= 0, f"--guidance must be 0 or more, got {args.guidance}")

        return compare(args.base, args.tuned, args.out, steps=args.steps, guidance=args.guidance, seed=args.seed)
    report = build(args.out, vae_steps=args.vae_steps, unet_steps=args.unet_steps, images=args.images,
                   seed=args.seed, progress=args.progress)
    print(json.dumps(report, indent=2))
    print(f"miniature Stable Diffusion written to {args.out}")
    return report


def main(argv=None):
    return run_command(run, parse_args(argv))
