"""Samples beside their nearest training images: the copy check as a picture.

    minidiff sample RUN/checkpoint.pt --num 300 --npz s.npz --png ""
    python benchmarks/copy_figure.py --out docs/figures/copies.png s.npz FOLDER [s2.npz FOLDER2 ...]

For each (samples, folder) pair the figure has two rows: the first --num samples as drawn (not
picked), and under each the training image nearest to it in pixels (mirror images included), with
the RMS distance. The row's title gives the copy check over all the samples in the file
(minidiff.evaluation.copies: median distance against real images' leave-one-out median, and the
share of near copies).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from minidiff.evaluation import copies  # noqa: E402
from minidiff.training import data as datasets  # noqa: E402


def load_samples(path: Path) -> torch.Tensor:
    """uint8 [N, C, H, W] from a `minidiff sample --npz` file (images stored NHWC)."""
    with np.load(path) as f:
        images = f["images"]
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def pair_rows(samples: torch.Tensor, train: torch.Tensor, num: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """The copy check of all samples, and the first `num` samples' nearest training images and distances."""
    check = copies.copy_check(samples, train)
    distances, index = copies.nearest_distances(samples[:num], train, with_index=True)
    return check, index, distances


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="copy_figure.py", description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="+", help="NPZ FOLDER [NPZ FOLDER ...]: samples and the folder they were trained on")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--num", type=int, default=10, help="samples shown per pair (default: 10)")
    args = p.parse_args(argv)
    if len(args.pairs) % 2:
        p.error("give the samples and their folder in pairs: NPZ FOLDER [NPZ FOLDER ...]")
    pairs = [(Path(a), Path(b)) for a, b in zip(args.pairs[::2], args.pairs[1::2])]
    for npz, folder in pairs:
        if not npz.is_file():
            p.error(f"{npz} is not a file; write one with `minidiff sample CKPT --npz {npz}`")
        if not folder.is_dir():
            p.error(f"{folder} is not a folder of training images")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1.1 * args.num, 2.7 * len(pairs)), layout="constrained")
    for subfig, (npz, folder) in zip(np.atleast_1d(fig.subfigures(len(pairs), 1)), pairs):
        samples = load_samples(npz)
        train = datasets.load_dataset("folder", data_root=folder, resolution=samples.shape[-1]).images
        check, index, distances = pair_rows(samples, train, args.num)
        print(f"{npz} against {folder}:\n{copies.format_copy_check(check)}")
        axes = subfig.subplots(2, args.num, squeeze=False)
        for i in range(args.num):
            for r, image in ((0, samples[i]), (1, train[index[i]])):
                axes[r, i].imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=255)
                axes[r, i].set_xticks([])
                axes[r, i].set_yticks([])
            axes[1, i].set_xlabel(f"{distances[i]:.3f}", fontsize=8)
        axes[0, 0].set_ylabel("sample", fontsize=8)
        axes[1, 0].set_ylabel("nearest", fontsize=8)
        subfig.suptitle(f"{folder.name} ({check['num_train']:,} images): sample/real median distance "
                        f"{check['median_ratio']:.2f}, {100 * check['copy_share']:.0f}% near copies "
                        f"(real {100 * check['real_share']:.0f}%)", x=0.01, ha="left", fontsize=9)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
