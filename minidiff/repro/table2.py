"""Lin et al. Table 2: the timesteps each spacing visits (T = 1000, 10 steps, counted from 1).

    leading   1, 101, 201, ..., 901                       (DDIM, PNDM; SD tooling adds steps_offset=1)
    linspace  1, 112, 223, 334, 445, 556, 667, 778, 889, 1000   (iDDPM)
    trailing  100, 200, ..., 1000                         (DPM-Solver)

minidiff's timesteps are 0-indexed, so `samplers.make_timesteps` returns these minus one (in
descending order). Only trailing starts at the last training step for every number of steps; the
figure shows where each spacing starts and how much signal the model expects there, on Stable
Diffusion's schedule with and without the rescale to zero SNR.

    minidiff repro table2        # under a second
"""

from __future__ import annotations

from pathlib import Path

from ..samplers import SPACINGS, make_timesteps
from ..schedules import Schedule
from .common import experiment_parser, publish_figures, pyplot, save_figure, timer, write_json

PAPER = {  # Lin et al. Table 2, 1-indexed, ascending
    "leading": [1, 101, 201, 301, 401, 501, 601, 701, 801, 901],
    "linspace": [1, 112, 223, 334, 445, 556, 667, 778, 889, 1000],
    "trailing": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
}
STEP_COUNTS = (5, 10, 25, 50)


def table(num_timesteps: int = 1000, num_steps: int = 10) -> list[dict]:
    """Each spacing's timesteps as the paper counts them (1-indexed, ascending), next to the paper's."""
    rows = []
    for spacing in SPACINGS:
        ts = make_timesteps(num_timesteps, num_steps, spacing)
        paper_style = sorted(int(t) + 1 for t in ts)
        rows.append({"spacing": spacing, "timesteps_0_indexed": [int(t) for t in ts],
                     "timesteps_1_indexed": paper_style, "paper": PAPER[spacing],
                     "matches_paper": paper_style == PAPER[spacing]})
    sd = make_timesteps(num_timesteps, num_steps, "leading", steps_offset=1)
    rows.append({"spacing": "leading, steps_offset=1 (Stable Diffusion tooling)",
                 "timesteps_0_indexed": [int(t) for t in sd], "timesteps_1_indexed": sorted(int(t) + 1 for t in sd)})
    return rows


def first_step(num_timesteps: int = 1000) -> list[dict]:
    """Where sampling starts for each spacing and step count, and the SNR the model expects there.

    Sampling always starts from pure noise, which matches the training input only at zero SNR.
    """
    schedules = {"sd": Schedule.make("scaled_linear"), "sd_zero_snr": Schedule.make("scaled_linear", zero_snr=True)}
    rows = []
    for steps in STEP_COUNTS:
        for spacing in SPACINGS:
            t = int(make_timesteps(num_timesteps, steps, spacing)[0])
            row = {"steps": steps, "spacing": spacing, "first_t": t}
            for name, s in schedules.items():
                row[f"sqrt_alpha_bar_first_{name}"] = float(s.alphas_cumprod[t].sqrt())
                row[f"snr_first_{name}"] = float(s.snr[t])
            rows.append(row)
    return rows


def plot(path: Path, num_timesteps: int = 1000) -> None:
    """Left: the timesteps of each spacing for 5 and 10 steps. Right: sqrt(alpha_bar) at the first
    sampled step against the number of steps (0 is what the pure-noise start assumes)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1.4, 1]})
    colors = {"leading": "tab:red", "linspace": "tab:orange", "trailing": "tab:blue"}
    y = 0
    labels = []
    for steps in (5, 10):
        for spacing in SPACINGS:
            ts = make_timesteps(num_timesteps, steps, spacing)
            axes[0].scatter(ts, [y] * len(ts), color=colors[spacing], s=18)
            labels.append(f"{spacing}, {steps} steps")
            y += 1
    axes[0].axvline(num_timesteps - 1, color="k", lw=0.8, ls="--")
    axes[0].text(num_timesteps - 5, y - 0.4, "T-1", ha="right", fontsize=8)
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0].set_xlabel("timestep (0-indexed)")
    axes[0].set_title("timesteps visited (Table 2)")
    sd = Schedule.make("scaled_linear")
    zsnr = Schedule.make("scaled_linear", zero_snr=True)
    counts = list(range(2, 51))
    for spacing in ("leading", "trailing"):  # linspace starts at T-1 too: its curve is trailing's
        name = "trailing and linspace" if spacing == "trailing" else spacing
        first = [int(make_timesteps(num_timesteps, s, spacing)[0]) for s in counts]
        axes[1].plot(counts, [float(sd.alphas_cumprod[t].sqrt()) for t in first], color=colors[spacing],
                     label=f"{name}, SD schedule")
        axes[1].plot(counts, [float(zsnr.alphas_cumprod[t].sqrt()) for t in first], "--", color=colors[spacing],
                     label=f"{name}, zero SNR")
    axes[1].set_xlabel("number of sampling steps")
    axes[1].set_ylabel("sqrt(alpha_bar) at the first step")
    axes[1].set_title("signal the model expects where sampling starts\n(the sampler feeds it pure noise: 0)",
                      fontsize=9)
    axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def format_table(rows: list[dict]) -> str:
    lines = ["| spacing | timesteps (1-indexed, as in the paper) | = paper |", "|---|---|---|"]
    for r in rows:
        ok = {True: "yes", False: "NO"}.get(r.get("matches_paper"), "")
        lines.append(f"| {r['spacing']} | {', '.join(map(str, r['timesteps_1_indexed']))} | {ok} |")
    return "\n".join(lines)


def main(argv=None):
    a = experiment_parser("table2", __doc__.split("\n\n")[0], trained=False).parse_args(argv)
    elapsed = timer()
    out = Path(a.out)
    rows, starts = table(), first_step()
    plot(out / "spacings.png")
    write_json(out, "table2", {"experiment": "table2", "num_timesteps": 1000, "num_steps": 10, "rows": rows,
                               "first_step": starts, "seconds": elapsed()})
    print(format_table(rows))
    print("\nfirst sampled step, sqrt(alpha_bar) there on SD's schedule / zero SNR:")
    for r in starts:
        print(f"  {r['steps']:3d} steps {r['spacing']:9s} t = {r['first_t']:4d}: "
              f"{r['sqrt_alpha_bar_first_sd']:.4f} / {r['sqrt_alpha_bar_first_sd_zero_snr']:.4f}")
    print(f"wrote {out}/table2.json and spacings.png")
    publish_figures(out, a.figures_dir, ["spacings.png"])


if __name__ == "__main__":
    main()
