"""Sample quality without a download: a small network trained on the real images judges samples.

FID needs Inception weights from the internet and 50,000 samples; a student's ten-minute CPU run
has neither. This file measures samples against the real set they imitate with a small network
trained on that set's own images, once, in seconds, and cached on disk by a fingerprint of the
data it describes: a classifier for a labelled set (the built-in shapes, or a folder with one
sub-folder per class), and for a folder without labels the same network trained to name each
image's quarter turn (minidiff.evaluation.self_supervised). The measures:

- **Frechet distance** between the samples and held-out real images in the network's
  penultimate features (64 numbers an image): Heusel et al.'s FID formula, computed by
  `fid.frechet_distance` and `fid.statistics`, with this network in place of Inception.
- **Class accuracy**: for class-conditional samples, the share the classifier assigns to the class
  they were drawn for (the classifier's own accuracy on held-out real images is reported too).
- **Brightness W1**: the Wasserstein-1 distance between the distributions of per-image mean
  brightness (in [-1, 1] units) of the samples and of held-out real images; the quantity Lin et
  al.'s flawed schedules get wrong (samples pulled towards medium brightness).
- **Near-black and near-white backgrounds**: the share of images whose background (the median
  brightness of the pixels in the four 3x3 corners, in [0, 1]) is below 0.15 or above 0.85. W1
  says the brightness is off; these say where: a squeezed model draws too few of both extremes.
- **Saturation and mean colour** (colour images): the mean over images of each image's HSV
  saturation, and the mean red, green and blue, in [0, 1]; the calibration's real column holds the
  data's. A washed-out model draws too little saturation; a tinted one moves the mean colour.

A number means little alone, so each is printed beside its calibration on the same data and the
same number of images: another real draw (the floor: what sampling noise alone gives), and that
draw blurred, with its brightness squeezed halfway towards the mean, and replaced by uniform noise.

For a folder, the command line also checks for copies (minidiff.evaluation.copies): how near each
sample comes to its nearest image of the folder, against how near the folder's own images come to
each other.

Every image passes through uint8 (as a saved sample does) before it is measured. A labelled
set's real images get random horizontal flips, as the trainer's batches do, so the reference is the
distribution a model is trained on; a folder without labels is compared as it is (see
minidiff.evaluation.self_supervised for why).

The classifier, the real images it learns from and its cache are in minidiff.evaluation.classifier,
the network trained without labels in minidiff.evaluation.self_supervised, the measures' arithmetic
and the calibration's damage in minidiff.evaluation.measures, the image layouts it accepts (`nchw`,
`as_uint8_images`) in minidiff.training.data (their names are importable from here too); this file
holds the calibration, `Judge` and the command line.

    minidiff sample CKPT --num 2000 --npz samples.npz --png ""
    minidiff metrics samples.npz --dataset builtin
    minidiff metrics samples.npz --dataset folder --data-root DIR     # labelled or not

In Python (what the trainer calls at the end of a run):

    judge = Judge.for_dataset("builtin", resolution=32)   # trains or loads the classifier
    print(judge.report(images, labels))                   # the table, with calibration
    judge.score(images, labels)       # {"frechet": ..., "accuracy": ..., "brightness_w1": ...}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..training.cli import HelpFormatter
from ..training.data import IMAGE_SUFFIXES, as_uint8_images, nchw  # noqa: F401 (re-exported: the image formats the measures accept)
from .classifier import (BUILTIN_SEED, CLASSIFIER_RECIPE, DEFAULT_CACHE, Classifier,  # noqa: F401 (re-exported)
                         RealData, builtin_data, cache_path, check_class_folder, classify, folder_data,
                         is_class_folder, load_cached, random_flips, shuffle_channels, split_real, train_classifier)
from .copies import copy_check, format_copy_check
from .fid import frechet_distance, statistics
from .measures import (BACKGROUND_CORNER, NEAR_BLACK, NEAR_WHITE, background, background_shares,  # noqa: F401 (re-exported)
                       blur, brightness, mean_colour, saturation, squeeze_brightness, uniform_noise,
                       wasserstein1)
from .self_supervised import TURNS, rotation_accuracy, train_self_supervised, unlabelled_data, unlabelled_folder_data

DATASETS = ("builtin", "folder")
CALIBRATIONS = ("real", "blurred", "squeezed", "noise")
MEASURES = ("frechet", "accuracy", "brightness_w1", "black_backgrounds", "white_backgrounds", "saturation",
            "mean_colour")
SHARES = ("accuracy", "black_backgrounds", "white_backgrounds")  # printed as percentages


# --------------------------------------------------------------------------------------- judge


class Judge:
    """A trained classifier and the real reference of one dataset: scores samples and calibrates.

    Build with `Judge.for_dataset(...)`; then `score(images, labels)` for the measures of some
    images, `calibration(num)` for the same measures of real and degraded real images, and
    `report(images, labels)` for both as a printable table. `accuracy` is the classifier's own
    accuracy on the held-out real images; `trained` says whether this construction trained it
    (False: loaded from the cache).
    """

    def __init__(self, real: RealData, *, cache_dir: str | Path | None = DEFAULT_CACHE, progress: bool = True):
        self.real = real
        self.cache_file = cache_path(real, cache_dir) if cache_dir is not None else None
        stored = load_cached(self.cache_file, real.fingerprint) if self.cache_file else None
        self.trained = stored is None
        if stored is None:
            start = time.perf_counter()
            if real.labelled:
                net = train_classifier(*real.train, len(real.classes), recipe=real.recipe, progress=progress)
                accuracy = float((classify(net, real.held[0])[1] == real.held[1].numpy()).mean())
            else:  # no labels: the network learns which way up each image is (self_supervised.py)
                net = train_self_supervised(real.train[0], recipe=real.recipe, progress=progress)
                accuracy = rotation_accuracy(net, real.held[0])
            seconds = time.perf_counter() - start
            stored = dict(fingerprint=real.fingerprint, state=net.state_dict(), accuracy=accuracy,
                          classes=list(real.classes), seconds=seconds)
            if self.cache_file:
                self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_file.with_name(self.cache_file.name + ".tmp")
                torch.save(stored, tmp)
                tmp.replace(self.cache_file)
        self.net = Classifier(real.channels, len(real.classes) if real.labelled else TURNS, real.recipe["widths"])
        self.net.load_state_dict(stored["state"])
        self.net.eval()
        self.accuracy = stored["accuracy"]
        self.train_seconds = stored.get("seconds")
        ref_features, _ = classify(self.net, real.held[0])
        self.reference = statistics(ref_features)
        self.reference_brightness = brightness(real.held[0])
        self._calibration: dict[int, dict] = {}
        self._centre = float(real.other[0].float().mean())  # what "squeezed" squeezes towards (0..255)

    @classmethod
    def for_dataset(cls, dataset: str = "builtin", *, data_root: str | Path | None = None, resolution: int = 32,
                    num: int = 10_000, num_reference: int = 5_000, cache_dir: str | Path | None = DEFAULT_CACHE,
                    progress: bool = True, labels: bool = True) -> "Judge":
        """The judge of "builtin" (`num` training images drawn at `resolution`) or of "folder"
        (`data_root` resized to `resolution`: with one sub-folder per class a classifier, without,
        or with labels=False, the self-supervised network). The network is loaded from `cache_dir`
        when one was trained on exactly these images, else trained and saved there (cache_dir=None:
        never cached)."""
        if dataset == "builtin":
            real = builtin_data(num=num, num_reference=num_reference, resolution=resolution)
        elif dataset == "folder":
            if data_root is None:
                raise ValueError("--dataset folder needs --data-root DIR (a folder of images)")
            labelled = labels and is_class_folder(data_root)
            real = (folder_data if labelled else unlabelled_folder_data)(data_root, resolution=resolution,
                                                                         num_reference=num_reference)
        else:
            raise ValueError(f"the metrics need a labelled dataset: one of {', '.join(DATASETS)}, not {dataset!r} "
                             "(for CIFAR-10 use minidiff fid)")
        return cls(real, cache_dir=cache_dir, progress=progress)

    @classmethod
    def for_images(cls, images: torch.Tensor, labels: torch.Tensor, classes, source: str, *, num_reference: int = 5_000,
                   cache_dir: str | Path | None = DEFAULT_CACHE, progress: bool = True, flip: bool = True) -> "Judge":
        """The judge of a set already in memory (uint8 [N, C, H, W], as the trainer holds it): a
        classifier with two classes or more, else the self-supervised network. `source` names the
        set; for a folder, its resolved path, so this judge and `for_dataset("folder", ...)` share
        the cache when they see the same images. `flip`: the labelled reference mirrored at random, as
        a model trained with flips sees it (the trainer passes its own setting)."""
        if len(classes) > 1:
            real = split_real(f"folder-{source}" + ("" if flip else "-unflipped"), images, labels, tuple(classes),
                              num_reference=num_reference, where=source, flip=flip)
        else:
            real = unlabelled_data(images, source, num_reference=num_reference)
        return cls(real, cache_dir=cache_dir, progress=progress)

    @property
    def resolution(self) -> int:
        return self.real.resolution

    @property
    def channels(self) -> int:
        return self.real.channels

    def _measure(self, images: torch.Tensor, labels) -> dict:
        feats, preds = classify(self.net, images)
        if labels is not None and not np.all(labels >= 0):
            labels = None  # the sample CLI writes -1 for an unconditional model
        black, white = background_shares(images)
        colour = images.shape[1] == 3
        return dict(frechet=frechet_distance(*statistics(feats), *self.reference),
                    accuracy=None if labels is None or not self.real.labelled else float((preds == labels).mean()),
                    brightness_w1=wasserstein1(brightness(images), self.reference_brightness),
                    black_backgrounds=black, white_backgrounds=white,
                    saturation=float(saturation(images).mean()) if colour else None,
                    mean_colour=[round(float(c), 4) for c in mean_colour(images).mean(0)] if colour else None,
                    num=len(images))

    def score(self, images, labels=None) -> dict:
        """The measures of `images` (see as_uint8_images for the formats) with optional class
        `labels` [N] (-1 or None: unconditional): {"frechet", "accuracy" (None without labels),
        "brightness_w1", "black_backgrounds", "white_backgrounds", "saturation" and "mean_colour" (None for
        grey images), "num", "notes" (conversions made)}."""
        images, notes = as_uint8_images(images, channels=self.channels, resolution=self.resolution)
        if labels is not None:
            labels = np.asarray(labels).reshape(-1).astype(np.int64)
            if len(labels) != len(images):
                raise ValueError(f"{len(labels)} labels for {len(images)} images")
            if self.real.labelled and labels.max() >= len(self.real.classes):
                raise ValueError(f"label {labels.max()} out of range: the dataset has {len(self.real.classes)} classes")
        return {**self._measure(images, labels), "notes": notes}

    def calibration(self, num: int | None = None) -> dict[str, dict]:
        """The measures of `num` real images (default: all of the `other` draw), and of those
        images blurred (sigma = resolution/32 pixels), with brightness squeezed halfway towards
        the mean of the whole draw, and replaced by uniform noise: {"real": {...}, "blurred": ..., "squeezed": ...,
        "noise": ...}. Use the samples' count, so the small-sample bias of the Frechet distance is
        the same in both."""
        images, labels = self.real.other
        num = min(num or len(images), len(images))
        if num not in self._calibration:
            x, y = images[:num], labels[:num].numpy()
            degraded = dict(real=x, blurred=blur(x, self.resolution / 32), squeezed=squeeze_brightness(x, 0.5, self._centre),
                            noise=uniform_noise(x, seed=3))
            self._calibration[num] = {k: self._measure(v, y) for k, v in degraded.items()}
        return self._calibration[num]

    def real_spread(self, num: int) -> list[dict]:
        """The brightness measures of disjoint draws of `num` real images (the calibration part,
        split in order): how far W1 and the background shares of real images move between draws
        of this size, the noise a sample set's numbers carry. One dict per draw: "brightness_w1",
        "black_backgrounds", "white_backgrounds", "num"."""
        images = self.real.other[0]
        if not 1 <= num <= len(images):
            raise ValueError(f"a real draw of {num} images: choose 1 to {len(images)}, the real images held for calibration")
        draws = []
        for start in range(0, len(images) - num + 1, num):
            x = images[start:start + num]
            black, white = background_shares(x)
            draws.append(dict(brightness_w1=wasserstein1(brightness(x), self.reference_brightness),
                              black_backgrounds=black, white_backgrounds=white, num=num))
        return draws

    def report(self, images, labels=None) -> str:
        """score() and calibration() for the same number of images as a table, with a header
        naming the data and the classifier's own held-out accuracy."""
        s = self.score(images, labels)
        return format_table(s, self.calibration(s["num"]), self.describe())

    def figure(self, images, path: str | Path, per_row: int = 10) -> None:
        """A PNG of `per_row` of the images, above as many of each calibration set (real, blurred,
        squeezed, noise), one row each: what the numbers of the table look like."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x, _ = as_uint8_images(images, channels=self.channels, resolution=self.resolution)
        real = self.real.other[0][:per_row]
        rows = dict(samples=x[:per_row], real=real, blurred=blur(real, self.resolution / 32),
                    squeezed=squeeze_brightness(real, 0.5, self._centre),
                    noise=uniform_noise(real, seed=3))
        fig, axes = plt.subplots(len(rows), 1, figsize=(per_row * 0.6, len(rows) * 0.75))
        for ax, (name, row) in zip(axes, rows.items()):
            strip = torch.cat(list(row.expand(-1, 3, -1, -1)), dim=2).permute(1, 2, 0).numpy()
            ax.imshow(strip, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(name, fontsize=8, loc="left")
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
        plt.close(fig)

    def copies(self, images) -> dict:
        """copies.copy_check of `images` against every real image of the set (for a folder: the
        images a model trained on it saw)."""
        images, _ = as_uint8_images(images, channels=self.channels, resolution=self.resolution)
        return copy_check(images, self.real.all_images())

    def describe(self) -> str:
        n_train, n_held = len(self.real.train[0]), len(self.real.held[0])
        what = (f"classifier of {self.real.name} ({len(self.real.classes)} classes" if self.real.labelled else
                f"self-supervised network of {self.real.name} (no labels: trained to name each image's quarter turn")
        right = "right on" if self.real.labelled else "turns named right on"
        return (f"{what}, {self.resolution}x{self.resolution}, "
                f"{self.channels} ch; trained on {n_train} real images, {100 * self.accuracy:.1f}% {right} "
                f"{n_held} held out; {f'trained now in {self.train_seconds:.0f} s' if self.trained else 'from cache'}"
                f"{f': {self.cache_file}' if self.cache_file else ''})")


def format_table(score: dict, calibration: dict[str, dict], header: str = "") -> str:
    """One row per measure: the samples' value, then the calibration rows' values."""
    names = dict(frechet="Frechet distance (features)", accuracy="class accuracy",
                 brightness_w1="brightness W1", black_backgrounds=f"near-black backgrounds (< {NEAR_BLACK})",
                 white_backgrounds=f"near-white backgrounds (> {NEAR_WHITE})", saturation="saturation (HSV, mean)",
                 mean_colour="mean colour (R/G/B)")

    def fmt(key, value):
        if value is None:
            return "n/a"
        if key == "mean_colour":
            return "/".join(f"{c:.2f}" for c in value)
        return f"{100 * value:.1f}%" if key in SHARES else f"{value:.4g}"

    cols = ["samples", *(f"{c}" for c in CALIBRATIONS)]
    shown = [k for k in MEASURES if score.get(k) is not None or any(calibration[c].get(k) is not None for c in CALIBRATIONS)]
    rows = [[names[k], fmt(k, score.get(k)), *(fmt(k, calibration[c].get(k)) for c in CALIBRATIONS)] for k in shown]
    widths = [max(len(r[i]) for r in [["measure", *cols], *rows]) for i in range(len(cols) + 1)]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [header] if header else []
    n_cal = calibration["real"]["num"]
    count = f"{score['num']} images each" if n_cal == score["num"] else \
        f"{score['num']} samples, {n_cal} images per calibration row (all the real images there are)"
    out += [f"{count}; calibration: real = another real draw, blurred, brightness squeezed "
            "halfway to the mean, uniform noise", line(["measure", *cols]), *map(line, rows)]
    out += [f"note: {n}" for n in score.get("notes", [])]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ CLI


def format_spread(draws: list[dict]) -> str:
    """The table of real_spread: each draw's brightness measures, then their mean and range."""
    columns = dict(brightness_w1=("brightness W1", "{:.3f}", 14), black_backgrounds=("near-black", "{:.1%}", 11),
                   white_backgrounds=("near-white", "{:.1%}", 11))

    def row(label, value_of) -> str:
        return f"{label:>6} " + " ".join(f"{fmt.format(value_of(k)):>{width}}" for k, (_, fmt, width) in columns.items())

    rows = [f"real draws of {draws[0]['num']} images against the reference",
            f"{'draw':>6} " + " ".join(f"{title:>{width}}" for title, _, width in columns.values())]
    rows += [row(i, lambda k, d=d: d[k]) for i, d in enumerate(draws)]
    rows += [row(name, lambda k, f=f: f([d[k] for d in draws])) for name, f in (("mean", np.mean), ("min", np.min), ("max", np.max))]
    return "\n".join(rows)


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """`images` (and `labels` if present) from an .npz written by minidiff.training.sample."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; write samples with minidiff sample CKPT --npz {path}")
    try:
        with np.load(path) as f:
            if "images" not in f:
                raise ValueError(f"{path} holds no `images` array (it has {', '.join(f.files) or 'nothing'}); "
                                 "write it with minidiff sample CKPT --npz FILE")
            return f["images"], (f["labels"] if "labels" in f else None)
    except (OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz ({err})") from None


def check_args(args) -> None:
    """The flags in range, and the paths fit for what they are, before any image is read: a
    ValueError names the flag (main prints it as one line and exits 2)."""
    for flag, value in (("--num-images", args.num_images), ("--num-reference", args.num_reference),
                        ("--resolution", args.resolution), ("--threads", args.threads),
                        ("--real-spread", args.real_spread)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if (args.samples is None) == (args.real_spread is None):
        raise ValueError("give a sample .npz to score, or --real-spread N (not both)")
    if args.real_spread is not None and args.real_spread > args.num_reference:
        raise ValueError(f"--real-spread {args.real_spread} is more than the {args.num_reference} real images "
                         "held for calibration (--num-reference)")
    if args.figure and args.samples is None:
        raise ValueError("--figure draws samples; give a sample .npz")
    if Path(args.cache_dir).is_file():
        raise ValueError(f"--cache-dir {args.cache_dir} is a file; give a folder")
    if args.figure:
        figure, samples = Path(args.figure).resolve(), Path(args.samples).resolve()
        if Path(args.figure).is_dir():
            raise ValueError(f"--figure {args.figure} is a folder; give a PNG file name")
        if figure == samples:
            raise ValueError(f"--figure {args.figure} is the sample file itself; writing there would destroy it")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="minidiff metrics", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("samples", nargs="?",
                   help=".npz from minidiff sample (`images` uint8 [N, H, W, C], optional `labels`)")
    p.add_argument("--dataset", choices=DATASETS, default="builtin", help="the set the samples imitate")
    p.add_argument("--data-root", help="for --dataset folder: a folder of images; with one sub-folder per class a "
                                       "classifier judges, without, a network trained on it without labels")
    p.add_argument("--labels", action=argparse.BooleanOptionalAction, default=True,
                   help="--no-labels: judge a folder of classes with the network trained without labels too")
    p.add_argument("--copies", action=argparse.BooleanOptionalAction, default=True,
                   help="for --dataset folder: how near the samples come to their nearest image of the folder, "
                        "against real images (are they copies?)")
    p.add_argument("--resolution", type=int, help="the classifier's image side (default: the samples')")
    p.add_argument("--num-images", type=int, default=10_000, help="built-in images the classifier trains on")
    p.add_argument("--num-reference", type=int, default=5_000,
                   help="held-out real images the samples are compared with (and as many for calibration)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where trained classifiers are kept")
    p.add_argument("--figure", help="also save a PNG of some samples above the calibration sets")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--real-spread", type=int, metavar="N",
                   help="instead of scoring samples: the brightness W1 and background shares of disjoint draws "
                        "of N real images (the noise of those numbers at N samples)")
    args = p.parse_args(argv)
    try:
        check_args(args)
        if args.real_spread is not None:
            if args.threads:
                torch.set_num_threads(args.threads)
            judge = Judge.for_dataset(args.dataset, data_root=args.data_root, resolution=args.resolution or 32,
                                      num=args.num_images, num_reference=args.num_reference, cache_dir=args.cache_dir,
                                      labels=args.labels)
            print(format_spread(judge.real_spread(args.real_spread)))
            return
        images, labels = load_npz(args.samples)
        try:  # the images' shape and type are checked now, before any training
            resolution = args.resolution or nchw(images).shape[-1]
        except ValueError as err:
            raise ValueError(f"{args.samples}: {err}") from None
        if args.dataset == "folder":
            if not args.data_root:
                raise ValueError("--dataset folder needs --data-root DIR (a folder of images)")
            if not Path(args.data_root).expanduser().is_dir():
                raise ValueError(f"--data-root {args.data_root} is not a folder; pass a folder of images (png, jpg, ...)")
            found = sum(1 for f in Path(args.data_root).expanduser().rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if found < 50:
                raise ValueError(f"--data-root {args.data_root} holds {found} images; the metrics need at least 50 "
                                 "(a fifth is held out to compare with, a fifth to calibrate)")
        if args.threads:
            torch.set_num_threads(args.threads)
        judge = Judge.for_dataset(args.dataset, data_root=args.data_root, resolution=resolution,
                                  num=args.num_images, num_reference=args.num_reference,
                                  cache_dir=args.cache_dir, labels=args.labels)
        print(judge.report(images, labels))
        if args.dataset == "folder" and args.copies:
            print(format_copy_check(judge.copies(images)))
        if args.figure:
            judge.figure(images, args.figure)
            print(f"wrote {args.figure}")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
