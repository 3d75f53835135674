"""The graded part of problem set 1: the student's functions train a small UNet on Fashion-MNIST for a
fixed number of steps and draw it; the packaged scorer (scorer.py) measures the samples.

    train_and_draw(fns, steps=..., seed=...) -> dict with the scorer's figures, the losses and the samples

fns holds the student's v_loss, train_loop and ddim_sample (q_sample and alphas_cumprod enter
through them when the student's code calls them). Everything else is fixed here, so that two
students' scores differ only by their code: the network (minidiff's `small` preset, 0.27M
parameters, one channel at 28x28), the schedule (linear, 1,000 steps), the data (the first
20,000 training images), the batch, the learning rate and the seeds.
"""

from __future__ import annotations

import base64
import io
import math
import os
import time
from pathlib import Path

import torch

from .. import objectives
from ..schedules import Schedule

BUDGET = dict(steps=1000, batch_size=32, lr=1e-3, images=20_000, samples=500, sample_steps=25, preset="small")
DATA_ROOTS = ("data", "/usr/share/datasets/fashion-mnist")  # searched after $MINIDIFF_FMNIST_ROOT


def fashion_mnist_root() -> str:
    """The folder with Fashion-MNIST's idx files: $MINIDIFF_FMNIST_ROOT, ./data or Debian's
    /usr/share/datasets/fashion-mnist, whichever has them (else ./data, where torchvision downloads)."""
    from ..training.idx import idx_file

    roots = [os.environ.get("MINIDIFF_FMNIST_ROOT")] + list(DATA_ROOTS)
    for root in filter(None, roots):
        if idx_file(Path(root), "train-images-idx3-ubyte") is not None:
            return root
    return roots[0] or "data"


def training_images(n: int = BUDGET["images"]) -> torch.Tensor:
    """The first n Fashion-MNIST training images as float [n, 1, 28, 28] in [-1, 1]."""
    from ..training.data import idx_dataset, to_float

    data = idx_dataset("fashion-mnist", fashion_mnist_root(), train=True)
    return to_float(data.images[:n])


def train_and_draw(fns: dict, *, steps: int = BUDGET["steps"], seed: int = 0, samples: int = BUDGET["samples"],
                   score: bool = True) -> dict:
    """Train with the student's train_loop and v_loss, draw with their ddim_sample, score the samples."""
    from ..unet import UNet

    torch.manual_seed(seed)
    images = training_images()
    schedule = Schedule.make("linear")
    ab = schedule.alphas_cumprod
    model = UNet.from_preset(BUDGET["preset"], image_size=28, in_channels=1, out_channels=1)
    start = time.perf_counter()
    model.train()
    losses = fns["train_loop"](model, images, ab, fns["v_loss"], steps, BUDGET["batch_size"], BUDGET["lr"],
                               torch.Generator().manual_seed(seed))
    train_seconds = time.perf_counter() - start
    model.eval()

    @torch.no_grad()
    def denoise(x, t):
        out = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long))
        return objectives.to_x0_eps("v", out, x, ab[int(t)].item())

    start = time.perf_counter()
    x_T = torch.randn(samples, 1, 28, 28, generator=torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        drawn = torch.cat([fns["ddim_sample"](denoise, x_T[i:i + 250], ab, BUDGET["sample_steps"])
                           for i in range(0, samples, 250)])
    sample_seconds = time.perf_counter() - start
    out = dict(steps=steps, seed=seed, train_seconds=round(train_seconds, 1), sample_seconds=round(sample_seconds, 1),
               samples=samples, losses=[float(v) for v in losses], images=drawn.float().clamp(-1, 1), model=model)
    if score:
        from .scorer import default_scorer

        finite = torch.isfinite(out["images"]).all()
        out.update(default_scorer().score(torch.nan_to_num(out["images"])) if finite else dict(fcd=math.inf, class_kl=math.inf))
    return out


def png(fig) -> str:
    """The figure as base64 PNG (closed after)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figures(result: dict) -> dict:
    """{"samples.png": base64, "loss.png": base64}: the first 100 samples and the loss curve."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..repro.common import mosaic

    fig, ax = plt.subplots(figsize=(5, 5.3))
    ax.imshow(mosaic(result["images"][:100], nrow=10).numpy().squeeze(), cmap="gray", interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"your model: {result['steps']} steps, 25 DDIM steps with your loop"
                 + (f"\nFCD {result['fcd']:.2f}" if "fcd" in result else ""), fontsize=8)
    grid = png(fig)
    losses = torch.tensor(result["losses"] or [math.nan])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses.numpy(), lw=0.5, alpha=0.4, label="per step")
    w = max(1, len(losses) // 30)
    if len(losses) >= w:
        smooth = torch.nn.functional.avg_pool1d(losses[None, None], w, 1)[0, 0]
        ax.plot(torch.arange(len(smooth)) + w - 1, smooth.numpy(), label=f"mean of {w}")
    ax.set_xlabel("step"), ax.set_ylabel("v loss"), ax.set_yscale("log"), ax.legend(fontsize=7)
    return {"samples.png": grid, "loss.png": png(fig)}
