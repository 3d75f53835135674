"""When, if ever, does starting at t < T help? Pure noise started low, against an informative start.

A sampler that starts at step t claims its input is x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps. Two
kinds of start, with the same trailing DDIM grid below the start step:

1. Pure noise N(0, I) at t_start in {T-1, 0.9T, 0.8T, 0.6T} (`samplers.start_timestep`), with the
   zero-SNR v model `zsnr-v` and the flawed `sd-v` (Stable Diffusion's schedule, SNR(T) = 0.0047).
   Below T-1 on the zero-SNR schedule the input is told it holds signal it does not: its image
   mean is read as the image's brightness and shrunk toward the middle. The flawed model is
   already in that position at T-1 (its x_T should have held 0.068 x0). The same starts are
   computed exactly for Gaussian images with the data's brightness and texture spread (`repro.exact`:
   no network, no sampling noise). Leading vs trailing spacing, which is the same question asked
   of a step grid, is `minidiff repro spacing`.
2. An informative start (SDEdit, `init=` with `strength` = S < 1, starting at round(S T) - 1): held-out
   real images, and the same images at 1/4 resolution (4x4 averages, scaled back up), which keep
   brightness and layout but not detail. Here starting low is the point: the input's noised version
   is what x_t really is, and a lower start keeps more of it in fewer steps.

Measures: brightness W1 to the training data, dark / bright shares, brightness std over the data's,
and for the edits the RMS distance to the input, corr(brightness out, brightness in), and the fine
detail (what a 4x average removes) over the data's.

    minidiff repro start-step      # reuses the brightness experiment's zsnr-v and sd-v models
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..samplers import edit_timesteps, make_timesteps, start_timestep
from ..training import data as datasets
from ..training.cli import fail
from .common import (brightness_stats, draw, experiment_parser, image_brightness, mosaic, publish_figures, pyplot,
                     save_figure, scale_of, timer, trained_model, training_data, write_json)
from .exact import brightness_gaussian, exact_moments
from .spacing import data_spread

MODELS = ("zsnr-v", "sd-v")
STARTS = (1.0, 0.9, 0.8, 0.6)           # pure noise at t_start = round(f T) - 1
STRENGTHS = (1.0, 0.8, 0.6, 0.4, 0.2)    # SDEdit strengths
LOWRES = 4                               # the low-resolution input averages LOWRES x LOWRES blocks


def noise_start_timesteps(num_timesteps: int, steps: int, t_start: int) -> torch.Tensor:
    """t_start, then the trailing grid of `steps` steps below it: the visits of a start from pure noise at t_start."""
    return edit_timesteps(make_timesteps(num_timesteps, steps, "trailing"), t_start)


def low_resolution(images: torch.Tensor, factor: int = LOWRES) -> torch.Tensor:
    """The image seen at 1/factor resolution: factor x factor block averages, scaled back up bilinearly."""
    small = F.avg_pool2d(images.float(), factor)
    return F.interpolate(small, scale_factor=factor, mode="bilinear", align_corners=False)


def fine_detail(images: torch.Tensor, factor: int = LOWRES) -> torch.Tensor:
    """Per image, mean of (x - low_resolution(x))^2: the energy a factor-x average removes."""
    x = images.float().clamp(-1, 1)
    return (x - low_resolution(x, factor)).pow(2).flatten(1).mean(1)


def edit_stats(out: torch.Tensor, inputs: torch.Tensor, originals: torch.Tensor, data_detail: float) -> dict:
    """How much of the input an edit kept: RMS distance to the input and to the original image,
    corr(brightness out, brightness in), brightness error, and fine detail over the data's."""
    x = out.float().clamp(-1, 1)
    b_out, b_in = image_brightness(x), image_brightness(inputs)
    corr = torch.corrcoef(torch.stack([b_out, b_in]))[0, 1] if len(x) > 1 else torch.tensor(float("nan"))
    return {
        "rms_to_input": float((x - inputs).pow(2).flatten(1).mean(1).sqrt().mean()),
        "rms_to_original": float((x - originals).pow(2).flatten(1).mean(1).sqrt().mean()),
        "brightness_corr_with_input": float(corr.nan_to_num(0.0)),
        "brightness_abs_error": float((b_out - b_in).abs().mean()),
        "detail_ratio": float(fine_detail(x).mean() / data_detail),
    }


def exact_std_ratio(schedule, timesteps: torch.Tensor, shape, s_b: float, s_pix: float) -> float:
    """Brightness std of exact DDIM from N(0, I) at timesteps[0], over the data's, for Gaussian images
    with brightness std s_b and texture std s_pix (repro.exact, the exact denoiser: no network)."""
    _, lam_b, lam_pix, _ = brightness_gaussian(shape, s_b, s_pix)
    return exact_moments(schedule, timesteps, "ddim", 0.0, lam_b, lam_pix, 0.0)["brightness_std_ratio"]


def check_fractions(values, flag: str) -> None:
    """Refuse (one line, exit 2) a fraction of T outside (0, 1]: t = round(f T) - 1 must be a training step."""
    if any(not 0.0 < v <= 1.0 for v in values):
        fail(f"{flag} takes fractions of T in (0, 1] (1: the last training step), got {values}")


def main(argv=None):
    """Both kinds of start for every model and fraction, the table, the JSON and the two figures."""
    p = experiment_parser("start-step", __doc__.split("\n\n")[0])
    p.add_argument("--starts", type=float, nargs="+", default=list(STARTS),
                   help="pure-noise starts as fractions f of T (t_start = round(f T) - 1)")
    p.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS), help="SDEdit strengths in (0, 1]")
    a = p.parse_args(argv)
    check_fractions(a.starts, "--starts")
    check_fractions(a.strengths, "--strengths")
    scale, out, elapsed = scale_of(a), Path(a.out), timer()
    if scale["resolution"] % LOWRES:
        fail(f"the low-resolution inputs average {LOWRES}x{LOWRES} blocks: the scale's resolution must divide by {LOWRES}")
    data = training_data(scale, a.seed)
    data_b = image_brightness(data.images)
    data_std = float(data_b.std())
    steps = scale["sample_steps"]
    models = {name: trained_model(name, scale, Path(a.models), a.seed) for name in MODELS}
    T = models["zsnr-v"].schedule.num_timesteps
    n = max(10, scale["num_samples"])
    s_b, s_pix = data_spread(data.images)
    shape = (3, scale["resolution"], scale["resolution"])
    show = {}

    noise_rows = []
    for name, tm in models.items():
        for f in a.starts:
            t0 = start_timestep(T, f)
            ts = noise_start_timesteps(T, steps, t0)
            x = draw(tm, n, scale, steps=steps, spacing="trailing", timesteps=ts, seed=a.seed + 1,
                     desc=f"{name} noise at {t0}")
            show[(name, "noise", f)] = x[:10]
            row = {"model": name, "start": "noise", "fraction": f, "t_start": t0,
                   "sqrt_alpha_bar_start": float(tm.schedule.alphas_cumprod[t0].sqrt()), "model_calls": len(ts),
                   **brightness_stats(x, data_b)}
            row["brightness_std_ratio"] = row["brightness_std"] / data_std
            row["exact_brightness_std_ratio"] = exact_std_ratio(tm.schedule, ts, shape, s_b, s_pix)
            noise_rows.append(row)
            print(f"{name:7s} pure noise at t = {t0:3d} (sqrt ab {row['sqrt_alpha_bar_start']:.4f}): W1 "
                  f"{row['wasserstein1']:.3f}, brightness std / data {row['brightness_std_ratio']:.2f} "
                  f"(exact Gaussian {row['exact_brightness_std_ratio']:.2f}), dark {row['dark_share']:.1%}, "
                  f"bright {row['bright_share']:.1%}")

    held_out = datasets.load_dataset(scale["dataset"], resolution=scale["resolution"], num=n, seed=a.seed + 1000)
    originals = datasets.to_float(held_out.images)
    inputs = {"real": originals, "lowres": low_resolution(originals)}
    data_detail = float(fine_detail(datasets.to_float(data.images[:2000])).mean())
    edit_rows, baselines = [], {}
    tm = models["zsnr-v"]
    for kind, init in inputs.items():
        show[("input", kind)] = init[:10]
        baselines[kind] = {"wasserstein1": brightness_stats(init, data_b)["wasserstein1"],
                           "detail_ratio": float(fine_detail(init).mean() / data_detail),
                           "rms_to_original": float((init - originals).pow(2).flatten(1).mean(1).sqrt().mean())}
        print(f"input {kind:6s} itself: W1 {baselines[kind]['wasserstein1']:.3f}, detail / data "
              f"{baselines[kind]['detail_ratio']:.2f}, RMS to the original {baselines[kind]['rms_to_original']:.3f}")
        for s in a.strengths:
            x = draw(tm, n, scale, steps=steps, spacing="trailing", labels=held_out.labels, seed=a.seed + 1,
                     init=init, strength=s, desc=f"{kind} strength {s:g}")
            show[(kind, s)] = x[:10]
            t0 = start_timestep(T, s)
            row = {"model": tm.spec.name, "start": kind, "strength": s, "t_start": t0,
                   "model_calls": len(edit_timesteps(make_timesteps(T, steps, "trailing"), t0)),
                   **brightness_stats(x, data_b), **edit_stats(x, init, originals, data_detail)}
            row["brightness_std_ratio"] = row["brightness_std"] / data_std
            edit_rows.append(row)
            print(f"SDEdit from {kind:6s} strength {s:.1f} (t = {t0:3d}, {row['model_calls']:2d} calls): W1 "
                  f"{row['wasserstein1']:.3f}, RMS to input {row['rms_to_input']:.3f}, brightness corr "
                  f"{row['brightness_corr_with_input']:.2f}, detail / data {row['detail_ratio']:.2f}")

    result = {"experiment": "start-step", "scale": scale, "models": {k: v.spec.label for k, v in models.items()},
              "num_samples": n, "steps": steps, "spacing": "trailing", "data_brightness_std": data_std,
              "lowres_factor": LOWRES, "noise": noise_rows, "inputs": baselines, "edit": edit_rows, "seconds": elapsed()}
    write_json(out, "start_step", result)
    plot_metrics(result, out / "start_step_metrics.png")
    plot_grid(show, a.starts, a.strengths, out / "start_step_grid.png")
    print(f"wrote {out}/start_step.json, start_step_metrics.png, start_step_grid.png in {elapsed():.0f} s")
    publish_figures(out, a.figures_dir, ["start_step_metrics.png", "start_step_grid.png"])


def plot_metrics(result: dict, path: Path) -> None:
    """Left two: pure-noise starts (W1, brightness std ratio with the exact Gaussian's) against t_start / T.
    Right two: SDEdit against strength (RMS to input and brightness corr; W1 and fine detail)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    colors = {"zsnr-v": "tab:blue", "sd-v": "tab:red", "real": "tab:green", "lowres": "tab:purple"}
    for name, label in result["models"].items():
        rows = [r for r in result["noise"] if r["model"] == name]
        f = [(r["t_start"] + 1) / 1000 for r in rows]
        axes[0].plot(f, [r["wasserstein1"] for r in rows], "o-", color=colors[name], label=label)
        axes[1].plot(f, [r["brightness_std_ratio"] for r in rows], "o-", color=colors[name], label=f"{label}: trained")
        axes[1].plot(f, [r["exact_brightness_std_ratio"] for r in rows], "x--", color=colors[name],
                     label=f"{label}: exact Gaussian")
    axes[0].set(xlabel="start step / T (pure noise)", ylabel="brightness W1 to the data",
                title="pure noise started at t_start")
    axes[1].set(xlabel="start step / T (pure noise)", ylabel="brightness std, samples / data",
                title="brightness spread (1 = the data's)")
    axes[1].axhline(1.0, color="k", lw=0.8)
    for kind, label in (("real", "real image"), ("lowres", f"1/{result['lowres_factor']} resolution")):
        rows = [r for r in result["edit"] if r["start"] == kind]
        s = [r["strength"] for r in rows]
        axes[2].plot(s, [r["rms_to_input"] for r in rows], "o-", color=colors[kind], label=f"{label}: RMS to input")
        axes[2].plot(s, [r["brightness_corr_with_input"] for r in rows], "x--", color=colors[kind],
                     label=f"{label}: brightness corr with input")
        axes[3].plot(s, [r["wasserstein1"] for r in rows], "o-", color=colors[kind], label=f"{label}: brightness W1")
        axes[3].plot(s, [r["detail_ratio"] for r in rows], "x--", color=colors[kind], label=f"{label}: detail / data")
        axes[3].axhline(result["inputs"][kind]["detail_ratio"], ls=":", lw=1, color=colors[kind],
                        label=f"{label}: the input's detail")
    axes[2].set(xlabel="SDEdit strength (start at round(S T) - 1)", title="informative start: what is kept")
    axes[3].set(xlabel="SDEdit strength", title="informative start: brightness law and detail")
    axes[3].axhline(1.0, color="k", lw=0.8)
    for ax in axes:
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"{result['num_samples']} samples per setup, {result['steps']}-step trailing DDIM grid below the start",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_grid(show: dict, starts, strengths, path: Path) -> None:
    """One row of ten samples per setup, labelled on the left: pure-noise starts of both models, then
    each input and its edits (the same noises and labels down each column of a block)."""
    rows = [(f"{name}: pure noise at {f:g}T", show[(name, "noise", f)]) for name in MODELS for f in starts]
    for kind in ("real", "lowres"):
        rows.append((f"input: {'real image' if kind == 'real' else f'1/{LOWRES} resolution'}", show[("input", kind)]))
        rows += [(f"SDEdit strength {s:g}", show[(kind, s)]) for s in strengths]
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(8.5, 0.72 * len(rows)))
    for ax, (label, images) in zip(axes, rows):
        ax.imshow(mosaic(images, nrow=10).numpy(), interpolation="nearest")
        ax.set(xticks=[], yticks=[])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    main()
