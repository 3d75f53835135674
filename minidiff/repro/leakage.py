"""Signal leakage (Lin et al. Sec. 3.1): what the model sees at the last training step.

At t = T-1 the model is trained on x_T = sqrt(ab_T) x0 + sqrt(1 - ab_T) eps. Per pixel the image is
buried (SNR(T) = 0.0047 for Stable Diffusion), but its mean is not: averaging D pixels divides the
noise's variance by D and leaves the image's mean brightness b alone, so

    mean(x_T) = sqrt(ab_T) b + sqrt(1 - ab_T) mean(eps),   mean(eps) ~ N(0, 1/D)
    SNR of the image mean = SNR(T) * D * Var(b)

For a 3x32x32 image with brightness spread like the built-in set's (Var(b) = 0.27) that is about 4
for Stable Diffusion's schedule: the model can read most of an image's brightness from "pure
noise", learns to, and at inference (where x_T really is pure noise) reads "medium brightness".
This experiment noises the same images with the same eps under each schedule and measures how
much of the brightness survives: corr(mean x0, mean x_T)^2, the share of brightness variance a
linear read-out of mean(x_T) recovers. Zero SNR makes it exactly 0.

    minidiff repro leakage        # a few seconds, no training
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..objectives import q_sample
from ..schedules import Schedule
from ..training import data as datasets
from ..training.cli import add_common_flags
from .common import experiment_parser, publish_figures, pyplot, save_figure, timer, write_json

NOISED_SCHEDULES = (  # (key, label, Schedule.make keywords)
    ("linear", "linear", dict(kind="linear")),
    ("cosine", "cosine", dict(kind="cosine")),
    ("scaled_linear", "Stable Diffusion", dict(kind="scaled_linear")),
    ("scaled_linear_zero_snr", "SD, zero SNR", dict(kind="scaled_linear", zero_snr=True)),
)


def leakage(images: torch.Tensor, noise: torch.Tensor, schedule: Schedule) -> dict:
    """How much of the images' mean brightness survives in x_T (t = T-1) under `schedule`."""
    ab = schedule.alphas_cumprod[-1].item()
    x_T = q_sample(images.double(), ab, noise.double())
    b, b_T = images.double().flatten(1).mean(1), x_T.flatten(1).mean(1)
    d = images[0].numel()
    corr = float(torch.corrcoef(torch.stack([b, b_T]))[0, 1]) if ab > 0 else 0.0
    return {
        "sqrt_alpha_bar_T": ab**0.5, "snr_T": ab / (1 - ab),
        "mean_snr_predicted": ab / (1 - ab) * d * float(b.var()),
        "mean_snr_predicted_r2": (lambda s: s / (s + 1))(ab / (1 - ab) * d * float(b.var())),
        "corr_mean": corr, "r2_mean": corr**2,
    }


def plot(images, noise, path: Path) -> None:
    """mean(x_T) against mean(x0) for every image, one panel per schedule: a visible slope is
    brightness the model can read at the last step."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(NOISED_SCHEDULES), figsize=(3.5 * len(NOISED_SCHEDULES), 3.3), sharey=True)
    b = images.flatten(1).mean(1)
    for ax, (key, name, kw) in zip(axes, NOISED_SCHEDULES):
        s = Schedule.make(num_timesteps=1000, **kw)
        x_T = q_sample(images, s.alphas_cumprod[-1].item(), noise)
        r = leakage(images, noise, s)
        ax.scatter(b, x_T.flatten(1).mean(1), s=3, alpha=0.4)
        ax.set_title(f"{name}: sqrt(ab_T) = {r['sqrt_alpha_bar_T']:.4f}\n"
                     f"corr(mean x0, mean x_T)^2 = {r['r2_mean']:.2f}", fontsize=9)
        ax.set_xlabel("mean of x0 (brightness)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"mean of x_T (t = T-1), {images.shape[1]}x{images.shape[2]}x{images.shape[3]} images",
                       fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    p = experiment_parser("leakage", __doc__.split("\n\n")[0], trained=False)
    p.add_argument("--num-images", type=int, default=2000, help="built-in images to noise")
    p.add_argument("--resolution", type=int, default=32, help="image side (the leak grows with the pixel count)")
    add_common_flags(p, device=False)
    a = p.parse_args(argv)
    elapsed = timer()
    out = Path(a.out)
    images = datasets.to_float(datasets.builtin_shapes(a.num_images, seed=a.seed, resolution=a.resolution).images)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(a.seed + 1))
    rows = [{"schedule": key, "name": name, **leakage(images, noise, Schedule.make(num_timesteps=1000, **kw))}
            for key, name, kw in NOISED_SCHEDULES]
    plot(images, noise, out / "leakage.png")
    write_json(out, "leakage", {"experiment": "leakage", "num_images": a.num_images, "resolution": a.resolution,
                                "brightness_var": float(images.flatten(1).mean(1).var()), "rows": rows,
                                "seconds": elapsed()})
    print(f"{a.num_images} built-in images, 3x{a.resolution}x{a.resolution}, noised to t = T-1:")
    for r in rows:
        print(f"  {r['name']:17s} sqrt(ab_T) {r['sqrt_alpha_bar_T']:.6f}  SNR of the image mean "
              f"{r['mean_snr_predicted']:.3g}  brightness recoverable from mean(x_T): r^2 = {r['r2_mean']:.3f}")
    print(f"wrote {out}/leakage.json and leakage.png")
    publish_figures(out, a.figures_dir, ["leakage.png"])


if __name__ == "__main__":
    main()
