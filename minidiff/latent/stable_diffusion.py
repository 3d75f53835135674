"""Stable Diffusion in latent space, driven by minidiff's schedule, loss, samplers and guidance.

Lin et al. (2023) fine-tune Stable Diffusion 2.1-base with their four fixes (Sec. 4): the base
model's scaled_linear betas rescaled to zero terminal SNR (Algorithm 1), the v loss (an eps-trained
base is switched to v simply by training on the v target, Sec. 3.2), trailing timesteps (Sec. 3.3)
and rescaled classifier-free guidance (Algorithm 2). This file gives that path to users:

    checkpoint folder -> components (VAE, text encoder, tokenizer, UNet; diffusers/transformers)
    captioned images  -> latents z = scaling_factor * VAE(x), text embeddings c = CLIP(caption)
    training          -> objectives.diffusion_loss(model, z, schedule, "v", y=c)
    sampling          -> samplers.sample(model, ..., y=c, uncond_y=c_negative, guidance, guidance_rescale)
    output            -> a diffusers folder whose scheduler config records the fixes

The networks are not re-implemented: `LatentUNet` only gives the diffusers UNet minidiff's model
signature model(x, t, y), with y the text encoder's hidden states. This file loads the parts,
exports and samples; the captioned images and their cache are in `data.py`, the training
loop in `train.py` (its command line is `minidiff train-latent`, or `train_latent.py`), and `sample.py`
is the sampling command.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

try:
    import diffusers
    import transformers
except ImportError as err:  # the latent path is an optional extra; the core never imports this file
    raise ImportError("minidiff.latent.stable_diffusion needs the 'latent' extra: pip install -e '.[latent]' "
                      "(diffusers, transformers, accelerate, safetensors)") from err

from ..samplers import sample
from ..schedules import Schedule, make_betas, rescale_zero_terminal_snr
from ..training.runtime import UsageError

# ------------------------------------------------------------------------- checkpoint folder

# What each component folder must hold; weights may be .safetensors or .bin, single or sharded.
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
HUB_PATTERNS = ["model_index.json", "*/*.json", "tokenizer/*", "*/*.safetensors"]


def check_checkpoint_folder(folder: str | Path) -> Path:
    """Raise a clear error unless `folder` is a Stable Diffusion checkpoint in the diffusers layout.

    The layout is what `StableDiffusionPipeline.save_pretrained` writes: unet/, vae/ and
    text_encoder/ each with config.json and weights, tokenizer/ with its vocabulary, and
    (optionally) scheduler/scheduler_config.json and model_index.json.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Stable Diffusion checkpoint folder {folder} does not exist. Pass a local "
                                "folder in the diffusers layout, or a hub id on a machine with internet.")
    missing = []
    for name in ("unet", "vae", "text_encoder"):
        sub = folder / name
        if not (sub / "config.json").is_file():
            missing.append(f"{name}/config.json")
        if not any(sub.glob("*.safetensors")) and not any(sub.glob("*.bin")):
            missing.append(f"{name}/ weights (*.safetensors or *.bin)")
    if not any(all((folder / "tokenizer" / f).is_file() for f in files) for files in TOKENIZER_FILES):
        missing.append("tokenizer/vocab.json + tokenizer/merges.txt (or tokenizer/tokenizer.json)")
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a complete Stable Diffusion checkpoint in the diffusers layout; missing: "
            + "; ".join(missing) + ". Expected subfolders unet/, vae/, text_encoder/, tokenizer/ (and "
            "scheduler/), as written by StableDiffusionPipeline.save_pretrained or by "
            "`hf download stabilityai/stable-diffusion-2-1-base --local-dir DIR`. A single .ckpt or "
            ".safetensors file must be converted first (diffusers' StableDiffusionPipeline.from_single_file)."
        )
    return folder


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local checkpoint folder: the path itself, or a hub id downloaded (or found in the cache)."""
    path = Path(name_or_path).expanduser()
    if path.exists() or str(name_or_path).count("/") != 1:
        return check_checkpoint_folder(path)
    from huggingface_hub import snapshot_download

    try:  # safetensors only, no fp16/EMA-less duplicates: the files a fine-tune needs, once
        local = snapshot_download(str(name_or_path), allow_patterns=HUB_PATTERNS,
                                  ignore_patterns=["*.fp16.*", "*non_ema*", "safety_checker/*"])
    except Exception as err:
        raise FileNotFoundError(f"{name_or_path} is neither a local folder nor a hub id that could be "
                                f"downloaded ({type(err).__name__}: {err}). Without internet, download it "
                                "elsewhere and pass the local folder.") from err
    return check_checkpoint_folder(local)


def read_scheduler_config(folder: Path) -> dict:
    """scheduler/scheduler_config.json, or {} when the checkpoint has none."""
    path = folder / "scheduler" / "scheduler_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def schedule_settings(scheduler_config: dict) -> dict:
    """The base model's beta schedule as diffusers names it, with Stable Diffusion's values where
    the config is silent: every SD 1.x/2.x checkpoint trains on scaled_linear betas from 0.00085
    to 0.012 over 1000 steps. Training and export both read it from here, so the exported
    scheduler holds the betas that were trained, whether or not the base had a scheduler folder.
    Other schedules are refused rather than silently replaced."""
    kind = scheduler_config.get("beta_schedule", "scaled_linear")
    T = int(scheduler_config.get("num_train_timesteps", 1000))
    start, end = scheduler_config.get("beta_start", 0.00085), scheduler_config.get("beta_end", 0.012)
    defaults = {"scaled_linear": (0.00085, 0.012), "linear": (1e-4, 0.02)}
    if kind not in defaults or not all(math.isclose(a, b) for a, b in zip((start, end), defaults[kind])):
        raise UsageError(f"the checkpoint's scheduler uses beta_schedule={kind!r} from {start} to {end}; "
                         "minidiff's latent path knows Stable Diffusion's scaled_linear 0.00085..0.012 "
                         "(and linear 1e-4..0.02). Edit scheduler/scheduler_config.json if that is wrong.")
    return dict(beta_schedule=kind, num_train_timesteps=T, beta_start=start, beta_end=end)


def base_schedule(scheduler_config: dict, zero_snr: bool) -> Schedule:
    """The base model's training schedule (`schedule_settings`), optionally rescaled to zero
    terminal SNR (Lin et al. Algorithm 1)."""
    settings = schedule_settings(scheduler_config)
    betas = make_betas(settings["beta_schedule"], settings["num_train_timesteps"])
    return Schedule(rescale_zero_terminal_snr(betas) if zero_snr else betas)


def prediction_of(scheduler_config: dict) -> str:
    """minidiff's name ("eps", "v", "x0") for a diffusers prediction_type."""
    names = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
    return names[scheduler_config.get("prediction_type", "epsilon")]


# -------------------------------------------------------------------------------- components


@dataclass
class LatentComponents:
    """The four networks of a Stable Diffusion checkpoint and the folder they came from."""

    folder: Path
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler_config: dict

    @property
    def vae_factor(self) -> int:
        """How many pixels one latent covers per side: 2 ** (number of VAE down blocks - 1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        """The constant that brings VAE latents to unit variance (0.18215 for Stable Diffusion)."""
        return float(self.vae.config.scaling_factor)


def load_components(name_or_path: str | Path, *, device="cpu", encoder_dtype=torch.float32,
                    unet_dtype=torch.float32) -> LatentComponents:
    """Load VAE, text encoder, tokenizer and UNet of a diffusers-layout checkpoint.

    The VAE and text encoder are frozen (eval mode, no gradients) and may be held in bf16 to
    save memory; the UNet is the trained network and stays in float32 during training (autocast
    runs its matrix products in bf16).
    """
    folder = resolve_checkpoint(name_or_path)
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=unet_dtype).to(device)
    vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=encoder_dtype).to(device)
    text_encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").to(device, encoder_dtype)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval()
    return LatentComponents(folder, unet, vae, text_encoder, tokenizer, read_scheduler_config(folder))


def check_resolution(resolution: int, vae_factor: int) -> None:
    """The VAE maps an H x W image to H/f x W/f latents; other sizes would be silently cropped."""
    if resolution <= 0 or resolution % vae_factor:
        lo = max(vae_factor, resolution // vae_factor * vae_factor)
        raise UsageError(f"resolution {resolution} is not a multiple of the VAE's downsampling factor "
                         f"{vae_factor} (2 ** (number of VAE blocks - 1)); use e.g. {lo} or {lo + vae_factor}.")


@torch.no_grad()
def encode_prompts(components: LatentComponents, prompts: list[str]) -> torch.Tensor:
    """Text embeddings [B, L, D] as the stock pipeline computes them: the text encoder's last
    hidden states for prompts padded/truncated to the tokenizer's model_max_length (77)."""
    tok = components.tokenizer
    ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids
    enc = components.text_encoder
    return enc(ids.to(enc.device))[0].float()


@torch.no_grad()
def encode_images(components: LatentComponents, pixels: torch.Tensor, mode: str = "sample",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents z = scaling_factor * (mean or a sample of the VAE's diagonal Gaussian q(z | x)).

    pixels: float [-1, 1] [B, 3, H, W]. mode "sample" is what Stable Diffusion was trained on;
    "mean" is deterministic.
    """
    vae = components.vae
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    z = dist.mean if mode == "mean" else dist.sample(generator=generator)
    return z.float() * components.scaling_factor


@torch.no_grad()
def decode_latents(components: LatentComponents, z: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] [B, 3, H, W] (float32) from latents z."""
    vae = components.vae
    return vae.decode((z / components.scaling_factor).to(vae.device, vae.dtype)).sample.float().clamp(-1, 1)


class LatentUNet(nn.Module):
    """A diffusers UNet2DConditionModel called as minidiff calls any model: model(x, t, y).

    x: latents [B, 4, h, w]; t: int64 training timesteps [B]; y: text embeddings [B, L, D]
    (the UNet's encoder_hidden_states). The output is the network's raw output, in whatever
    parameterisation it was trained for, cast back to x's dtype.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("the Stable Diffusion UNet needs text embeddings y; for an unconditional "
                             "output pass the empty prompt's embedding")
        dtype = self.unet.dtype
        return self.unet(x.to(dtype), t, encoder_hidden_states=y.to(dtype)).sample.to(x.dtype)


# ---------------------------------------------------------------------------- diffusers export


def fixed_scheduler(base: dict, *, zero_snr: bool, prediction: str):
    """A diffusers DDIMScheduler with the base's betas that records the fixes (zero SNR, the
    prediction type, trailing spacing), so a stock pipeline samples the fine-tuned model the
    way it was trained. Caveat: the stock DDIMScheduler steps to t - T // S, not to the next
    listed timestep, so it matches minidiff's sampler only when S divides T (docs/latent.md)."""
    names = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
    return diffusers.DDIMScheduler(
        **schedule_settings(base), rescale_betas_zero_snr=zero_snr, prediction_type=names[prediction], timestep_spacing="trailing",
        # after the last listed timestep, step to alpha_bar = 1 (a clean sample), as minidiff does
        set_alpha_to_one=True, clip_sample=False, steps_offset=1)


def save_diffusers(output_dir: str | Path, components: LatentComponents, unet: nn.Module, *,
                   zero_snr: bool, prediction: str) -> Path:
    """Write `output_dir` as a complete diffusers Stable Diffusion folder: the given UNet via
    save_pretrained, the base's other components copied byte for byte, a DDIMScheduler config
    with rescale_betas_zero_snr, the prediction type and trailing spacing, and model_index.json.
    StableDiffusionPipeline.from_pretrained(output_dir) then loads it."""
    out, base = Path(output_dir), components.folder
    out.mkdir(parents=True, exist_ok=True)
    index_path = base / "model_index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {
        "_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False}
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    for name, value in index.items():  # vae, text_encoder, tokenizer, feature_extractor, ...
        if name in ("unet", "scheduler") or not isinstance(value, list) or value[0] is None:
            continue
        if (base / name).is_dir() and not (out / name).exists():
            shutil.copytree(base / name, out / name)
    unet.save_pretrained(out / "unet")
    fixed_scheduler(components.scheduler_config, zero_snr=zero_snr, prediction=prediction).save_pretrained(out / "scheduler")
    _atomic_write_text(out / "model_index.json", json.dumps(index, indent=2))
    return out


# ---------------------------------------------------------------------------------- sampling


@torch.no_grad()
def generate(components: LatentComponents, prompts: list[str], *, negative_prompt: str = "",
             height: int = 512, width: int = 512, steps: int = 50, sampler: str = "ddim",
             spacing: str | None = None, eta: float = 0.0, guidance: float = 7.5, guidance_rescale: float = 0.7,
             seed: int = 0, schedule: Schedule | None = None, prediction: str | None = None,
             x_T: torch.Tensor | None = None, bf16: bool = False, progress: bool = True) -> torch.Tensor:
    """Images in [-1, 1] [B, 3, height, width] for `prompts`, sampled by minidiff.samplers.sample.

    Schedule, prediction and spacing default to what the checkpoint's scheduler config records
    (a fine-tune by this file: zero SNR, v, trailing). The negative prompt's embedding is the
    unconditional input of classifier-free guidance; guidance_rescale is phi of Algorithm 2.
    Starting noise and DDPM noise come from a CPU generator seeded with `seed`, so the same
    seed gives the same images on any device.
    """
    f = components.vae_factor
    for size in (height, width):
        check_resolution(size, f)
    config = components.scheduler_config
    if schedule is None:
        schedule = base_schedule(config, bool(config.get("rescale_betas_zero_snr", False)))
    prediction = prediction or prediction_of(config)
    # a config without the key means diffusers' default, "leading" (Stable Diffusion 2.1-base's own)
    spacing = spacing or config.get("timestep_spacing", "leading")
    steps_offset = int(config.get("steps_offset", 0)) if spacing == "leading" else 0
    device = components.unet.device
    y = encode_prompts(components, prompts)
    uncond_y = encode_prompts(components, [negative_prompt]).expand_as(y)
    shape = (len(prompts), components.unet.config.in_channels, height // f, width // f)
    model = LatentUNet(components.unet).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    with autocast:
        z = sample(model, shape, schedule, prediction=prediction, steps=steps, spacing=spacing,
                   steps_offset=steps_offset, sampler=sampler, eta=eta, y=y, uncond_y=uncond_y,
                   guidance=guidance, guidance_rescale=guidance_rescale,
                   generator=torch.Generator().manual_seed(seed), device=device, x_T=x_T, progress=progress)
    return decode_latents(components, z)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
