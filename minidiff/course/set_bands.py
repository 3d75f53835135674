"""Measure problem set 1's band: the solution's functions trained at the budget on three seeds, and
three mistakes planted in the solution, each trained and scored the way the grader does.

    python -m minidiff.course.set_bands [--seeds 0 1 2] [--steps N]     one JSON line a run, then a table

The planted mistakes (docs/exercises/problem_sets.md): the loss regresses eps while the sampler reads
the output as v; the DDIM loop passes its index where the timestep belongs (the sampler alone: its
model is the first seed's); q_sample scales by the variances (a, 1 - a) instead of their square roots.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from . import sets
from .set_training import BUDGET, train_and_draw

MISTAKES = {
    "eps target with a v sampler": ("sets.S1_LOSS", "return ((model(x_t, t) - v) ** 2).mean()",
                                    "return ((model(x_t, t) - noise) ** 2).mean()"),
    "the loop's index for the timestep": ("sets.S1_SAMPLERS", "x0, eps = denoise(x, t)", "x0, eps = denoise(x, i)"),
    "a variance used as a std in q_sample": ("sets.S1_Q_SAMPLE", "alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise",
                                             "alpha_bar * x0 + (1 - alpha_bar) * noise"),
}


def solution(mistake: str | None = None) -> dict:
    """The solution's functions, with one planted mistake."""
    ns = {"torch": torch, "math": math}
    for name in ("S1_Q_SAMPLE", "S1_ALPHAS", "S1_LOSS", "S1_LOOP", "S1_SAMPLERS"):
        code = getattr(sets, name)
        if mistake and MISTAKES[mistake][0] == f"sets.{name}":
            assert MISTAKES[mistake][1] in code, mistake
            code = code.replace(MISTAKES[mistake][1], MISTAKES[mistake][2])
        exec(code, ns)
    return {k: ns[k] for k in ("q_sample", "v_loss", "train_loop", "ddim_sample")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m minidiff.course.set_bands", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=BUDGET["steps"])
    p.add_argument("--mistakes", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    runs = [(None, s) for s in args.seeds] + ([(m, args.seeds[0]) for m in MISTAKES] if args.mistakes else [])
    for mistake, seed in runs:
        fns = solution(mistake)
        r = train_and_draw(fns, steps=args.steps, seed=seed)
        row = dict(mistake=mistake, seed=seed, steps=args.steps, fcd=round(r["fcd"], 2), class_kl=round(r["class_kl"], 3),
                   train_seconds=r["train_seconds"], sample_seconds=r["sample_seconds"])
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("| run | seed | FCD | class KL | training s |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['mistake'] or 'solution'} | {row['seed']} | {row['fcd']:.2f} | {row['class_kl']:.3f} | {row['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
