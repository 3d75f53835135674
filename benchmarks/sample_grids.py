"""Sample sets side by side: the first N images of each .npz (as `minidiff sample --npz` writes), one
panel each under its title, in one PNG for the docs.

    python benchmarks/sample_grids.py A.npz B.npz --titles "small, 2,400 steps" "small-patch2, 4,000" --out F.png

Each panel is a square grid of N images (default 64) at twice their size, on a grey frame, so that
a white-background set keeps its edges.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np


def panel(images: np.ndarray, n: int, scale: int = 2, gap: int = 2) -> np.ndarray:
    """The first `n` uint8 images [N, H, W, C] as a square grid [rows*(H+gap)+gap, ..., 3] on grey."""
    images = images[:n]
    if images.shape[-1] == 1:
        images = images.repeat(3, -1)
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    h, w = images.shape[1] * scale, images.shape[2] * scale
    canvas = np.full((gap + rows * (h + gap), gap + cols * (w + gap), 3), 128, np.uint8)
    for i, x in enumerate(images):
        r, c = divmod(i, cols)
        canvas[gap + r * (h + gap):gap + r * (h + gap) + h, gap + c * (w + gap):gap + c * (w + gap) + w] = \
            x.repeat(scale, 0).repeat(scale, 1)
    return canvas


def load(path: Path) -> np.ndarray:
    with np.load(path) as f:
        images = f["images"] if "images" in f else f[f.files[0]]
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    return images.astype(np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="sample_grids.py", description=__doc__.split("\n\n")[0])
    p.add_argument("npz", nargs="+", type=Path)
    p.add_argument("--titles", nargs="+", help="one title a file (default: the file names)")
    p.add_argument("--n", type=int, default=64, help="images a panel")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    titles = args.titles or [str(f) for f in args.npz]
    if len(titles) != len(args.npz):
        print(f"sample_grids.py: error: {len(titles)} titles for {len(args.npz)} files", file=sys.stderr)
        return 2
    missing = [str(f) for f in args.npz if not f.is_file()]
    if missing:
        print(f"sample_grids.py: error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [panel(load(f), args.n) for f in args.npz]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.5))
    for ax, image, title in zip(np.atleast_1d(axes), panels, titles):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"{len(panels)} panels of {args.n} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
