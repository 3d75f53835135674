"""EMA lengths side by side: one training run, several EMA decays, each scored by what it draws.

    python benchmarks/ema_lengths.py --seed 0 --steps 6300 --decays 0.98 0.995 0.998 0.999
    python benchmarks/ema_lengths.py --seed 1 --steps 6300 --decays 0.98 0.995 --out runs/ema
    python benchmarks/ema_lengths.py --seed 1 --steps 2000 --decays 0.995 0.99 --shares 0.0333

The EMA never feeds back into training: the live weights, the optimiser and every random stream
are the same whatever decay is averaged. So one run can carry several averages at once, and the
comparison between them is free of the run-to-run variation that two separate runs would add
(the brightness of a short run varies between runs more than most recipe changes move it). The
run is `minidiff.training.train` with the dataset's recipe, stopped after `--steps` steps (not by the clock,
so the result does not depend on the machine's speed); its own EMA is the first of `--decays`, and
each further decay is kept beside it and saved as `checkpoint-ema{decay}.pt` (the run's
checkpoint with those averaged weights; `minidiff sample` reads it like any other).
`--shares` adds power EMAs (minidiff.training.ema: about that share of the steps so far), saved as
`checkpoint-ema-share{share}.pt`.
Then `--num-samples` samples of every average are drawn from the same starting noise with the
report's settings and scored by `minidiff.evaluation.metrics`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402

from minidiff.evaluation import metrics  # noqa: E402
from minidiff.training import runtime, train as T  # noqa: E402
from minidiff.training.cli import HelpFormatter  # noqa: E402
from minidiff.training.ema import EMA  # noqa: E402
from minidiff.training.sample import generate, load_run  # noqa: E402
from quality import parse_sets  # noqa: E402 (benchmarks/quality.py: --set FIELD=VALUE, the same syntax)


def ema_with_companions(extra: list[float], shares: list[float] = ()):
    """An EMA class that also keeps an average for each decay in `extra` and each power-EMA share
    in `shares` (`.companions`, keyed by the decay or by "share{s}"), updated from the same live
    weights at the same steps, with the same warm-up."""

    class Companions(EMA):
        def __init__(self, model, decay, warmup=True, share=0.0):
            super().__init__(model, decay, warmup, share)
            self.companions = {d: EMA(model, d, warmup) for d in extra}
            self.companions.update({f"share{s:g}": EMA(model, 0.0, share=s) for s in shares})

        def update(self, model):
            super().update(model)
            for ema in self.companions.values():
                ema.update(model)

    return Companions


def train_with_decays(cfg: T.TrainConfig, decays: list[float], shares: list[float] = ()) -> dict:
    """Train `cfg` with EMA decay decays[0] and keep the others (and the power EMAs of `shares`)
    beside it; returns {decay or "share{s}": checkpoint}."""
    original = T.EMA
    T.EMA = ema_with_companions(decays[1:], shares)
    try:
        result = T.train(dataclasses.replace(cfg, ema_decay=decays[0]))
    finally:
        T.EMA = original
    out = Path(cfg.out)
    paths = {decays[0]: out / T.CHECKPOINT}
    saved = torch.load(paths[decays[0]], map_location="cpu", weights_only=False)
    for key, ema in result["ema"].companions.items():
        paths[key] = out / (f"checkpoint-ema-{key}.pt" if ema.share else f"checkpoint-ema{key}.pt")
        runtime.save_checkpoint(paths[key], dict(saved, ema=ema.state_dict(), ema_updates=ema.updates,
                                                 config=dict(saved["config"], ema_decay=ema.decay,
                                                             ema_share=ema.share)))
    return paths


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=6300, help="training steps (the 10-minute run's count on a fast day)")
    p.add_argument("--decays", type=float, nargs="+", default=[0.98, 0.995, 0.998, 0.999],
                   help="EMA decays; the first is the run's own")
    p.add_argument("--shares", type=float, nargs="*", default=[],
                   help="power EMAs carried beside them: about this share of the steps so far (minidiff.training.ema)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples scored per decay")
    p.add_argument("--sample-seed", type=int, default=1234, help="starting noise, the same for every decay")
    p.add_argument("--out", default="runs/ema_lengths", help="the run goes to OUT/seed{SEED}")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="TrainConfig overrides, as benchmarks/quality.py --set")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    args = p.parse_args(argv)
    from minidiff.training.cli import fail

    if any(not 0.0 <= d < 1.0 for d in args.decays):
        fail(f"--decays must lie in [0, 1), got {args.decays}")
    if any(not 0.0 < s <= 1.0 for s in args.shares) or len(set(args.shares)) != len(args.shares):
        fail(f"--shares must lie in (0, 1] and not repeat, got {args.shares}")
    if len(set(args.decays)) != len(args.decays):
        fail(f"--decays are repeated: {args.decays}")
    if args.steps < 1 or args.num_samples < 2:
        fail("--steps must be at least 1 and --num-samples at least 2")
    if Path(args.out).is_file():
        fail(f"--out {args.out} is a file; give a folder")
    if (Path(args.out) / f"seed{args.seed}" / T.CHECKPOINT).exists():
        fail(f"{args.out}/seed{args.seed} already holds a run; give another --out")
    sets = parse_sets(args.set)
    cfg = T.TrainConfig(max_steps=args.steps, minutes=0, seed=args.seed, judge_samples=0, sample_every=0,
                        threads=args.threads, out=str(Path(args.out) / f"seed{args.seed}"), **sets)
    try:
        T.check_config(cfg.resolved())
    except T.UsageError as err:
        fail(str(err))
    paths = train_with_decays(cfg, args.decays, args.shares)

    judge = None
    print("| EMA | steps averaged at the end | class acc. | Frechet | W1 | near-black | near-white |")
    print("|---|---|---|---|---|---|---|")
    for key, path in paths.items():
        model, config, settings = load_run(path)
        judge = judge or metrics.Judge.for_dataset(config["dataset"], data_root=config.get("data_root"),
                                                   resolution=config["resolution"])
        labels = torch.arange(args.num_samples) % len(judge.real.classes) if config["class_cond"] else None
        images = generate(model, config, args.num_samples, labels=labels, seed=args.sample_seed, progress=False,
                          **settings)
        s = judge.score(images, labels)
        acc = "" if s["accuracy"] is None else f"{100 * s['accuracy']:.1f}%"
        share = config["ema_share"]  # each checkpoint's config says which average it holds
        name, length = (f"{key} (power)", share * args.steps) if share else (key, 1 / (1 - config["ema_decay"]))
        print(f"| {name} | {length:.0f} | {acc} | {s['frechet']:.2f} | {s['brightness_w1']:.3f} | "
              f"{100 * s['black_backgrounds']:.1f}% | {100 * s['white_backgrounds']:.1f}% |", flush=True)
    real = judge.calibration(args.num_samples)["real"]
    print(f"| real images ({args.num_samples}) | | 100% | {real['frechet']:.2f} | {real['brightness_w1']:.3f} | "
          f"{100 * real['black_backgrounds']:.1f}% | {100 * real['white_backgrounds']:.1f}% |")


if __name__ == "__main__":
    main()
