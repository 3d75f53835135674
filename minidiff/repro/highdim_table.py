"""Aranguri et al.'s headline: the smallest number of steps N* with both features right, against d.

For each dimension and each of the four setups (VP/VE x uniform/dilated), the smallest even N on a
grid growing by 2^(1/4) at which the weight of the + mode and the law inside a mode are both
within tolerance: the Gaussian mixture (exact in law, d = 1e2 to 1e8) and Curie-Weiss (full
d x 500 simulation, d = 100, 300, 1000). Uniform grids need N ~ sqrt(d); the dilated schedules
need about 30 (VP) and 50-60 (VE) steps whatever d.

    minidiff repro highdim-table             # about a minute on one CPU core
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from ..exact.models import CurieWeiss, GaussianMixture
from .common import publish_figures, pyplot, save_figure, write_json
from .highdim_common import (COLORS, PAPER_SETUPS, dims, highdim_parser, mixture_features_exact, paper_setups, parse,
                             run_curie_weiss, smallest_steps)

FIGURE = "highdim_table.png"


def run(args) -> dict:
    """The headline table: smallest N with both features within tolerance, per d and setup."""
    result = {"tolerance": {"mixture": {"weight_abs": args.tol_weight, "spread_rel": args.tol_spread},
                            "curie_weiss": {"weight_abs": args.cw_tol_weight, "minority_rel": args.cw_tol_minority}},
              "kappa": args.kappa, "path": args.path, "samples": {"mixture": "exact in law (mixture_features_exact)", "curie_weiss": args.cw_samples},
              "mixture": [], "curie_weiss": []}
    start = time.time()
    mix_dims, cw_dims = dims(args.dims), dims(args.cw_dims)
    setups = paper_setups(args)
    jobs = [("mixture", d, s) for d in mix_dims for s in setups] + [("curie_weiss", d, s) for d in cw_dims for s in setups]
    rows = {}
    for model_name, d, setup in tqdm(jobs, desc="table", disable=not args.progress):
        if model_name == "mixture":
            mixture = GaussianMixture(d=d)
            n_star, feats = smallest_steps(lambda n: mixture_features_exact(mixture, setup, n),
                                           args.tol_weight, args.tol_spread, args.max_steps)
        else:
            cw = CurieWeiss(d=d)
            n_star, feats = smallest_steps(lambda n: run_curie_weiss(cw, setup, n, n=args.cw_samples, seed=args.seed),
                                           args.cw_tol_weight, args.cw_tol_minority, args.cw_max_steps)
        row = rows.setdefault((model_name, d), {"d": d})
        row[setup.name] = n_star
        row[setup.name + "_features"] = asdict(feats)
    for (model_name, _), row in rows.items():
        result[model_name].append(row)
    result["seconds"] = round(time.time() - start, 1)
    out = Path(args.out)
    write_json(out, "highdim_table", {"experiment": "highdim-table", **result})
    print(format_table(result))
    print(f"wrote {out / 'highdim_table.json'} ({result['seconds']} s)")
    plot_table(result, out / FIGURE)
    return result


def format_table(result: dict) -> str:
    """Markdown table of N* per d and setup ("> max" where no N up to the cap passed)."""
    names = [s.name for s in PAPER_SETUPS]
    lines = []
    for model_name in ("mixture", "curie_weiss"):
        if not result[model_name]:
            continue
        lines.append(f"\n{model_name}: smallest even N with both features within tolerance "
                     f"({', '.join(f'{k} {v}' for k, v in result['tolerance'][model_name].items())})")
        lines.append("| d | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for row in result[model_name]:
            cells = [str(row[n]) if row[n] is not None else "> max" for n in names]
            lines.append(f"| {row['d']:.0e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_table(result: dict, path: Path) -> None:
    plt = pyplot()
    models = [m for m in ("mixture", "curie_weiss") if result[m]]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model_name in zip(axes[0], models):
        rows = result[model_name]
        dims = [r["d"] for r in rows]
        for setup in PAPER_SETUPS:
            pts = [(r["d"], r[setup.name]) for r in rows if r[setup.name] is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=COLORS[setup.name], label=setup.name)
        ref = [r["vp_uniform"] or r["ve_uniform"] for r in rows]
        if ref[0]:
            ax.plot(dims, [ref[0] * math.sqrt(d / dims[0]) for d in dims], "k:", lw=1, label="~ sqrt(d)")
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel("dimension d"), ax.set_ylabel("smallest N with both features right")
        ax.set_title(model_name.replace("_", "-")), ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    print(f"wrote {path}")


def main(argv=None):
    p = highdim_parser("highdim-table", __doc__.split("\n\n")[0])
    p.add_argument("--dims", default="1e2,1e3,1e4,1e5,1e6,1e7,1e8", help="comma-separated dimensions, mixture")
    p.add_argument("--cw-dims", default="100,300,1000", help="Curie-Weiss dimensions; '' for none")
    p.add_argument("--cw-samples", type=int, default=500, help="samples per run, Curie-Weiss")
    p.add_argument("--max-steps", type=int, default=200_000, help="largest N tried, mixture")
    p.add_argument("--cw-max-steps", type=int, default=2000, help="largest N tried, Curie-Weiss")
    p.add_argument("--tol-weight", type=float, default=0.03, help="|weight - p| tolerance, mixture")
    p.add_argument("--tol-spread", type=float, default=0.1, help="|spread / sigma - 1| tolerance")
    p.add_argument("--cw-tol-weight", type=float, default=0.06, help="|weight - W+| tolerance, Curie-Weiss")
    p.add_argument("--cw-tol-minority", type=float, default=0.25, help="|minority / target - 1| tolerance")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parse(p, argv)
    run(args)
    publish_figures(Path(args.out), args.figures_dir, [FIGURE])


if __name__ == "__main__":
    main()
