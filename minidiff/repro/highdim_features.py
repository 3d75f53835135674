"""Aranguri et al.: both features against the number of steps N, at several d.

The weight of the + mode (target p = 0.8) and the within-mode spread (target sigma = 0.5) of the
Gaussian mixture, computed exactly in law (`mixture_features_exact`), for VP and VE with uniform
and dilated steps at d = 1e2, 1e4, 1e6: the uniform curves move right like sqrt(d), the dilated
ones lie on top of each other.

    minidiff repro highdim-features          # a few seconds
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..exact.interpolants import INTERPOLANTS
from ..exact.models import GaussianMixture
from .common import publish_figures, pyplot, save_figure, write_json
from .highdim_common import COLORS, dims, highdim_parser, mixture_features_exact, paper_setups, parse, step_candidates

FIGURE = "highdim_features.png"


def run(args) -> dict:
    """Both features against N for each setup at several d (mixture via the reduction)."""
    plt = pyplot()
    dimensions = dims(args.dims)
    grid = step_candidates(args.max_steps)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    out = {"steps": grid, "dims": dimensions, "curves": {}}
    styles = ["-", "--", ":", "-."]
    for di, d in enumerate(dimensions):
        mixture = GaussianMixture(d=d)
        for setup in paper_setups(args):
            feats = [mixture_features_exact(mixture, setup, n) for n in grid]
            out["curves"][f"{setup.name}_d{d}"] = [asdict(f) for f in feats]
            col = 0 if setup.kind == "vp" else 1
            kw = dict(color=COLORS[setup.name], ls=styles[di % 4], label=f"{setup.schedule}, d={d:.0e}")
            axes[0, col].plot(grid, [f.high for f in feats], **kw)
            axes[1, col].plot(grid, [f.low for f in feats], **kw)
    for col, kind in enumerate(INTERPOLANTS):
        axes[0, col].axhline(0.8, color="k", lw=0.6)
        axes[1, col].axhline(0.5, color="k", lw=0.6)
        axes[0, col].set_title(f"{kind.upper()}: weight of the + mode (target p = 0.8)")
        axes[1, col].set_title(f"{kind.upper()}: within-mode spread (target sigma = 0.5)")
        axes[1, col].set_xlabel("number of Euler steps N")
        for row in range(2):
            axes[row, col].set_xscale("log")
        axes[0, col].legend(fontsize=7)
    fig.tight_layout()
    folder = Path(args.out)
    save_figure(fig, folder / FIGURE, dpi=80)
    write_json(folder, "highdim_features", {"experiment": "highdim-features", "kappa": args.kappa, "path": args.path, **out})
    print(f"wrote {folder / FIGURE} and highdim_features.json")
    return out


def main(argv=None):
    p = highdim_parser("highdim-features", __doc__.split("\n\n")[0], seed=False)
    p.add_argument("--dims", default="1e2,1e4,1e6", help="comma-separated dimensions")
    p.add_argument("--max-steps", type=int, default=4000, help="largest N on the curves")
    args = parse(p, argv)
    run(args)
    publish_figures(Path(args.out), args.figures_dir, [FIGURE])


if __name__ == "__main__":
    main()
