"""The brightness experiment (Lin et al. Sec. 1, Fig. 1 and Sec. 5): flawed vs fixed, fix by fix.

The built-in shapes have backgrounds from nearly black to nearly white (mean brightness uniform
over [-0.9, 0.9]). The same small UNet is trained on them under each setup, sampled with DDIM, and
the per-image mean brightness of the samples is compared with the data's:

    flawed        Stable Diffusion's schedule (SNR(T) = 0.0047), eps prediction, leading steps
    + trailing    the same eps model, sampled from the last training step
    + v           SD's schedule with v prediction, leading steps
    + zero SNR    the rescaled schedule (Algorithm 1); it needs v (eps is refused), leading steps
    all fixes     zero SNR + v + trailing
    offset noise  the earlier fix (Guttenberg 2023): SD's schedule, eps, noise + 0.1 per-channel offset
                  (with --offset-noise: one more model to train)

What the paper predicts: the flawed model was trained to read the image's mean out of x_T (it
leaks through sqrt(alpha_bar_T) = 0.068), but at inference x_T is pure noise whose mean says
"medium", so the samples' brightness crowds the middle and the dark and bright ends go missing.
With all fixes the sample law covers the data's range. Numbers: Wasserstein-1 distance between the
brightness laws, and the share of images darker than -0.7 and brighter than 0.7 (data: ~11% each).

    minidiff repro brightness                  # CPU defaults (trains 3 small models)
    minidiff repro brightness --scale cifar10  # the same on CIFAR-10, on a GPU
    minidiff repro brightness --recipe main    # the main job's recipe, fixed vs flawed (brightness_main.py)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .common import (DARK, BRIGHT, MODELS, brightness_stats, brightness_strips, data_brightness_stats, draw,
                     experiment_parser, image_brightness, publish_figures, pyplot, save_figure, scale_of, timer,
                     trained_model, training_data, write_json)

# (key, label, model, spacing): each setup adds one fix to the flawed one, then all together.
SETUPS = (
    ("flawed", "flawed: SD schedule, eps, leading", "sd-eps", "leading"),
    ("trailing", "+ trailing only (eps model)", "sd-eps", "trailing"),
    ("v", "+ v only (SD schedule, leading)", "sd-v", "leading"),
    ("zero-snr", "+ zero SNR (needs v), leading", "zsnr-v", "leading"),
    ("all", "all fixes: zero SNR + v + trailing", "zsnr-v", "trailing"),
    ("offset", "offset noise 0.1 (SD schedule, eps, leading)", "sd-eps-offset", "leading"),
)


def run(scale: dict, out: Path, models_dir: Path, *, steps: int | None = None, guidance: float = 1.0,
        guidance_rescale: float = 0.7, offset_noise: bool = False, seed: int = 0) -> dict:
    """Train (or load) the models, sample every setup, and write brightness.json and the figures.

    With guidance > 1 every setup is guided with weight `guidance`; only "all fixes" also gets
    the guidance rescale `guidance_rescale` (Algorithm 2), as the fourth fix.
    """
    elapsed = timer()
    steps = steps or scale["sample_steps"]
    setups = [s for s in SETUPS if offset_noise or s[2] != "sd-eps-offset"]
    data_b = image_brightness(training_data(scale, seed).images)

    models, train_seconds, trained_now = {}, {}, []
    for name in dict.fromkeys(s[2] for s in setups):
        models[name] = trained_model(name, scale, models_dir, seed)
        train_seconds[name] = round(models[name].train_seconds, 1)
        if models[name].trained_now:
            trained_now.append(name)

    rows, samples = [], {}
    for key, label, name, spacing in setups:
        rescale = guidance_rescale if (key == "all" and guidance != 1.0) else 0.0
        x = draw(models[name], scale["num_samples"], scale, steps=steps, spacing=spacing, guidance=guidance,
                 guidance_rescale=rescale, seed=seed + 1, desc=key)
        samples[key] = x
        rows.append({"setup": key, "label": label, "model": name, "model_label": MODELS[name].label,
                     "spacing": spacing, "steps": steps, "guidance": guidance, "guidance_rescale": rescale,
                     **brightness_stats(x, data_b)})
        print(f"{label:48s} W1 {rows[-1]['wasserstein1']:.3f}  dark {rows[-1]['dark_share']:.1%}  "
              f"bright {rows[-1]['bright_share']:.1%}")

    result = {
        "experiment": "brightness", "scale": scale, "num_samples": scale["num_samples"],
        "thresholds": {"dark": DARK, "bright": BRIGHT},
        "data": data_brightness_stats(data_b), "setups": rows, "train_seconds": train_seconds,
        "trained_now": trained_now, "threads": torch.get_num_threads(), "seconds": elapsed(),
    }
    write_json(out, "brightness", result)
    plot_histograms(result, samples, data_b, out / "brightness_hist.png")
    plot_ranges(result, samples, training_data(scale, seed).images, out / "brightness_range.png")
    result["seconds"] = elapsed()
    write_json(out, "brightness", result)
    return result


def plot_histograms(result: dict, samples: dict, data_b: torch.Tensor, path: Path) -> None:
    """One panel per setup: the data's brightness histogram (grey) under the samples'."""
    plt = pyplot()
    rows = result["setups"]
    cols = 3
    fig, axes = plt.subplots((len(rows) + cols - 1) // cols, cols, figsize=(4 * cols, 2.8 * ((len(rows) + cols - 1) // cols)),
                             sharex=True, sharey=True, squeeze=False)
    bins = torch.linspace(-1, 1, 41).tolist()
    for ax, row in zip(axes.flat, rows):
        ax.hist(data_b.tolist(), bins=bins, density=True, color="0.75", label="data")
        ax.hist(image_brightness(samples[row["setup"]]).tolist(), bins=bins, density=True, histtype="step",
                lw=2, color="tab:red" if row["setup"] == "flawed" else "tab:blue", label="samples")
        for v in (DARK, BRIGHT):
            ax.axvline(v, color="k", lw=0.6, ls=":")
        ax.set_title(f"{row['label']}\nW1 {row['wasserstein1']:.3f}, dark {row['dark_share']:.0%}, "
                     f"bright {row['bright_share']:.0%}", fontsize=8)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("mean brightness of an image")
    axes.flat[0].legend(fontsize=7)
    data = result["data"]
    fig.suptitle(f"Per-image brightness, {result['num_samples']} samples per setup "
                 f"(data: dark {data['dark_share']:.0%}, bright {data['bright_share']:.0%})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def plot_ranges(result: dict, samples: dict, data_images: torch.Tensor, path: Path, k: int = 12) -> None:
    """One row per setup: k samples at evenly spaced brightness quantiles, darkest to brightest."""
    rows = [("data", data_images)] + [(r["label"], samples[r["setup"]]) for r in result["setups"]]
    brightness_strips(rows, path, "darkest -> brightest (images at evenly spaced brightness quantiles)", k)


def main(argv=None):
    p = experiment_parser("brightness", __doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, help="DDIM steps (default: the scale's)")
    p.add_argument("--guidance", type=float, default=1.0, help="CFG weight for every setup (1: no guidance)")
    p.add_argument("--guidance-rescale", type=float, default=0.7,
                   help="guidance rescale (Algorithm 2) of 'all fixes' when guided")
    p.add_argument("--offset-noise", action=argparse.BooleanOptionalAction, default=False,
                   help="add the offset-noise comparison (one model more to train)")
    p.add_argument("--recipe", choices=("small", "main"), default="small",
                   help="small: one small model per fix; main: `python train_cifar.py` with and without the fixes")
    p.add_argument("--main-steps", type=int, default=2000, help="with --recipe main: training steps of each run")
    p.add_argument("--main-schedule", default="linear", choices=("linear", "scaled_linear", "cosine"),
                   help="with --recipe main: both runs' schedule (the recipe's is linear; scaled_linear is "
                        "Stable Diffusion's, whose last step shows an image's brightness)")
    a = p.parse_args(argv)
    if a.recipe == "main":
        from . import brightness_main

        if a.main_steps < 1:
            p.error(f"--main-steps must be at least 1, got {a.main_steps}")
        res = brightness_main.run(Path(a.out), Path(a.models), max_steps=a.main_steps, num_samples=a.num_samples or brightness_main.report_samples(),
                                  seed=a.seed, schedule=a.main_schedule, device=a.device, threads=a.threads)
        print(f"brightness W1: flawed {res['runs']['flawed']['brightness_w1']:.3f}, fixed "
              f"{res['runs']['fixed']['brightness_w1']:.3f} ({res['w1_ratio']:.1f}x)"
              f"; the last step's mean-brightness SNR without the rescale: {res['last_step_mean_snr']:.3g}"
              f"; wrote {a.out}/{res['figure']} and its .json")
        publish_figures(Path(a.out), a.figures_dir, [res["figure"]])
        return
    res = run(scale_of(a), Path(a.out), Path(a.models), steps=a.steps, guidance=a.guidance,
              guidance_rescale=a.guidance_rescale, offset_noise=a.offset_noise, seed=a.seed)
    fresh = sum(res["train_seconds"][m] for m in res["trained_now"])
    print(f"wrote {a.out}/brightness.json, brightness_hist.png, brightness_range.png in {res['seconds']:.0f} s "
          f"(of which training now {fresh:.0f} s; all models' training took {sum(res['train_seconds'].values()):.0f} s)")
    publish_figures(Path(a.out), a.figures_dir, ["brightness_hist.png", "brightness_range.png"])


if __name__ == "__main__":
    main()
