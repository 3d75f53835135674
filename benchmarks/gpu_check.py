"""Every GPU claim of minidiff, measured in one run of at most about 8 minutes on one H100.

    python benchmarks/gpu_check.py --out DIR            # on a GPU: the real sizes
    python benchmarks/gpu_check.py --smoke --out DIR    # on a CPU, in seconds: the same code at tiny sizes

Sections (each guarded: one that fails records its error and the next one runs):

1. train_throughput  `ddpm-cifar10` training images/s at batch 128 (forward, MSE backward, Adam
                     step) in fp32, bf16 autocast, bf16 + channels_last and bf16 + torch.compile,
                     each against diffusers' UNet2DModel built with the same configuration and
                     timed in alternation with it (the ratio is the figure); peak memory of each.
2. sampling          images/s of 50 trailing DDIM steps in bf16 at the largest batch that fits,
                     found by doubling from 128 and catching out-of-memory errors (bounded by a
                     batch cap and a time budget, both reported).
3. training_run      `python train_cifar.py` (its command line, as a subprocess) for 3 minutes on
                     the built-in set at 32x32 with the ddpm-cifar10 preset and DDPM's recipe
                     (batch 128, lr 2e-4, 5000 warm-up steps, EMA 0.9999) in bf16 + channels_last:
                     sustained images/s, the loss curve, and the hours DDPM's 800k steps at batch
                     128 would take at that rate.
4. latent            a UNet, VAE and text encoder shaped like Stable Diffusion 2.1-base's (random
                     weights from the published configurations, nothing downloaded) at 512x512
                     (64x64 latents), bf16 autocast with gradient checkpointing, batch 1, 4 and 8:
                     VAE + text encoding time and the time of a v-loss training step (AdamW on the
                     UNet, gradient clipping, EMA), peak memory, against docs/latent.md's 24 GB plan.

5. colour_run        `python train_cifar.py --dataset folder --data-root DIR --minutes M` with the
                     CLI defaults (the folder recipe) on a colour folder, then `minidiff sample CKPT
                     --num 2000 --npz` with sample's defaults: steps, images/s, the network the
                     recipe chose, and DIR/colour_samples.npz to score on a machine with Debian's
                     icon themes (`python benchmarks/colour_fcd.py score icons DIR/colour_samples.npz`;
                     in place where the packages are there). The folder: --colour-root, else the
                     icons set exported from Debian's packages, else skipped with what to carry.

Sections run in the order 1, 2, 4, 5, 3: the training run goes last and is shortened if the
earlier sections left less than its 3 minutes before --deadline-minutes (default 8; the JSON
records the minutes it ran).
Every figure is printed with the GPU's name, the torch version and the date, and written to
DIR/gpu_check.json and DIR/gpu_check.md (rewritten after each section, so a run cut short still
leaves what it measured), with DIR/train_loss.png, DIR/train_metrics.jsonl and DIR/train_cifar.log.

On the lent GPU machine (no network; torch, transformers, accelerate, safetensors, requests,
huggingface_hub, Pillow, regex, filelock and numpy are there, diffusers and minidiff are not):

    # once, here, on a machine with PyPI (benchmarks/wheels is git-ignored):
    pip download diffusers==0.42.1 --no-deps -d benchmarks/wheels
    # the one device command (carry benchmarks/wheels along with the working tree):
    python3 -m pip install -q --no-index --no-deps benchmarks/wheels/*.whl; python3 benchmarks/gpu_check.py --out $OUT/gpu

diffusers' own requirements are importlib_metadata (only on Python < 3.8), filelock,
huggingface_hub >= 1.32, numpy, regex, requests, safetensors and Pillow; the GPU image (Python
3.12, huggingface_hub 1.33) has all of them, so the one wheel is enough. On a machine that lacks
one, add it to the same `pip download --no-deps -d benchmarks/wheels` line. minidiff needs no
install: this script puts the repository root on sys.path. Without diffusers the comparison
rows and the latent section are skipped, and the output says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.metadata
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from bench_unet import (Runner, Setting, cpu_training_memory, cuda_training_memory,  # noqa: E402
                        diffusers_unet, num_params, timed)
from minidiff.objectives import diffusion_loss  # noqa: E402
from minidiff.training.runtime import default_device  # noqa: E402
from minidiff.samplers import sample  # noqa: E402
from minidiff.schedules import Schedule  # noqa: E402
from minidiff.unet import PRESETS, UNet  # noqa: E402

GIB, MIB = 2**30, 2**20
DDPM_STEPS, DDPM_BATCH = 800_000, 128  # DDPM's CIFAR-10 run (Ho et al. 2020, Appendix B)
SECTION_TITLES = {
    "train_throughput": "1. Training throughput, minidiff vs diffusers UNet2DModel",
    "sampling": "2. Sampling throughput (DDIM, bf16, largest batch)",
    "training_run": "3. A real training run through train_cifar.py",
    "latent": "4. The latent path at Stable Diffusion 2.1-base's size",
    "colour_run": "5. The folder recipe on a colour folder (train_cifar.py, then minidiff sample)",
}
RUN_ORDER = ("train_throughput", "sampling", "latent", "colour_run", "training_run")

# ------------------------------------------------------------------ Stable Diffusion 2.1-base shapes

# The published configurations of stabilityai/stable-diffusion-2-1-base (unet/, vae/ and
# text_encoder/config.json), written out so that nothing is downloaded. diffusers' name
# `attention_head_dim` holds, for this model, the number of heads per level (64-wide heads).
SD21_BASE = {
    "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=1024, use_linear_projection=True, flip_sin_to_cos=True, freq_shift=0,
                 norm_num_groups=32, norm_eps=1e-5, downsample_padding=1, act_fn="silu", upcast_attention=False),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=512, scaling_factor=0.18215),
    "text_encoder": dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                         layer_norm_eps=1e-5, projection_dim=512, bos_token_id=0, eos_token_id=2, pad_token_id=1),
    "resolution": 512,
}
# Their parameter counts, as docs/latent.md reports them (the sizes of the released networks).
SD21_BASE_PARAMS = {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}

# The same three kinds of network at a few thousand parameters each, for --smoke.
SD_TINY = {
    "unet": dict(sample_size=16, block_out_channels=(16, 32), layers_per_block=1,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                 attention_head_dim=4, norm_num_groups=8),
    "vae": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                sample_size=32),
    "text_encoder": dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=12, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
    "resolution": 32,
}

# docs/latent.md's plan for one 24 GB card at 512 px, batch 1 (counted, not measured).
LATENT_PLAN = {"model_states_gib": 16.93, "total_gib_with_checkpointing": 18.0, "usable_gib_24gb_card": 22.35}


@dataclasses.dataclass
class Sizes:
    """How big and how long each section is: the GPU run, or the CPU smoke run."""

    preset: str                 # UNet preset of sections 1 to 3
    batch: int                  # training batch of sections 1 and 3
    warmup: int                 # untimed steps before timing (torch.compile compiles here)
    iters: int                  # timed steps (the median is reported)
    compile_backend: str        # "inductor" on a GPU; "eager" in the smoke run (same code path, no C++ build)
    sample_steps: int           # DDIM steps of section 2
    sample_start_batch: int     # the batch search starts here and doubles
    sample_max_batch: int       # ... up to here
    sample_budget_s: float      # ... and stops when the next doubling's sampling run would take longer
    train_minutes: float        # section 3's --minutes
    train_log_every: int
    train_extra: tuple          # more train_cifar.py flags
    latent: dict                # SD21_BASE or SD_TINY
    latent_batches: tuple
    latent_warmup: int
    latent_iters: int
    poll_s: float               # seconds between progress lines of the training run
    colour_minutes: float = 1.5  # section 5's --minutes
    colour_samples: int = 2000   # ... and the samples it draws (sample's figure for a colour set)


GPU_SIZES = Sizes("ddpm-cifar10", 128, 3, 20, "inductor", 50, 128, 16384, 60.0, 3.0, 10,
                  ("--bf16", "--channels-last"), SD21_BASE, (1, 4, 8), 2, 5, 20.0)
SMOKE_SIZES = Sizes("tiny", 4, 1, 1, "eager", 5, 2, 8, 30.0, 0.025, 2,
                    ("--num-images", "256", "--threads", "1", "--num-samples", "2", "--sample-steps", "1"),
                    SD_TINY, (1, 2), 0, 1, 0.5, colour_minutes=0.05, colour_samples=4)


class Skipped(Exception):
    """A section that cannot run here (a package missing); recorded as skipped, not as an error."""


# ------------------------------------------------------------------------------------ helpers


class Clock:
    """The run's stamp (GPU, torch, date) and its elapsed time; prints figures with the stamp."""

    def __init__(self, device: torch.device, deadline_min: float | None):
        self.start = time.perf_counter()
        self.deadline = None if deadline_min is None else self.start + 60 * deadline_min
        self.gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else \
            f"no GPU (CPU: {platform.processor() or platform.machine()})"
        self.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.stamp = f"[{self.gpu} | torch {torch.__version__} | {self.date}]"

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.perf_counter()

    def progress(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {msg}", flush=True)

    def figure(self, msg: str) -> None:
        print(f"  {msg}  {self.stamp}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def short_error(err: BaseException) -> str:
    """The exception's type and first line: enough to say what failed, short enough for a table."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def package_version(name: str) -> str | None:
    """The installed version of a package (read from its metadata, without importing it), or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------ 1. training throughput


def train_throughput(sz: Sizes, device: torch.device, clock: Clock) -> dict:
    """minidiff's UNet and diffusers' UNet2DModel of the same configuration, one training step
    (forward, MSE backward, Adam) each, timed in alternation under four settings."""
    cfg = PRESETS[sz.preset]
    size, channels, b = cfg["image_size"], cfg["in_channels"], sz.batch
    settings = {
        "fp32": Setting(device, b),
        "bf16": Setting(device, b, bf16=True),
        "bf16+channels_last": Setting(device, b, bf16=True, channels_last=True),
        "bf16+compile": Setting(device, b, bf16=True, compile=True, compile_backend=sz.compile_backend),
    }
    rows, ratios, note = [], {}, None

    for name, setting in settings.items():
        clock.progress(f"train_throughput: {sz.preset} batch {b}, {name} "
                       f"({sz.warmup} warm-up + {sz.iters} timed steps per model)")
        torch.manual_seed(0)
        runners = [("minidiff", Runner(UNet.from_preset(sz.preset), size, channels, setting))]
        torch.manual_seed(0)
        try:
            theirs = diffusers_unet(cfg)  # None without diffusers
        except Exception as err:  # e.g. a diffusers that does not import with this huggingface_hub
            theirs, note = None, f"diffusers' UNet2DModel could not be built: {short_error(err)}"
        if theirs is not None:
            runners.append(("diffusers UNet2DModel", Runner(theirs, size, channels, setting)))
        elif note is None:
            note = "diffusers is not installed: no UNet2DModel rows (the docstring says how to carry its wheel)"
            clock.progress(f"train_throughput: {note}")
        try:
            seconds = timed([r for _, r in runners], "train_step", sz.warmup, sz.iters)
        except Exception:  # time each alone, so that one model's failure leaves the other's figure
            seconds = []
            for _, r in runners:
                try:
                    seconds.append(timed([r], "train_step", sz.warmup, sz.iters)[0])
                except Exception as err:
                    seconds.append(err)
                    free_memory(device)
        for (model, r), s in zip(runners, seconds):
            row = {"model": model, "setting": name, "batch": b, "params": num_params(r.model)}
            if isinstance(s, Exception):
                row["error"] = short_error(s)
                clock.progress(f"  {model} {name}: FAILED {row['error']}")
            else:
                row.update(images_per_s=b / s, step_ms=1000 * s)
                try:
                    if device.type == "cuda":
                        row["peak_memory_mib"] = cuda_training_memory(r) / MIB
                        row["memory_kind"] = "cuda max allocated"
                    else:
                        row["peak_memory_mib"] = cpu_training_memory(r.model, size, channels, b) / MIB
                        row["memory_kind"] = "counted, fp32 (CPU)"
                except Exception as err:  # keep the speed even if the memory pass fails
                    row["error"] = f"memory: {short_error(err)}"
                clock.figure(f"{model:<22} {name:<19} batch {b}: {row['images_per_s']:9.1f} train img/s, "
                             f"{row['step_ms']:8.2f} ms/step, peak {row.get('peak_memory_mib', math.nan):8.0f} MiB")
            rows.append(row)
        ours, theirs = (rows[-len(runners):] + [{}])[:2]
        if "images_per_s" in ours and "images_per_s" in theirs:
            ratios[name] = ours["images_per_s"] / theirs["images_per_s"]
            clock.figure(f"-> {name}: minidiff at {ratios[name]:.3f}x diffusers' training speed")
        del runners
        free_memory(device)
    out = {"preset": sz.preset, "batch": b, "rows": rows, "minidiff_over_diffusers": ratios}
    if note:
        out["note"] = note
    return out


# --------------------------------------------------------------------------------- 2. sampling


def sampling(sz: Sizes, device: torch.device, clock: Clock) -> dict:
    """DDIM in bf16 at the largest batch that fits: one network evaluation per batch size,
    doubling until out of memory (or the cap, or the time budget), then the full sampler."""
    cfg = PRESETS[sz.preset]
    size, channels = cfg["image_size"], cfg["in_channels"]
    torch.manual_seed(0)
    model = UNet.from_preset(sz.preset).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    schedule = Schedule.make("linear", zero_snr=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def one_evaluation(batch: int) -> float:
        x = torch.randn(batch, channels, size, size, device=device)
        t = torch.full((batch,), schedule.num_timesteps - 1, device=device)
        sync(device)
        start = time.perf_counter()
        with autocast:
            model(x, t)
        sync(device)
        return time.perf_counter() - start

    search, fit, batch, stopped = [], None, sz.sample_start_batch, ""
    while True:
        try:
            one_evaluation(batch)  # warm-up at this size
            seconds = one_evaluation(batch)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            stopped = f"batch {batch} failed: {short_error(err)}"
            free_memory(device)
            break
        search.append({"batch": batch, "seconds_per_evaluation": seconds})
        clock.progress(f"sampling: batch {batch} fits, {seconds * 1000:.1f} ms per network evaluation")
        fit = batch
        if 2 * batch > sz.sample_max_batch:
            stopped = f"batch cap {sz.sample_max_batch} reached (memory was not the limit)"
            break
        if 2 * seconds * sz.sample_steps > sz.sample_budget_s:
            stopped = (f"time budget: {sz.sample_steps} steps at batch {2 * batch} would take about "
                       f"{2 * seconds * sz.sample_steps:.0f} s > {sz.sample_budget_s:g} s (memory was not the limit)")
            break
        batch *= 2
    if fit is None:
        raise RuntimeError(f"not even batch {sz.sample_start_batch} could be evaluated: {stopped}")
    clock.progress(f"sampling: {stopped}; {sz.sample_steps} DDIM steps at batch {fit}")

    while True:  # the sampler holds a few more image-sized tensors than one evaluation: halve if needed
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            with autocast:
                images = sample(model, (fit, channels, size, size), schedule, prediction="v",
                                steps=sz.sample_steps, spacing="trailing", sampler="ddim", device=device,
                                generator=torch.Generator(device).manual_seed(0), progress=False)
            sync(device)
            seconds = time.perf_counter() - start
            break
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            if not is_out_of_memory(err) or fit == 1:
                raise
            free_memory(device)
            fit //= 2
            stopped += f"; the full sampler needed batch {fit}"
    row = {"batch": fit, "steps": sz.sample_steps, "sampler": "ddim, trailing, bf16 autocast",
           "seconds": seconds, "images_per_s": fit / seconds,
           "network_evaluations_per_s": sz.sample_steps / seconds, "finite": bool(torch.isfinite(images).all())}
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    clock.figure(f"{sz.preset} DDIM {sz.sample_steps} steps, bf16, batch {fit}: {row['images_per_s']:.1f} "
                 f"images/s ({seconds:.2f} s)" + (f", peak {row['peak_memory_mib']:.0f} MiB"
                                                  if "peak_memory_mib" in row else ""))
    del model, images
    free_memory(device)
    return {"preset": sz.preset, "rows": [row], "search": search, "stopped_because": stopped}


# -------------------------------------------------------------------------- 3. training run


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            pass
    return rows


def sustained_rate(rows: list[dict], batch: int) -> tuple[float, int, int]:
    """Images/s over the second half of the run (from the first metrics row at or after half the
    last row's elapsed time to the last row): start-up, cuDNN's first calls and allocator growth
    fall in the first half. Returns (images/s, first step, last step)."""
    last = rows[-1]
    first = next(r for r in rows if r["elapsed_s"] >= last["elapsed_s"] / 2)
    if first is last:
        first = rows[0]
    if first is last:
        raise RuntimeError("the training run logged a single metrics row; it is too short to give a rate")
    rate = (last["step"] - first["step"]) * batch / (last["elapsed_s"] - first["elapsed_s"])
    return rate, first["step"], last["step"]


def training_run(sz: Sizes, device: torch.device, clock: Clock, out: Path) -> dict:
    """train_cifar.py through its command line, for sz.train_minutes (less if the deadline is
    near), then its metrics.jsonl read back."""
    minutes = sz.train_minutes
    if clock.left() < math.inf:
        minutes = min(minutes, (clock.left() - 45) / 60)  # 45 s for start-up, checkpoint and samples
        if minutes < 0.25:
            raise RuntimeError(f"too little time left before --deadline-minutes ({clock.left():.0f} s)")
    run_dir = Path(tempfile.mkdtemp(prefix="gpu_check_run_"))  # the checkpoint stays out of --out
    cmd = [sys.executable, str(ROOT / "train_cifar.py"), "--dataset", "builtin", "--preset", sz.preset,
           "--resolution", str(PRESETS[sz.preset]["image_size"]), "--no-class-cond",
           "--batch-size", str(sz.batch), "--lr", "2e-4", "--warmup", "5000", "--ema-decay", "0.9999",
           "--minutes", f"{minutes:.3f}", "--out", str(run_dir / "run"), "--device", device.type,
           "--sample-every", "0", "--ckpt-every", "0", "--judge-samples", "0", "--log-every", str(sz.train_log_every),
           *sz.train_extra]  # no sample grids, checkpoints or quality scoring inside the timed run
    clock.progress("training_run: " + " ".join(cmd[1:]))
    metrics = run_dir / "run" / "metrics.jsonl"
    log_path = out / "train_cifar.log"
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            limit = time.perf_counter() + 60 * minutes + 300
            while proc.poll() is None:
                time.sleep(sz.poll_s)
                rows = read_metrics(metrics)
                if rows:
                    r = rows[-1]
                    clock.progress(f"training_run: step {r['step']}, loss {r['loss']:.4f}, "
                                   f"{r['images_per_s']:.0f} img/s, {r['elapsed_s']:.0f} s of {60 * minutes:.0f}")
                if time.perf_counter() > limit:
                    proc.kill()
                    proc.wait()
                    raise RuntimeError(f"train_cifar.py ran over {minutes:.2f} min + 300 s and was stopped")
        if proc.returncode != 0:
            tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])
            raise RuntimeError(f"train_cifar.py exited with status {proc.returncode}: {tail[-400:]}")
        rows = read_metrics(metrics)
        if not rows:
            raise RuntimeError(f"train_cifar.py wrote no metrics rows to {metrics}")
        shutil.copy(metrics, out / "train_metrics.jsonl")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    rate, first_step, last_step = sustained_rate(rows, sz.batch)
    hours = DDPM_STEPS * DDPM_BATCH / rate / 3600
    every = max(1, len(rows) // 200)  # at most ~200 points of the curve in the JSON
    curve = [[r["step"], r["loss"]] for r in rows[::every]]
    plot_loss(rows, out / "train_loss.png", f"{sz.preset}, batch {sz.batch}, {clock.stamp}")
    result = {"preset": sz.preset, "batch": sz.batch, "minutes": minutes, "command": " ".join(cmd[1:]),
              "rows": [{"steps": last_step, "images": last_step * sz.batch, "first_loss": rows[0]["loss"],
                        "last_loss": rows[-1]["loss"], "sustained_images_per_s": rate,
                        "median_window_images_per_s": statistics.median(r["images_per_s"] for r in rows),
                        "ddpm_800k_hours": hours}],
              "sustained_from_step": first_step, "loss_curve": curve,
              "files": ["train_loss.png", "train_metrics.jsonl", "train_cifar.log"]}
    clock.figure(f"train_cifar.py {sz.preset} batch {sz.batch}, {minutes:.2f} min: {last_step} steps, "
                 f"loss {rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f}, sustained {rate:.1f} img/s "
                 f"(steps {first_step}-{last_step})")
    clock.figure(f"DDPM's {DDPM_STEPS:,} steps at batch {DDPM_BATCH} at that rate: {hours:.1f} hours")
    return result


def colour_folder(root: str | None, smoke: bool, scratch: Path) -> tuple[Path, str | None]:
    """The colour folder of section 5 and the colour set that scores it (None: no scorer for it):
    --colour-root as given; in the smoke run a few built-in shapes; else the icons set exported from
    Debian's icon themes (benchmarks/colour_sets.py), which the GPU machine may lack."""
    if root:
        path = Path(root)
        if not path.is_dir():
            raise RuntimeError(f"--colour-root {root} is not a folder")
        return path, ("icons" if "icons" in path.name else "stamps" if "stamps" in path.name else None)
    if smoke:
        from minidiff.training import data
        data.write_image_folder(data.builtin_shapes(96, seed=5, resolution=32), scratch / "shapes")
        flat = scratch / "flat"
        flat.mkdir()
        for i, png in enumerate(sorted((scratch / "shapes").rglob("*.png"))):
            png.rename(flat / f"{i:03d}.png")
        return flat, None
    import colour_sets

    if colour_sets.main(["export", "icons", str(scratch / "icons_flat"), "--flat"]) != 0:  # no icon themes here
        raise Skipped("no colour folder: pass --colour-root DIR (export one with `python benchmarks/colour_sets.py "
                      "export icons DIR --flat` where Debian's icon themes are installed, and carry it along)")
    return scratch / "icons_flat", "icons"


def colour_run(sz: Sizes, device: torch.device, clock: Clock, out: Path, root: str | None, smoke: bool) -> dict:
    """The folder recipe by the clock on a colour folder, as a user runs it: train_cifar.py with the
    CLI defaults for sz.colour_minutes, then minidiff sample's defaults; both through their command
    lines. The samples come back as colour_samples.npz (scored here when the colour set's scorer can
    find its images)."""
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_colour_"))
    try:
        folder, colour_set = colour_folder(root, smoke, scratch)
        run = scratch / "run"
        train = [sys.executable, str(ROOT / "train_cifar.py"), "--dataset", "folder", "--data-root", str(folder),
                 "--minutes", f"{sz.colour_minutes:.3f}", "--out", str(run), "--device", device.type]
        if smoke:
            train += ["--threads", "1", "--judge-samples", "0", "--sample-every", "0", "--num-samples", "2",
                      "--sample-steps", "1", "--log-every", "1"]
        clock.progress("colour_run: " + " ".join(train[1:]))
        log_path = out / "colour_train.log"
        with open(log_path, "w") as log:
            done = subprocess.run(train, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  timeout=60 * sz.colour_minutes + 600)
        if done.returncode != 0:
            tail = " | ".join(log_path.read_text().strip().splitlines()[-3:])
            raise RuntimeError(f"train_cifar.py exited with status {done.returncode}: {tail[-400:]}")
        rows = read_metrics(run / "metrics.jsonl")
        saved = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
        npz = out / "colour_samples.npz"
        draw = [sys.executable, "-m", "minidiff", "sample", str(run / "checkpoint.pt"), "--num",
                str(sz.colour_samples), "--npz", str(npz), "--png", str(out / "colour_samples.png"),
                "--device", device.type] + (["--steps", "2"] if smoke else [])
        start = time.perf_counter()
        subprocess.run(draw, check=True, capture_output=True, text=True, cwd=ROOT, timeout=900)
        sample_s = time.perf_counter() - start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    config = saved["config"]
    row = {"preset": config["preset"], "batch": config["batch_size"], "minutes": sz.colour_minutes,
           "steps": saved["step"], "images_per_s": rows[-1]["images_per_s"] if rows else float("nan"),
           "samples": sz.colour_samples, "sample_s": sample_s}
    score = {}
    if colour_set:
        scored = subprocess.run([sys.executable, str(HERE / "colour_fcd.py"), "score", colour_set, str(npz)],
                                capture_output=True, text=True, cwd=ROOT)
        score = json.loads(scored.stdout) if scored.returncode == 0 else {"score_error": scored.stderr.strip()[-300:]}
        row.update({k: score[k] for k in ("fcd", "saturation", "saturation_data") if k in score})
    clock.figure(f"colour_run {config['preset']}, {sz.colour_minutes:g} min: {saved['step']} steps, "
                 f"{row['images_per_s']:.0f} img/s; {sz.colour_samples} samples in {sample_s:.0f} s"
                 + (f"; FCD {row['fcd']:.1f}" if "fcd" in row else ""))
    return {"rows": [row], "command": " ".join(train[1:]), "sample_command": " ".join(draw[1:]),
            "colour_set": colour_set, "score": score, "files": ["colour_samples.npz", "colour_samples.png",
                                                                  "colour_train.log"]}


def plot_loss(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (v)")
    ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------- 4. latent


def build_sd_parts(shapes: dict, device: torch.device):
    """UNet2DConditionModel, AutoencoderKL and CLIPTextModel from config dicts, random weights,
    created directly on `device`. Raises Skipped without diffusers or transformers."""
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel
    except ImportError as err:
        raise Skipped(f"{err.name or err} is not installed (the docstring says how to carry its wheel)") from err
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**shapes["unet"])
        vae = AutoencoderKL(**shapes["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**shapes["text_encoder"]))
    return unet, vae, text_encoder


def latent(sz: Sizes, device: torch.device, clock: Clock) -> dict:
    """One fine-tuning step of the SD-shaped UNet, as minidiff.latent.train runs it: UNet float32
    master weights under bf16 autocast with gradient checkpointing, frozen VAE and text encoder
    in bf16, v loss on the zero-terminal-SNR schedule, gradient clipping, fused AdamW, EMA."""
    try:
        from minidiff.training.ema import EMA
        from minidiff.latent.stable_diffusion import LatentComponents, LatentUNet, base_schedule, encode_images
    except ImportError as err:
        raise Skipped(f"minidiff.latent.stable_diffusion cannot be imported: {err}") from err
    shapes = sz.latent
    clock.progress("latent: building UNet, VAE and text encoder from their configurations")
    unet, vae, text_encoder = build_sd_parts(shapes, device)
    params = {"unet": num_params(unet), "vae": num_params(vae), "text_encoder": num_params(text_encoder)}
    clock.progress("latent: parameters " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    for frozen in (vae, text_encoder):
        frozen.to(torch.bfloat16).requires_grad_(False).eval()
    unet.train().enable_gradient_checkpointing()
    components = LatentComponents(folder=None, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=None,
                                  scheduler_config={})
    schedule = base_schedule({}, zero_snr=True)  # SD's scaled_linear betas, rescaled (Lin et al. Alg. 1)
    model = LatentUNet(unet)
    ema = EMA(unet, 0.9999)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=1e-2, fused=device.type == "cuda")
    # weights + gradients + two AdamW moments + EMA in float32, the frozen networks in bf16
    states = 5 * 4 * params["unet"] + 2 * (params["vae"] + params["text_encoder"])
    generator = torch.Generator(device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    res, tokens = shapes["resolution"], shapes["text_encoder"]["max_position_embeddings"]
    vocab = shapes["text_encoder"]["vocab_size"]

    rows = []
    for batch in sz.latent_batches:
        clock.progress(f"latent: batch {batch} at {res}x{res} ({sz.latent_warmup} warm-up + "
                       f"{sz.latent_iters} timed steps)")
        row = {"batch": batch, "resolution": res}
        try:
            pixels = torch.rand(batch, 3, res, res, generator=generator, device=device) * 2 - 1
            ids = torch.randint(0, vocab, (batch, tokens), generator=generator, device=device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            encode_s, step_s = [], []
            for i in range(sz.latent_warmup + sz.latent_iters):
                sync(device)
                t0 = time.perf_counter()
                z = encode_images(components, pixels, "sample", generator)
                with torch.no_grad():
                    c = text_encoder(ids)[0].float()
                sync(device)
                t1 = time.perf_counter()
                with autocast:
                    loss = diffusion_loss(model, z, schedule, "v", y=c, generator=generator)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                ema.update(unet)
                sync(device)
                if i >= sz.latent_warmup:
                    encode_s.append(t1 - t0)
                    step_s.append(time.perf_counter() - t1)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"the v loss is {loss.item()}")
            row.update(encode_s=statistics.median(encode_s), train_step_s=statistics.median(step_s),
                       v_loss=loss.item(), model_states_gib=states / GIB)
            row["images_per_s"] = batch / (row["encode_s"] + row["train_step_s"])
            row["images_per_s_cached"] = batch / row["train_step_s"]
            if device.type == "cuda":
                free, total = torch.cuda.mem_get_info(device)
                row.update(peak_allocated_gib=torch.cuda.max_memory_allocated(device) / GIB,
                           peak_reserved_gib=torch.cuda.max_memory_reserved(device) / GIB,
                           device_used_gib=(total - free) / GIB, memory_kind="cuda")
                row["fits_24gb_card"] = row["device_used_gib"] <= LATENT_PLAN["usable_gib_24gb_card"]
            else:
                row.update(peak_allocated_gib=states / GIB, memory_kind="counted model states (CPU)")
            clock.figure(f"latent batch {batch} {res}px: encode {row['encode_s'] * 1000:.1f} ms, train step "
                         f"{row['train_step_s'] * 1000:.1f} ms ({row['images_per_s_cached']:.2f} img/s from cached "
                         f"latents, {row['images_per_s']:.2f} encoding live), peak {row['peak_allocated_gib']:.2f} GiB"
                         + (f" allocated, {row['device_used_gib']:.2f} GiB on the device" if device.type == "cuda" else
                            " (counted)"))
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            row["error"] = short_error(err)
            clock.progress(f"latent: batch {batch} FAILED {row['error']}")
            optimizer.zero_grad(set_to_none=True)
            free_memory(device)
        rows.append(row)
        if "error" in row and is_out_of_memory(Exception(row["error"])):
            break  # larger batches will not fit either
    del unet, vae, text_encoder, components, model, ema, optimizer
    free_memory(device)
    return {"shapes": "Stable Diffusion 2.1-base" if shapes is SD21_BASE else "tiny SD-shaped (smoke)",
            "params": params, "rows": rows, "plan": LATENT_PLAN,
            "settings": "bf16 autocast, gradient checkpointing, fused AdamW (CUDA), grad clip 1, EMA 0.9999, "
                        "v loss on zero-terminal-SNR scaled_linear; random pixels and token ids"}


# ----------------------------------------------------------------------------------- outputs


def fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def table(rows: list[dict], columns: list[str]) -> list[str]:
    cols = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return lines


COLUMNS = {
    "train_throughput": ["model", "setting", "batch", "params", "images_per_s", "step_ms", "peak_memory_mib",
                         "memory_kind", "error"],
    "sampling": ["batch", "steps", "sampler", "images_per_s", "seconds", "peak_memory_mib", "finite"],
    "training_run": ["steps", "images", "first_loss", "last_loss", "sustained_images_per_s",
                     "median_window_images_per_s", "ddpm_800k_hours"],
    "colour_run": ["preset", "batch", "minutes", "steps", "images_per_s", "samples", "sample_s", "fcd",
                   "saturation", "saturation_data"],
    "latent": ["batch", "resolution", "encode_s", "train_step_s", "images_per_s_cached", "images_per_s",
               "peak_allocated_gib", "peak_reserved_gib", "device_used_gib", "fits_24gb_card", "memory_kind",
               "error"],
}


def markdown(results: dict) -> str:
    meta = results["meta"]
    stamp = f"{meta['gpu']} | torch {meta['torch']} | {meta['date']}"
    lines = [f"# gpu_check: {stamp}", "",
             f"`{meta['command']}`{' (smoke: tiny sizes on a CPU, not a measurement of any claim)' if meta['smoke'] else ''}",
             "", f"diffusers {meta['diffusers']}, transformers {meta['transformers']}, Python {meta['python']}", ""]
    for key, title in SECTION_TITLES.items():
        sec = results["sections"].get(key)
        lines += [f"## {title}", "", f"{stamp}", ""]
        if sec is None:
            lines += ["not run", ""]
            continue
        lines += [f"status: **{sec['status']}** ({sec['seconds']:.0f} s)", ""]
        if sec["status"] != "ok":
            lines += [sec.get("error") or sec.get("reason", ""), ""]
            continue
        lines += table(sec["rows"], COLUMNS[key]) + [""]
        if key == "train_throughput":
            lines += [f"- minidiff / diffusers training speed, {k}: {v:.3f}x"
                      for k, v in sec["minidiff_over_diffusers"].items()]
            lines += [f"- {sec['note']}"] if "note" in sec else []
        if key == "sampling":
            lines += [f"- batch search: " + ", ".join(f"{s['batch']}" for s in sec["search"])
                      + f"; stopped: {sec['stopped_because']}"]
        if key == "training_run":
            lines += [f"- `{sec['command']}` ({sec['minutes']:.2f} min); sustained rate from step "
                      f"{sec['sustained_from_step']}; loss curve: train_loss.png"]
        if key == "colour_run":
            lines += [f"- `{sec['command']}`, then `{sec['sample_command']}`"]
            if not sec["colour_set"]:
                lines += ["- scored at home: `python benchmarks/colour_fcd.py score SET colour_samples.npz`"]
        if key == "latent":
            p = sec["plan"]
            lines += [f"- {sec['shapes']}: " + ", ".join(f"{k} {v:,}" for k, v in sec["params"].items())
                      + " parameters", f"- {sec['settings']}",
                      f"- docs/latent.md's plan (counted): model states {p['model_states_gib']} GiB, about "
                      f"{p['total_gib_with_checkpointing']} GiB in all at batch 1 with checkpointing, against "
                      f"{p['usable_gib_24gb_card']} GiB usable on a 24 GB card"]
        lines.append("")
    return "\n".join(lines)


def write_outputs(results: dict, out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(results))


# -------------------------------------------------------------------------------------- main


def run_section(key: str, fn, results: dict, out: Path, clock: Clock, device: torch.device) -> None:
    """Run one section; record its result, or its error (and carry on), and rewrite the outputs."""
    clock.progress(f"== {SECTION_TITLES[key]}")
    start = time.perf_counter()
    try:
        body = {"status": "ok", **fn()}
    except Skipped as reason:
        body = {"status": "skipped", "reason": str(reason)}
        clock.progress(f"{key} SKIPPED: {reason}")
    except Exception as err:  # noqa: BLE001 - one section's failure must not cost the others
        body = {"status": "error", "error": short_error(err), "traceback": traceback.format_exc(limit=8)}
        clock.progress(f"{key} FAILED: {body['error']}")
        free_memory(device)
    results["sections"][key] = {"title": SECTION_TITLES[key], "seconds": time.perf_counter() - start, **body}
    write_outputs(results, out)


def fail(msg: str) -> None:
    print(f"gpu_check.py: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md and the run's files")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps, on the CPU: checks the code path")
    p.add_argument("--sections", nargs="+", choices=list(SECTION_TITLES), default=list(SECTION_TITLES),
                   help="run only these sections (default: all)")
    p.add_argument("--train-minutes", type=float, help="length of the training run (default: 3; smoke 0.025)")
    p.add_argument("--deadline-minutes", type=float, default=None,
                   help="shorten the training run so that the whole check ends by then (default: 8 on a GPU)")
    p.add_argument("--colour-root", help="section 5's colour folder (default: the icons set exported from "
                   "Debian's icon themes where they are installed; the smoke run: a few built-in shapes)")
    p.add_argument("--device", default=None, help="cuda (the default: cuda, then mps, then cpu; the full check "
                   "needs cuda) or cpu (--smoke only, its default)")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cpu" if args.smoke else default_device()))
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda, but torch sees no CUDA device")
    if device.type != "cuda" and not args.smoke:
        fail("no CUDA device: the full check needs a GPU; --smoke runs the same code at tiny sizes on the CPU")
    if args.train_minutes is not None and args.train_minutes <= 0:
        fail(f"--train-minutes must be positive, not {args.train_minutes:g}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)

    # diffusers' code calls an lru_cache'd version check that dynamo warns about at length
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    sz = SMOKE_SIZES if args.smoke else GPU_SIZES
    if args.train_minutes is not None:
        sz = dataclasses.replace(sz, train_minutes=args.train_minutes)
    deadline = args.deadline_minutes if args.deadline_minutes is not None else (None if args.smoke else 8.0)
    clock = Clock(device, deadline)
    results = {"meta": {"gpu": clock.gpu, "torch": torch.__version__, "date": clock.date, "smoke": args.smoke,
                        "device": str(device), "python": platform.python_version(),
                        "diffusers": package_version("diffusers"), "transformers": package_version("transformers"),
                        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)},
               "sections": {}}
    print(f"gpu_check {clock.stamp}: device {device}, diffusers {results['meta']['diffusers']}, "
          f"transformers {results['meta']['transformers']}, sections {' '.join(args.sections)}", flush=True)
    sections = {
        "train_throughput": lambda: train_throughput(sz, device, clock),
        "sampling": lambda: sampling(sz, device, clock),
        "latent": lambda: latent(sz, device, clock),
        "training_run": lambda: training_run(sz, device, clock, out),
        "colour_run": lambda: colour_run(sz, device, clock, out, args.colour_root, args.smoke),
    }
    for key in RUN_ORDER:
        if key in args.sections:
            run_section(key, sections[key], results, out, clock, device)
    results["meta"]["total_s"] = clock.elapsed()
    write_outputs(results, out)
    print("\n" + markdown(results), flush=True)  # the whole report in the log too
    states = {k: v["status"] for k, v in results["sections"].items()}
    print(f"done in {clock.elapsed():.0f} s: " + ", ".join(f"{k} {v}" for k, v in states.items())
          + f"; {out / 'gpu_check.json'}, {out / 'gpu_check.md'}", flush=True)
    return results


if __name__ == "__main__":
    main()
