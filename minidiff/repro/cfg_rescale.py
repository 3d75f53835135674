"""Classifier-free guidance and its rescale (Lin et al. Sec. 3.4, Algorithm 2, Fig. 5).

The zero-SNR v model of the brightness experiment (class-conditional, trained with 10% of labels
dropped to the null class) is sampled over guidance weights w and guidance rescales (the paper's
phi) in {0, 0.5, 0.7, 1}, from the same noises. Large w pushes the guided output's spread far
beyond the conditional output's; on a zero-SNR model that shows as over-exposed, saturated images.
The guidance rescale (`samplers.sample(..., guidance_rescale=...)`) brings the spread back to the
conditional output's. Measures:

    saturated share   pixels outside [-1, 1] before clamping (what would be clipped when saved)
    std ratio         mean per-image pixel std of the samples / the same for the data
    brightness W1     Wasserstein-1 distance of per-image brightness to the data's

    minidiff repro cfg-rescale   # reuses the brightness experiment's zero-SNR v model
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..training import data as datasets
from .common import (draw, experiment_parser, grid_figure, image_brightness, publish_figures, pyplot, save_figure, scale_of, timer,
                     trained_model, training_data, wasserstein1, write_json)

GUIDANCE = (1.0, 2.0, 4.0, 7.5)
GUIDANCE_RESCALES = (0.0, 0.5, 0.7, 1.0)
MODEL = "zsnr-v"


def overexposure(samples: torch.Tensor, data_std: float, data_b: torch.Tensor) -> dict:
    """Saturation, spread and brightness of unclamped samples against the data."""
    per_image_std = samples.clamp(-1, 1).flatten(1).std(1)
    return {
        "saturated_share": float((samples.abs() > 1).double().mean()),
        "std_ratio": float(per_image_std.mean() / data_std),
        "brightness_w1": wasserstein1(image_brightness(samples), data_b),
        "max_abs": float(samples.abs().max()),
    }


def main(argv=None):
    p = experiment_parser("cfg-rescale", __doc__.split("\n\n")[0])
    p.add_argument("--guidance", type=float, nargs="+", default=list(GUIDANCE), help="guidance weights w")
    p.add_argument("--guidance-rescale", type=float, nargs="+", default=list(GUIDANCE_RESCALES),
                   help="guidance rescales (Algorithm 2), each in [0, 1]")
    a = p.parse_args(argv)
    scale, out, elapsed = scale_of(a), Path(a.out), timer()
    data = training_data(scale, a.seed)
    images = datasets.to_float(data.images)
    data_std = float(images.flatten(1).std(1).mean())
    data_b = image_brightness(data.images)
    tm = trained_model(MODEL, scale, Path(a.models), a.seed)
    # Fewer samples than the brightness study: every guided step runs the model twice.
    n = max(tm.num_classes, scale["num_samples"] // 5 // tm.num_classes * tm.num_classes)

    rows, grids, cache = [], {}, {}
    for w in a.guidance:
        for rescale in a.guidance_rescale:
            key = (w, 0.0) if w == 1.0 else (w, rescale)  # without guidance the rescale changes nothing
            if key not in cache:
                cache[key] = draw(tm, n, scale, steps=scale["sample_steps"], spacing="trailing", guidance=w,
                                  guidance_rescale=key[1], seed=a.seed + 1, desc=f"w={w:g} rescale={key[1]:g}")
            x = cache[key]
            grids[(w, rescale)] = x[:tm.num_classes * 2]
            rows.append({"guidance": w, "guidance_rescale": rescale, **overexposure(x, data_std, data_b)})
            r = rows[-1]
            print(f"w {w:4g} guidance rescale {rescale:3g}: saturated {r['saturated_share']:.2%}, std ratio {r['std_ratio']:.2f}, "
                  f"brightness W1 {r['brightness_w1']:.3f}")
    result = {"experiment": "cfg-rescale", "scale": scale, "model": MODEL, "model_label": tm.spec.label,
              "num_samples": n, "steps": scale["sample_steps"], "spacing": "trailing",
              "data_per_image_std": data_std, "rows": rows, "seconds": elapsed()}
    write_json(out, "cfg_rescale", result)
    plot_grids(grids, a.guidance, a.guidance_rescale, tm.num_classes, out / "cfg_grid.png")
    plot_metrics(result, out / "cfg_metrics.png")
    print(f"wrote {out}/cfg_rescale.json, cfg_grid.png, cfg_metrics.png in {elapsed():.0f} s")
    publish_figures(out, a.figures_dir, ["cfg_grid.png", "cfg_metrics.png"])


def plot_grids(grids, ws, rescales, num_classes: int, path: Path) -> None:
    """Rows: guidance rescale; columns: guidance weight w."""
    grid_figure([[grids[(w, r)] for w in ws] for r in rescales], [f"rescale {r:g}" for r in rescales],
                [f"w = {w:g}" for w in ws], num_classes, path, cell_size=(3.6, 1.0), dpi=95)


def plot_metrics(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    rescales = sorted({r["guidance_rescale"] for r in result["rows"]})
    for rescale in rescales:
        pts = [(r["guidance"], r["saturated_share"], r["std_ratio"]) for r in result["rows"]
               if r["guidance_rescale"] == rescale]
        w, sat, std = zip(*pts)
        axes[0].plot(w, [100 * s for s in sat], marker="o", label=f"guidance rescale {rescale:g}")
        axes[1].plot(w, std, marker="o", label=f"guidance rescale {rescale:g}")
    axes[0].set_ylabel("% of pixels outside [-1, 1]")
    axes[1].set_ylabel("per-image std, samples / data")
    axes[1].axhline(1.0, color="k", lw=0.8)
    for ax in axes:
        ax.set_xlabel("guidance weight w")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Guidance rescale on the {result['model_label']} model, {result['num_samples']} samples per setup, "
                 f"{result['steps']} trailing DDIM steps", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
