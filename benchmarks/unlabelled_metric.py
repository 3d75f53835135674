"""Does the measure for folders without labels rank models as a labelled yardstick does?

Scores sample files (.npz from `minidiff sample`) against a folder of images with the metrics'
self-supervised network (minidiff.evaluation.self_supervised), prints its calibration, then the
rank agreement (Spearman) with the Frechet distance of another scorer, read from an `fcd.json`
beside each .npz (written by `python ../shared/tools/fmnist_fcd.py score s.npz > fcd.json`).

    python benchmarks/unlabelled_metric.py --data-root /work/data/flat runs/study/*/s.npz runs/eval/*/s.npz

--copies adds the copy check of each file (about 20 s each against 60,000 images).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minidiff.evaluation import metrics as M  # noqa: E402
from minidiff.evaluation.classifier import random_flips  # noqa: E402
from minidiff.evaluation.copies import format_copy_check  # noqa: E402
from minidiff.evaluation.self_supervised import SELF_SUPERVISED_RECIPE, unlabelled_data  # noqa: E402
from minidiff.training import data as datasets  # noqa: E402


def ranks(values) -> np.ndarray:
    """Ranks 1..n of `values`, ties given the mean of the ranks they share."""
    values = np.asarray(values, np.float64)
    order = values.argsort(kind="stable")
    r = np.empty(len(values))
    r[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tie = values == v
        r[tie] = r[tie].mean()
    return r


def spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks."""
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def contrast(images: torch.Tensor, keep: float) -> torch.Tensor:
    """Contrast cut to `keep` around mid-grey, as the shared scorer's calibration does (0.8: its 122)."""
    return ((images.float() - 127.5) * keep + 127.5).round().clamp(0, 255).to(torch.uint8)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("samples", nargs="*", help=".npz files, each with an fcd.json beside it")
    p.add_argument("--data-root", required=True, help="the folder the models were trained on")
    p.add_argument("--num", type=int, default=2_000, help="images per calibration row")
    p.add_argument("--cache-dir", default=str(M.DEFAULT_CACHE))
    p.add_argument("--copies", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    root = Path(args.data_root).expanduser().resolve()
    images = datasets.image_folder(root, resolution=datasets.folder_image_size(root)[0], progress=False).images
    judge = M.Judge(unlabelled_data(images, str(root)), cache_dir=args.cache_dir, progress=False)
    print(judge.describe())
    print(f"recipe: {SELF_SUPERVISED_RECIPE}; ready in {time.perf_counter() - start:.0f} s")

    cal = judge.calibration(args.num)
    x = judge.real.other[0][:args.num]
    extra = {"contrast 80%": judge.score(contrast(x, 0.8)), "half mirrored": judge.score(random_flips(x, 5)),
             "blur 0.5 px": judge.score(M.blur(x, 0.5)), "blur 2 px": judge.score(M.blur(x, 2.0))}
    print(f"\ncalibration ({args.num} images each against {len(judge.real.held[0])} held out)")
    print(f"{'set':<28}{'Frechet':>10}{'x real':>9}{'brightness W1':>15}")
    for name, s in [*cal.items(), *extra.items()]:
        print(f"{name:<28}{s['frechet']:>10.4g}{s['frechet'] / cal['real']['frechet']:>9.0f}{s['brightness_w1']:>15.4f}")

    rows = []
    for path in map(Path, args.samples):
        fcd_file = path.with_name("fcd.json")
        if not fcd_file.exists():
            print(f"skipped {path}: no fcd.json beside it")
            continue
        imgs, _ = M.load_npz(path)
        s = judge.score(imgs)
        rows.append((str(path), s["frechet"], json.loads(fcd_file.read_text())["fcd"], s["brightness_w1"]))
        if args.copies:
            print(f"{path}: {format_copy_check(judge.copies(imgs))}")
    if not rows:
        return
    rows.sort(key=lambda r: r[2])
    print(f"\n{'samples':<40}{'ours (FD)':>11}{'x real':>8}{'shared FCD':>12}{'W1':>8}")
    for path, ours, fcd, w1 in rows:
        print(f"{path:<40}{ours:>11.4g}{ours / cal['real']['frechet']:>8.0f}{fcd:>12.2f}{w1:>8.4f}")
    if len(rows) >= 3:
        print(f"\nSpearman (ours, shared FCD) over {len(rows)} sample sets: "
              f"{spearman([r[1] for r in rows], [r[2] for r in rows]):.3f}")


if __name__ == "__main__":
    main()
