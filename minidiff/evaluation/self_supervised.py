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

Rotation is blind where an image looks the same turned (a disc, a checkerboard); the brightness
head and the convolutions' own response to texture still see noise and blur there, less keenly.
A third task that lost: naming the damage done to an image (blur, noise, cut contrast; commit
d1d9b09) made the features a damage detector that ranked real images at 80% contrast below
200-step samples, the opposite of a labelled classifier's verdict. docs/metrics.md has the
calibration and the rank agreement with a labelled classifier's Frechet distance.

    SELF_SUPERVISED_RECIPE        everything that decides the trained network (part of the cache key)
    rotate_each                   images turned by a quarter turn each
    train_self_supervised         fit the network to uint8 images, no labels
    rotation_accuracy             its share of right answers on held-out images (chance: 25%)
    unlabelled_data, unlabelled_folder_data   the real images, labels dropped, cut as the metrics cut them
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..training import data as datasets
from .classifier import Classifier, RealData, fit, split_real

TURNS = 4  # quarter turns: 0, 90, 180, 270 degrees
SELF_SUPERVISED_RECIPE = dict(version=4, task="rotation", widths=(16, 32, 64, 64), steps=300, batch_size=128,
                              lr=3e-3, colour_weight=1.0, seed=0)


def rotate_each(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Image i of square images [B, C, H, H] turned by turns[i] quarter turns (counter-clockwise)."""
    out = x.clone()
    for k in range(1, TURNS):
        pick = turns == k
        if pick.any():
            out[pick] = torch.rot90(x[pick], k, dims=(2, 3))
    return out


def train_self_supervised(images: torch.Tensor, *, recipe: dict = SELF_SUPERVISED_RECIPE,
                          progress: bool = True) -> Classifier:
    """Fit a Classifier with TURNS outputs to uint8 images [N, C, H, H], no labels: each image of a
    batch is given a random quarter turn and the target is that turn (classifier.fit has the loss,
    the optimiser and the seeding)."""

    def batch(x, index, g):
        turns = torch.randint(0, TURNS, (len(x),), generator=g)
        return rotate_each(x, turns), turns

    return fit(images, TURNS, batch, recipe=recipe, desc="training the metrics network (no labels)",
               progress=progress)


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
    labelled metrics split theirs, but not mirrored: samples are compared with the images as they
    are. (A model trained with random flips on a folder whose images face one way, as Fashion-MNIST's
    shoes do, draws half of them mirrored: a real difference from the folder. The shared Fashion-MNIST
    scorer sees it too: 2,000 training images, half of them mirrored, score 43 there against 1.0.)
    `source` names where the images come from (part of the cache key)."""
    labels = torch.zeros(len(images), dtype=torch.int64)
    return split_real(f"unlabelled-{source}", images, labels, ("images",), num_reference=num_reference,
                      recipe=recipe, where=source, flip=False)


def unlabelled_folder_data(root: str | Path, *, resolution: int = 32, num_reference: int = 5_000) -> RealData:
    """Every image under `root` (sub-folders or not; labels ignored), resized to `resolution`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"--data-root {root} is not a folder; pass a folder of images (png, jpg, ...)")
    data = datasets.load_dataset("folder", data_root=root, resolution=resolution)
    return unlabelled_data(data.images, str(root.resolve()), num_reference=num_reference)
