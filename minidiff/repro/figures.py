"""The figures the experiments share: matplotlib without a display, image mosaics, labelled grids."""

from __future__ import annotations

from pathlib import Path

import torch


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_display(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float or uint8 images -> float [0, 1], for plotting."""
    return images.float() / 255 if images.dtype == torch.uint8 else (images.float().clamp(-1, 1) + 1) / 2


def mosaic(images: torch.Tensor, nrow: int, pad: int = 1) -> torch.Tensor:
    """A grid of images as one [H, W, 3] array in [0, 1] (what imshow takes)."""
    import torchvision

    grid = torchvision.utils.make_grid(to_display(images), nrow=nrow, padding=pad, pad_value=1.0)
    return grid.permute(1, 2, 0)


def grid_figure(cells: list[list[torch.Tensor]], row_labels: list[str], col_labels: list[str], nrow: int,
                path: Path, cell_size: tuple[float, float], dpi: int = 100) -> None:
    """A table of sample mosaics: cells[i][j] is a batch of images shown with `mosaic(.., nrow)`,
    rows labelled on the left, columns on top."""
    plt = pyplot()
    fig, axes = plt.subplots(len(row_labels), len(col_labels), squeeze=False,
                             figsize=(cell_size[0] * len(col_labels), cell_size[1] * len(row_labels) + 0.4))
    for i, row in enumerate(cells):
        for j, images in enumerate(row):
            ax = axes[i, j]
            ax.imshow(mosaic(images, nrow=nrow).numpy(), interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            if i == 0:
                ax.set_title(col_labels[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
