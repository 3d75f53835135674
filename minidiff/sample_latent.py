"""Prompts in, PNGs out: sample a Stable Diffusion checkpoint with minidiff's own sampler.

    python -m minidiff.sample_latent --model out/latent --prompt "a solid black background" \
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

from .samplers import SAMPLERS, SPACINGS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minidiff.sample_latent", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--bf16", action="store_true", help="run the UNet under bf16 autocast")
    p.add_argument("--out", default="samples", help="folder for the PNGs")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.eta and args.sampler not in ("ddim", "ddpm"):
        p.error(f"--eta is DDIM's noise; --sampler {args.sampler} takes none (drop --eta or use --sampler ddim)")
    return args


def slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:length] or "prompt"


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    from torchvision.utils import save_image

    from . import latent

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    components = latent.load_components(args.model, device=device, encoder_dtype=dtype, unet_dtype=dtype)
    prompts = [p for p in args.prompt for _ in range(args.num_images)]
    images = latent.generate(components, prompts, negative_prompt=args.negative_prompt, height=args.height,
                             width=args.width, steps=args.steps, sampler=args.sampler, spacing=args.spacing,
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


if __name__ == "__main__":
    main()
