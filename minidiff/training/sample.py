"""Draw images from a trained checkpoint: `minidiff sample runs/NAME/checkpoint.pt`.

The checkpoint (written by minidiff.training.train) carries the UNet's config, the schedule and the
prediction target, so only the sampler's own choices are flags: DDIM, DDPM or a DPM-Solver, the
number of steps and their spacing (Lin et al. Table 2), eta, the guidance weight and its rescale
(Algorithm 2), the classes. A sampler flag left out takes the value the run's own end-of-run
report used (stored in the checkpoint), so with no flags this draws what the run was judged on;
the first line printed says which settings were used. The EMA weights are used unless --no-ema. Output: a PNG grid and/or
an .npz holding `images`, uint8 [N, H, W, 3], and `labels` (what minidiff.evaluation.fid reads).

    minidiff sample runs/builtin-small-patch2-linear-zsnr-v/checkpoint.pt --num 100
    minidiff sample CKPT --sampler dpmpp_2m --steps 10                # faster, same model
    minidiff sample CKPT --num 50000 --npz samples.npz --png ""      # for FID

Editing (docs/10_editing.md): --init IMAGE(S) starts from the given images noised to --strength
(SDEdit; 1.0 is plain generation on a zero-SNR model), --mask MASK redraws only the mask's white
pixels and keeps the rest of the input (inpainting; --resample R repeats each step R more times).

    minidiff sample CKPT --init photo.png --strength 0.6 --num 8
    minidiff sample CKPT --init photo.png --mask centre.png --resample 2 --num 8
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
from pathlib import Path

import torch

from ..samplers import SAMPLERS, SPACINGS, sample
from ..schedules import Schedule
from ..unet import UNet
from .cli import HelpFormatter, add_common_flags, check_sampling_flags, resolve_device
from .data import to_uint8
from .runtime import RETIRED_AT, check_output_folder, ignored_settings, load_checkpoint, require, run_command

GRID_MAX = 256  # a grid of more images than this is too small to look at; the npz holds them all


def load_model(checkpoint: str | Path, *, ema: bool = True, device="cpu") -> tuple[UNet, dict]:
    """The UNet from a training checkpoint (EMA weights by default) and the run's config.

    Loads with weights_only=True: a checkpoint cannot run code.
    """
    model, config, _ = load_run(checkpoint, ema=ema, device=device)
    return model, config


def load_run(checkpoint: str | Path, *, ema: bool = True, device="cpu") -> tuple[UNet, dict, dict]:
    """load_model's (UNet, config), and the sampler settings the run's own report used
    (what checkpoints written before a setting was stored lack is rebuilt from the config)."""
    ckpt = load_checkpoint(checkpoint, kind="pixel")
    config = dict(ckpt["model_config"])
    for key in ignored_settings(config, inspect.signature(UNet).parameters):
        del config[key]
    model = UNet(**config)
    weights = ckpt["ema" if ema else "model"]
    extra = sorted({k.split(".")[0] for k in set(weights) - set(model.state_dict())})
    require(not extra, f"{checkpoint} holds weights of parts this version's UNet does not have ({', '.join(extra)}): "
                       f"it was trained with an option removed since; sample it with that code (git checkout {RETIRED_AT})")
    model.load_state_dict(weights)
    settings = {**report_sampling(ckpt["config"]), **(ckpt.get("sampling") or {})}  # keys added since: from the config
    return model.to(device).eval(), ckpt["config"], settings


def schedule_of(config: dict) -> Schedule:
    """The training schedule of a run, rebuilt from its config."""
    return Schedule.make(config["schedule"], 1000, zero_snr=config["zero_snr"])


def report_sampling(config: dict) -> dict:
    """The sampler settings a run's own report (and its grids) use, from the run's config (a plain
    dict): the run's sampler (DDIM for runs from before the setting existed) at `sample_steps` with the
    run's spacing, and, for a class-conditional model, its guidance weight, rescale and the lowest
    log-SNR it guides at (-inf: every step), and whether x0 is clipped. Stored in the checkpoint as
    "sampling"."""
    guided = bool(config.get("class_cond")) and config.get("guidance", 1.0) != 1.0
    guidance_from = config.get("guidance_from")
    return dict(sampler=config.get("sampler") or "ddim", steps=config["sample_steps"],
                spacing=config.get("spacing", "trailing"),
                guidance=config["guidance"] if guided else 1.0,
                guidance_rescale=config.get("guidance_rescale", 0.0) if guided else 0.0,
                guidance_from=float(guidance_from) if guided and guidance_from is not None else -math.inf,
                clip_x0=bool(config.get("clip_x0", False)))


def sampler_kwargs(settings: dict) -> dict:
    """report_sampling's settings as keyword arguments of samplers.sample (guidance_from becomes
    its guidance_interval)."""
    kwargs = dict(settings)
    kwargs["guidance_interval"] = guidance_interval_from(kwargs.pop("guidance_from"))
    return kwargs


def guidance_interval_from(guidance_from: float | None) -> tuple[float, float] | None:
    """The sampler's guidance_interval for "guide only where log-SNR >= guidance_from" (None: every step)."""
    return None if guidance_from is None or guidance_from == -math.inf else (float(guidance_from), math.inf)


def describe_sampling(settings: dict) -> str:
    """e.g. "ddim, 25 trailing steps, guidance 2, rescale 0"."""
    text = f"{settings['sampler']}, {settings['steps']} {settings['spacing']} steps, guidance {settings['guidance']:g}"
    text += f", rescale {settings['guidance_rescale']:g}" if settings["guidance"] != 1.0 else ""
    if settings["guidance"] != 1.0 and settings.get("guidance_from", -math.inf) > -math.inf:
        text += f", guided only at log-SNR >= {settings['guidance_from']:g}"
    return text + (", x0 clipped to [-1, 1]" if settings.get("clip_x0") else "")


def class_labels(classes: list[str] | None, num: int, num_classes: int | None) -> torch.Tensor | None:
    """Labels for `num` samples: the listed classes in turn (default: every class in turn), or
    None for an unconditional model. "null" is the null class (an unconditional sample)."""
    if num_classes is None:
        if classes:
            raise ValueError("--class given, but this model was trained without --class-cond")
        return None
    if not classes:
        wanted = list(range(num_classes))
    else:
        wanted = [num_classes if c == "null" else int(c) for c in classes]
        bad = [c for c in wanted if not 0 <= c <= num_classes]
        if bad:
            raise ValueError(f"classes {bad} out of range: this model has classes 0..{num_classes - 1} "
                             "(and 'null')")
    return torch.tensor(wanted)[torch.arange(num) % len(wanted)]


def read_images(paths: list[str], channels: int, size: int, flag: str) -> torch.Tensor:
    """PNG or JPEG files as uint8 [N, C, H, W], each checked against the model's channels and size
    (a mismatch is an error that says what to do, not a silent resize)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        require(Path(path).is_file(), f"{flag} {path}: no such file")
        try:
            with Image.open(path) as im:
                im = im.convert("RGB") if im.mode in ("P", "CMYK", "YCbCr") else im
                img = torch.from_numpy(np.array(im, dtype=np.uint8))
        except (UnidentifiedImageError, OSError, TypeError):
            require(False, f"{flag} {path} is not an image PIL can read (give a PNG or JPEG)")
        img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
        c, h, w = img.shape
        if flag == "--mask" and c in (3, 4):  # a mask drawn in colour: white is 1 in every channel
            img = img[:3].min(dim=0, keepdim=True).values if bool((img[:3] == img[:1]).all()) else img[:3]
            c = img.shape[0]
        require((h, w) == (size, size), f"{flag} {path} is {w}x{h} pixels; this model draws {size}x{size} images: "
                                        f"resize it to {size}x{size} first")
        wanted = (1, channels) if flag == "--mask" else (channels,)
        require(c in wanted, f"{flag} {path} has {c} channel(s); this model's images have {channels}"
                             + (" (a mask may also have 1)" if flag == "--mask" else "") + ": convert it first")
        images.append(img)
    return torch.stack(images)


def read_mask(path: str, channels: int, size: int) -> torch.Tensor:
    """A black-and-white mask image as float [1, 1 or C, H, W]: 1 (white, 255) where the model draws,
    0 (black) where the input is kept. Grey values are an error: inpainting needs a yes or no per pixel."""
    m = read_images([path], channels, size, "--mask")
    require(bool(((m == 0) | (m == 255)).all()),
            f"--mask {path} is not binary: its pixels must be black (0, keep the input) or white (255, draw); "
            f"it has {int(((m != 0) & (m != 255)).sum())} grey ones (save it without anti-aliasing, or threshold it)")
    return (m == 255).float()


@torch.no_grad()
def generate(model: UNet, config: dict, num: int, *, sampler: str = "ddim", steps: int = 50,
             spacing: str | None = None, eta: float = 0.0, guidance: float = 1.0,
             guidance_rescale: float = 0.0, guidance_interval: tuple[float, float] | None = None,
             guidance_from: float = -math.inf, clip_x0: bool = False, labels: torch.Tensor | None = None, seed: int = 0,
             batch_size: int = 256, device="cpu", progress: bool = True, init: torch.Tensor | None = None,
             strength: float = 1.0, mask: torch.Tensor | None = None, resample: int = 0,
             threshold: float | None = None) -> torch.Tensor:
    """`num` samples as uint8 [num, C, H, W] (the checkpoint's channels and size), drawn in batches (one seed per batch index, so the
    same seed and batch size give the same images). `guidance_from` = g guides only where log-SNR >= g
    (the same as guidance_interval=(g, inf); the report's setting, stored in the checkpoint).

    Editing: `init` (uint8 [K, C, H, W]; sample i edits init[i % K]) with `strength`, `mask` and
    `resample` as in samplers.sample; `threshold` is the sampler's dynamic thresholding."""
    from tqdm.auto import tqdm

    if guidance_interval is not None and guidance_from != -math.inf:
        raise ValueError("give guidance_interval or guidance_from, not both (guidance_from=g is the interval (g, inf))")
    if guidance_interval is None:
        guidance_interval = guidance_interval_from(guidance_from)

    schedule, device = schedule_of(config), torch.device(device)
    size, channels = model.config["image_size"], model.config["in_channels"]
    null = model.config["num_classes"]
    out = torch.empty(num, channels, size, size, dtype=torch.uint8)
    starts = range(0, num, batch_size)
    for i, start in enumerate(tqdm(starts, desc=f"{sampler} {steps} steps", unit="batch", disable=not progress)):
        n = min(batch_size, num - start)
        y = uncond = None
        if labels is not None:
            y = labels[start:start + n].to(device)
            uncond = torch.full_like(y, null)
        gen = torch.Generator(device).manual_seed(seed * 1_000_003 + i)
        edit = {}
        if init is not None:
            picks = torch.arange(start, start + n) % len(init)
            edit = dict(init=init[picks].float() / 127.5 - 1, strength=strength, mask=mask, resample=resample)
        x = sample(model, (n, channels, size, size), schedule, prediction=config["prediction"], steps=steps,
                   spacing=spacing or config.get("spacing", "trailing"), sampler=sampler, eta=eta,
                   y=y, uncond_y=uncond if guidance != 1.0 else None, guidance=guidance,
                   guidance_rescale=guidance_rescale, guidance_interval=guidance_interval, clip_x0=clip_x0,
                   threshold=threshold, generator=gen, device=device, progress=False, **edit)
        out[start:start + n] = to_uint8(x).cpu()
    return out


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> None:
    """Save up to GRID_MAX uint8 images [N, 3, H, W] as one PNG grid."""
    import torchvision

    images = images[:GRID_MAX]
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(images.float() / 255, str(path), nrow=nrow, padding=1)


def save_npz(images: torch.Tensor, labels: torch.Tensor | None, path: str | Path) -> None:
    """Save uint8 images as `images` [N, H, W, 3] (channels last, as image files and FID code
    expect) and their `labels` (-1 for an unconditional model)."""
    import numpy as np

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    labels = labels if labels is not None else torch.full((len(images),), -1)
    np.savez(path, images=images.permute(0, 2, 3, 1).numpy(), labels=labels.numpy())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="minidiff sample", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint.pt written by train_cifar.py")
    # Left out, the sampler flags take the settings the run's own report used (stored in the
    # checkpoint), so that the figures a run printed are what this command draws.
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="DDIM (eta=0: deterministic), DDPM, DPM-Solver++ 2M/3M (one network call a step) or "
                        "Heun (two a step), or Euler for the rectified flow (--schedule flow); docs/08_fast_samplers.md "
                        "(default: the run's report's)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's report's)")
    p.add_argument("--spacing", choices=SPACINGS, help="timestep spacing (default: the run's, trailing)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 like DDPM")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance weight w, 1: none (default: the run's report's)")
    p.add_argument("--guidance-rescale", type=float,
                   help="phi of Lin et al. Alg. 2, 0.7 in the paper (default: the run's report's)")
    p.add_argument("--guidance-from", type=float,
                   help="guide only at log-SNR >= this (Kynkaenniemi et al. 2024), --guidance-from=-inf: every step "
                        "(default: the run's report's)")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction,
                   help="clip each predicted x0 to [-1, 1] (default: as the run's report)")
    p.add_argument("--threshold", type=float, metavar="P",
                   help="Imagen's dynamic thresholding of each predicted x0 at percentile P, e.g. 0.995 (default: off)")
    edit = p.add_argument_group("editing (docs/10_editing.md)")
    edit.add_argument("--init", nargs="+", metavar="IMAGE",
                      help="PNG/JPEG image(s) of the model's size to start from (sample i edits image i mod K): SDEdit")
    edit.add_argument("--strength", type=float,
                      help="with --init: how much to redraw, in (0, 1]: start at step round(S*1000)-1 "
                           "(default 1.0: from the last step, generation on a zero-SNR model)")
    edit.add_argument("--mask", metavar="MASK",
                      help="with --init: black-and-white image, white = draw, black = keep the input (inpainting)")
    edit.add_argument("--resample", type=int, default=0,
                      help="with --mask: repeat each step R more times, going back up with fresh noise (RePaint)")
    p.add_argument("--class", dest="classes", nargs="+", metavar="K",
                   help="class label(s) to draw, in turn; 'null' for unconditional (default: every class)")
    p.add_argument("--num", type=int, default=64, help="number of images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights")
    p.add_argument("--png", help="grid PNG path (default: samples.png next to the checkpoint; '' for none)")
    p.add_argument("--npz", help="also save all images as uint8 to this .npz")
    add_common_flags(p)  # --seed, --device
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Every flag in range before the model is loaded: one line naming the flag, exit 2."""
    check_sampling_flags(args)
    require(args.num >= 1 and args.batch_size >= 1, "--num and --batch-size must be at least 1")
    require(args.threshold is None or 0 < args.threshold <= 1,
            f"--threshold is a percentile in (0, 1] (Imagen: 0.995), got {args.threshold}")
    require(not (args.threshold is not None and args.clip_x0),
            "--threshold and --clip-x0 both clip x0: give one")
    require(args.init or (args.strength is None and args.mask is None and not args.resample),
            "--strength, --mask and --resample edit an image: give it with --init IMAGE")
    require(args.strength is None or 0 < args.strength <= 1,
            f"--strength must lie in (0, 1] (1: start from the last step), got {args.strength}")
    require(args.resample >= 0, f"--resample must be 0 or more, got {args.resample}")
    require(not args.resample or args.mask, "--resample repeats inpainting steps: give a --mask too")
    for path in (args.init or []) + ([args.mask] if args.mask else []):
        require(Path(path).is_file(), f"{'--mask' if path == args.mask else '--init'} {path}: no such file")
    for flag, path in (("--png", args.png), ("--npz", args.npz)):
        if path:
            require(not Path(path).is_dir(), f"{flag} {path} is a folder; give a file name")
            check_output_folder(Path(path).parent, flag)
            require(Path(path).resolve() != Path(args.checkpoint).resolve(),
                    f"{flag} {path} is the checkpoint itself; writing there would destroy it")
    require(not (args.png and args.npz) or Path(args.png).resolve() != Path(args.npz).resolve(),
            f"--png and --npz both name {args.png}; give each its own file")
    resolve_device(args.device)


def run(args: argparse.Namespace) -> None:
    check_args(args)
    model, config, report = load_run(args.checkpoint, ema=args.ema, device=args.device or resolve_device(None))
    args.device = str(next(model.parameters()).device)
    given = {k for k in report if getattr(args, k) is not None}
    for key, value in report.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.guidance == 1.0 and "guidance_rescale" not in given:
        args.guidance_rescale = 0.0
    check_sampling_flags(args)
    if args.clip_x0 and args.threshold is not None:
        args.clip_x0 = False  # the report clipped x0; --threshold takes its place
    channels, size = model.config["in_channels"], model.config["image_size"]
    init = read_images(args.init, channels, size, "--init") if args.init else None
    mask = read_mask(args.mask, channels, size) if args.mask else None
    settings = {k: getattr(args, k) for k in report}
    if init is not None:
        strength = 1.0 if args.strength is None else args.strength
        print(f"editing {len(init)} image(s): strength {strength:g} (from step {round(strength * 1000) - 1})"
              + (f", inpainting the mask's {int(mask.sum())} white pixels, {args.resample} resampling step(s)"
                 if mask is not None else ""))
    print(f"sampling with {describe_sampling(settings)}"
          + (f" (flags: {', '.join('--' + k.replace('_', '-') for k in sorted(given))}; the rest as the run's report)"
             if given else " (the run's report's settings, stored in the checkpoint)"))
    labels = class_labels(args.classes, args.num, model.config["num_classes"])
    require(labels is not None or args.guidance == 1.0,
            "--guidance needs a class-conditional model (train with --class-cond); this one has no labels to guide towards")
    images = generate(model, config, args.num, sampler=args.sampler, steps=args.steps,
                      spacing=args.spacing, eta=args.eta, guidance=args.guidance,
                      guidance_rescale=args.guidance_rescale, guidance_from=args.guidance_from,
                      clip_x0=args.clip_x0, labels=labels, seed=args.seed,
                      batch_size=args.batch_size, device=args.device, threshold=args.threshold, init=init,
                      strength=1.0 if args.strength is None else args.strength, mask=mask, resample=args.resample)
    png = Path(args.checkpoint).with_name("samples.png") if args.png is None else args.png
    if png:
        # With classes given in turn, one grid row per round of classes puts each class in a column.
        nrow = len(labels.unique()) if labels is not None and len(labels.unique()) > 1 else None
        save_grid(images, png, nrow)
        print(f"wrote {min(len(images), GRID_MAX)} images as a grid to {png}")
    if args.npz:
        save_npz(images, labels, args.npz)
        print(f"wrote {len(images)} images to {args.npz}")


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        run_command(run, args)
    except ValueError as err:  # a class label out of range, a model without labels
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
