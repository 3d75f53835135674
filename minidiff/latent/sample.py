"""Prompts in, PNGs out: sample a Stable Diffusion checkpoint with minidiff's own sampler.

    minidiff sample-latent --model out/latent --prompt "a solid black background" \
        --steps 50 --guidance 7.5 --guidance-rescale 0.7 --seed 0 --out samples/

Schedule, prediction type and spacing default to what the folder's scheduler config records, so
a model fine-tuned by train_latent.py is sampled with all four of Lin et al.'s fixes (zero SNR,
v, trailing, rescaled guidance), and a stock checkpoint with its own settings; --spacing and
--guidance-rescale 0 show the flawed choices one flag apart. --sampler dpmpp_2m takes fewer steps
(docs/08_fast_samplers.md).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from ..samplers import SAMPLERS, SPACINGS
from ..training.cli import add_common_flags, check_sampling_flags, resolve_device
from ..training.runtime import check_output_folder, require, run_command


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="minidiff sample-latent", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="diffusers folder (e.g. train_latent.py's output) or hub id")
    p.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    p.add_argument("--negative-prompt", default="", help="the unconditional input of guidance (default: empty)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                   help="ddim, ddpm, dpmpp_2m / dpmpp_3m (DPM-Solver++) or heun (two network calls a step)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0: deterministic)")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="default: the scheduler config's")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance weight w")
    p.add_argument("--guidance-rescale", type=float, default=0.7,
                   help="phi of Lin et al. Algorithm 2: rescale the guided output's std (0: off)")
    p.add_argument("--height", type=int, default=None, help="default: the model's own (512 for SD 2.1-base)")
    p.add_argument("--width", type=int, default=None, help="default: the model's own")
    add_common_flags(p)  # --seed, --device
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy CPU)")
    p.add_argument("--bf16", action="store_true", help="run the UNet under bf16 autocast")
    p.add_argument("--out", default="samples", help="folder for the PNGs")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Every flag in range before any network is loaded: one line naming the flag, exit 2."""
    check_sampling_flags(args)
    require(args.num_images >= 1, f"--num-images must be at least 1, got {args.num_images}")
    require(all(size is None or size >= 8 for size in (args.height, args.width)),
            "--height and --width must be at least 8 pixels")
    require(args.threads is None or args.threads >= 1, f"--threads must be at least 1, got {args.threads}")
    model = Path(args.model)
    require(not model.is_file(), f"--model {args.model} is a file; this command takes a diffusers folder "
                                 "(a pixel checkpoint.pt is drawn by minidiff sample CKPT)")
    require(not model.is_dir() or (model / "unet").is_dir(),
            f"--model {args.model} is not a diffusers folder (it has no unet/): give train_latent.py's "
            "--output-dir or a Stable Diffusion folder")
    check_output_folder(args.out, "--out")
    resolve_device(args.device)


def slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:length] or "prompt"


def main(argv=None) -> list[Path]:
    return run_command(run, parse_args(argv))


def run(args: argparse.Namespace) -> list[Path]:
    check_args(args)
    from torchvision.utils import save_image

    from . import stable_diffusion as latent

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    components = latent.load_components(args.model, device=device, encoder_dtype=dtype, unet_dtype=dtype)
    prompts = [p for p in args.prompt for _ in range(args.num_images)]
    # like the stock pipeline: the UNet's latent size times the VAE's factor (64 x 8 for SD 2.1-base)
    size = components.unet.config.sample_size * components.vae_factor
    images = latent.generate(components, prompts, negative_prompt=args.negative_prompt, height=args.height or size,
                             width=args.width or size, steps=args.steps, sampler=args.sampler, spacing=args.spacing,
                             eta=args.eta, guidance=args.guidance, guidance_rescale=args.guidance_rescale, seed=args.seed,
                             bf16=args.bf16, progress=args.progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        path = out / f"{i:03d}_{slug(prompt)}_seed{args.seed}.png"
        save_image((image + 1) / 2, path)
        paths.append(path)
    print(f"wrote {len(paths)} image(s) to {out}")
    return paths
