"""Lin et al. Table 1: the terminal SNR of common schedules, and what Algorithm 1 does to them.

    schedule          SNR(T)          sqrt(alpha_bar_T)
    linear            4.035993e-05    0.006353
    cosine            2.428735e-09    4.928220e-05
    Stable Diffusion  0.004682        0.068265

None of them is zero, so the last training input x_T = sqrt(ab_T) x0 + sqrt(1 - ab_T) eps still
holds some of the image. The cosine row is the value computed in float32 (betas and their
cumulative product, as common tooling stores them); minidiff keeps schedules in float64, which
gives 2.428767e-09 (relative difference 1.3e-5). Both are printed. The figure shows sqrt(alpha_bar)
and log SNR of the three schedules before and after the rescale to zero terminal SNR.

    minidiff repro table1        # under a second
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..schedules import BETA_SCHEDULES, alphas_cumprod, log_snr, make_betas, rescale_zero_terminal_snr, snr
from .common import experiment_parser, publish_figures, pyplot, save_figure, timer, write_json

PAPER = {  # Lin et al. Table 1: (SNR(T), sqrt(alpha_bar_T))
    "linear": (4.035993e-05, 0.006353),
    "cosine": (2.428735e-09, 4.928220e-05),
    "scaled_linear": (0.004682, 0.068265),
}
NAMES = {"linear": "linear", "cosine": "cosine", "scaled_linear": "Stable Diffusion"}


def terminal(alpha_bar: torch.Tensor) -> tuple[float, float]:
    """(SNR(T), sqrt(alpha_bar_T)) of a schedule: its last entry."""
    return float(snr(alpha_bar)[-1]), float(alpha_bar[-1].sqrt())


def table(num_timesteps: int = 1000) -> list[dict]:
    """One row per schedule: terminal SNR in float64, with float32 betas, the paper's, and after Algorithm 1."""
    rows = []
    for kind in BETA_SCHEDULES:
        betas = make_betas(kind, num_timesteps)
        snr64, sab64 = terminal(alphas_cumprod(betas))
        # betas, 1 - betas and their cumulative product in float32, as common tooling stores them:
        # this gives the paper's cosine row to every printed digit
        snr32, sab32 = terminal(torch.cumprod(1 - betas.float(), dim=0).double())
        rescaled = rescale_zero_terminal_snr(betas)
        snr_z, sab_z = terminal(alphas_cumprod(rescaled))
        paper_snr, paper_sab = PAPER[kind]
        rows.append({
            "schedule": kind, "name": NAMES[kind],
            "snr_T": snr64, "sqrt_alpha_bar_T": sab64,
            "snr_T_float32_betas": snr32, "sqrt_alpha_bar_T_float32_betas": sab32,
            "paper_snr_T": paper_snr, "paper_sqrt_alpha_bar_T": paper_sab,
            "rel_err_snr_T": abs(snr64 - paper_snr) / paper_snr,
            "rel_err_snr_T_float32_betas": abs(snr32 - paper_snr) / paper_snr,
            "rescaled_snr_T": snr_z, "rescaled_sqrt_alpha_bar_T": sab_z,
            "rescaled_last_beta": float(rescaled[-1]),
            "rescaled_first_beta_rel_change": abs(float(rescaled[0] / betas[0]) - 1),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| schedule | SNR(T) | sqrt(alpha_bar_T) | paper SNR(T) | paper sqrt(alpha_bar_T) | SNR(T) after Alg. 1 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['snr_T']:.6e} | {r['sqrt_alpha_bar_T']:.6g} | {r['paper_snr_T']:.6e} | "
                     f"{r['paper_sqrt_alpha_bar_T']:.6g} | {r['rescaled_snr_T']:g} |")
    return "\n".join(lines)


def plot_curves(path: Path, num_timesteps: int = 1000, zoom: int = 60) -> None:
    """sqrt(alpha_bar), log SNR, and log SNR over the last `zoom` steps, before (solid) and after
    (dashed) the rescale. At zero SNR log SNR is -inf at the last step: the curve dives off the axis."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    t = torch.arange(num_timesteps)
    colors = {"linear": "tab:blue", "cosine": "tab:green", "scaled_linear": "tab:red"}
    for kind in BETA_SCHEDULES:
        betas = make_betas(kind, num_timesteps)
        for b, ls, suffix in ((betas, "-", ""), (rescale_zero_terminal_snr(betas), "--", ", zero SNR")):
            ab = alphas_cumprod(b)
            logsnr = log_snr(ab)
            label = NAMES[kind] + suffix
            axes[0].plot(t, ab.sqrt(), ls, color=colors[kind], label=label)
            axes[1].plot(t, logsnr, ls, color=colors[kind], label=label)
            axes[2].plot(t[-zoom:], logsnr[-zoom:], ls, color=colors[kind], marker="." if ls == "--" else None,
                         label=label)
    axes[0].set_title("sqrt(alpha_bar_t): the share of x0 in x_t")
    axes[1].set_title("log SNR(t)")
    axes[2].set_title(f"log SNR, last {zoom} steps (zero SNR: -inf at t = T-1)")
    axes[1].set_ylim(-22, 12)
    axes[2].set_ylim(-22, 0)
    for ax in axes:
        ax.set_xlabel("timestep t (0-indexed)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    a = experiment_parser("table1", __doc__.split("\n\n")[0], trained=False).parse_args(argv)
    elapsed = timer()
    out = Path(a.out)
    rows = table()
    plot_curves(out / "schedules_snr.png")
    write_json(out, "table1", {"experiment": "table1", "num_timesteps": 1000, "rows": rows, "seconds": elapsed()})
    print(format_table(rows))
    cos = next(r for r in rows if r["schedule"] == "cosine")
    print(f"\ncosine with float32 betas: SNR(T) = {cos['snr_T_float32_betas']:.6e}, "
          f"sqrt(alpha_bar_T) = {cos['sqrt_alpha_bar_T_float32_betas']:.6e} (the paper's digits)")
    print(f"wrote {out}/table1.json and schedules_snr.png")
    publish_figures(out, a.figures_dir, ["schedules_snr.png"])


if __name__ == "__main__":
    main()
