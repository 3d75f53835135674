"""Aranguri et al. meet Lin et al.: DDPM's alpha_bar as a VP interpolant, and DDIM with dilated timesteps.

The linear beta schedule (plain and rescaled to zero terminal SNR) seen as a VP interpolant, the
speciation window alpha_bar ~ 1 / Lambda where the mode is decided, and the Gaussian mixture at
d = 1e6 sampled by the real DDIM sampler with the exact x0 "network" and trailing, linspace or
dilated timesteps (`interpolants.dilated_timesteps`). On the zero-SNR schedule only the dilated
spacing recovers the mode weight p with few steps; on the plain schedule no spacing can, because
its last training input already leaks the mode.

    minidiff repro highdim-bridge            # about a minute
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..exact.interpolants import dilated_timesteps, interpolant_time, speciation_alpha_bar, speciation_timestep
from ..exact.models import GaussianMixture
from ..samplers import make_timesteps
from ..schedules import Schedule
from .common import publish_figures, pyplot, save_figure, write_json
from .highdim_common import highdim_parser, mixture_ddim, parse

FIGURE = "highdim_bridge.png"


def run(args) -> dict:
    """DDPM alpha_bar as a VP interpolant, the speciation window, and trailing vs linspace vs dilated with DDIM."""
    plt = pyplot()
    mixture = GaussianMixture(d=int(args.bridge_d))
    lam = mixture.m**2 * mixture.d
    result = {"d": mixture.d, "Lambda": lam, "schedules": {}}
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for zero_snr, ls in ((False, "-"), (True, "--")):
        schedule = Schedule.make(kind="linear", num_timesteps=1000, zero_snr=zero_snr)
        ab = schedule.alphas_cumprod
        key = "linear_zero_snr" if zero_snr else "linear"
        t_s = speciation_timestep(ab, lam)
        taus = interpolant_time(ab)
        axes[0].plot(taus.numpy(), ls=ls, color="k", label=f"tau(t), {key}")
        entry = {"speciation_timestep": t_s, "tau_start": taus[-1].item(), "runs": {}}
        for steps in args.bridge_steps:
            for spacing in ("trailing", "linspace", "dilated"):
                try:
                    feats = mixture_ddim(mixture, schedule, steps, spacing, n=args.samples_ddim, seed=args.seed,
                                         kappa=args.kappa)
                except ValueError as err:  # the dilated spacing refuses a schedule already past the window
                    entry["runs"][f"{spacing}_{steps}"] = {"error": str(err)}
                    continue
                entry["runs"][f"{spacing}_{steps}"] = asdict(feats)
                print(f"{key:16s} {spacing:9s} {steps:3d} steps: + mode {feats.high:.3f} (p {mixture.p}), "
                      f"spread {feats.low:.3f} (sigma {mixture.sigma})")
        result["schedules"][key] = entry
        if zero_snr:  # where each spacing puts 10 steps on the zero-SNR schedule
            for spacing, marker, color in (("trailing", "s", "tab:green"), ("linspace", "^", "tab:gray"),
                                           ("dilated", "o", "tab:purple")):
                tt = (dilated_timesteps(ab, 10, lam, args.kappa) if spacing == "dilated"
                      else make_timesteps(1000, 10, spacing))
                axes[0].plot(tt.numpy(), taus[tt].clamp(min=1e-5).numpy(), marker, color=color,
                             label=f"{spacing}, 10 steps", ms=6, alpha=0.8)
    tau_w = args.kappa * interpolant_time(torch.tensor([speciation_alpha_bar(lam)])).item()
    axes[0].axhline(tau_w, color="tab:purple", lw=0.8, label="window edge kappa tau(1/Lambda)")
    axes[0].set_yscale("log"), axes[0].set_ylim(1e-5, 1.5)
    axes[0].set_xlabel("training timestep t"), axes[0].set_ylabel("interpolant time tau (log)")
    axes[0].legend(fontsize=7), axes[0].set_title(f"DDPM linear schedule as a VP interpolant, Lambda={lam:.0e}")
    for ax, feature, target, title in ((axes[1], "high", mixture.p, "weight of + mode"),
                                       (axes[2], "low", mixture.sigma, "within-mode spread")):
        for key, entry in result["schedules"].items():
            for spacing, color in (("trailing", "tab:green"), ("linspace", "tab:gray"), ("dilated", "tab:purple")):
                pts = [(s, entry["runs"][f"{spacing}_{s}"][feature]) for s in args.bridge_steps
                       if "error" not in entry["runs"][f"{spacing}_{s}"]]
                if pts:
                    ax.plot(*zip(*pts), "o" + ("--" if "zero" in key else "-"), color=color, label=f"{spacing}, {key}")
        ax.axhline(target, color="k", lw=0.6)
        ax.set_xscale("log"), ax.set_xlabel("DDIM steps"), ax.set_title(f"{title} (d={mixture.d:.0e}, exact x0 model)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(args.out)
    save_figure(fig, out / FIGURE, dpi=80)
    write_json(out, "highdim_bridge", {"experiment": "highdim-bridge", "kappa": args.kappa, **result})
    print(f"wrote {out / FIGURE} and highdim_bridge.json")
    return result


def main(argv=None):
    p = highdim_parser("highdim-bridge", __doc__.split("\n\n")[0], path=False)
    p.add_argument("--bridge-d", type=float, default=1e6, help="dimension of the Gaussian mixture")
    p.add_argument("--bridge-steps", type=lambda s: [int(v) for v in s.split(",")], default=[4, 6, 10, 20, 50, 100],
                   help="comma-separated DDIM step counts")
    p.add_argument("--samples-ddim", type=int, default=20_000, help="samples per run")
    args = parse(p, argv)
    run(args)
    publish_figures(Path(args.out), args.figures_dir, [FIGURE])


if __name__ == "__main__":
    main()
