"""Measure a problem set's bands: the solution's functions trained at the budget on three seeds, and
three mistakes planted in the solution, each trained and scored the way the grader does.

    python -m minidiff.course.set_bands [--set N] [--seeds 0 1 2] [--steps N] [--only MISTAKE]
                                        one JSON line a run, then a table

The planted mistakes (docs/exercises/problem_sets.md). Set 1: the loss regresses eps while the
sampler reads the output as v; the DDIM loop passes its index where the timestep belongs; q_sample
scales by the variances (a, 1 - a) instead of their square roots. Set 2: Algorithm 1 left out (the
"fixed" run keeps Stable Diffusion's schedule); guidance from cond (cond + w (cond - uncond)); the
loss regresses eps whatever `prediction` says, so the zero-SNR run's output is read as v.
"""

from __future__ import annotations

import argparse
import json
import math
import types

import torch

from . import set2, sets

MISTAKES = {
    "eps target with a v sampler": ("sets.S1_LOSS", "return ((model(x_t, t) - v) ** 2).mean()",
                                    "return ((model(x_t, t) - noise) ** 2).mean()"),
    "the loop's index for the timestep": ("sets.S1_SAMPLERS", "x0, eps = denoise(x, t)", "x0, eps = denoise(x, i)"),
    "a variance used as a std in q_sample": ("sets.S1_Q_SAMPLE", "alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise",
                                             "alpha_bar * x0 + (1 - alpha_bar) * noise"),
}
MISTAKES2 = {
    "no zero SNR": ("set2.S2_ZSNR", "    return new", "    return betas"),
    "guidance from cond": ("set2.S2_CFG", "guided = uncond + scale * (cond - uncond)", "guided = cond + scale * (cond - uncond)"),
    "eps target with zero SNR": ("set2.S2_COND_LOSS", 'goal = noise if prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0',
                                 "goal = noise"),
}
SET_MISTAKES = {1: MISTAKES, 2: MISTAKES2}
CELLS = {1: ("sets", ("S1_Q_SAMPLE", "S1_ALPHAS", "S1_LOSS", "S1_LOOP", "S1_SAMPLERS")),
         2: ("set2", ("S2_ZSNR", "S2_TIMESTEPS", "S2_COND_LOSS", "S2_CFG"))}


def solution(mistake: str | None = None, number: int = 1) -> dict:
    """The functions the solution's cells of set `number` define, with one planted mistake."""
    ns = {"torch": torch, "math": math}
    module, names = CELLS[number]
    planted = SET_MISTAKES[number].get(mistake) if mistake else None
    if mistake and planted is None:
        raise KeyError(f"set {number} has no planted mistake {mistake!r}")
    for name in names:
        code = getattr({"sets": sets, "set2": set2}[module], name)
        if planted and planted[0] == f"{module}.{name}":
            assert planted[1] in code, mistake
            code = code.replace(planted[1], planted[2])
        exec(code, ns)
    return {k: v for k, v in ns.items() if isinstance(v, types.FunctionType)}  # the cells' functions


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m minidiff.course.set_bands", description=__doc__.split("\n\n")[0])
    p.add_argument("--set", type=int, default=1, choices=sorted(SET_MISTAKES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, help="training steps (default: the set's budget)")
    p.add_argument("--mistakes", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--only", choices=sorted(m for ms in SET_MISTAKES.values() for m in ms),
                   help="run only this planted mistake (on the first seed)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ps = sets.SETS[args.set]
    training = ps.training
    steps = args.steps or training.BUDGET["steps"]
    measures = [part.measure for part in ps.parts if part.trained] + (["class_kl"] if args.set == 1 else
                                                                       ["brightness_ratio_fixed", "brightness_ratio_flawed",
                                                                        "accuracy_flawed", "fcd_flawed"])
    rows = []
    runs = [(None, s) for s in args.seeds] + ([(m, args.seeds[0]) for m in SET_MISTAKES[args.set]] if args.mistakes else [])
    if args.only:
        runs = [(args.only, args.seeds[0])]
    for mistake, seed in runs:
        fns = solution(mistake, args.set)
        r = training.train_and_draw(fns, steps=steps, seed=seed)
        row = dict(set=args.set, mistake=mistake, seed=seed, steps=steps,
                   **{m: round(float(r[m]), 4) for m in measures},
                   train_seconds=r["train_seconds"], sample_seconds=r["sample_seconds"])
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("| run | seed | " + " | ".join(measures) + " | training s |\n|---|---|" + "---|" * len(measures) + "---|")
    for row in rows:
        print(f"| {row['mistake'] or 'solution'} | {row['seed']} | " + " | ".join(f"{row[m]:.3f}" for m in measures)
              + f" | {row['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
