"""Why the mean leaks most: the SNR each spatial frequency keeps at T, at 32, 64 and 128 pixels a side.

Write an image channel in an orthonormal basis of 2-D Fourier modes, X = F x with F unitary
(`torch.fft.fft2(x, norm="ortho")`). White noise stays white: every coefficient of F eps has
E|.|^2 = 1. So at the last training step x_T = sqrt(ab_T) x0 + sqrt(1 - ab_T) eps, the coefficient
at frequency k keeps

    SNR_k(T) = ab_T / (1 - ab_T) * P(k),     P(k) = E|X_k|^2 (the data's power at k)

Natural images put their power in the lowest frequencies, and the lowest of all is the mean: the DC
coefficient of a channel with d = R^2 pixels is sqrt(d) times its mean, so P(0) = d E[mean^2]. The
same picture drawn with four times the pixels has four times the power at every low frequency
(measured in cycles per image), while the noise stays at 1 per coefficient: the mean crosses SNR = 1
first, and a schedule whose terminal SNR hides it at 32 px shows it at 128 px. The built-in shapes
are drawn at each resolution from the same seed (the same scenes, more pixels), with the terminal
SNR of linear, cosine and Stable Diffusion's schedules without the rescale. No training.

    minidiff repro frequencies     # a few seconds
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..schedules import BETA_SCHEDULES, alphas_cumprod, make_betas, snr
from ..training import data as datasets
from ..training.cli import add_common_flags, fail
from .common import experiment_parser, publish_figures, pyplot, save_figure, timer, write_json
from .table1 import NAMES

RESOLUTIONS = (32, 64, 128)


def fourier_power(images: torch.Tensor) -> torch.Tensor:
    """|X_k|^2 with X = F x the orthonormal 2-D DFT of each channel ([N, C, R, R] -> same shape).

    F is unitary, so sum_k |X_k|^2 = sum_n x_n^2 (Parseval) and X_0 = sum_n x_n / sqrt(d) = sqrt(d) mean(x).
    """
    return torch.fft.fft2(images.double(), norm="ortho").abs().pow(2)


def radial_frequency(resolution: int) -> torch.Tensor:
    """|k| rounded to an integer, in cycles per image, for every coefficient of an R x R DFT
    (k = (k_y, k_x), each from fftfreq(R) * R): band 0 is the DC coefficient alone."""
    k = torch.fft.fftfreq(resolution, d=1.0 / resolution).double()
    return (k[:, None] ** 2 + k[None, :] ** 2).sqrt().round().long()


def radial_power(power: torch.Tensor) -> torch.Tensor:
    """P(band) = mean of |X_k|^2 over images, channels and the coefficients whose |k| rounds to the band."""
    band = radial_frequency(power.shape[-1]).flatten()
    per_coefficient = power.mean(dim=(0, 1)).flatten()
    total = torch.zeros(int(band.max()) + 1, dtype=torch.float64).index_add_(0, band, per_coefficient)
    count = torch.zeros_like(total).index_add_(0, band, torch.ones_like(per_coefficient))
    return total / count


def terminal_snr(kind: str, num_timesteps: int = 1000) -> float:
    """SNR(T) = ab_T / (1 - ab_T) of a beta schedule without the rescale (Lin et al. Table 1)."""
    return float(snr(alphas_cumprod(make_betas(kind, num_timesteps)))[-1])


def readable_share(power_k: torch.Tensor, snr_T: float) -> float:
    """Share of the signal power E|x|^2 held by coefficients with SNR_k(T) = SNR(T) P(k) >= 1: the part
    of the image that still shows through x_T (power_k: E|X_k|^2 per coefficient, any shape)."""
    return float(power_k[snr_T * power_k >= 1].sum() / power_k.sum())


def hidden_from(snr_curve: torch.Tensor, power: float) -> int | None:
    """The first timestep from which SNR(t) P < 1 for every later t (the frequency is buried under
    the noise from there on); None when SNR(T) P >= 1 (never buried)."""
    above = (snr_curve * power >= 1).nonzero()
    if len(above) == 0:
        return 0
    last = int(above[-1])
    return None if last == len(snr_curve) - 1 else last + 1


def measure(images: torch.Tensor) -> dict:
    """The spectrum and the mean's numbers of one resolution's images (float, [-1, 1])."""
    n, c, r, _ = images.shape
    d = r * r
    power = fourier_power(images)
    power_k = power.mean(dim=(0, 1))  # E|X_k|^2 per coefficient
    channel_mean = images.double().mean(dim=(2, 3))  # [N, C]
    brightness = images.double().flatten(1).mean(1)
    return {
        "resolution": r, "pixels_per_channel": d, "num_images": n,
        "radial_power": radial_power(power).tolist(),
        "dc_power": float(power_k[0, 0]),
        "dc_power_from_mean": d * float(channel_mean.pow(2).mean()),  # Parseval: the same number
        "dc_variance": d * float(channel_mean.var(dim=0).mean()),     # across images: the part that informs
        "total_power": float(power_k.sum()),
        "dc_share": float(power_k[0, 0] / power_k.sum()),
        "dc_over_mean_coefficient": float(power_k[0, 0] / power_k.mean()),
        "brightness_var": float(brightness.var()),
        "power_k": power_k,
    }


def schedule_rows(m: dict) -> list[dict]:
    """For one resolution: the terminal SNR of each band, of the DC, of the image mean, and the share
    of the signal that shows through x_T, for every schedule (no rescale)."""
    rows = []
    for kind in BETA_SCHEDULES:
        s = terminal_snr(kind)
        curve = snr(alphas_cumprod(make_betas(kind)))
        image_mean_snr = s * 3 * m["pixels_per_channel"] * m["brightness_var"]
        rows.append({
            "schedule": kind, "name": NAMES[kind], "resolution": m["resolution"], "snr_T": s,
            "band_snr_T": [s * p for p in m["radial_power"]],
            "dc_snr_T": s * m["dc_power"],
            "dc_snr_T_variance": s * m["dc_variance"],
            "image_mean_snr_T": image_mean_snr,  # leakage.py's formula, the mean over 3 channels
            "image_mean_r2": image_mean_snr / (1 + image_mean_snr),
            "bands_above_1": sum(s * p >= 1 for p in m["radial_power"]),
            "coefficients_above_1": int((s * m["power_k"] >= 1).sum()),
            "readable_share": readable_share(m["power_k"], s),
            "dc_hidden_from_step": hidden_from(curve, m["dc_variance"]),
        })
    return rows


def plot(measures: list[dict], rows: list[dict], path: Path) -> None:
    """Left three: SNR at T per radial band, one curve per resolution, one panel per schedule (DC drawn
    at x = 0.5). Right: the DC's SNR at T against the pixel count."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.9))
    colors = dict(zip(RESOLUTIONS, ("tab:blue", "tab:orange", "tab:red")))
    for ax, kind in zip(axes, BETA_SCHEDULES):
        for r in (r for r in rows if r["schedule"] == kind):
            band = r["band_snr_T"]
            color = colors.get(r["resolution"])
            x = [0.5] + list(range(1, len(band)))
            ax.plot(x, band, marker=".", ms=3, lw=1, color=color, label=f"{r['resolution']} px")
            ax.plot([0.5], band[:1], "o", color=color)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([0.5, 1, 10, 100], ["DC", "1", "10", "100"])
        ax.set_xlabel("radial frequency |k| (cycles per image)")
        ax.set_title(f"{NAMES[kind]}: SNR(T) = {rows[[r['schedule'] for r in rows].index(kind)]['snr_T']:.3g}\n"
                     "SNR kept at T per coefficient", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("SNR_k(T) = SNR(T) P(k)")
    axes[0].legend(fontsize=7)
    ax = axes[3]
    for kind, ls in zip(BETA_SCHEDULES, ("-", ":", "--")):
        pts = [(3 * m["pixels_per_channel"], r["image_mean_snr_T"]) for m in measures for r in rows
               if r["schedule"] == kind and r["resolution"] == m["resolution"]]
        ax.plot(*zip(*pts), ls, marker="o", label=NAMES[kind])
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("pixels D = 3 R^2")
    ax.set_title("SNR of the image mean at T\n(slope 1: 4x per doubling of the side)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    """Measure every resolution's spectrum, print the tables, write the JSON and the figure."""
    p = experiment_parser("frequencies", __doc__.split("\n\n")[0], trained=False)
    p.add_argument("--num-images", type=int, default=500, help="built-in images per resolution")
    p.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS), help="image sides in pixels")
    add_common_flags(p, device=False)
    a = p.parse_args(argv)
    if a.num_images < 2:
        fail(f"--num-images must be at least 2 (a variance needs two images), got {a.num_images}")
    if any(r < 2 for r in a.resolutions):
        fail(f"--resolutions must be at least 2 pixels a side, got {a.resolutions}")
    elapsed, out = timer(), Path(a.out)
    measures, rows = [], []
    for r in sorted(set(a.resolutions)):
        images = datasets.to_float(datasets.load_dataset("builtin", resolution=r, num=a.num_images, seed=a.seed).images)
        measures.append(measure(images))
        rows += schedule_rows(measures[-1])
    plot(measures, rows, out / "frequencies.png")
    for m in measures:
        m.pop("power_k")
    write_json(out, "frequencies", {"experiment": "frequencies", "num_images": a.num_images,
                                    "measures": measures, "rows": rows, "seconds": elapsed()})
    print(format_table(measures, rows))
    print(f"wrote {out}/frequencies.json and frequencies.png in {elapsed():.1f} s")
    publish_figures(out, a.figures_dir, ["frequencies.png"])


def format_table(measures: list[dict], rows: list[dict]) -> str:
    """The DC's numbers per resolution, then one line per schedule and resolution (markdown)."""
    lines = ["| side | DC power | d E[mean^2] | DC share of power | DC / mean coefficient |",
             "|---|---|---|---|---|"]
    lines += [f"| {m['resolution']} | {m['dc_power']:.4g} | {m['dc_power_from_mean']:.4g} | {m['dc_share']:.3f} | "
              f"{m['dc_over_mean_coefficient']:.4g} |" for m in measures]
    lines += ["", "| schedule | side | SNR(T) of DC | of image mean | r^2 of mean | bands >= 1 | "
              "coefficients >= 1 | power showing through | DC buried from step |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hidden = "never" if r["dc_hidden_from_step"] is None else r["dc_hidden_from_step"]
        lines.append(f"| {r['name']} | {r['resolution']} | {r['dc_snr_T']:.3g} | {r['image_mean_snr_T']:.3g} | "
                     f"{r['image_mean_r2']:.3f} | {r['bands_above_1']} | {r['coefficients_above_1']} | "
                     f"{r['readable_share']:.3f} | {hidden} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
