"""Fewer network calls: error against network evaluations for DDIM, DDPM, DPM-Solver++ and Heun.

No training: the data are the brightness Gaussian of `repro exact` (3x32x32 images, a shared
brightness offset with std 0.5 plus pixel texture with std 0.3, mean 0.2), whose exact denoiser
is known, so every error is the sampler's. For each sampler and budget of network evaluations
(NFE: one per step, Heun two per step but one on its last) the law of the samples is computed
exactly (`analytic.gaussian_sampler_moments`) and compared with the data's by the Wasserstein-2
distance per pixel, sqrt((W2_brightness^2 + (D - 1) W2_texture^2) / D).

Two figures:
  fast_samplers_error.png  error vs NFE on Stable Diffusion's schedule rescaled to zero SNR,
                           trailing steps (the fixed setup of Lin et al.), and on the
                           original schedule for comparison;
  fast_samplers_order.png  the solvers' order: the distance to the exact probability-flow ODE's
                           law on steps evenly spaced in log-SNR, with the fitted slopes.

    minidiff repro fast-samplers                                 # seconds, no training
    minidiff repro fast-samplers --figures-dir docs/figures      # refresh the course's figures
    minidiff repro fast-samplers --checkpoint runs/builtin-small-patch2-linear-zsnr-v/checkpoint.pt

With --checkpoint (a model trained on the built-in shapes by train_cifar.py) it also draws
--num-samples images per sampler and NFE from that model, every class in turn, and scores them with
minidiff.evaluation.metrics (class accuracy, Frechet distance in the classifier's features, brightness W1):
fast_samplers_trained.png.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..exact.analytic import gaussian_flow_moments, gaussian_sampler_moments
from ..samplers import make_timesteps, network_evaluations
from ..schedules import Schedule
from .common import experiment_parser, publish_figures, pyplot, save_figure, timer, write_json
from .exact import brightness_gaussian

SAMPLERS = ("ddim", "ddpm", "dpmpp_2m", "dpmpp_3m", "heun")
NFES = (5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100)
ORDER_STEPS = (10, 20, 40, 80, 160)
STYLE = {"ddim": ("tab:blue", "o"), "ddpm": ("tab:gray", "x"), "dpmpp_2m": ("tab:red", "s"),
         "dpmpp_3m": ("tab:purple", "^"), "heun": ("tab:green", "D")}


def steps_for(sampler: str, nfe: int) -> int:
    """The most steps whose network evaluations fit in `nfe`."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def w2_per_pixel(mean, var, data_mean, data_var, d: int) -> float:
    """W2 between the sample law and the data law (both Gaussian, per eigen-direction), per pixel.

    Entry 0 is the brightness direction (one), entry 1 a texture direction (d - 1 of them)."""
    w2 = (mean - data_mean) ** 2 + (var.sqrt() - data_var.sqrt()) ** 2
    return math.sqrt((w2[0].item() + (d - 1) * w2[1].item()) / d)


def error_rows(schedule: Schedule, spacing: str, lam, mu, d: int) -> list[dict]:
    """Every sampler at every NFE budget: the W2 error and the std ratios of both directions."""
    rows = []
    for sampler in SAMPLERS:
        for nfe in NFES:
            steps = steps_for(sampler, nfe)
            ts = make_timesteps(schedule.num_timesteps, steps, spacing)
            m, v = gaussian_sampler_moments(lam, mu, schedule, ts, sampler=sampler)
            rows.append({"sampler": sampler, "steps": steps, "nfe": network_evaluations(sampler, steps),
                         "w2_per_pixel": w2_per_pixel(m, v, mu, lam, d),
                         "brightness_std_ratio": (v[0] / lam[0]).sqrt().item(),
                         "texture_std_ratio": (v[1] / lam[1]).sqrt().item(),
                         "brightness_mean_error": (m[0] - mu[0]).abs().item()})
    return rows


def log_snr_uniform_timesteps(schedule: Schedule, num: int, lo: float = -3.0, hi: float = 3.0) -> torch.Tensor:
    """The training timesteps nearest to `num` values of lambda = log(SNR) / 2 evenly spaced in [lo, hi]."""
    lam = schedule.log_snr / 2
    ts = {int((lam - x).abs().argmin()) for x in torch.linspace(lo, hi, num + 1, dtype=torch.float64)}
    return torch.tensor(sorted(ts, reverse=True))


def order_rows(schedule: Schedule, lam, mu, d: int) -> list[dict]:
    """Distance, at the last listed timestep, between each deterministic sampler's law and the exact
    probability-flow ODE's from the same start, on log-SNR-uniform steps (lambda from -3 to 3)."""
    rows = []
    for sampler in ("ddim", "dpmpp_2m", "dpmpp_3m", "heun"):
        for steps in ORDER_STEPS:
            ts = log_snr_uniform_timesteps(schedule, steps)
            m, v = gaussian_sampler_moments(lam, mu, schedule, ts, sampler=sampler, to_clean=False)
            ab = schedule.alphas_cumprod
            rm, rv = gaussian_flow_moments(lam, mu, ab[ts[0]].item(), ab[ts[-1]].item())
            rows.append({"sampler": sampler, "steps": len(ts) - 1, "w2_per_pixel": w2_per_pixel(m, v, rm, rv, d)})
    return rows


def fitted_slope(rows: list[dict], sampler: str, last: int = 3) -> float:
    """Least-squares slope of log(error) vs log(steps) over the `last` largest step counts."""
    pts = [(math.log(r["steps"]), math.log(r["w2_per_pixel"])) for r in rows if r["sampler"] == sampler][-last:]
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def plot_error(result: dict, path: Path) -> None:
    plt = pyplot()
    panels = [("sd_zero_snr", "SD schedule, zero terminal SNR, trailing"), ("sd_original", "SD schedule as released, trailing")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (key, title) in zip(axes, panels):
        for sampler in SAMPLERS:
            rows = [r for r in result["rows"][key] if r["sampler"] == sampler]
            color, marker = STYLE[sampler]
            ax.plot([r["nfe"] for r in rows], [r["w2_per_pixel"] for r in rows], marker=marker, ms=4, color=color,
                    label=sampler)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("W2 distance to the data, per pixel")
    axes[0].legend(fontsize=8)
    fig.suptitle("Exact Gaussian denoiser (3x32x32 brightness Gaussian): the sampler's error alone", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_order(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.8, 4.2))
    for sampler in ("ddim", "dpmpp_2m", "dpmpp_3m", "heun"):
        rows = [r for r in result["order_rows"] if r["sampler"] == sampler]
        color, marker = STYLE[sampler]
        ax.plot([r["steps"] for r in rows], [r["w2_per_pixel"] for r in rows], marker=marker, ms=4, color=color,
                label=f"{sampler}: slope {result['slopes'][sampler]:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("steps, evenly spaced in log-SNR (lambda from -3 to 3)")
    ax.set_ylabel("W2 to the exact ODE's law, per pixel")
    ax.set_title("Order of convergence (linear schedule)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def table(rows: list[dict], nfes=(5, 10, 20, 25, 50)) -> str:
    """Markdown table: W2 per pixel at a few NFE budgets (Heun at the odd budget below)."""
    lines = ["| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for sampler in SAMPLERS:
        cells = []
        for n in nfes:
            got = [r for r in rows if r["sampler"] == sampler and r["steps"] == steps_for(sampler, n)]
            cells.append(f"{got[0]['w2_per_pixel']:.4f}" + (f" ({got[0]['nfe']})" if got[0]["nfe"] != n else ""))
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TRAINED_SAMPLERS = ("ddim", "dpmpp_2m", "heun")
TRAINED_NFES = (5, 10, 25, 50)


def trained_rows(checkpoint: str, num: int, seed: int = 0, samplers=TRAINED_SAMPLERS, nfes=TRAINED_NFES) -> list[dict]:
    """Each sampler at each NFE budget on a trained built-in model, scored by minidiff.evaluation.metrics."""
    from tqdm.auto import tqdm

    from ..evaluation import metrics
    from ..training.sample import generate, load_model

    model, config = load_model(checkpoint)
    if config["dataset"] != "builtin":
        raise SystemExit("error: --checkpoint must be a model trained on the built-in shapes (its classes are judged)")
    judge = metrics.Judge.for_dataset("builtin", resolution=config["resolution"], progress=False)
    classes = model.config["num_classes"]
    labels = torch.arange(num) % classes if classes else None
    rows = []
    for sampler, nfe in tqdm([(s, n) for s in samplers for n in nfes], desc="sampling the trained model"):
        steps = steps_for(sampler, nfe)
        start = time.perf_counter()
        images = generate(model, config, num, sampler=sampler, steps=steps, labels=labels, seed=seed, progress=False)
        score = judge.score(images, labels)
        rows.append(dict(sampler=sampler, nfe=network_evaluations(sampler, steps), steps=steps,
                         accuracy=score["accuracy"], frechet=score["frechet"], brightness_w1=score["brightness_w1"],
                         seconds=time.perf_counter() - start))
    cal = judge.calibration(num)
    return rows, {k: {m: cal[k][m] for m in ("accuracy", "frechet", "brightness_w1")} for k in cal}


def plot_trained(rows: list[dict], calibration: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, key, label in zip(axes, ("accuracy", "frechet", "brightness_w1"),
                              ("class accuracy (higher is better)", "Frechet distance", "brightness W1")):
        for sampler in TRAINED_SAMPLERS:
            mine = [r for r in rows if r["sampler"] == sampler]
            if mine and mine[0][key] is not None:
                colour, marker = STYLE[sampler]
                ax.plot([r["nfe"] for r in mine], [r[key] for r in mine], marker=marker, color=colour, label=sampler)
        ax.axhline(calibration["real"][key], color="k", lw=0.8, ls="--", label="real images")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)


def trained_table(rows: list[dict]) -> str:
    lines = ["| sampler | NFE | class accuracy | Frechet | brightness W1 |", "|---|---|---|---|---|"]
    for r in rows:
        acc = "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        lines.append(f"| {r['sampler']} | {r['nfe']} | {acc} | {r['frechet']:.2f} | {r['brightness_w1']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    p = experiment_parser("fast-samplers", __doc__.split("\n\n")[0], trained=False)
    p.add_argument("--checkpoint", help="also score the samplers on this trained built-in model")
    p.add_argument("--num-samples", type=int, default=500, help="samples per sampler and NFE with --checkpoint")
    a = p.parse_args(argv)
    elapsed = timer()
    out = Path(a.out)
    mu_img, lam_b, lam_pix, d = brightness_gaussian((3, 32, 32), 0.5, 0.3, 0.2)
    lam = torch.tensor([lam_b, lam_pix], dtype=torch.float64)
    mu = torch.tensor([0.2, 0.0], dtype=torch.float64)  # the image mean lies along the brightness direction
    schedules = {"sd_zero_snr": Schedule.make("scaled_linear", zero_snr=True), "sd_original": Schedule.make("scaled_linear")}
    rows = {key: error_rows(s, "trailing", lam, mu, d) for key, s in schedules.items()}
    orders = order_rows(Schedule.make("linear"), lam, mu, d)
    result = {"experiment": "fast-samplers", "data": {"shape": [3, 32, 32], "s_b": 0.5, "s_pix": 0.3, "mean": 0.2},
              "rows": rows, "order_rows": orders,
              "slopes": {s: fitted_slope(orders, s) for s in ("ddim", "dpmpp_2m", "dpmpp_3m", "heun")}}
    plot_error(result, out / "fast_samplers_error.png")
    plot_order(result, out / "fast_samplers_order.png")
    result["seconds"] = elapsed()
    write_json(out, "fast_samplers", result)
    for key in schedules:
        print(f"W2 per pixel to the data, {key}, trailing (Heun's NFE in brackets where it differs):")
        print(table(rows[key]))
    print("fitted slopes of log(error) vs log(steps), log-SNR-uniform steps:",
          ", ".join(f"{s} {v:.2f}" for s, v in result["slopes"].items()))
    print(f"wrote {out}/fast_samplers.json, fast_samplers_error.png and fast_samplers_order.png in {result['seconds']} s")
    figures = ["fast_samplers_error.png", "fast_samplers_order.png"]
    if a.checkpoint:
        trained, calibration = trained_rows(a.checkpoint, a.num_samples)
        result.update(trained_rows=trained, trained_calibration=calibration, checkpoint=a.checkpoint)
        plot_trained(trained, calibration, out / "fast_samplers_trained.png")
        write_json(out, "fast_samplers", result)
        print(f"the trained model {a.checkpoint}, {a.num_samples} samples each:")
        print(trained_table(trained))
        print("real images:", ", ".join(f"{k} {v:.3g}" for k, v in calibration["real"].items()))
        figures.append("fast_samplers_trained.png")
    publish_figures(out, a.figures_dir, figures)


if __name__ == "__main__":
    main()
