"""Features for a folder without labels: the metrics' network trained on the folder itself, no labels.

A Frechet distance needs features that know what the images look like. With labels the metrics
train a classifier (minidiff.evaluation.classifier); without them this file trains the same small
CNN on a task the images label themselves (Gidaris et al. 2018, "Unsupervised representation
learning by predicting image rotations"):

- **which way up**: each image is turned by 0, 90, 180 or 270 degrees and the network names the
  turn. To tell a shirt's collar from its hem, or a shoe's sole from its top, it must find the
  object's parts; the features then describe shape, as a classifier's do, without anyone naming
  the classes. It is the cheapest such task (one forward pass an image, four-way cross-entropy)
  and needs no augmentation design, which a contrastive task does;
- **how bright, which tint**: a second head reads each channel's mean, as the classifier's does, so
  the features keep the brightness and colour that Lin et al.'s flawed schedules get wrong.

Rotation alone is blind where an image looks the same turned (a disc, a checkerboard); the
brightness head and the convolutions' own response to texture still see noise and blur there.
docs/metrics.md calibrates the result against a labelled classifier's Frechet distance.

    SELF_SUPERVISED_RECIPE        everything that decides the trained network (part of the cache key)
    rotate_each                   images turned by a quarter turn each
    train_self_supervised         fit the network to uint8 images, no labels
    rotation_accuracy             its share of right answers on held-out images (chance: 25%)
    unlabelled_data, unlabelled_folder_data   the real images, labels dropped, cut as the metrics cut them
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..training import data as datasets
from .classifier import Classifier, RealData, random_flips, split_real

TURNS = 4  # quarter turns: 0, 90, 180, 270 degrees
DAMAGE = ("none", "blur", "noise", "contrast")  # what the second task names
SELF_SUPERVISED_RECIPE = dict(version=2, task="rotation+damage", widths=(16, 32, 64, 64), steps=300, batch_size=128,
                              lr=3e-3, colour_weight=1.0, damage_weight=1.0, seed=0)


class SelfSupervisedNet(Classifier):
    """The metrics' Classifier (its `head` names the quarter turn, its `colour` head reads each
    channel's mean) with one more linear head on the same features: which damage was done."""

    def __init__(self, channels: int, widths=SELF_SUPERVISED_RECIPE["widths"]):
        super().__init__(channels, TURNS, widths)
        self.damage = nn.Linear(widths[-1], len(DAMAGE))


def rotate_each(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Image i of square images [B, C, H, H] turned by turns[i] quarter turns (counter-clockwise)."""
    out = x.clone()
    for k in range(1, TURNS):
        pick = turns == k
        if pick.any():
            out[pick] = torch.rot90(x[pick], k, dims=(2, 3))
    return out


def damage_each(x: torch.Tensor, kinds: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Float images [B, C, H, W] in [-1, 1], image i damaged as DAMAGE[kinds[i]] says, each at a
    random strength: a Gaussian blur of 0.3 to 1.5 pixels (at 32 pixels; scaled with the size),
    Gaussian noise of standard deviation 0.02 to 0.2, or contrast cut to 50-90% around the image's
    mean. These are what unfinished samples look like: smooth, grainy or washed out."""
    out, n = x.clone(), len(x)
    strength = torch.rand(n, generator=g)
    pick = kinds == 1
    if pick.any():  # one sigma for the step's blurred images: a separable kernel
        sigma = (0.3 + 1.2 * float(strength[pick][0])) * x.shape[-1] / 32
        radius = max(1, math.ceil(3 * sigma))
        taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
        taps = taps / taps.sum()
        c, y = x.shape[1], F.pad(x[pick], (radius,) * 4, mode="reflect")
        y = F.conv2d(y, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        out[pick] = F.conv2d(y, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    pick = kinds == 2
    if pick.any():
        std = (0.02 + 0.18 * strength[pick]).view(-1, 1, 1, 1)
        out[pick] = (x[pick] + std * torch.randn(x[pick].shape, generator=g)).clamp(-1, 1)
    pick = kinds == 3
    if pick.any():
        keep = (0.5 + 0.4 * strength[pick]).view(-1, 1, 1, 1)
        mean = x[pick].mean((1, 2, 3), keepdim=True)
        out[pick] = mean + keep * (x[pick] - mean)
    return ((out + 1) * 127.5).round() / 127.5 - 1  # back on the uint8 grid, as every measured image is


def train_self_supervised(images: torch.Tensor, *, recipe: dict = SELF_SUPERVISED_RECIPE,
                          progress: bool = True) -> SelfSupervisedNet:
    """Fit a SelfSupervisedNet to uint8 images [N, C, H, H], no labels: cross-entropy on the
    quarter turn each image was given and on the damage done to it, plus squared error on each
    channel's mean; Adam, a fixed number of steps with the learning rate decayed linearly to 0,
    random flips. Seeded; leaves the global RNG as it was."""
    from tqdm.auto import tqdm

    with torch.random.fork_rng():
        torch.manual_seed(recipe["seed"])
        net = SelfSupervisedNet(images.shape[1], recipe["widths"])
        opt = torch.optim.Adam(net.parameters(), lr=recipe["lr"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / recipe["steps"])
        g = torch.Generator().manual_seed(recipe["seed"])
        net.train()
        for _ in tqdm(range(recipe["steps"]), desc="training the metrics network (no labels)", unit="step",
                      disable=not progress):
            index = torch.randint(0, len(images), (recipe["batch_size"],), generator=g)
            x = random_flips(datasets.to_float(images[index]), int(torch.randint(2**62, (1,), generator=g)))
            turns = torch.randint(0, TURNS, (len(x),), generator=g)
            kinds = torch.randint(0, len(DAMAGE), (len(x),), generator=g)
            x = rotate_each(damage_each(x, kinds, g), turns)
            f = net.features(x)
            loss = F.cross_entropy(net.head(f), turns) + \
                recipe["damage_weight"] * F.cross_entropy(net.damage(f), kinds) + \
                recipe["colour_weight"] * F.mse_loss(net.colour(f), x.mean((2, 3)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def rotation_accuracy(net: Classifier, images: torch.Tensor, seed: int = 0) -> float:
    """The share of uint8 images whose random quarter turn the network names (chance: 1/TURNS)."""
    turns = torch.randint(0, TURNS, (len(images),), generator=torch.Generator().manual_seed(seed))
    right = 0
    for start in range(0, len(images), 500):
        x = rotate_each(datasets.to_float(images[start:start + 500]), turns[start:start + 500])
        right += int((net(x).argmax(1) == turns[start:start + 500]).sum())
    return right / max(1, len(images))




def unlabelled_data(images: torch.Tensor, source: str, *, num_reference: int = 5_000,
                    recipe: dict = SELF_SUPERVISED_RECIPE) -> RealData:
    """uint8 images [N, C, H, H] without labels (any labels they had are dropped), split as the
    labelled metrics split theirs; `source` names where they come from (part of the cache key)."""
    labels = torch.zeros(len(images), dtype=torch.int64)
    return split_real(f"unlabelled-{source}", images, labels, ("images",), num_reference=num_reference,
                      recipe=recipe, where=source)


def unlabelled_folder_data(root: str | Path, *, resolution: int = 32, num_reference: int = 5_000) -> RealData:
    """Every image under `root` (sub-folders or not; labels ignored), resized to `resolution`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"--data-root {root} is not a folder; pass a folder of images (png, jpg, ...)")
    data = datasets.load_dataset("folder", data_root=root, resolution=resolution)
    return unlabelled_data(data.images, str(root.resolve()), num_reference=num_reference)
