"""The runs of exercises 12-14: train a small UNet with the student's loss (12), sample a trained
model with the student's loop (13), and the brightness experiment with the student's settings (14).
exercises.py attaches them (RUNS) to the exercise records of ex_training.py and ex_brightness.py.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .. import objectives, samplers
from ..exact.analytic import GaussianDenoiser
from ..schedules import Schedule
from .core import Fail
from .ex_brightness import D, FIXES, FLAWED, LAM_B, LAM_PIX, MEAN_B, S_B, brightness_std_ratio, reference_fix_settings
from .ex_training import reference_ddim_sample, reference_v_loss

MAIN_JOB_CHECKPOINT = Path("runs/builtin-small-patch2-linear-zsnr-v/checkpoint.pt")  # python train_cifar.py
COURSE_CHECKPOINT = Path("runs/course/12/model.pt")  # what `minidiff course run 12` leaves


# ------------------------------------------------------------------------------------------------
# The runs
# ------------------------------------------------------------------------------------------------


def _figures():
    from ..repro.common import image_brightness, mosaic, pyplot, save_figure, wasserstein1
    return image_brightness, mosaic, pyplot, save_figure, wasserstein1


# 16x16 images: in three CPU-minutes the small model learns the ten shapes at 16 pixels (3,767 steps: every
# row of the grid its shape and colour) but not at 32 (1,695 steps: coloured blobs), on a shared 2-core machine.
TRAIN_FULL = dict(preset="small-patch2", resolution=16, images=10_000, batch=32, steps=6000, seconds=180.0, samples=100)
TRAIN_QUICK = dict(preset="tiny", resolution=16, images=256, batch=16, steps=40, seconds=60.0, samples=20)
GUIDANCE = dict(guidance=2.5, guidance_from=-3.0)  # the built-in recipe's: guided where log-SNR >= -3
LABEL_DROPOUT = 0.1


def train_model(loss_fn, quick: bool, seed: int = 0):
    """A class-conditional UNet trained on the built-in shapes with loss_fn(model, x0, alphas_cumprod,
    generator), as the built-in recipe trains it: Adam (lr 2e-3 after 100 warm-up steps, beta2 0.99,
    falling to 0 over the last fifth of the run), gradients clipped at 1, an EMA over about the last
    thirtieth of the steps, labels dropped 10% of the time (for guidance); the main job's schedule
    (linear, zero terminal SNR) and target (v). loss_fn sees a model(x_t, t) that adds the batch's
    labels itself. Stops at the step count or the time budget, whichever comes first.
    Returns (EMA model, info)."""
    from ..training.config import EMA_SHARE
    from ..training.data import Batches, builtin_shapes
    from ..training.ema import EMA
    from ..unet import UNet

    size = TRAIN_QUICK if quick else TRAIN_FULL
    torch.manual_seed(seed)
    data = builtin_shapes(size["images"], seed=seed, resolution=size["resolution"])
    classes = len(data.classes)
    model = UNet.from_preset(size["preset"], image_size=size["resolution"], num_classes=classes)
    ema = EMA(model, 0.995, share=EMA_SHARE)
    schedule = Schedule.make("linear", zero_snr=True)
    ab = schedule.alphas_cumprod
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.99))
    batches, gen = Batches(data, size["batch"], seed=seed), torch.Generator().manual_seed(seed + 1)
    labels = {}

    def labelled(x, t, y=None):  # the model as the loss sees it: model(x_t, t), labels added here
        return model(x, t, y=labels["y"])

    losses, start = [], time.perf_counter()
    for step in range(size["steps"]):
        progress = max(step / size["steps"], (time.perf_counter() - start) / size["seconds"])
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 100, (1 - progress) / 0.2)
        x0, y = batches.batch(step)
        drop = torch.rand(y.shape, generator=gen) < LABEL_DROPOUT
        labels["y"] = torch.where(drop, torch.full_like(y, classes), y)
        loss = loss_fn(labelled, x0, ab, gen)
        if not bool(torch.isfinite(loss)):
            raise Fail(f"the loss is {loss.item()} at step {step}: training stopped")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        losses.append(loss.item())
    info = dict(steps=len(losses), seconds=time.perf_counter() - start, losses=losses, schedule=schedule,
                data=data, preset=size["preset"], resolution=size["resolution"], samples=size["samples"],
                guide=dict(classes=classes, **GUIDANCE))
    return ema.model, info


def draw(model, schedule, prediction, guide, n, res, channels=3, steps=25, seed=0, loop=None):
    """n samples (DDIM, trailing; guided as `guide` says, one class a row of ten), with minidiff's loop
    or `loop(denoise, x_T, alphas_cumprod, steps)`."""
    ab, log_snr = schedule.alphas_cumprod, schedule.log_snr.tolist()
    y = uncond = None
    if guide:
        y = torch.arange(n) // 10 % guide["classes"]
        uncond = torch.full_like(y, guide["classes"])

    @torch.no_grad()
    def denoise(x, t):
        t = int(t)
        w = guide.get("guidance", 1.0) if log_snr[t] >= guide.get("guidance_from", -math.inf) else 1.0
        output = samplers.guided_output(model, x, torch.full((x.shape[0],), t), y=y,
                                        uncond_y=uncond if w != 1 else None, guidance=w)
        return objectives.to_x0_eps(prediction, output, x, ab[t].item())

    x_T = torch.randn(n, channels, res, res, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return (loop or reference_ddim_sample)(denoise, x_T, ab, steps)


def run_training(fn, out: Path, quick: bool):
    image_brightness, mosaic, pyplot, save_figure, wasserstein1 = _figures()
    from ..training.data import to_float

    model, info = train_model(fn, quick)
    n, res = info["samples"], info["resolution"]
    t0 = time.perf_counter()
    x = draw(model, info["schedule"], "v", info["guide"], n, res)
    sample_seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    torch.save(dict(model_config=model.config, ema=model.state_dict(), schedule="linear", zero_snr=True,
                    prediction="v", steps=info["steps"], guide=info["guide"]), out / "model.pt")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6.3))
    ax.imshow(mosaic(x, nrow=10).numpy(), interpolation="nearest"), ax.axis("off")
    ax.set_title(f"trained {info['steps']} steps with your loss ({info['preset']}, {info['seconds']:.0f} s)\n"
                 f"25 DDIM steps, trailing, v; one class a row, guidance {GUIDANCE['guidance']}", fontsize=8)
    save_figure(fig, out / "samples.png")

    losses = torch.tensor(info["losses"])
    w = max(1, len(losses) // 30)
    smooth = torch.nn.functional.avg_pool1d(losses[None, None], w, 1)[0, 0] if len(losses) >= w else losses
    data_b = image_brightness(to_float(info["data"].images[:2000]))
    samp_b = image_brightness(x)
    w1 = wasserstein1(samp_b, data_b)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].plot(losses, alpha=0.3, lw=0.6, label="your loss, per step")
    axes[0].plot(torch.arange(len(smooth)) + w - 1, smooth, label=f"mean of {w} steps")
    axes[0].set_yscale("log"), axes[0].set_xlabel("training step"), axes[0].set_ylabel("v loss (eq. 12)")
    axes[0].grid(alpha=0.3), axes[0].legend(fontsize=8)
    bins = torch.linspace(-1, 1, 31).tolist()
    axes[1].hist(data_b.numpy(), bins=bins, density=True, alpha=0.5, label="training images")
    axes[1].hist(samp_b.numpy(), bins=bins, density=True, histtype="step", lw=1.5, label=f"{n} samples")
    axes[1].set_xlabel("image brightness (mean pixel, [-1, 1])"), axes[1].legend(fontsize=8)
    axes[1].set_title(f"brightness, W1 to the data = {w1:.3f}", fontsize=9)
    save_figure(fig, out / "training.png")

    first, last = losses[: max(1, w)].mean().item(), losses[-max(1, w):].mean().item()
    return [f"trained {info['preset']} ({res}x{res}) on the built-in shapes with your loss: {info['steps']} steps "
            f"in {info['seconds']:.0f} s, loss {first:.3f} -> {last:.3f} (mean of {w} steps)",
            f"  {n} samples (25 DDIM steps, trailing, v, guidance {GUIDANCE['guidance']}) in {sample_seconds:.0f} s; "
            f"brightness W1 to the data {w1:.3f}, sample brightness std {samp_b.std().item():.3f} (data {data_b.std().item():.3f})",
            f"wrote {out / 'samples.png'}", f"wrote {out / 'training.png'} (loss curve, brightness histogram)",
            f"wrote {out / 'model.pt'} (exercise 13's run samples it)"]


def load_for_sampling(checkpoint: Path):
    """(model, schedule, prediction, guidance settings) from the main job's checkpoint (guided as its
    report was) or from exercise 12's model.pt."""
    from ..unet import UNet

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "model_config" in state and "config" not in state:  # exercise 12's
        model = UNet(**state["model_config"])
        model.load_state_dict(state["ema"])
        return (model.eval(), Schedule.make(state["schedule"], zero_snr=state["zero_snr"]), state["prediction"],
                dict(state.get("guide") or {}))
    from ..training.sample import load_run, schedule_of

    model, config, settings = load_run(checkpoint)
    guide = {}
    if config.get("class_cond"):
        guide = dict(classes=model.config["num_classes"], guidance=settings["guidance"],
                     guidance_from=settings.get("guidance_from", -math.inf))
    return model, schedule_of(config), config["prediction"], guide


def run_sampling(fn, out: Path, quick: bool, checkpoint: str | Path | None = None):
    _, mosaic, pyplot, save_figure, _ = _figures()
    lines = []
    if checkpoint is None and not quick:
        checkpoint = next((p for p in (MAIN_JOB_CHECKPOINT, COURSE_CHECKPOINT) if p.exists()), None)
    if checkpoint is not None:
        model, schedule, prediction, guide = load_for_sampling(Path(checkpoint))
        lines.append(f"the model of {checkpoint}")
    else:
        model, info = train_model(reference_v_loss, quick)
        lines.append(f"no checkpoint{'' if quick else ' (neither ' + str(MAIN_JOB_CHECKPOINT) + ' nor ' + str(COURSE_CHECKPOINT) + ')'}: "
                     f"trained {info['preset']} for {info['steps']} steps here ({info['seconds']:.0f} s)")
        schedule, prediction, guide = info["schedule"], "v", info["guide"]
    res, n, steps = model.config["image_size"], 20 if quick else 40, 10 if quick else 25
    kw = dict(n=n, res=res, channels=model.config["in_channels"], steps=steps)
    t0 = time.perf_counter()
    yours = draw(model, schedule, prediction, guide, loop=fn, **kw)
    seconds = time.perf_counter() - t0
    ref = draw(model, schedule, prediction, guide, **kw)
    diff = (yours.float() - ref).abs().max().item()
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.3 * math.ceil(n / 10) + 0.6))
    nrow = 10
    for ax, (label, images) in zip(axes, (("your ddim_sample", yours), ("minidiff's DDIM", ref))):
        ax.imshow(mosaic(images.float(), nrow=nrow).numpy(), interpolation="nearest"), ax.axis("off")
        ax.set_title(f"{label}: {steps} trailing steps from the same x_T", fontsize=9)
    save_figure(fig, out / "samples.png")
    return lines + [f"  {n} samples, {steps} steps with your loop in {seconds:.1f} s; largest difference from "
                    f"minidiff's DDIM on the same x_T: {diff:.2e}", f"wrote {out / 'samples.png'}"]


def gaussian_brightness(settings: dict, n: int, seed: int = 0) -> torch.Tensor:
    """Image brightness of n samples drawn with `settings` by the exact denoiser of the Gaussian images
    (in their two directions: brightness and one texture direction)."""
    schedule = Schedule.make(settings["schedule"], 1000, zero_snr=settings["zero_snr"])
    mean = torch.tensor([MEAN_B * math.sqrt(D), 0.0], dtype=torch.float64)
    var = torch.tensor([LAM_B, LAM_PIX], dtype=torch.float64)
    den = GaussianDenoiser(mean, var=var, schedule=schedule, prediction=settings["prediction"])
    x = samplers.sample(den, (n, 2), schedule, prediction=settings["prediction"], steps=settings["steps"],
                        spacing=settings["spacing"], sampler="ddim", generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64, progress=False)
    return x[:, 0] / math.sqrt(D)


def run_brightness(fn, out: Path, quick: bool):
    _, _, pyplot, save_figure, wasserstein1 = _figures()
    n = 4000 if quick else 50_000
    fixed = fn(dict(FLAWED))
    data = MEAN_B + math.sqrt(LAM_B / D) * torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rows = [("flawed (Stable Diffusion)", FLAWED)] + [(f"flawed + {k}={v!r}", {**FLAWED, k: v}) for k, v in FIXES.items()]
    rows += [("yours", fixed), ("minidiff's fix", reference_fix_settings(FLAWED))]
    lines = [f"Gaussian 3x32x32 images (brightness mean {MEAN_B}, std {S_B}), the exact denoiser, DDIM, "
             f"{FLAWED['steps']} steps; brightness of {n} samples against the data's:"]
    drawn = {}
    for label, settings in rows:
        try:
            b = gaussian_brightness(settings, n)
        except ValueError as e:
            lines.append(f"  {label:34s} refused: {str(e).split(':')[0]}")
            continue
        drawn[label] = b
        exact = brightness_std_ratio(Schedule.make(settings["schedule"], zero_snr=settings["zero_snr"]),
                                     samplers.make_timesteps(1000, settings["steps"], settings["spacing"]))
        lines.append(f"  {label:34s} std {b.std().item():.3f} (data {data.std().item():.3f}), "
                     f"W1 {wasserstein1(b, data):.3f}, exact std ratio {exact:.3f}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = torch.linspace(-2, 2.4, 89).tolist()
    ax.hist(data.numpy(), bins=bins, density=True, alpha=0.35, color="k", label="data")
    for label, settings in (("flawed (Stable Diffusion)", FLAWED), ("yours", fixed)):
        if label in drawn:
            said = ", ".join(f"{k}={settings[k]}" for k in FIXES)
            ax.hist(drawn[label].numpy(), bins=bins, density=True, histtype="step", lw=1.6, label=f"{label}: {said}")
    ax.set_xlabel("image brightness (mean pixel)"), ax.set_ylabel("density"), ax.legend(fontsize=7)
    ax.set_title("the brightness experiment: flawed settings against yours (exact Gaussian denoiser)", fontsize=9)
    save_figure(fig, out / "brightness.png")
    return lines + [f"wrote {out / 'brightness.png'}"]




RUNS = {12: run_training, 13: run_sampling, 14: run_brightness}
