"""The folder recipe's network, chosen from the run's time and this device's measured speed.

    choose_network   the network a folder run trains: the larger one when --minutes buys it enough
                     steps on this device, else the ten-minute one
    seconds_per_step one timed training step of a network (forward, backward, Adam) on a batch of noise
    settle           train_cifar's entry: a config whose preset is chosen, with the reason printed

The rule, and the runs behind it (docs/recipe_history.md, "a network that grows with the budget"):
a network is worth its size only when it gets enough steps. The ladder runs from the ten-minute
network (`small-patch2`) up; a run takes the largest rung that can make MIN_STEPS steps in its
--minutes at the speed measured here, on this device, at this run's batch and image size. On the
2-core CPU it was chosen on, ten minutes keep `small-patch2` and an hour buys `medium-patch2`; a GPU
makes every rung fast, so there even ten minutes buy the larger network. Images the patch stem cannot
take (28 x 28 halves to 14, 7, then 3.5) train `small`, the network chosen on Fashion-MNIST.
Without --minutes there is no budget to weigh, so a run trains the ten-minute network.
"""

from __future__ import annotations

import dataclasses
import os
import time

import torch
import torch.nn.functional as F

from ..unet import UNet
from . import data as datasets
from .recipes import BY_BUDGET, RECIPES
from .runtime import CHECKPOINT, load_checkpoint

LADDER = ("small-patch2", "medium-patch2")  # the ten-minute network first, then larger ones
FALLBACK = "small"  # for images the ladder's patch stem cannot take (Fashion-MNIST's 28 x 28)
MIN_STEPS = 5_000   # steps a larger network needs before it beats the smaller one (between 1,600 and 9,700)


def image_size(cfg) -> int:
    """The side the run's images train at when the network can take it: the folder's own, 28 for
    Fashion-MNIST and MNIST, else the presets' 32 (what config.native_resolution keeps)."""
    if cfg.resolution:
        return cfg.resolution
    if cfg.dataset in datasets.IDX_CLASSES:
        return 28
    size = datasets.folder_image_size(cfg.data_root) if cfg.data_root else None
    return size[0] if size and size[0] == size[1] else 32


def fits(preset: str, size: int) -> bool:
    """Whether the preset's UNet can take images of this side (each level halves it exactly)."""
    try:
        with torch.device("meta"):
            UNet.from_preset(preset, image_size=size)
    except ValueError:
        return False
    return True


def seconds_per_step(preset: str, *, size: int, batch: int, device: str, channels: int = 3,
                     warmup: int = 2, steps: int = 3) -> float:
    """Median wall-clock seconds of one training step (forward, MSE backward, Adam) of `preset` on a
    batch of noise: what the trainer's step costs, less the data and the EMA."""
    torch.manual_seed(0)
    model = UNet.from_preset(preset, image_size=size, in_channels=channels, out_channels=channels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, channels, size, size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = F.mse_loss(model(x, t), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def choose_network(size: int, minutes: float | None, speed) -> tuple[str, str]:
    """(preset, why) for a run of `minutes` on images of side `size`. `speed(preset)` gives seconds a
    step; it is called only when there is a choice to make."""
    ladder = [p for p in LADDER if fits(p, size)]
    if not ladder:
        return FALLBACK, f"{size}-pixel images: the patch stem needs a side that halves three times"
    if not minutes or len(ladder) == 1:
        return ladder[0], "no --minutes: the ten-minute network" if not minutes else "the only one that fits"
    for preset in reversed(ladder[1:]):
        seconds = speed(preset)
        steps = minutes * 60 / seconds
        if steps >= MIN_STEPS:
            return preset, (f"{minutes:g} minutes at {1000 * seconds:.0f} ms a step measured here: about "
                            f"{steps:,.0f} steps, at least the {MIN_STEPS:,} it needs")
        last = (preset, seconds, steps)
    preset, seconds, steps = last
    return ladder[0], (f"{preset} would take {1000 * seconds:.0f} ms a step here: about {steps:,.0f} steps in "
                       f"{minutes:g} minutes, fewer than the {MIN_STEPS:,} it needs")


def checkpoint_preset(cfg) -> str | None:
    """The preset of the run that --resume continues, read from its checkpoint (None: no checkpoint).
    The run folder's default name holds the preset, so each candidate's folder is looked in."""
    for preset in (*LADDER, FALLBACK):
        path = os.path.join(dataclasses.replace(cfg, preset=preset).resolved().out, CHECKPOINT)
        if os.path.exists(path):
            return load_checkpoint(path).get("config", {}).get("preset")
    return None


def settle(cfg):
    """`cfg` with its preset chosen when the recipe leaves it to the budget (the folder recipe and no
    --preset); prints which network and why. A resumed run keeps its checkpoint's network."""
    if cfg.preset is not None or RECIPES.get(cfg.dataset, {}).get("preset") != BY_BUDGET:
        return cfg
    if cfg.resume:
        preset = checkpoint_preset(cfg)
        if preset is not None:
            return dataclasses.replace(cfg, preset=preset)
    full = dataclasses.replace(cfg, preset=FALLBACK).resolved()  # the run's batch, minutes and device
    size = image_size(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and full.minutes:  # every rank must choose alike: several GPUs are a large budget by themselves
        fitting = [p for p in LADDER if fits(p, size)]
        preset, why = (fitting[-1], f"{world} processes: the largest that fits") if fitting else (FALLBACK, "")
    else:
        preset, why = choose_network(size, full.minutes, lambda p: seconds_per_step(
            p, size=size, batch=full.batch_size, device=full.device))
    print(f"network by budget: {preset} ({why}; minidiff/training/budget.py)")
    return dataclasses.replace(cfg, preset=preset)
