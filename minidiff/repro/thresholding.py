"""Imagen's dynamic thresholding beside the guidance rescale, against over-exposure from guidance.

Course questions A 10 and B 4. Large guidance weights w push the guided prediction outside the data's
range; on the zero-SNR v model that shows as over-exposed, saturated samples (cfg-rescale). Two fixes
act at different places:

    guidance rescale     Lin et al. Algorithm 2 (phi = 0.7): the guided *model output* is scaled back to
                         the conditional output's per-sample std; it needs no range, so it works on
                         any output, latents included
    dynamic thresholding Saharia et al. 2022 (Imagen, Sec. 2.3): each predicted *x0* is clipped at its
                         own p-th percentile s of |x0| (when s > 1) and divided by s
                         (guidance.dynamic_threshold, the samplers' threshold=p); it needs the data's
                         range, [-1, 1] for pixels
    static clipping      Imagen's baseline: x0 clipped to [-1, 1] (clip_x0)
    guidance interval    the guidance formula itself changed (Kynkaanniemi et al. 2024): no guidance at the
                         noisiest steps, log-SNR < -3 (the samplers' guidance_interval; the main job's choice)

The cfg-rescale experiment's model (zsnr-v) is sampled with each method over w in {1, 2, 4, 7.5}, from
the same noises and labels as cfg-rescale (its plain and rescale-0.7 rows are the same numbers),
measured with cfg_rescale.overexposure: the share of pixels outside [-1, 1] before clamping, the
samples' per-image std over the data's (on clamped images, as saved), and the brightness W1; and the
share of pixels a saved image shows at 0 or 255 (`edge_share`), which also counts pixels clipped onto
the edge, the flat saturated patches Imagen's static clipping is known for.

    minidiff repro thresholding     # reuses the brightness experiment's zero-SNR v model
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..training import data as datasets
from .cfg_rescale import GUIDANCE, MODEL, overexposure
from .common import (draw, experiment_parser, grid_figure, image_brightness, publish_figures, pyplot, save_figure,
                     scale_of, timer, trained_model, training_data, write_json)

# key -> (label, samplers.sample keywords). Without guidance (w = 1) the rescale does nothing, so there
# "rescale" is "plain" and "rescale+dyn" is "dyn 0.995": they are drawn once.
METHODS = {
    "plain": ("plain CFG", {}),
    "rescale": ("rescale phi 0.7", {"guidance_rescale": 0.7}),
    "clip": ("static clip of x0", {"clip_x0": True}),
    "dyn-0.9": ("dynamic threshold p 0.9", {"threshold": 0.9}),
    "dyn-0.995": ("dynamic threshold p 0.995", {"threshold": 0.995}),
    "rescale+dyn": ("rescale 0.7 + dynamic p 0.995", {"guidance_rescale": 0.7, "threshold": 0.995}),
    # the guidance formula changed instead: guided only at log-SNR >= -3 (Kynkaanniemi et al. 2024; the main
    # job's --guidance-from -3), so the noisiest steps, where a zero-SNR model decides the image, are unguided
    # (30 is above every step's log-SNR, which ends near 7 at t = 0)
    "interval": ("guided only at log-SNR >= -3", {"guidance_interval": (-3.0, 30.0)}),
}


def edge_share(samples: torch.Tensor) -> float:
    """Share of pixels that a saved uint8 image shows at 0 or 255: |x| >= 1 - 1/255 (beyond the range or
    clipped onto its edge). Plain CFG pushes pixels past the edge; static clipping lands them on it."""
    return float((samples.abs() >= 1 - 1 / 255).double().mean())


def effective(settings: dict, w: float) -> tuple:
    """The settings that change the samples at guidance weight w (the rescale only acts when w != 1),
    as a hashable key: two methods with the same key give the same samples."""
    used = {k: v for k, v in settings.items() if not (k == "guidance_rescale" and w == 1.0)}
    return (w, tuple(sorted(used.items())))


def run(scale: dict, out: Path, models_dir: Path, *, guidance=GUIDANCE, methods=tuple(METHODS), seed: int = 0) -> dict:
    """Sample every (method, w) and write thresholding.json and the two figures."""
    elapsed = timer()
    data = training_data(scale, seed)
    data_std = float(datasets.to_float(data.images).flatten(1).std(1).mean())
    data_b = image_brightness(data.images)
    tm = trained_model(MODEL, scale, models_dir, seed)
    n = max(tm.num_classes, scale["num_samples"] // 5 // tm.num_classes * tm.num_classes)  # as cfg-rescale

    rows, grids, cache = [], {}, {}
    for w in guidance:
        for key in methods:
            label, settings = METHODS[key]
            k = effective(settings, w)
            if k not in cache:
                cache[k] = draw(tm, n, scale, steps=scale["sample_steps"], spacing="trailing", guidance=w,
                                seed=seed + 1, desc=f"w={w:g} {key}", **dict(k[1]))
            x = cache[k]
            grids[(key, w)] = x[:tm.num_classes * 2]
            rows.append({"method": key, "label": label, "guidance": w, **settings, **overexposure(x, data_std, data_b),
                         "edge_share": edge_share(x)})
            r = rows[-1]
            print(f"w {w:4g} {label:30s} saturated {r['saturated_share']:6.2%}  at the edge {r['edge_share']:6.2%}  "
                  f"std ratio {r['std_ratio']:.2f}  "
                  f"brightness W1 {r['brightness_w1']:.3f}  max |x| {r['max_abs']:.2f}")
    result = {"experiment": "thresholding", "scale": scale, "model": MODEL, "model_label": tm.spec.label,
              "num_samples": n, "steps": scale["sample_steps"], "spacing": "trailing", "data_per_image_std": data_std,
              "methods": {k: METHODS[k][0] for k in methods}, "rows": rows}
    grid_figure([[grids[(key, w)] for w in guidance] for key in methods], list(methods),  # the keys: short labels
                [f"w = {w:g}" for w in guidance], tm.num_classes, out / "thresholding_grid.png", cell_size=(3.6, 1.1),
                dpi=95)
    plot_metrics(result, out / "thresholding_metrics.png")
    result["seconds"] = elapsed()
    write_json(out, "thresholding", result)
    return result


def plot_metrics(result: dict, path: Path) -> None:
    """Saturated and edge shares, std ratio and brightness W1 against w, one line per method."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    panels = (("saturated_share", "% of pixels outside [-1, 1] (before clamping)", 100),
              ("edge_share", "% of pixels saved as 0 or 255", 100),
              ("std_ratio", "per-image std, samples / data", 1), ("brightness_w1", "brightness W1 to the data", 1))
    for key, label in result["methods"].items():
        pts = [r for r in result["rows"] if r["method"] == key]
        for ax, (field, _, factor) in zip(axes, panels):
            ax.plot([r["guidance"] for r in pts], [factor * r[field] for r in pts], marker="o", label=label)
    for ax, (_, ylabel, _) in zip(axes, panels):
        ax.set(xlabel="guidance weight w", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[2].axhline(1.0, color="k", lw=0.8)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Guidance rescale and thresholding on the {result['model_label']} model, {result['num_samples']} "
                 f"samples per setup, {result['steps']} trailing DDIM steps", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    p = experiment_parser("thresholding", __doc__.split("\n\n")[0])
    p.add_argument("--guidance", type=float, nargs="+", default=list(GUIDANCE), help="guidance weights w")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   help="which fixes to compare (plain: none)")
    a = p.parse_args(argv)
    if any(w < 0 for w in a.guidance):
        p.error(f"--guidance weights must be 0 or more (1: no guidance), got {a.guidance}")
    out = Path(a.out)
    res = run(scale_of(a), out, Path(a.models), guidance=a.guidance, methods=tuple(dict.fromkeys(a.methods)),
              seed=a.seed)
    print(f"wrote {out}/thresholding.json, thresholding_grid.png, thresholding_metrics.png in {res['seconds']:.0f} s")
    publish_figures(out, a.figures_dir, ["thresholding_grid.png", "thresholding_metrics.png"])


if __name__ == "__main__":
    main()
