"""Flow matching is diffusion with another path: the rectified flow beside Table 1's schedules, and the identity, exactly.

The rectified flow x = (1 - s) x0 + s eps is a VP state scaled by sqrt((1 - s)^2 + s^2), so it is a
schedule like the others, alpha_bar = (1 - s)^2 / ((1 - s)^2 + s^2), with zero terminal SNR by
construction, and its velocity u = eps - x0 is one more parameterisation of the same (x0, eps)
(minidiff/objectives.py, docs/09_flow_matching.md). This experiment shows both facts with exact
denoisers, so that nothing but arithmetic is left:

- the four optimal predictions (eps, x0, v, u) give one (x0, eps) at every state (eps everywhere
  but the zero-SNR step, where it says nothing): a table of the largest difference, for Gaussian
  data and for Aranguri et al.'s two-mode mixture;
- Euler on the flow's ODE and deterministic DDIM on the VP view visit the same states, step for
  step (10, 25 and 50 steps; float64), on the flow schedule and on the zero-SNR linear one;
- a figure of the flow's log-SNR and alpha_bar against the schedules of Lin et al.'s Table 1.

    minidiff repro flow        # a few seconds
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..exact.analytic import GaussianDenoiser
from ..exact.models import GaussianMixture, PosteriorMeanModel
from ..objectives import PREDICTIONS, extract, from_x0_eps, to_x0_eps
from ..samplers import sample
from ..schedules import BETA_SCHEDULES, Schedule, flow_times
from .common import experiment_parser, publish_figures, pyplot, save_figure, timer, write_json

STEPS = (10, 25, 50)
NAMES = {"linear": "linear", "cosine": "cosine", "scaled_linear": "Stable Diffusion", "flow": "rectified flow"}


class Predicting:
    """An exact x0 model (E[x0 | x_t]) answering in another parameterisation: eps, x0, v or u."""

    def __init__(self, x0_model, schedule: Schedule, prediction: str):
        self.x0_model, self.schedule, self.prediction = x0_model, schedule, prediction

    def __call__(self, x, t, y=None):
        ab = extract(self.schedule.alphas_cumprod, t, x)
        x0 = self.x0_model(x, t)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # every t a sampler visits has alpha_bar < 1
        return from_x0_eps(self.prediction, x0, eps, ab)


def data_models(schedule: Schedule, seed: int = 0) -> dict:
    """The two exact x0 models on `schedule`: Gaussian images [3, 8, 8], the mixture in d = 256."""
    g = torch.Generator().manual_seed(seed)
    mean = 0.5 * torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    var = 0.05 + torch.rand(3, 8, 8, generator=g, dtype=torch.float64)
    return {"Gaussian": (GaussianDenoiser(mean, var=var, schedule=schedule, prediction="x0"), (3, 8, 8)),
            "two-mode mixture": (PosteriorMeanModel(GaussianMixture(d=256), schedule.alphas_cumprod), (256,))}


def identity_rows(seed: int = 0) -> list[dict]:
    """For each data model and schedule: the largest difference of (x0, eps) between the four
    predictions at random states, and between Euler and DDIM along whole trajectories."""
    rows = []
    for schedule_name, schedule in (("flow", Schedule.make("flow")), ("linear, zero SNR", Schedule.make("linear", zero_snr=True))):
        for data_name, (x0_model, shape) in data_models(schedule, seed).items():
            g = torch.Generator().manual_seed(seed + 1)
            x = torch.randn(8, *shape, generator=g, dtype=torch.float64)
            t = torch.tensor([999, 998, 900, 700, 500, 300, 100, 0])
            ab = extract(schedule.alphas_cumprod, t, x)
            reference = to_x0_eps("x0", Predicting(x0_model, schedule, "x0")(x, t), x, ab)
            predictions = 0.0
            for p in PREDICTIONS:
                rows_ok = t < 999 if p == "eps" else torch.ones_like(t, dtype=torch.bool)  # eps says nothing at zero SNR
                got = to_x0_eps(p, Predicting(x0_model, schedule, p)(x[rows_ok], t[rows_ok]), x[rows_ok], ab[rows_ok])
                predictions = max(predictions, *((g - r[rows_ok]).abs().max().item() for g, r in zip(got, reference)))
            row = {"schedule": schedule_name, "data": data_name, "predictions_max_diff": predictions}
            u_model = Predicting(x0_model, schedule, "u")
            x_T = torch.randn(16, *shape, generator=g, dtype=torch.float64)
            for steps in STEPS:
                runs = [sample(u_model, x_T.shape, schedule, prediction="u", steps=steps, sampler=name, x_T=x_T,
                               dtype=torch.float64, return_trajectory=True, progress=False).xs
                        for name in ("euler", "ddim")]
                row[f"euler_vs_ddim_{steps}"] = max((a - b).abs().max().item() for a, b in zip(*runs))
            rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    head = "| schedule | data | eps, x0, v, u: largest difference of (x0, eps) | " + \
        " | ".join(f"Euler vs DDIM, {s} steps" for s in STEPS) + " |"
    lines = [head, "|" + "---|" * (3 + len(STEPS))]
    for r in rows:
        lines.append(f"| {r['schedule']} | {r['data']} | {r['predictions_max_diff']:.1e} | "
                     + " | ".join(f"{r[f'euler_vs_ddim_{s}']:.1e}" for s in STEPS) + " |")
    return "\n".join(lines)


def plot_paths(path: Path, num_timesteps: int = 1000) -> None:
    """log SNR and alpha_bar against t / T: the flow beside Table 1's schedules, before (solid) and
    after (dashed) Lin et al.'s rescale; the flow needs none (its end is exactly 0)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    x = (torch.arange(num_timesteps) + 1) / num_timesteps
    colors = {"linear": "tab:blue", "cosine": "tab:green", "scaled_linear": "tab:red", "flow": "black"}
    for kind in (*BETA_SCHEDULES, "flow"):
        variants = [(Schedule.make(kind), "-", "")]
        if kind != "flow":
            variants.append((Schedule.make(kind, zero_snr=True), "--", ", zero SNR"))
        for schedule, ls, suffix in variants:
            label = NAMES[kind] + suffix
            axes[0].plot(x, schedule.log_snr.clamp(min=-25), ls, color=colors[kind], label=label,
                         linewidth=2.2 if kind == "flow" else 1.2)
            axes[1].plot(x, schedule.alphas_cumprod, ls, color=colors[kind], label=label,
                         linewidth=2.2 if kind == "flow" else 1.2)
    s = flow_times(num_timesteps)
    axes[1].plot(s[::50], ((1 - s) ** 2 / ((1 - s) ** 2 + s**2))[::50], "o", color="black", markersize=3,
                 label="(1 - s)^2 / ((1 - s)^2 + s^2)")
    axes[0].set_title("log SNR (the zero-SNR ends dive to -inf)")
    axes[1].set_title("alpha_bar: the share of x0's variance in x_t")
    axes[0].set_ylim(-25, 16)
    for ax in axes:
        ax.set_xlabel("t / T (for the flow: its time s)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    a = experiment_parser("flow", __doc__.split("\n\n")[0], trained=False).parse_args(argv)
    elapsed = timer()
    out = Path(a.out)
    rows = identity_rows()
    plot_paths(out / "flow_snr.png")
    write_json(out, "flow", {"experiment": "flow", "steps": list(STEPS), "rows": rows, "seconds": elapsed()})
    print(format_rows(rows))
    print(f"wrote {out}/flow.json and flow_snr.png")
    publish_figures(out, a.figures_dir, ["flow_snr.png"])
