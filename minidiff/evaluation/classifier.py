"""The judge of minidiff.evaluation.metrics: a small classifier, the real images it learns from, its cache.

    Classifier         a small CNN whose penultimate features the Frechet distance is taken in
    train_classifier   fits it to real images: their class, and each channel's mean
    fit                the training loop it shares with the unlabelled network (self_supervised.py)
    classify           features and predicted classes of uint8 images
    RealData           the real images: `train` fits the classifier, `held` is the reference
                       samples are compared with, `other` is what the calibration degrades
    builtin_data, folder_data   those draws for the built-in shapes or a folder of classes
    split_real         any set of real images cut into those three parts
    cache_path, load_cached     one trained classifier on disk per fingerprint of its data

minidiff.evaluation.metrics (the measures, the calibration, `Judge` and the command line) is built on these.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..training import data as datasets

DEFAULT_CACHE = Path("~/.cache/minidiff/metrics")
# Seeds of the built-in draws the instrument uses: far from the small seeds runs train with, so
# none of its images is an image a model was trained on.
BUILTIN_SEED = 1_000_003
# Everything that decides the trained classifier; part of the cache key, so a change retrains.
CLASSIFIER_RECIPE = dict(version=1, widths=(16, 32, 64, 64), steps=150, batch_size=128, lr=3e-3,
                         colour_weight=1.0, shuffle_channels=True, seed=0)


# ------------------------------------------------------------------------------------ images


def random_flips(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2, as the trainer's batches are (DDPM Sec. 4)."""
    flip = torch.rand(len(images), generator=torch.Generator().manual_seed(seed)) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


# ---------------------------------------------------------------------------------- classifier


class Classifier(nn.Module):
    """A small CNN: 3x3 convolutions with batch norm, halving the size between them, then global
    average pooling to the penultimate features (`features`, widths[-1] numbers) and a linear head
    for the class. A second linear head reads each channel's mean (brightness and tint) from the
    same features: trained on that too, the features keep what a classifier alone would throw
    away, and the Frechet distance sees a wrong brightness or colour cast."""

    def __init__(self, channels: int, num_classes: int, widths=CLASSIFIER_RECIPE["widths"]):
        super().__init__()
        layers, c_in = [], channels
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c_in = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, num_classes)
        self.colour = nn.Linear(c_in, channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, widths[-1]] of float images [B, C, H, W] in [-1, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                     recipe: dict = CLASSIFIER_RECIPE, progress: bool = True) -> Classifier:
    """Fit the classifier to uint8 images and their classes (see `fit`); on colour images each
    batch's channels are shuffled first when recipe["shuffle_channels"] is set."""

    def batch(x, index, g):
        if recipe["shuffle_channels"] and x.shape[1] == 3:
            x = shuffle_channels(x, g)
        return x, labels[index]

    return fit(images, num_classes, batch, recipe=recipe, desc="training the metrics classifier",
               progress=progress)


def fit(images: torch.Tensor, num_outputs: int, batch, *, recipe: dict, desc: str,
        progress: bool = True) -> Classifier:
    """A Classifier with `num_outputs` outputs fitted to uint8 images [N, C, H, W]: each step draws
    recipe["batch_size"] images, mirrors each with probability 1/2, and `batch(x, index, generator)`
    returns the network's input and its target class (the label, or a task the images set
    themselves). The loss is cross-entropy on the target plus recipe["colour_weight"] times the
    squared error on each channel's mean; Adam, recipe["steps"] steps with the learning rate decayed
    linearly to 0. Seeded by recipe["seed"]; leaves the global RNG as it was."""
    from tqdm.auto import tqdm

    with torch.random.fork_rng():
        torch.manual_seed(recipe["seed"])
        net = Classifier(images.shape[1], num_outputs, recipe["widths"])
        opt = torch.optim.Adam(net.parameters(), lr=recipe["lr"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / recipe["steps"])
        g = torch.Generator().manual_seed(recipe["seed"])
        net.train()
        for _ in tqdm(range(recipe["steps"]), desc=desc, unit="step", disable=not progress):
            index = torch.randint(0, len(images), (recipe["batch_size"],), generator=g)
            x = random_flips(datasets.to_float(images[index]), int(torch.randint(2**62, (1,), generator=g)))
            x, target = batch(x, index, g)
            f = net.features(x)
            loss = F.cross_entropy(net.head(f), target) + \
                recipe["colour_weight"] * F.mse_loss(net.colour(f), x.mean((2, 3)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def shuffle_channels(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image's colour channels in a random order: a red square becomes a green or a blue one,
    so the class must be read from the shape, not from the colour alone."""
    order = torch.rand(x.shape[0], 3, generator=generator).argsort(1)
    return x.gather(1, order[:, :, None, None].expand_as(x))


@torch.no_grad()
def classify(net: Classifier, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(features float64 [N, D], predicted classes [N]) of uint8 images, in batches."""
    feats, preds = [], []
    for start in range(0, len(images), batch_size):
        f = net.features(datasets.to_float(images[start:start + batch_size]))
        feats.append(f.double())
        preds.append(net.head(f).argmax(1))
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()


# ---------------------------------------------------------------------------------- real data


@dataclass
class RealData:
    """The real images the instrument uses, uint8 [N, C, H, W] with labels: `train` fits the
    classifier; `held` (held out from training) is the reference samples are compared with;
    `other` (a third, disjoint draw) is what the calibration rows degrade."""

    name: str
    classes: tuple[str, ...]
    train: tuple[torch.Tensor, torch.Tensor]
    held: tuple[torch.Tensor, torch.Tensor]
    other: tuple[torch.Tensor, torch.Tensor]
    recipe: dict = field(default_factory=lambda: CLASSIFIER_RECIPE)  # how the network is trained
    fingerprint: str = field(init=False)

    def __post_init__(self):
        h = hashlib.sha256(repr((self.name, self.classes, self.recipe)).encode())
        for images, labels in (self.train, self.held, self.other):
            h.update(repr(tuple(images.shape)).encode())
            h.update(images.contiguous().numpy().tobytes())
            h.update(labels.numpy().astype(np.int64).tobytes())
        self.fingerprint = h.hexdigest()

    @property
    def labelled(self) -> bool:
        """Two classes or more: a classifier can be trained. One: the images carry no labels."""
        return len(self.classes) > 1

    @property
    def channels(self) -> int:
        return self.train[0].shape[1]

    def all_images(self) -> torch.Tensor:
        """Every real image of the three parts (some mirrored): for a folder, the whole folder."""
        return torch.cat([self.train[0], self.held[0], self.other[0]])

    @property
    def resolution(self) -> int:
        return self.train[0].shape[-1]


def builtin_data(*, num: int = 10_000, num_reference: int = 5_000, resolution: int = 32) -> RealData:
    """Three independent draws of the built-in shapes (seeds BUILTIN_SEED, +1, +2)."""
    train = datasets.builtin_shapes(num, seed=BUILTIN_SEED, resolution=resolution)
    held = datasets.builtin_shapes(num_reference, seed=BUILTIN_SEED + 1, resolution=resolution)
    other = datasets.builtin_shapes(num_reference, seed=BUILTIN_SEED + 2, resolution=resolution)
    return RealData(f"builtin-{num}", train.classes, (train.images, train.labels),
                    (random_flips(held.images, 1), held.labels), (random_flips(other.images, 2), other.labels))


def check_class_folder(root: str | Path) -> Path:
    """The folder, if it is laid out as one sub-folder per class (at least two); else a clear error."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"--data-root {root} is not a folder; pass a folder with one sub-folder of images per class")
    loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in datasets.IMAGE_SUFFIXES]
    subdirs = [p for p in root.iterdir() if p.is_dir()]
    if loose or len(subdirs) < 2:
        raise ValueError(f"{root} must hold one sub-folder of images per class (at least two classes, no loose "
                         f"images); it has {len(subdirs)} sub-folder(s) and {len(loose)} loose image(s)")
    return root


def split_real(name: str, images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], *,
               num_reference: int = 5_000, recipe: dict = CLASSIFIER_RECIPE, where: str = "the folder",
               flip: bool = True) -> RealData:
    """A set of real images split at random (fixed seed) into held-out and other parts of
    min(num_reference, N/5) images each, and the rest for training the network; with `flip`, the
    held-out and other parts mirrored at random, as the trainer's batches are."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    k = min(num_reference, len(images) // 5)
    if k < 10:
        raise ValueError(f"{where} holds {len(images)} images; the metrics need at least 50 (to hold 20% out)")
    held, other, train = order[:k], order[k:2 * k], order[2 * k:]
    mirror = random_flips if flip else (lambda x, seed: x)
    return RealData(name, tuple(classes), (images[train], labels[train]), (mirror(images[held], 1), labels[held]),
                    (mirror(images[other], 2), labels[other]), recipe=recipe)


def is_class_folder(root: str | Path) -> bool:
    """True when `root` is laid out as one sub-folder of images per class (see check_class_folder)."""
    try:
        check_class_folder(root)
    except ValueError:
        return False
    return True


def folder_data(root: str | Path, *, resolution: int = 32, num_reference: int = 5_000) -> RealData:
    """A class-labelled image folder, split by `split_real`."""
    root = check_class_folder(root)
    data = datasets.load_dataset("folder", data_root=root, resolution=resolution)
    if data.num_classes < 2:
        raise ValueError(f"{root} must hold one sub-folder of images per class; found {data.num_classes} class")
    return split_real(f"folder-{root.resolve()}", data.images, data.labels, data.classes,
                      num_reference=num_reference, where=str(root))


# --------------------------------------------------------------------------------------- cache


def cache_path(real: RealData, cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """One file per fingerprint: data that differs in any image gets another file."""
    kind = real.name.split("-")[0]
    return (Path(cache_dir).expanduser() /
            f"{kind}-{real.resolution}px-{real.channels}ch-{real.fingerprint[:16]}.pt")


def load_cached(path: Path, fingerprint: str) -> dict | None:
    """The cached classifier at `path` if there is one; refused if it was trained on other data."""
    if not path.exists():
        return None
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if stored.get("fingerprint") != fingerprint:
        raise ValueError(f"{path} holds a classifier of other data (fingerprint {str(stored.get('fingerprint'))[:16]}, "
                         f"not {fingerprint[:16]}); delete it or use another --cache-dir")
    return stored
