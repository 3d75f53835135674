"""Quality per CPU-minute: train a recipe for M minutes, then measure the samples it draws.

    python benchmarks/quality.py --name baseline --minutes 10 --seeds 0 1
    python benchmarks/quality.py --name wide --minutes 10 --seeds 0 1 --set unet.base_channels=64
    python benchmarks/quality.py --name cosine --set lr_decay=cosine --eval-steps 10 25 50
    python benchmarks/quality.py --table runs/quality/results.jsonl     # the study as a markdown table

Each run is `minidiff.training.train` with the dataset's recipe and the `--set` overrides (any TrainConfig
field), stopped by its wall-clock budget; then `--judge-samples` EMA samples, every class in turn,
are scored by `minidiff.evaluation.metrics` (Frechet distance in a small classifier's features, class accuracy,
brightness W1) with `--eval-sampler` (the recipe's sampler unless given) at each of `--eval-steps`
steps. One JSON line per (run, sampling steps) goes to results.jsonl; `--table` averages the seeds of each name and shows their spread (min..max), so a
difference between two recipes can be told from seed noise. The recipe is chosen by these
figures, not by the training loss. Run it on an otherwise idle machine: it measures time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from minidiff.training import data as datasets, train as T  # noqa: E402
from minidiff.training.config import parse_settings  # noqa: E402
from minidiff.training.runtime import UsageError  # noqa: E402
from minidiff.evaluation import metrics  # noqa: E402
from minidiff.training.sample import generate  # noqa: E402
from minidiff.samplers import SAMPLERS  # noqa: E402


def check_args(args) -> None:
    """Flags that contradict each other, and paths unfit for their use: one line, exit 2, nothing written."""
    from minidiff.training.cli import fail

    if args.make_folder and args.table:
        fail("--make-folder and --table are two separate jobs; give one of them")
    if args.table and not Path(args.table).is_file():
        fail(f"--table {args.table}: no such file (the results.jsonl a study wrote)")
    for flag, path in (("--out", args.out), ("--make-folder", args.make_folder)):
        if path and Path(path).is_file():
            fail(f"{flag} {path} is a file; give a folder")
    if args.dataset == "folder" and args.data_root and not args.make_folder:
        root, out = Path(args.data_root).resolve(), Path(args.out).resolve()
        if out == root or root in out.parents:
            fail(f"--out {args.out} lies inside --data-root {args.data_root}: the runs' images would join the data")


def parse_sets(items: list[str]) -> dict:
    """["lr=2e-3", "unet.base_channels=64", "lr_decay=cosine"] -> TrainConfig fields (config.parse_settings)."""
    try:
        sets = parse_settings(items)
    except UsageError as err:
        raise SystemExit(f"error: {err}") from None
    for key in sets:
        if key in ("seed", "minutes", "out", "dataset", "data_root", "resume"):
            raise SystemExit(f"error: --set {key}: use --{key.replace('_', '-')}{'s' if key == 'seed' else ''} for that")
    return sets


def run_one(args, seed: int, sets: dict, judge: metrics.Judge) -> list[dict]:
    out = Path(args.out) / f"{args.name}-s{seed}"
    cfg = T.TrainConfig(dataset=args.dataset, data_root=args.data_root, minutes=args.minutes, seed=seed,
                        out=str(out), judge_samples=0, threads=args.threads, **sets)
    if out.exists() and not args.resume:
        raise SystemExit(f"error: {out} exists; remove it or choose another --name")
    cfg.resume = (out / T.CHECKPOINT).exists()
    result = T.train(cfg)
    resolved = cfg.resolved()
    model = result["ema"].model
    labels = torch.arange(args.judge_samples) % len(judge.real.classes) if resolved.class_cond else None
    rows = []
    evals = [(steps, w) for steps in args.eval_steps for w in args.eval_guidance if labels is not None or w == 1.0]
    rescale = args.guidance_rescale if args.guidance_rescale is not None else resolved.guidance_rescale
    sampler = args.eval_sampler or resolved.sampler
    guidance_from = args.eval_guidance_from if args.eval_guidance_from is not None else resolved.guidance_from
    for steps, guidance in evals:
        start = time.perf_counter()
        images = generate(model, T.plain_config(resolved), args.judge_samples, sampler=sampler, steps=steps,
                          labels=labels, guidance=guidance, guidance_rescale=rescale if guidance != 1.0 else 0.0,
                          guidance_from=guidance_from, seed=1234, progress=False)
        seconds = time.perf_counter() - start
        score = judge.score(images, labels)
        row = dict(name=args.name, seed=seed, sets=sets, minutes=args.minutes, steps=result["step"],
                   images_per_s=_median_rate(out), sampler=sampler, sample_steps=steps, guidance=guidance,
                   guidance_rescale=rescale if guidance != 1.0 else 0.0,
                   guidance_from=guidance_from if guidance != 1.0 else -math.inf, sampling_s=seconds,
                   frechet=score["frechet"], accuracy=score["accuracy"], brightness_w1=score["brightness_w1"],
                   black_backgrounds=score["black_backgrounds"], white_backgrounds=score["white_backgrounds"],
                   num=score["num"], parameters=sum(p.numel() for p in model.parameters()))
        rows.append(row)
        print(json.dumps(row))
        judge.figure(images, out / f"quality_{steps}steps_w{guidance:g}.png")
    return rows


def _median_rate(out: Path) -> float:
    rates = [r["images_per_s"] for r in T.runtime.MetricsLog(out / "metrics.jsonl").rows()]
    return statistics.median(rates) if rates else float("nan")


def cell(values, fmt) -> str:
    """One table cell: the mean over seeds, then the min..max spread when there are several
    (None values skipped; "n/a" when none is left)."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    return fmt(mean) if len(values) == 1 else f"{fmt(mean)} ({fmt(min(values))}..{fmt(max(values))})"


def table(path: Path) -> str:
    """One markdown row per (name, sampling steps): the mean over seeds and the min..max spread."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        # rows from before these were recorded: DDIM, guided at every step
        key = (r["name"], r.get("sampler", "ddim"), r["sample_steps"], r.get("guidance", 1.0), r.get("guidance_from", -math.inf))
        groups.setdefault(key, []).append(r)

    lines = ["| recipe | changes | seeds | steps trained | img/s | sampler, steps | guidance | class accuracy | Frechet | "
             "brightness W1 | near-black bg | near-white bg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, sampler, sample_steps, guidance, guidance_from), rs in groups.items():
        guided = f"{guidance:g}" + (f" (log-SNR >= {guidance_from:g})" if guidance != 1.0 and guidance_from > -math.inf else "")
        sets = ", ".join(f"{k}={v}" for k, v in rs[0]["sets"].items()) or "recipe defaults"
        lines.append(
            f"| {name} | {sets} | {len(rs)} | {cell([r['steps'] for r in rs], lambda v: f'{v:,.0f}')} | "
            f"{cell([r['images_per_s'] for r in rs], lambda v: f'{v:.0f}')} | {sampler} {sample_steps} | {guided} | "
            f"{cell([r['accuracy'] for r in rs], lambda v: f'{100 * v:.1f}%')} | "
            f"{cell([r['frechet'] for r in rs], lambda v: f'{v:.2f}')} | "
            f"{cell([r['brightness_w1'] for r in rs], lambda v: f'{v:.3f}')} | "
            f"{cell([r.get('black_backgrounds') for r in rs], lambda v: f'{100 * v:.1f}%')} | "
            f"{cell([r.get('white_backgrounds') for r in rs], lambda v: f'{100 * v:.1f}%')} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", help="this recipe's name in the table")
    p.add_argument("--dataset", default="builtin", choices=("builtin", "folder"))
    p.add_argument("--data-root", help="a folder with one sub-folder per class (--dataset folder)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per run (wall clock)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a TrainConfig field (repeatable)")
    p.add_argument("--judge-samples", type=int, default=1000, help="samples scored per run")
    p.add_argument("--eval-sampler", choices=SAMPLERS, help="sampler to score with (default: the recipe's)")
    p.add_argument("--eval-steps", type=int, nargs="+", default=[25], help="sampler steps to score at")
    p.add_argument("--eval-guidance", type=float, nargs="+", default=[1.0],
                   help="classifier-free guidance weights to sample with (1: none; class-conditional runs)")
    p.add_argument("--guidance-rescale", type=float,
                   help="Lin et al.'s rescale for guided samples (default: the recipe's, 0 for builtin)")
    p.add_argument("--eval-guidance-from", type=float,
                   help="guide only at log-SNR >= this, --eval-guidance-from=-inf: every step (default: the recipe's, -3 for builtin)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", default="runs/quality", help="run folders and results.jsonl go here")
    p.add_argument("--resume", action="store_true", help="finish runs whose folder exists (e.g. after Ctrl-C)")
    p.add_argument("--table", metavar="RESULTS", help="print the study table of a results.jsonl and exit")
    p.add_argument("--make-folder", metavar="DIR", help="write NUM built-in shapes as 28x28 grayscale PNGs in one "
                   "sub-folder per class (a folder to study the folder recipe on) and exit")
    p.add_argument("--folder-num", type=int, default=20_000, help="images --make-folder writes")
    args = p.parse_args(argv)
    check_args(args)
    if args.make_folder:
        shapes = datasets.builtin_shapes(args.folder_num, seed=4242, resolution=28)
        print(f"wrote {args.folder_num} images to {datasets.write_image_folder(shapes, args.make_folder, gray=True)}")
        return
    if args.table:
        print(table(Path(args.table)))
        return
    if not args.name:
        p.error("--name is required to run a recipe")
    sets = parse_sets(args.sets)
    probe = T.TrainConfig(dataset=args.dataset, data_root=args.data_root, **sets).resolved()
    judge = metrics.Judge.for_dataset(args.dataset, data_root=args.data_root, resolution=probe.resolution)
    results = Path(args.out) / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for row in run_one(args, seed, sets, judge):
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print(table(results))
    real = judge.calibration(args.judge_samples)
    print("calibration at " + f"{real['real']['num']} images: " + "; ".join(
        f"{name} Frechet {c['frechet']:.2f}, W1 {c['brightness_w1']:.3f}, near-black {100 * c['black_backgrounds']:.1f}%, "
        f"near-white {100 * c['white_backgrounds']:.1f}%" for name, c in real.items() if name != "noise"))


if __name__ == "__main__":
    main()
