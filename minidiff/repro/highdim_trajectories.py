"""Aranguri et al.: which mode each sample commits to, and when, for VP/VE x uniform/dilated.

Four columns (VP uniform, VP dilated, VE uniform, VE dilated), N = 16 steps. Rows 1 and 3: the
mode each sample is heading to (E[s | X] for the Gaussian mixture at d = 1e4, 2 P(+ | X) - 1 for
Curie-Weiss at d = 1000); rows 2 and 4: single coordinates of one sample over their exact
standard deviation at tau, so that VP and VE share a scale. Uniform VP commits every sample to
the majority mode in its first step; uniform VE lands every sample on its mode's centre.

    minidiff repro highdim-trajectories      # a few seconds
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..exact.interpolants import Interpolant, make_interpolant
from ..exact.models import CurieWeiss, GaussianMixture, euler_mixture_reduced, mixture_noise
from .common import publish_figures, pyplot, save_figure, write_json
from .highdim_common import COLORS, highdim_parser, paper_setups, parse, run_curie_weiss, run_mixture

FIGURE = "highdim_trajectories.png"


def _committed(posterior_sign: Callable, interp: Interpolant, taus: torch.Tensor, xs: list, final_mean: torch.Tensor):
    """E[s | X_k] at each grid point before the last (which mode the sample is heading to), and the
    sign of the final coordinate mean at tau = 1, where the posterior is a step function."""
    rows = [posterior_sign(x, *interp.signal_noise(taus[k].item())) for k, x in enumerate(xs[:-1])]
    rows.append(torch.sign(final_mean))
    return torch.stack(rows)


def run(args) -> dict:
    """Which mode each sample commits to, and single coordinates, against t for the four setups."""
    plt = pyplot()
    d, steps, n_show = int(args.d), args.steps, 40
    mixture = GaussianMixture(d=d)
    cw = CurieWeiss(d=args.cw_d)
    fig, axes = plt.subplots(4, 4, figsize=(16, 13), sharex=True)
    summary = {}
    t = torch.linspace(0, 1, steps + 1)
    for col, setup in enumerate(paper_setups(args)):
        interp = make_interpolant(setup.kind, d, setup.path)
        taus = setup.taus(d, steps)
        # the exact marginal std of one coordinate at tau: sqrt(c^2 alpha^2 + beta^2 E[a_i^2]); dividing
        # by it puts VP and VE on one scale (VE starts at std sqrt(d))
        def scale(second_moment, c=interp.c):
            return torch.tensor([math.hypot(c * interp.alpha(v), v * math.sqrt(second_moment)) for v in taus.tolist()])

        # mixture, via the reduction; coordinates x_i = u / sqrt(d) + G c w_i, w_i ~ N(0, 1 - 1/d)
        gen = torch.Generator().manual_seed(args.seed)
        u0, _ = mixture_noise(n_show, d, interp.c, gen)
        us, gains = euler_mixture_reduced(interp, mixture, taus, u0, return_trajectory=True)
        lin_sign = lambda u, signal, noise: torch.tanh(mixture.h + mixture.posterior_coefficients(signal, noise)[2] * u)
        committed = _committed(lin_sign, interp, taus, list(us), us[-1])
        feats = run_mixture(mixture, setup, steps, n=args.samples, seed=args.seed)
        ax = axes[0, col]
        ax.plot(t, committed.numpy(), color=COLORS[setup.name], alpha=0.35, lw=1)
        ax.set_ylim(-1.1, 1.1)
        ax.set_title(f"{setup.name}, N={steps}. Mixture d={d:.0e}:\n+ mode {feats.high:.2f} (p={mixture.p}), "
                     f"spread {feats.low:.3f} (sigma={mixture.sigma})", fontsize=9)
        # one sample, 4 coordinates whose starting noise sits at the quartiles and tails of N(0, 1)
        w = torch.tensor([-1.5, -0.67, 0.67, 1.5], dtype=torch.float64) * math.sqrt(1 - 1 / d)
        coords = us[:, :1] / math.sqrt(d) + gains[:, None] * interp.c * w[None, :]
        axes[1, col].plot(t, (coords / scale(mixture.m**2 + mixture.sigma**2)[:, None]).numpy(), lw=1.2)
        axes[1, col].set_ylim(-3, 3)
        # Curie-Weiss, full simulation
        feats_cw, traj = run_curie_weiss(cw, setup, steps, n=200, seed=args.seed, return_trajectory=True)
        state = lambda x, signal, noise: 2 * cw.posterior_plus(x, signal, noise) - 1
        committed_cw = _committed(state, interp_cw := make_interpolant(setup.kind, cw.d, setup.path),
                                  setup.taus(cw.d, steps), [x[:n_show] for x in traj], traj[-1][:n_show].mean(-1))
        axes[2, col].plot(t, committed_cw.numpy(), color=COLORS[setup.name], alpha=0.35, lw=1)
        axes[2, col].set_ylim(-1.1, 1.1)
        axes[2, col].set_title(f"Curie-Weiss d={cw.d}: + state {feats_cw.high:.2f} (W+ {cw.weight_plus:.2f}),\n"
                               f"minority {feats_cw.low:.3f} ({cw.minority_fraction:.3f}), mean |x_i| {feats_cw.abs_mean:.3f}",
                               fontsize=9)
        # 3 spins of sample 0, and the 3 whose starting noise points most against its final state:
        # a correct sampler turns these into the minority spins
        against = (traj[0][0] * torch.sign(traj[-1][0].sum())).argsort()[:3]
        idx = torch.cat([torch.arange(3), against])
        spins = torch.stack([x[0, idx] for x in traj]).double()
        cw_taus = setup.taus(cw.d, steps).tolist()
        spin_scale = torch.tensor([math.hypot(interp_cw.c * interp_cw.alpha(v), v) for v in cw_taus])
        axes[3, col].plot(t, (spins / spin_scale[:, None]).numpy(), lw=1.2)
        axes[3, col].set_ylim(-3, 3)
        axes[3, col].set_xlabel("t (sampler clock; tau = tau(t))")
        summary[setup.name] = {"mixture": asdict(feats), "curie_weiss": asdict(feats_cw)}
    for row, label in enumerate(["mixture: committed mode\nE[s | X]", "mixture: 4 coordinates x_i of a sample\n/ exact std at tau",
                                 "Curie-Weiss: committed state\n2 P(+ | X) - 1", "Curie-Weiss: 6 spins of a sample\n(3 most against its state) / exact std"]):
        axes[row, 0].set_ylabel(label)
    fig.tight_layout()
    out = Path(args.out)
    save_figure(fig, out / FIGURE, dpi=80)
    write_json(out, "highdim_trajectories", {"experiment": "highdim-trajectories", "d": d, "cw_d": cw.d, "steps": steps,
                                             "kappa": args.kappa, "path": args.path, "setups": summary})
    print(f"wrote {out / FIGURE} and highdim_trajectories.json")
    for name, s in summary.items():
        m, c = s["mixture"], s["curie_weiss"]
        print(f"{name:11s} mixture: + mode {m['high']:.3f}/{m['high_target']:.3f} spread {m['low']:.3f}/{m['low_target']:.3f}"
              f" | CW: + state {c['high']:.3f}/{c['high_target']:.3f} minority {c['low']:.4f}/{c['low_target']:.4f} |x| {c['abs_mean']:.3f}")
    return summary


def main(argv=None):
    p = highdim_parser("highdim-trajectories", __doc__.split("\n\n")[0])
    p.add_argument("--d", type=float, default=1e4, help="dimension of the Gaussian mixture")
    p.add_argument("--cw-d", type=int, default=1000, help="Curie-Weiss dimension")
    p.add_argument("--steps", type=int, default=16, help="Euler steps (even)")
    p.add_argument("--samples", type=int, default=4000, help="samples per setup for the mixture's features")
    args = parse(p, argv)
    run(args)
    publish_figures(Path(args.out), args.figures_dir, [FIGURE])


if __name__ == "__main__":
    main()
