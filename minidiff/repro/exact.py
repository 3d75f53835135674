"""Samplers against an exact answer (Lin et al.'s brightness effect without a network): Gaussian images.

Data: x0 ~ N(mu, Sigma) over C x H x W pixels with Sigma = s_pix^2 I + s_b^2 1 1^T: each
image is a shared brightness offset (std s_b, as real photos range from dark to bright)
plus independent pixel texture (std s_pix). The covariance has one "brightness"
eigen-direction (eigenvalue s_pix^2 + D s_b^2, D pixels) and D - 1 texture directions
(eigenvalue s_pix^2). With the exact denoiser (`analytic.GaussianDenoiser`) the law of the
samples is Gaussian and its moments are computed exactly by
`analytic.gaussian_sampler_moments`; a Monte-Carlo run of the real `samplers.sample`
confirms them. No training is involved, so every error below belongs to the sampler and
the schedule:

(a) zero-SNR schedule: the sample spread approaches the data's as the step count grows;
    each large step loses some variance, most of all in the high-variance brightness
    direction;
(b) Stable Diffusion's schedule without the rescale: sampling starts from N(0, I) although
    at the last training step the brightness direction still carries variance
    alpha_bar_T * D * s_b^2 on top of the noise, so the spread of image brightness stays
    too small by a large factor however many steps are taken; "leading" starts even earlier
    (at t = 900) and makes it worse. This is Lin et al.'s brightness effect with no network.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..exact.analytic import GaussianDenoiser, gaussian_sampler_moments
from ..samplers import make_timesteps, sample
from ..schedules import Schedule
from ..training.cli import add_common_flags
from .common import experiment_parser, publish_figures, pyplot, save_figure, write_json

# (sampler, eta): deterministic DDIM, DDIM with DDPM's noise level, and DDPM
SAMPLER_SETTINGS = (("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0))


def brightness_gaussian(shape=(3, 32, 32), s_b: float = 0.5, s_pix: float = 0.3, mean: float = 0.0):
    """Mean, full covariance and eigenvalues of the brightness-varying Gaussian above."""
    d = int(torch.tensor(shape).prod())
    mu = torch.full(shape, mean, dtype=torch.float64)
    lam_b, lam_pix = s_pix**2 + d * s_b**2, s_pix**2
    return mu, lam_b, lam_pix, d


def brightness_cov(d: int, s_b: float, s_pix: float) -> torch.Tensor:
    return s_pix**2 * torch.eye(d, dtype=torch.float64) + s_b**2 * torch.ones(d, d, dtype=torch.float64)


def exact_moments(schedule, timesteps, sampler, eta, lam_b, lam_pix, mean):
    """Ratios sample/data of the brightness std and the texture std, and the mean error."""
    # The data mean lies along the brightness direction. The recursion is linear in mu (it starts
    # from mean 0), so feeding the image mean rather than its coordinate sqrt(D) * mean gives the
    # samples' image mean directly.
    d_mean = torch.tensor([mean, 0.0], dtype=torch.float64)
    m, v = gaussian_sampler_moments(torch.tensor([lam_b, lam_pix]), d_mean, schedule, timesteps, sampler=sampler, eta=eta)
    return {
        "brightness_std_ratio": (v[0] / lam_b).sqrt().item(),
        "texture_std_ratio": (v[1] / lam_pix).sqrt().item(),
        "brightness_mean": m[0].item(),
        "mean_error": (m[0] - mean).abs().item(),
    }


def monte_carlo(schedule, steps, spacing, sampler, eta, shape=(3, 8, 8), s_b=0.5, s_pix=0.3, mean=0.2,
                n=4096, seed=0):
    """Run the real sampler with the full-covariance exact denoiser in pixel space and measure
    the std of the per-image mean brightness and of the texture around it."""
    mu, lam_b, lam_pix, d = brightness_gaussian(shape, s_b, s_pix, mean)
    model = GaussianDenoiser(mu, brightness_cov(d, s_b, s_pix), schedule=schedule, prediction="v")
    x = sample(model, (n, *shape), schedule, prediction="v", steps=steps, spacing=spacing, sampler=sampler, eta=eta,
               generator=torch.Generator().manual_seed(seed), dtype=torch.float64, progress=False)
    flat = x.reshape(n, -1)
    bright = flat.mean(dim=1)
    texture = (flat - bright[:, None]).pow(2).sum(dim=1) / (d - 1)
    return {
        # the brightness direction is 1/sqrt(D): its coordinate is sqrt(D) * image mean
        "brightness_std_ratio": (bright.std() * d**0.5 / lam_b**0.5).item(),
        "texture_std_ratio": (texture.mean() / lam_pix).sqrt().item(),
        "brightness_mean": bright.mean().item(),
        "mean_error": (bright.mean() - mean).abs().item(),
    }


def run(out_dir="runs/repro/exact", shape=(3, 32, 32), s_b=0.5, s_pix=0.3, mean=0.2,
        step_counts=(5, 10, 25, 50, 100, 250, 1000), mc_samples=4096, plot=True, seed=0):
    """The whole experiment: exact table + a Monte-Carlo check + a figure. Returns the results dict."""
    t0 = time.time()
    mu, lam_b, lam_pix, d = brightness_gaussian(shape, s_b, s_pix, mean)
    schedules = {"sd_zero_snr": Schedule.make("scaled_linear", zero_snr=True), "sd_original": Schedule.make("scaled_linear")}
    rows = []
    for sname, sched in schedules.items():
        for spacing in ("trailing", "linspace", "leading"):
            for sampler, eta in SAMPLER_SETTINGS:
                for steps in step_counts:
                    ts = make_timesteps(sched.num_timesteps, steps, spacing)
                    r = exact_moments(sched, ts, sampler, eta, lam_b, lam_pix, mean)
                    rows.append({"schedule": sname, "spacing": spacing, "sampler": sampler, "eta": eta, "steps": steps, **r})
    mc = []
    for sname, sched in schedules.items():
        for spacing in ("trailing", "leading"):
            ts = make_timesteps(sched.num_timesteps, 50, spacing)
            small = brightness_gaussian((3, 8, 8), s_b, s_pix, mean)
            exact = exact_moments(sched, ts, "ddim", 0.0, small[1], small[2], mean)
            got = monte_carlo(sched, 50, spacing, "ddim", 0.0, (3, 8, 8), s_b, s_pix, mean, n=mc_samples, seed=seed)
            mc.append({"schedule": sname, "spacing": spacing, "steps": 50, "exact": exact, "monte_carlo": got})
    result = {
        "data": {"shape": list(shape), "s_b": s_b, "s_pix": s_pix, "mean": mean,
                 "brightness_eigenvalue": lam_b, "texture_eigenvalue": lam_pix,
                 "alpha_bar_T_sd_original": schedules["sd_original"].alphas_cumprod[-1].item()},
        "rows": rows, "monte_carlo_check": mc, "seed": seed, "seconds": time.time() - t0,
    }
    write_json(Path(out_dir), "exact", result)
    if plot:
        plot_results(result, Path(out_dir) / "exact_brightness_std.png")
    return result


def plot_results(result, path: Path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    styles = {"trailing": "-", "linspace": "--", "leading": ":"}
    for ax, key, title in [(axes[0], "brightness_std_ratio", "brightness (image mean)"),
                           (axes[1], "texture_std_ratio", "texture (pixels around the mean)")]:
        for sname, color in [("sd_zero_snr", "tab:blue"), ("sd_original", "tab:red")]:
            for spacing, ls in styles.items():
                pts = [(r["steps"], r[key]) for r in result["rows"]
                       if r["schedule"] == sname and r["spacing"] == spacing and r["sampler"] == "ddim" and r["eta"] == 0.0]
                xs, ys = zip(*pts)
                ax.plot(xs, ys, ls, color=color, marker="o", ms=3, label=f"{sname.replace('_', ' ')}, {spacing}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("DDIM steps (eta = 0)")
        ax.set_title(f"std of samples / std of data: {title}")
    axes[0].set_ylabel("ratio (1 = exact)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def format_table(result, steps=(10, 50, 1000)) -> str:
    """Markdown table: brightness / texture std ratios for each setup at the given step counts."""
    head = "| schedule | spacing | sampler | " + " | ".join(f"{s} steps" for s in steps) + " |"
    lines = [head, "|" + "---|" * (3 + len(steps))]
    keyed = {(r["schedule"], r["spacing"], r["sampler"], r["eta"], r["steps"]): r for r in result["rows"]}
    for sname in ("sd_zero_snr", "sd_original"):
        for spacing in ("trailing", "linspace", "leading"):
            for sampler, eta in SAMPLER_SETTINGS:
                name = "ddpm" if sampler == "ddpm" else f"ddim eta={eta:g}"
                cells = []
                for s in steps:
                    r = keyed.get((sname, spacing, sampler, eta, s))
                    cells.append("-" if r is None else f"{r['brightness_std_ratio']:.3f} / {r['texture_std_ratio']:.3f}")
                lines.append(f"| {sname} | {spacing} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = experiment_parser("exact", __doc__.split("\n\n")[0], trained=False)
    add_common_flags(p, device=False)
    p.add_argument("--mc-samples", type=int, default=4096, help="samples of the Monte-Carlo check")
    a = p.parse_args(argv)
    res = run(a.out, mc_samples=a.mc_samples, seed=a.seed)
    print("std(samples) / std(data), brightness / texture, 3x32x32 Gaussian images (exact):")
    print(format_table(res))
    print("\nMonte-Carlo check (3x8x8, DDIM 50 steps, real sampler vs exact moments):")
    for m in res["monte_carlo_check"]:
        print(f"  {m['schedule']:12s} {m['spacing']:9s} brightness {m['monte_carlo']['brightness_std_ratio']:.3f} "
              f"(exact {m['exact']['brightness_std_ratio']:.3f}), texture {m['monte_carlo']['texture_std_ratio']:.3f} "
              f"(exact {m['exact']['texture_std_ratio']:.3f})")
    print(f"\nwrote {a.out}/exact.json and exact_brightness_std.png in {res['seconds']:.1f} s")
    publish_figures(Path(a.out), a.figures_dir, ["exact_brightness_std.png"])


if __name__ == "__main__":
    main()
