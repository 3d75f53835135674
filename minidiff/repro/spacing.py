"""Sample steps (Lin et al. Sec. 3.3, Fig. 4): leading, linspace and trailing at 5, 10, 25, 50 steps.

Two views of the same question, "which timesteps should a few-step sampler visit?":

1. A trained model: the zero-SNR v model of the brightness experiment, sampled with DDIM from the
   same noises with every spacing and step count. Sample grids, and the Wasserstein-1 distance
   between the samples' per-image brightness and the data's.
2. The exact denoiser (no training, no sampling noise): for Gaussian "images" with the training
   data's brightness spread and pixel texture, `repro.exact.exact_moments` gives the exact law of
   what DDIM produces, so the error of each spacing is computed, not estimated: the ratio of the
   samples' brightness std and texture std to the data's (1 is exact). Stable Diffusion's
   schedule without the rescale is shown beside the zero-SNR one.

Leading never visits the last training step (it starts at 800 for 5 steps), so it begins from a
noise level that pure noise does not match; trailing and linspace both start at T-1 but place
their remaining steps differently.

    minidiff repro spacing       # reuses the brightness experiment's zero-SNR v model
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..samplers import SPACINGS, make_timesteps
from ..schedules import Schedule
from .common import (brightness_stats, draw, experiment_parser, grid_figure, image_brightness, publish_figures, pyplot,
                     save_figure, scale_of, timer, trained_model, training_data, write_json)
from .exact import brightness_gaussian, exact_moments

STEP_COUNTS = (5, 10, 25, 50)
MODEL = "zsnr-v"


def data_spread(images: torch.Tensor) -> tuple[float, float]:
    """(std of per-image brightness, std of pixels around their image's mean) of uint8 images."""
    from ..training import data as datasets

    x = datasets.to_float(images).flatten(1)
    b = x.mean(1)
    return float(b.std()), float((x - b[:, None]).pow(2).mean().sqrt())


def exact_rows(shape, s_b: float, s_pix: float, step_counts=STEP_COUNTS) -> list[dict]:
    """Exact DDIM (eta = 0) brightness / texture std ratios for every spacing and step count."""
    _, lam_b, lam_pix, _ = brightness_gaussian(shape, s_b, s_pix)
    rows = []
    for sname, sched in (("zero_snr", Schedule.make("scaled_linear", zero_snr=True)),
                         ("sd", Schedule.make("scaled_linear"))):
        for spacing in SPACINGS:
            for steps in step_counts:
                ts = make_timesteps(sched.num_timesteps, steps, spacing)
                r = exact_moments(sched, ts, "ddim", 0.0, lam_b, lam_pix, 0.0)
                rows.append({"schedule": sname, "spacing": spacing, "steps": steps,
                             "brightness_std_ratio": r["brightness_std_ratio"],
                             "texture_std_ratio": r["texture_std_ratio"]})
    return rows


def main(argv=None):
    p = experiment_parser("spacing", __doc__.split("\n\n")[0])
    a = p.parse_args(argv)
    scale, out, elapsed = scale_of(a), Path(a.out), timer()
    data = training_data(scale, a.seed)
    data_b = image_brightness(data.images)
    tm = trained_model(MODEL, scale, Path(a.models), a.seed)

    rows, grids = [], {}
    n = max(tm.num_classes, scale["num_samples"] // 2)  # twelve setups: half the brightness study's samples
    for spacing in SPACINGS:
        for steps in STEP_COUNTS:
            x = draw(tm, n, scale, steps=steps, spacing=spacing, seed=a.seed + 1, desc=f"{spacing} {steps}")
            grids[(spacing, steps)] = x[:tm.num_classes * 2]
            rows.append({"spacing": spacing, "steps": steps, "first_t": int(make_timesteps(1000, steps, spacing)[0]),
                         **brightness_stats(x, data_b)})
            print(f"{spacing:9s} {steps:3d} steps: W1 {rows[-1]['wasserstein1']:.3f}, "
                  f"dark {rows[-1]['dark_share']:.1%}, bright {rows[-1]['bright_share']:.1%}")

    s_b, s_pix = data_spread(data.images)
    shape = (3, scale["resolution"], scale["resolution"])
    exact = exact_rows(shape, s_b, s_pix)
    result = {"experiment": "spacing", "scale": scale, "model": MODEL, "model_label": tm.spec.label,
              "num_samples": n, "trained": rows,
              "exact": {"shape": list(shape), "s_b": s_b, "s_pix": s_pix, "rows": exact},
              "seconds": elapsed()}
    write_json(out, "spacing", result)
    plot_grids(grids, tm.num_classes, out / "spacing_grid.png")
    plot_metrics(result, out / "spacing_metrics.png")
    print("exact Gaussian images (std of samples / std of data, brightness / texture), DDIM:")
    for r in exact:
        if r["schedule"] == "zero_snr":
            print(f"  zero SNR {r['spacing']:9s} {r['steps']:3d} steps: {r['brightness_std_ratio']:.3f} / "
                  f"{r['texture_std_ratio']:.3f}")
    result["seconds"] = elapsed()
    write_json(out, "spacing", result)
    print(f"wrote {out}/spacing.json, spacing_grid.png, spacing_metrics.png in {result['seconds']:.0f} s")
    publish_figures(out, a.figures_dir, ["spacing_grid.png", "spacing_metrics.png"])


def plot_grids(grids: dict, num_classes: int, path: Path) -> None:
    """Rows: step counts; columns: spacings; each cell the same noises (two per class)."""
    grid_figure([[grids[(spacing, steps)] for spacing in SPACINGS] for steps in STEP_COUNTS],
                [f"{steps} steps" for steps in STEP_COUNTS], list(SPACINGS), num_classes, path,
                cell_size=(4.2, 1.25), dpi=110)


def plot_metrics(result: dict, path: Path) -> None:
    """Left: brightness W1 of the trained model's samples. Right: exact brightness std ratio."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    colors = {"leading": "tab:red", "linspace": "tab:orange", "trailing": "tab:blue"}
    for spacing in SPACINGS:
        pts = [(r["steps"], r["wasserstein1"]) for r in result["trained"] if r["spacing"] == spacing]
        axes[0].plot(*zip(*pts), marker="o", color=colors[spacing], label=spacing)
        for ax, key in ((axes[1], "brightness_std_ratio"), (axes[2], "texture_std_ratio")):
            for sname, ls in (("zero_snr", "-"), ("sd", "--")):
                pts = [(r["steps"], r[key]) for r in result["exact"]["rows"]
                       if r["spacing"] == spacing and r["schedule"] == sname]
                ax.plot(*zip(*pts), ls, marker="o", ms=3, color=colors[spacing],
                        label=f"{spacing}, {'zero SNR' if sname == 'zero_snr' else 'SD schedule'}")
    axes[0].set_title(f"trained model ({result['model_label']}):\nW1(brightness of samples, of data)", fontsize=9)
    axes[1].set_title("exact denoiser, Gaussian images:\nstd of brightness, samples / data", fontsize=9)
    axes[2].set_title("exact denoiser, Gaussian images:\nstd of texture, samples / data", fontsize=9)
    for ax in axes:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(STEP_COUNTS, [str(s) for s in STEP_COUNTS])
        ax.set_xlabel("DDIM steps")
        ax.grid(alpha=0.3)
    for ax in axes[1:]:
        ax.axhline(1.0, color="k", lw=0.8)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
