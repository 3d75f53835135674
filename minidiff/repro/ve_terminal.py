"""Why a variance-exploding schedule never reaches zero terminal SNR, and what its sigma_max leaves.

Variance exploding (VE) adds noise and never shrinks the image: x = x0 + sigma eps, so the SNR of a
direction whose data variance is v is v / sigma^2, zero only at sigma = infinity. Every schedule in
use stops at a finite sigma_max. Variance preserving (VP) shrinks the image as it adds noise,
x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, and reaches SNR = 0 at a finite state (ab = 0, x_T = eps),
which is what Lin et al.'s rescale does. The two are one family: x0 + sigma eps divided by
sqrt(1 + sigma^2) is the VP state with ab = 1 / (1 + sigma^2); zero-SNR VP is VE at sigma = infinity,
a state a VE sampler cannot hold.

The sampler starts from N(0, sigma_max^2 I), but the training inputs at sigma_max were x0 + sigma_max
eps, centred on the image: the start drops x0. Where that matters is the image mean (frequencies:
its SNR is D times the per-pixel one). For Gaussian brightness with SNR S at the start, even an exact
probability-flow sampler ends with brightness std sqrt(1 / (1 + S)) of the data's (VE; VP adds a
factor 1 / sqrt(1 - ab_T)). VE schedules as published (values from the released configs):

    SMLD / NCSN (VE SDE), CIFAR-10 32 px   sigma 0.01 .. 50    Song et al. 2021, after Song & Ermon 2020
    NCSN++, CelebA-HQ 256 px               sigma 0.01 .. 348   Song et al. 2021
    NCSN++, FFHQ 1024 px                   sigma 0.01 .. 1348  Song et al. 2021
    EDM, CIFAR-10 32 px (also 64 px sets)  sigma 0.002 .. 80   Karras et al. 2022 (data std 0.5)

Song et al. keep images in [0, 1] (their VE configs do not centre the data), EDM in [-1, 1]; the
mean's SNR below uses each schedule's own data range. Song & Ermon 2020 set sigma_max to about the
largest distance between training images, which grows like sqrt(D): so sigma_max^2 grows with the
pixel count and the mean's SNR stays near 0.1 at every resolution, while a fixed VP schedule lets it
grow like D. No training.

    minidiff repro ve-terminal     # a few seconds
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..schedules import Schedule
from ..training import data as datasets
from ..training.cli import add_common_flags, fail
from .common import experiment_parser, publish_figures, pyplot, save_figure, timer, write_json
from .table1 import table as vp_table

# name -> (sigma_min, sigma_max, data range, side it was used at, where the numbers come from)
VE_SCHEDULES = {
    "smld_cifar10": (0.01, 50.0, (0.0, 1.0), 32,
                     "Song et al. 2021 VE SDE on CIFAR-10 (sigma_max from Song & Ermon 2020's technique 1)"),
    "ncsnpp_256": (0.01, 348.0, (0.0, 1.0), 256, "Song et al. 2021 NCSN++, CelebA-HQ 256 (FFHQ 256 too)"),
    "ncsnpp_1024": (0.01, 1348.0, (0.0, 1.0), 1024, "Song et al. 2021 NCSN++, FFHQ 1024"),
    "edm": (0.002, 80.0, (-1.0, 1.0), 32, "Karras et al. 2022 EDM, CIFAR-10 (and the 64 px sets)"),
}
SIDES = (32, 64, 128, 256, 512, 1024)


def ve_snr(sigma, data_var: float = 1.0):
    """SNR of x = x0 + sigma eps in a direction of data variance v: v / sigma^2 (0 only as sigma -> inf)."""
    return data_var / sigma**2


def vp_alpha_bar_of_sigma(sigma: float) -> float:
    """The VP state equal to a VE one: (x0 + sigma eps) / sqrt(1 + sigma^2) has ab = 1 / (1 + sigma^2)."""
    return 1.0 / (1.0 + sigma**2)


def sigma_of_vp_snr(snr_T: float) -> float:
    """The VE sigma with the same SNR as a VP step: sigma = sqrt((1 - ab) / ab) = 1 / sqrt(SNR); inf at 0."""
    return math.inf if snr_T == 0 else snr_T**-0.5


def finite_or_none(value: float) -> float | None:
    """JSON has no infinity: sigma = inf (zero SNR) is written as null."""
    return value if math.isfinite(value) else None


def range_variance_factor(data_range: tuple[float, float]) -> float:
    """How a variance measured on images in [-1, 1] scales into `data_range`: (width / 2)^2."""
    return ((data_range[1] - data_range[0]) / 2) ** 2


def mean_snr(snr_T: float, side: int, brightness_var: float, channels: int = 3) -> float:
    """SNR of the image mean at T: the noise on a mean of D = C side^2 pixels has variance 1/D of a
    pixel's, the brightness keeps its variance, so SNR_mean = SNR(T) D Var(b) (leakage.py)."""
    return snr_T * channels * side * side * brightness_var


def start_std_ratio(mean_snr_T: float, alpha_bar_T: float = 0.0) -> float:
    """Brightness std of an exact probability-flow sampler started from the pure-noise law, over the
    data's, for Gaussian brightness: sqrt(1 / ((1 - ab_T)(1 + S))) (VE: ab_T = 0 in this formula).

    The exact ODE maps x_T to x_T sqrt(v / Var(x_T)) along the direction (v the data variance);
    the true Var(x_T) is the noise's times (1 + S), the start's has no (1 + S): the spread shrinks.
    """
    return (1.0 / ((1.0 - alpha_bar_T) * (1.0 + mean_snr_T))) ** 0.5


def ve_sigmas(sigma_min: float, sigma_max: float, n: int = 1000) -> torch.Tensor:
    """Song et al.'s VE SDE noise levels on normalized time u in [0, 1]: sigma_min (sigma_max / sigma_min)^u."""
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    return sigma_min * (sigma_max / sigma_min) ** u


def edm_sigmas(sigma_min: float = 0.002, sigma_max: float = 80.0, n: int = 1000, rho: float = 7.0) -> torch.Tensor:
    """EDM's noise levels on normalized step u in [0, 1], noise end last:
    (sigma_min^(1/rho) + u (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho."""
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    return (sigma_min ** (1 / rho) + u * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho


def largest_distance(images: torch.Tensor) -> float:
    """max over pairs of ||x_i - x_j||: Song & Ermon 2020's choice of sigma_max (technique 1), so that
    the noise at sigma_max can carry any training image to any other."""
    flat = images.double().flatten(1)
    return float(torch.cdist(flat, flat).max())


def terminal_rows(brightness_var: float, pixel_var: float) -> list[dict]:
    """Terminal SNR of the VE schedules and of Lin et al.'s VP ones (table1.py's numbers), with the
    equivalent sigma / alpha_bar, and the mean's SNR at T at the side each VE schedule was used at."""
    rows = []
    for key, (_, s_max, rng, side, source) in VE_SCHEDULES.items():
        k = range_variance_factor(rng)
        s = mean_snr(ve_snr(s_max), side, brightness_var * k)
        rows.append({"family": "VE", "schedule": key, "sigma_max": s_max, "snr_T_unit_var": ve_snr(s_max),
                     "snr_T_pixel": ve_snr(s_max, pixel_var * k), "alpha_bar_T": vp_alpha_bar_of_sigma(s_max),
                     "sqrt_alpha_bar_T": vp_alpha_bar_of_sigma(s_max) ** 0.5, "data_range": list(rng), "side": side,
                     "mean_snr_T": s, "start_std_ratio": start_std_ratio(s), "source": source})
    for r in vp_table():
        for zero in (False, True):
            snr_T, sab = (r["rescaled_snr_T"], r["rescaled_sqrt_alpha_bar_T"]) if zero else (r["snr_T"], r["sqrt_alpha_bar_T"])
            s = mean_snr(snr_T, 32, brightness_var)
            rows.append({"family": "VP", "schedule": r["schedule"] + ("_zero_snr" if zero else ""),
                         "sigma_max": finite_or_none(sigma_of_vp_snr(snr_T)), "snr_T_unit_var": snr_T, "snr_T_pixel": snr_T * pixel_var,
                         "alpha_bar_T": sab**2, "sqrt_alpha_bar_T": sab, "data_range": [-1.0, 1.0], "side": 32,
                         "mean_snr_T": s, "start_std_ratio": start_std_ratio(s, sab**2),
                         "source": "Lin et al. Table 1 (table1.py)" + (", after Algorithm 1" if zero else "")})
    return rows


def rule_rows(distance_32: float, brightness_var: float, sides=SIDES) -> list[dict]:
    """Song & Ermon's rule at every side, on the built-in images in [0, 1]: sigma_max = the largest
    distance between images, which for the same scenes with more pixels grows like the side."""
    out = []
    for side in sides:
        sigma = distance_32 * side / 32
        s = mean_snr(ve_snr(sigma), side, brightness_var / 4)
        out.append({"schedule": "largest_distance_rule", "family": "VE", "side": side, "sigma_max": sigma,
                    "mean_snr_T": s, "start_std_ratio": start_std_ratio(s)})
    return out


def resolution_rows(rows: list[dict], brightness_var: float, sides=SIDES) -> list[dict]:
    """The mean's SNR at T and the start's brightness std ratio for every schedule at every side."""
    out = []
    for r in rows:
        k = range_variance_factor(tuple(r["data_range"]))
        for side in sides:
            s = mean_snr(r["snr_T_unit_var"], side, brightness_var * k)
            out.append({"schedule": r["schedule"], "family": r["family"], "side": side, "mean_snr_T": s,
                        "start_std_ratio": start_std_ratio(s, r["alpha_bar_T"] if r["family"] == "VP" else 0.0)})
    return out


def plot(rows: list[dict], by_side: list[dict], path: Path) -> None:
    """Left: log SNR (unit-variance data) against normalized time, VP and VE. Right: the image mean's
    SNR at T against the side, with the side each VE schedule was used at marked."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    ax = axes[0]
    for kind, color in (("linear", "tab:blue"), ("cosine", "tab:green"), ("scaled_linear", "tab:red")):
        for zero, ls in ((False, "-"), (True, ":")):
            s = Schedule.make(kind, 1000, zero_snr=zero)
            u = (torch.arange(1000) + 1) / 1000
            ax.plot(u, s.log_snr.clamp(min=-30), ls, color=color, label=f"VP {kind}" + (", zero SNR" if zero else ""))
    for key, color in (("smld_cifar10", "tab:purple"), ("ncsnpp_256", "tab:brown"), ("ncsnpp_1024", "tab:pink")):
        s_min, s_max = VE_SCHEDULES[key][:2]
        sig = ve_sigmas(s_min, s_max)
        ax.plot(torch.linspace(0, 1, len(sig)), -2 * sig.log(), "--", color=color, label=f"VE {key} (sigma_max {s_max:g})")
    sig = edm_sigmas()
    ax.plot(torch.linspace(0, 1, len(sig)), -2 * sig.log(), "--", color="k", label="VE EDM (sigma_max 80)")
    ax.axhline(0, color="gray", lw=0.6)
    ax.set(xlabel="normalized time (0: data, 1: the last noise level)", ylabel="log SNR (unit-variance data)",
           ylim=(-30, 14), title="VP reaches -inf only after the rescale; VE stops at -2 log sigma_max")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    ax = axes[1]
    styles = {"smld_cifar10": ("tab:purple", "--"), "ncsnpp_256": ("tab:brown", "--"), "ncsnpp_1024": ("tab:pink", "--"),
              "edm": ("k", "--"), "linear": ("tab:blue", "-"), "cosine": ("tab:green", "-"),
              "scaled_linear": ("tab:red", "-"), "largest_distance_rule": ("gray", ":")}
    rows = rows + [{"schedule": "largest_distance_rule", "family": "VE"}]
    for r in rows:
        if r["schedule"] not in styles:
            continue
        color, ls = styles[r["schedule"]]
        pts = [(b["side"], b["mean_snr_T"]) for b in by_side if b["schedule"] == r["schedule"]]
        ax.plot(*zip(*pts), ls, marker=".", color=color, label=f"{r['family']} {r['schedule']}")
        if "side" in r and r["family"] == "VE":
            ax.plot([r["side"]], [r["mean_snr_T"]], "o", ms=9, mfc="none", color=color)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="image side (pixels)", ylabel="SNR of the image mean at T",
           title="The mean's terminal SNR (circles: the side a VE schedule was published for;\n"
                 "VP zero SNR: 0 at every side)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path)


def format_table(rows: list[dict]) -> str:
    """One markdown line per schedule, VE then VP."""
    lines = ["| family | schedule | sigma_max (VP: equivalent) | SNR(T), unit variance | sqrt(ab_T) equivalent | "
             "side | image mean SNR(T) | brightness std from the start |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sigma = "inf" if r["sigma_max"] is None else f"{r['sigma_max']:.4g}"
        lines.append(f"| {r['family']} | {r['schedule']} | {sigma} | {r['snr_T_unit_var']:.4g} | "
                     f"{r['sqrt_alpha_bar_T']:.4g} | {r['side']} | {r['mean_snr_T']:.3g} | {r['start_std_ratio']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    """Measure the built-in set's variances, print the tables, write the JSON and the figure."""
    p = experiment_parser("ve-terminal", __doc__.split("\n\n")[0], trained=False)
    p.add_argument("--num-images", type=int, default=2000, help="built-in images that give the brightness variance")
    add_common_flags(p, device=False)
    a = p.parse_args(argv)
    if a.num_images < 2:
        fail(f"--num-images must be at least 2 (a variance needs two images), got {a.num_images}")
    elapsed, out = timer(), Path(a.out)
    images = datasets.to_float(datasets.load_dataset("builtin", resolution=32, num=a.num_images, seed=a.seed).images)
    brightness_var = float(images.double().flatten(1).mean(1).var())
    pixel_var = float(images.double().var())
    rows = terminal_rows(brightness_var, pixel_var)
    distance = largest_distance((images[:1000] + 1) / 2)  # in [0, 1], as Song et al.'s data
    by_side = resolution_rows(rows, brightness_var) + rule_rows(distance, brightness_var)
    plot(rows, by_side, out / "ve_terminal.png")
    write_json(out, "ve_terminal", {"experiment": "ve-terminal", "brightness_var": brightness_var,
                                    "pixel_var": pixel_var, "largest_distance_32px_unit_range": distance, "rows": rows, "by_side": by_side, "seconds": elapsed()})
    print(f"built-in images in [-1, 1]: brightness variance {brightness_var:.3f}, pixel variance {pixel_var:.3f} "
          "(x 1/4 for data in [0, 1])")
    print(format_table(rows))
    print("\nimage mean SNR(T) by side:  " + "  ".join(f"{s:>8d}" for s in SIDES))
    for r in rows + [{"family": "VE", "schedule": "largest_distance_rule"}]:
        vals = [b["mean_snr_T"] for b in by_side if b["schedule"] == r["schedule"]]
        print(f"  {r['family']} {r['schedule']:22s}" + "  ".join(f"{v:8.3g}" for v in vals))
    print(f"largest distance between built-in images in [0, 1] at 32 px: {distance:.1f} "
          f"(= {distance / (3 * 32 * 32) ** 0.5:.2f} sqrt(D); Song et al.'s sigma_max / sqrt(D): "
          + ", ".join(f"{VE_SCHEDULES[k][1] / (3 * VE_SCHEDULES[k][3] ** 2) ** 0.5:.2f}"
                      for k in ("smld_cifar10", "ncsnpp_256", "ncsnpp_1024")) + ")")
    print(f"wrote {out}/ve_terminal.json and ve_terminal.png in {elapsed():.1f} s")
    publish_figures(out, a.figures_dir, ["ve_terminal.png"])


if __name__ == "__main__":
    main()
