"""The real-images study: a recipe trained on Fashion-MNIST or a colour set, its samples scored by one fixed yardstick.

    python benchmarks/fmnist_study.py train NAME --seeds 0 1 -- --dataset folder --data-root FLAT --max-steps 2900
    python benchmarks/fmnist_study.py score runs/study/NAME-s0/checkpoint.pt --name NAME --eval dpmpp_2m:50 ddim:50
    python benchmarks/fmnist_study.py table                       # the study as a markdown table, seeds' spread
    python benchmarks/fmnist_study.py train NAME --colour-set icons -- --dataset folder --data-root ICONS --max-steps 2400

`train` runs `train_cifar.py` with the flags after `--` (any flag, `--set NAME=VALUE` included) once
per seed into runs/study/NAME-sSEED, then scores it as `score` does. `score` draws 2,000 samples of a
checkpoint with each `--eval` setting (SAMPLER:STEPS[:GUIDANCE]; `report` is the checkpoint's own
settings, what `minidiff sample CKPT` draws with no flags), every class in turn for a conditional model,
and scores them with the classifier-feature Frechet distance of the shared yardstick
(../shared/tools/fmnist_fcd.py, or --scorer): FCD, class_kl, brightness W1 and the brightness spread;
with --colour-set SET, that colour set's own scorer (benchmarks/colour_fcd.py, docs/colour_sets.md),
which adds the saturation of the samples and of the data.
Every result is a line of runs/study/results.jsonl. Recipes are compared at a fixed number of steps
(or images seen), so a study's figures do not depend on how busy the CPU was; images/s is read off
an idle run of the recipe's own and reported beside them (docs/recipe_history.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from minidiff.training import train as T  # noqa: E402
from minidiff.training.sample import generate, load_run  # noqa: E402
from quality import cell  # noqa: E402 (benchmarks/quality.py: a mean and its spread over seeds)

STUDY = Path("runs/study")
SCORER = ROOT.parent / "shared" / "tools" / "fmnist_fcd.py"
COLOUR_SCORER = ROOT / "benchmarks" / "colour_fcd.py"


def parse_eval(text: str) -> dict:
    """"dpmpp_2m:50" -> {"sampler": "dpmpp_2m", "steps": 50}; a third field is the guidance weight;
    "report" is the checkpoint's own settings."""
    if text == "report":
        return {}
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"error: --eval {text}: write SAMPLER:STEPS or SAMPLER:STEPS:GUIDANCE, e.g. dpmpp_2m:50")
    out = dict(sampler=parts[0], steps=int(parts[1]))
    if len(parts) == 3:
        out["guidance"] = float(parts[2])
    return out


def score_command(scorer: Path, colour_set: str | None, npz: Path) -> list[str]:
    """The scorer's command line for `npz`: the Fashion-MNIST yardstick, or a colour set's own."""
    if colour_set:
        return [sys.executable, str(COLOUR_SCORER), "score", colour_set, str(npz)]
    return [sys.executable, str(scorer), "score", str(npz)]


def score_checkpoint(ckpt: Path, evals: list[str], *, name: str, num: int, scorer: Path, extra: dict,
                     colour_set: str | None = None) -> list[dict]:
    model, config, report = load_run(ckpt)
    saved = T.load_checkpoint(ckpt)
    rows = []
    for text in evals:
        settings = {**report, **parse_eval(text)}
        classes = model.config["num_classes"]
        labels = torch.arange(num) % classes if classes else None
        start = time.perf_counter()
        images = generate(model, config, num, labels=labels, seed=1234, progress=False, **settings)
        seconds = time.perf_counter() - start
        npz = ckpt.parent / f"s_{text.replace(':', '_')}.npz"
        np.savez_compressed(npz, images=images.permute(0, 2, 3, 1).numpy())
        if text == "report":  # what `minidiff sample CKPT --num 2000 --npz s.npz` would write
            np.savez_compressed(ckpt.parent / "s.npz", images=images.permute(0, 2, 3, 1).numpy())
        result = json.loads(subprocess.run(score_command(scorer, colour_set, npz), check=True,
                                           capture_output=True, text=True).stdout)
        row = dict(name=name, set=colour_set or "fashion-mnist", seed=config["seed"], steps=saved["step"], eval=text, sampler=settings["sampler"],
                   sample_steps=settings["steps"], guidance=settings["guidance"], sampling_s=round(seconds, 1),
                   checkpoint=str(ckpt), **extra, **result)
        rows.append(row)
        if text == "report":
            (ckpt.parent / "fcd.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"{name} seed {row['seed']} step {row['steps']} {text}: FCD {row['fcd']:.1f}, class_kl {row['class_kl']:.3f}, "
              f"W1 {row['brightness_w1']:.3f}, std {row['brightness_std']:.3f} (data {row['brightness_std_data']:.3f})"
              + (f", saturation {row['saturation']:.3f} (data {row['saturation_data']:.3f})" if "saturation" in row else ""),
              flush=True)
        with open(STUDY / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return rows


def table(path: Path) -> str:
    """Mean (min..max over seeds) of each recipe x sampler setting."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.get("set", "fashion-mnist"), r["name"], r["eval"]), []).append(r)
    lines = []
    columns = (("steps", "{:,.0f}"), ("fcd", "{:.1f}"), ("class_kl", "{:.3f}"), ("brightness_w1", "{:.3f}"),
               ("brightness_std", "{:.3f}"), ("saturation", "{:.3f}"))
    for data in dict.fromkeys(key[0] for key in groups):  # one table a data set, in the order first seen
        first = next(rs[0] for key, rs in groups.items() if key[0] == data)
        saturation = f" saturation (data {first['saturation_data']:.3f}) |" if "saturation" in first else ""
        lines += [*([""] if lines else []), f"{data}:",
                  f"| recipe | sampler | seeds | steps | FCD | class_kl | brightness W1 | brightness std "
                  f"(data {first.get('brightness_std_data', 0.252):.3f}) |{saturation}", "|---" * (8 + bool(saturation)) + "|"]
        for (set_, name, text), rs in groups.items():
            if set_ != data:
                continue
            sampler = f"{rs[0]['sampler']} {rs[0]['sample_steps']}" + (f", w {rs[0]['guidance']:g}" if rs[0]["guidance"] != 1 else "")
            shown = columns if saturation else columns[:-1]
            cells = " | ".join(cell([r[key] for r in rs], fmt.format) for key, fmt in shown)
            lines.append(f"| {name} | {sampler}{' (report)' if text == 'report' else ''} | {len(rs)} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    train_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="fmnist_study.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="job", required=True)
    tr = sub.add_parser("train", help="train a recipe once per seed, then score it (train_cifar.py flags after --)")
    tr.add_argument("name")
    tr.add_argument("--seeds", type=int, nargs="+", default=[0])
    sc = sub.add_parser("score", help="score checkpoints")
    sc.add_argument("checkpoints", nargs="+", type=Path)
    sc.add_argument("--name", required=True)
    for q in (tr, sc):
        q.add_argument("--eval", nargs="+", default=["report"], help="SAMPLER:STEPS[:GUIDANCE] or report")
        q.add_argument("--num", type=int, default=2000)
        q.add_argument("--scorer", type=Path, default=SCORER)
        q.add_argument("--colour-set", choices=("icons", "stamps"),
                       help="score with that colour set's own scorer (benchmarks/colour_fcd.py) instead")
        q.add_argument("--threads", type=int, help="CPU threads for torch (1 on a CPU busy with other jobs)")
    sub.add_parser("table", help="the study as a markdown table")
    args = p.parse_args(argv)
    STUDY.mkdir(parents=True, exist_ok=True)
    if args.job == "table":
        print(table(STUDY / "results.jsonl"))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
        train_args += ["--threads", str(args.threads)] if args.job == "train" else []
    if not args.colour_set and not args.scorer.is_file():
        raise SystemExit(f"error: the scorer {args.scorer} does not exist; pass --scorer PATH/fmnist_fcd.py")
    if args.job == "score":
        for ckpt in args.checkpoints:
            score_checkpoint(ckpt, args.eval, name=args.name, num=args.num, scorer=args.scorer, extra={},
                             colour_set=args.colour_set)
        return
    for seed in args.seeds:
        out = STUDY / f"{args.name}-s{seed}"
        cfg = T.parse_args(train_args + ["--seed", str(seed), "--out", str(out), "--judge-samples", "0"])
        start = time.perf_counter()
        result = T.train(cfg)
        minutes = (time.perf_counter() - start) / 60
        score_checkpoint(out / "checkpoint.pt", args.eval, name=args.name, num=args.num, scorer=args.scorer,
                         colour_set=args.colour_set, extra=dict(train_args=" ".join(train_args), train_minutes=round(minutes, 2),
                                    images_per_s=round(result["images_per_s"], 1)))


if __name__ == "__main__":
    main()
