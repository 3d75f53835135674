"""Stable Diffusion in latent space, driven by minidiff's schedule, loss, samplers and guidance.

Lin et al. (2023) fine-tune Stable Diffusion 2.1-base with their four fixes (Sec. 4): the base
model's scaled_linear betas rescaled to zero terminal SNR (Algorithm 1), the v loss (an eps-trained
base is switched to v simply by training on the v target, Sec. 3.2), trailing timesteps (Sec. 3.3)
and rescaled classifier-free guidance (Algorithm 2). This file gives that path to users:

    checkpoint folder -> components (VAE, text encoder, tokenizer, UNet; diffusers/transformers)
    captioned images  -> latents z = scaling_factor * VAE(x), text embeddings c = CLIP(caption)
    training          -> objectives.diffusion_loss(model, z, schedule, "v", y=c)
    sampling          -> samplers.sample(model, ..., y=c, uncond_y=c_negative, guidance, phi)
    output            -> a diffusers folder whose scheduler config records the fixes

The networks are not re-implemented: `LatentUNet` only gives the diffusers UNet minidiff's model
signature model(x, t, y), with y the text encoder's hidden states. The training loop lives in
`train`; `train_latent.py` is its command line and `minidiff.sample_latent` the sampling command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

try:
    import diffusers
    import transformers
except ImportError as err:  # the latent path is an optional extra; the core never imports this file
    raise ImportError("minidiff.latent needs the 'latent' extra: pip install -e '.[latent]' "
                      "(diffusers, transformers, accelerate, safetensors)") from err

from .data import IMAGE_SUFFIXES, resize_center_crop, to_float
from .ema import EMA
from .objectives import diffusion_loss
from .samplers import sample
from .schedules import Schedule, make_betas, rescale_zero_terminal_snr

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


def base_schedule(scheduler_config: dict, zero_snr: bool) -> Schedule:
    """The base model's training schedule from its scheduler config, optionally rescaled to zero
    terminal SNR (Lin et al. Algorithm 1). Every Stable Diffusion 1.x/2.x checkpoint uses
    scaled_linear betas from 0.00085 to 0.012 over 1000 steps; other schedules are refused
    rather than silently replaced."""
    kind = scheduler_config.get("beta_schedule", "scaled_linear")
    T = int(scheduler_config.get("num_train_timesteps", 1000))
    start, end = scheduler_config.get("beta_start", 0.00085), scheduler_config.get("beta_end", 0.012)
    defaults = {"scaled_linear": (0.00085, 0.012), "linear": (1e-4, 0.02)}
    if kind not in defaults or not all(math.isclose(a, b) for a, b in zip((start, end), defaults[kind])):
        raise ValueError(f"the checkpoint's scheduler uses beta_schedule={kind!r} from {start} to {end}; "
                         "minidiff's latent path knows Stable Diffusion's scaled_linear 0.00085..0.012 "
                         "(and linear 1e-4..0.02). Edit scheduler/scheduler_config.json if that is wrong.")
    betas = make_betas(kind, T)
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
        raise ValueError(f"resolution {resolution} is not a multiple of the VAE's downsampling factor "
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


# ------------------------------------------------------------------------------------ dataset


def read_captions(root: Path, images: list[Path]) -> dict[Path, str]:
    """Captions from metadata.jsonl ({"file_name": ..., "text" or "caption": ...} per line) and
    from a .txt file beside each image (the .txt wins). Raises if any image has none."""
    captions = {}
    meta = root / "metadata.jsonl"
    if meta.is_file():
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                text = row.get("text", row.get("caption"))
                if "file_name" not in row or text is None:
                    raise ValueError(f"{meta}:{n} needs a 'file_name' and a 'text' (or 'caption') field")
                captions[(root / row["file_name"]).resolve()] = str(text)
    for path in images:
        txt = path.with_suffix(".txt")
        if txt.is_file():
            captions[path.resolve()] = txt.read_text().strip()
    missing = [p for p in images if p.resolve() not in captions]
    if missing:
        shown = ", ".join(str(p.relative_to(root)) for p in missing[:5])
        raise ValueError(f"{len(missing)} of {len(images)} images under {root} have no caption ({shown}"
                         f"{', ...' if len(missing) > 5 else ''}). Put a caption in a .txt file beside each "
                         "image (cat.png -> cat.txt) or a line {\"file_name\": \"cat.png\", \"text\": \"...\"} "
                         "in metadata.jsonl.")
    return {p: captions[p.resolve()] for p in images}


class CaptionedImages(torch.utils.data.Dataset):
    """A folder of images with captions, each resized (shorter side) and centre-cropped to a square.

    Item i is {"index": i, "pixels": float [-1, 1] [3, R, R], "caption": str}. Images are read
    from disk per item, so the set can be larger than memory.
    """

    def __init__(self, root: str | Path, resolution: int):
        self.root, self.resolution = Path(root).expanduser(), resolution
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")
        self.captions = [c for c in read_captions(self.root, self.paths).values()]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            rgb = im.convert("RGB")
            pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
        pixels = resize_center_crop(pixels.permute(2, 0, 1)[None], self.resolution)[0]
        return {"index": i, "pixels": to_float(pixels), "caption": self.captions[i]}


# ------------------------------------------------------------------------------------ caching


class CachedLatents(torch.utils.data.Dataset):
    """Latents and text embeddings written by `cache_latents`: item i is
    {"index": i, "latents": [4, R/f, R/f], "text_emb": [L, D]}, both float32."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self.meta = json.loads((self.dir / "meta.json").read_text())

    def __len__(self) -> int:
        return self.meta["num_images"]

    def __getitem__(self, i: int) -> dict:
        item = torch.load(self.dir / f"{i:07d}.pt", weights_only=True)
        return {"index": i, **item}

    def empty_embedding(self) -> torch.Tensor:
        return torch.load(self.dir / "empty.pt", weights_only=True)


def cache_latents(components: LatentComponents, dataset: CaptionedImages, cache_dir: str | Path, *,
                  mode: str = "sample", seed: int = 0, batch_size: int = 8, rank: int = 0,
                  world_size: int = 1, progress: bool = True) -> CachedLatents:
    """Encode every image and caption once and write them to `cache_dir`, so that training
    skips both encoders. A finished cache (its meta.json matches) is reused as it is.

    With mode="sample" the VAE sample is drawn once per image, here, from `seed`: every epoch
    then sees the same draw. One file per image; meta.json is written last, so an
    interrupted cache is redone. Under torchrun each rank encodes its share.
    """
    cache_dir = Path(cache_dir)
    meta = {"num_images": len(dataset), "resolution": dataset.resolution, "mode": mode, "seed": seed,
            "checkpoint": str(components.folder.resolve()),
            "images": [str(p.relative_to(dataset.root)) for p in dataset.paths],
            "captions": dataset.captions}
    meta_path = cache_dir / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return CachedLatents(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    device = components.vae.device
    generator = torch.Generator(device).manual_seed(seed + rank)
    if rank == 0:
        torch.save(encode_prompts(components, [""])[0].cpu(), cache_dir / "empty.pt")
    mine = list(range(rank, len(dataset), world_size))
    for start in tqdm(range(0, len(mine), batch_size), desc="caching latents", disable=not progress):
        items = [dataset[i] for i in mine[start:start + batch_size]]
        pixels = torch.stack([it["pixels"] for it in items])
        latents = encode_images(components, pixels, mode, generator).cpu()
        text = encode_prompts(components, [it["caption"] for it in items]).cpu()
        for it, z, c in zip(items, latents, text):
            torch.save({"latents": z.clone(), "text_emb": c.clone()}, cache_dir / f"{it['index']:07d}.pt")
    _barrier(world_size)
    if rank == 0:
        _atomic_write_text(meta_path, json.dumps(meta))
    _barrier(world_size)
    return CachedLatents(cache_dir)


# ------------------------------------------------------------------------------- batch order


class StepBatches(torch.utils.data.Sampler):
    """Index lists for micro-batches from `start` on; micro-batch k is a pure function of
    (seed, k): epoch e = k // per_epoch uses a permutation seeded by (seed, e), each global batch
    of batch_size * world_size images is cut into one slice per rank, and the ragged tail of an
    epoch is dropped. So a run resumed at micro-batch k needs nothing but k."""

    def __init__(self, num_items: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.n, self.batch_size, self.seed, self.start = num_items, batch_size, seed, start
        self.rank, self.world_size = rank, world_size
        self.per_epoch = num_items // (batch_size * world_size)
        if self.per_epoch == 0:
            raise ValueError(f"batch size {batch_size} x {world_size} process(es) exceeds the dataset "
                             f"size {num_items}")

    def batch(self, k: int) -> list[int]:
        epoch, within = divmod(k, self.per_epoch)
        if epoch != getattr(self, "_epoch", None):  # one permutation per epoch, drawn once
            seed = hash((self.seed, epoch))  # hash of ints is stable across runs
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
        start = (within * self.world_size + self.rank) * self.batch_size
        return self._order[start:start + self.batch_size].tolist()

    def __iter__(self):
        k = self.start
        while True:
            yield self.batch(k)
            k += 1


# ------------------------------------------------------------------------------------ config


@dataclass
class LatentTrainConfig:
    """Everything a fine-tune needs; the defaults are the paper's fixes (Lin et al. Sec. 4)."""

    pretrained: str                      # folder in the diffusers layout, or a hub id
    data_dir: str                        # images with captions (.txt beside each, or metadata.jsonl)
    output_dir: str = "out/latent"
    resolution: int = 512
    # the four fixes: zero terminal SNR and v prediction here; trailing and phi at sampling time
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
    ema_decay: float = 0.9999            # 0 turns EMA off
    caption_dropout: float = 0.1         # replace the caption by "" (classifier-free guidance)
    vae_latent: str = "sample"           # "sample" or "mean" of q(z | x)
    # memory and speed
    bf16: bool = False
    gradient_checkpointing: bool = False
    cache_dir: str | None = None         # cache latents + text embeddings here (skips both encoders)
    workers: int = 2
    device: str = "auto"
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


# Fields that change which batches, noise and updates a run sees: a resume must keep them.
RESUME_KEYS = ("pretrained", "resolution", "zero_snr", "prediction", "batch_size", "grad_accum", "lr",
               "warmup_steps", "weight_decay", "grad_clip", "ema_decay", "caption_dropout", "vae_latent",
               "bf16", "seed")


# ------------------------------------------------------------------------------- checkpoints


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then os.replace: a crash mid-write never leaves a half
    checkpoint where the last good one was."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint; tensors and plain containers only (weights_only: no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------- diffusers export


def fixed_scheduler(base: dict, *, zero_snr: bool, prediction: str):
    """A diffusers DDIMScheduler with the base's betas that records the fixes (zero SNR, the
    prediction type, trailing spacing), so a stock pipeline samples the fine-tuned model the
    way it was trained. Caveat: the stock DDIMScheduler steps to t - T // S, not to the next
    listed timestep, so it matches minidiff's sampler only when S divides T (docs/latent.md)."""
    names = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
    kept = {k: base[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule") if k in base}
    return diffusers.DDIMScheduler(
        **kept, rescale_betas_zero_snr=zero_snr, prediction_type=names[prediction], timestep_spacing="trailing",
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
    spacing = spacing or config.get("timestep_spacing", "trailing")
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


# ---------------------------------------------------------------------------------- training


def _barrier(world_size: int) -> None:
    if world_size > 1:
        torch.distributed.barrier()


def _setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) one process per GPU joins a
    process group; otherwise a single process on `device` ("auto": CUDA when there is one)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            dev = torch.device("cuda", local_rank)
        else:
            dev = torch.device("cpu")
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return rank, world_size, dev
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return 0, 1, torch.device(device)


def learning_rate(cfg: LatentTrainConfig, step: int) -> float:
    """Linear warm-up over warmup_steps, then constant (a fine-tune starts from a good model)."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


@dataclass
class TrainResult:
    """What a run leaves behind: its step, the mean loss of each optimizer step it ran, the
    trained UNet (with EMA weights when EMA is on: the exported network) and the output folder."""

    step: int
    losses: list[float]
    unet: nn.Module
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

    One optimizer step = grad_accum micro-batches of batch_size per process. Everything a
    resumed run needs is in output_dir/checkpoint.pt, so N steps in one go and N/2 + N/2
    with --resume give the same weights bit for bit (on CPU; on GPU up to kernel nondeterminism).
    """
    from tqdm.auto import tqdm

    rank, world_size, device = _setup_distributed(cfg.device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    components = load_components(cfg.pretrained, device=device,
                                 encoder_dtype=torch.bfloat16 if cfg.bf16 else torch.float32)
    check_resolution(cfg.resolution, components.vae_factor)
    schedule = base_schedule(components.scheduler_config, cfg.zero_snr)
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

    # data: images encoded live, or latents and text embeddings cached once on disk
    images = CaptionedImages(cfg.data_dir, cfg.resolution)
    if cfg.cache_dir:
        dataset = cache_latents(components, images, cfg.cache_dir, mode=cfg.vae_latent, seed=cfg.seed,
                                rank=rank, world_size=world_size, progress=cfg.progress and rank == 0)
        empty = dataset.empty_embedding()
    else:
        dataset, empty = images, encode_prompts(components, [""])[0]

    step, losses, ckpt_path = 0, [], out / "checkpoint.pt"
    if cfg.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start afresh")
        state = load_checkpoint(ckpt_path)
        changed = [k for k in RESUME_KEYS if state["config"].get(k) != getattr(cfg, k)]
        if changed:
            raise ValueError(f"--resume with settings that differ from the checkpoint's ({', '.join(changed)}): "
                             "the resumed run would not continue the same run. Use the original values.")
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step, losses = state["step"], list(state["losses"])
        torch.set_rng_state(state["rng"]["torch"])
        if len(state["rng"]["generators"]) == world_size:
            generator.set_state(state["rng"]["generators"][rank])
        else:  # another number of processes: a valid continuation, but not the same batches or noise
            generator.manual_seed(cfg.seed * 1000 + rank + step)

    batches = StepBatches(len(dataset), cfg.batch_size, seed=cfg.seed, start=step * cfg.grad_accum,
                          rank=rank, world_size=world_size)
    loader = iter(torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers,
                                              pin_memory=device.type == "cuda"))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    def checkpoint() -> None:
        gens = [None] * world_size
        if world_size > 1:
            torch.distributed.all_gather_object(gens, generator.get_state())
        else:
            gens = [generator.get_state()]
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "unet": unet.state_dict(), "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "step": step, "losses": losses,
                "rng": {"torch": torch.get_rng_state(), "generators": gens},
                "config": dataclasses.asdict(cfg)})

    bar = tqdm(total=cfg.max_steps, initial=step, desc="fine-tuning", disable=not (cfg.progress and rank == 0))
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
            bar.set_postfix(loss=f"{sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:]):.4f}")
        if cfg.sample_every and step % cfg.sample_every == 0 and rank == 0:
            _save_samples(components, ema.model if ema is not None else unet.eval(), cfg, schedule,
                          out / "samples" / f"step_{step:07d}.png")
            unet.train()
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            checkpoint()
    bar.close()

    final = (ema.model if ema is not None else unet).eval()  # the exported network is the average
    if rank == 0:
        save_diffusers(out, components, final, zero_snr=cfg.zero_snr, prediction=cfg.prediction)
    _barrier(world_size)
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
