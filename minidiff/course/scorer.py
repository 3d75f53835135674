"""The problem sets' yardstick for Fashion-MNIST samples: a small classifier minidiff trains itself on
the training images, shipped with the package (weights/fmnist_scorer.pt, 146 KB) together with
the statistics of its features on the 10,000 test images, so that grading needs no download and
no data.

    FCD   the Frechet distance between the features of the samples and those of the test images
          (the FID's formula, minidiff.evaluation.fid.frechet_distance, in a 64-number feature space)
    class_kl   KL(test classes || sample classes) of the predicted classes: a model that draws
          only shirts scores high here even when its shirts are good

Calibration (`python -m minidiff.course.scorer build ROOT` prints it, docs/exercises/problem_sets.md
has the table): real training images against the test images at the sample counts the sets use,
the same images blurred, with their brightness squeezed towards the mean, and uniform noise.

The network is minidiff.evaluation.classifier.Classifier (one channel, ten classes) trained by the
same `train_classifier` the library's metrics use; this file only fixes its recipe and its data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

WEIGHTS = Path(__file__).resolve().parent / "weights" / "fmnist_scorer.pt"
RECIPE = dict(version=1, widths=(16, 32, 64, 64), steps=600, batch_size=128, lr=3e-3, colour_weight=1.0,
              shuffle_channels=False, seed=0)


class Scorer:
    """The trained classifier and the test images' feature statistics; `score(images)`."""

    def __init__(self, path: str | Path = WEIGHTS):
        from ..evaluation.classifier import Classifier

        state = torch.load(path, map_location="cpu", weights_only=True)
        self.shape = (int(state.get("channels", 1)), int(state.get("size", 28)), int(state.get("size", 28)))
        self.net = Classifier(self.shape[0], len(state["classes"]), tuple(state["widths"]))
        self.net.load_state_dict({k: v.float() for k, v in state["net"].items()})
        self.net.eval()
        self.mu, self.sigma = state["mu"].double(), state["sigma"].double()
        self.test_classes = state["classes"].double()
        self.info = {k: v for k, v in state.items() if k not in ("net", "mu", "sigma", "classes")}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, 64] float64, predicted classes [N]) of images: uint8 [N, 1, 28, 28], or float
        in [-1, 1] (rounded to 256 levels first, as a saved image would be)."""
        x = as_uint8(images, self.shape)
        feats, preds = [], []
        for start in range(0, len(x), 500):
            f = self.net.features(x[start:start + 500].float() / 127.5 - 1)
            feats.append(f.double())
            preds.append(self.net.head(f).argmax(1))
        return torch.cat(feats), torch.cat(preds)

    def score(self, images: torch.Tensor) -> dict:
        """FCD and class_kl of images against the test split (see the module's docstring)."""
        from ..evaluation.fid import frechet_distance

        f, pred = self.features(images)
        if len(f) < 2:
            raise ValueError("scoring needs at least 2 images")
        mu, sigma = f.mean(0), torch.cov(f.T)
        hist = torch.bincount(pred, minlength=len(self.test_classes)).double() / len(pred) + 1e-6
        test = self.test_classes + 1e-6
        return dict(n=len(f), fcd=frechet_distance(mu, sigma, self.mu, self.sigma),
                    class_kl=float((test * (test / hist).log()).sum()),
                    class_shares=[round(v, 4) for v in (hist - 1e-6).tolist()])


def as_uint8(images: torch.Tensor, shape=(1, 28, 28)) -> torch.Tensor:
    """uint8 [N, *shape] from uint8 or float in [-1, 1] images of that shape."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"the scorer takes images [N, {', '.join(map(str, shape))}], got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


_CACHE: dict = {}


def default_scorer() -> Scorer:
    """The packaged scorer, loaded once per process."""
    if "scorer" not in _CACHE:
        _CACHE["scorer"] = Scorer()
    return _CACHE["scorer"]


SHAPES_WEIGHTS = WEIGHTS.parent / "shapes16_scorer.pt"
SHAPES_RECIPE = dict(version=1, widths=(16, 32, 64, 64), steps=400, batch_size=128, lr=3e-3, colour_weight=1.0,
                     shuffle_channels=False, seed=0)
SHAPES_DATA = dict(train=20_000, train_seed=0, test=5_000, test_seed=1, size=16)  # minidiff.training.data.builtin_shapes


def shapes_scorer() -> Scorer:
    """Problem set 2's scorer: the same classifier on the built-in shapes at 16x16 (colour, ten
    classes), its feature statistics taken on 5,000 shapes drawn with another seed."""
    if "shapes" not in _CACHE:
        _CACHE["shapes"] = Scorer(SHAPES_WEIGHTS)
    return _CACHE["shapes"]


def build_shapes(out: str | Path = SHAPES_WEIGHTS) -> dict:
    """Train the shapes scorer on 20,000 built-in shapes (seed 0), take its statistics on 5,000
    others (seed 1), save both (float16 weights) and return its calibration."""
    from ..evaluation.classifier import train_classifier
    from ..evaluation.measures import blur, squeeze_brightness, uniform_noise
    from ..training.data import builtin_shapes

    d = SHAPES_DATA
    train = builtin_shapes(d["train"], seed=d["train_seed"], resolution=d["size"])
    test = builtin_shapes(d["test"], seed=d["test_seed"], resolution=d["size"])
    net = train_classifier(train.images, train.labels, 10, recipe=SHAPES_RECIPE, progress=False)
    state = dict(widths=list(SHAPES_RECIPE["widths"]), recipe=SHAPES_RECIPE, data=d, channels=3, size=d["size"],
                 net={k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()},
                 mu=torch.zeros(1), sigma=torch.zeros(1, 1), classes=torch.zeros(10))
    out = Path(out)
    torch.save(state, out)
    f, pred = Scorer(out).features(test.images)
    state.update(mu=f.mean(0).float(), sigma=torch.cov(f.T).float(),
                 classes=torch.bincount(pred, minlength=10).float() / len(pred),
                 test_accuracy=float((pred == test.labels).double().mean()))
    torch.save(state, out)
    scorer = Scorer(out)
    real = train.images[:500]
    return dict(test_accuracy=round(state["test_accuracy"], 4), **{name: round(scorer.score(x)["fcd"], 2) for name, x in {
        "real training images (500)": real, "blurred (sigma 1 px)": blur(real, 1.0),
        "brightness moved 80% of the way to the mean": squeeze_brightness(real, 0.8),
        "uniform noise": uniform_noise(real, seed=0)}.items()})


# ------------------------------------------------------------------------------------------------
# Building the weights (once, by minidiff's maintainers) and calibrating them
# ------------------------------------------------------------------------------------------------


def build(root: str | Path, out: str | Path = WEIGHTS) -> dict:
    """Train the classifier on Fashion-MNIST's 60,000 training images in `root` (the four idx files),
    take its feature statistics on the 10,000 test images, save both to `out` (float16 weights) and
    return the calibration."""
    from ..evaluation.classifier import train_classifier
    from ..training.data import idx_dataset

    train = idx_dataset("fashion-mnist", root, train=True, download=False)
    test = idx_dataset("fashion-mnist", root, train=False, download=False)
    net = train_classifier(train.images, train.labels, 10, recipe=RECIPE, progress=False)
    state = dict(widths=list(RECIPE["widths"]), recipe=RECIPE,
                 net={k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()},
                 mu=torch.zeros(1), sigma=torch.zeros(1, 1), classes=torch.zeros(10))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    scorer = Scorer(out)  # the float16 weights, as graders will load them
    f, pred = scorer.features(test.images)
    state.update(mu=f.mean(0).float(), sigma=torch.cov(f.T).float(),
                 classes=torch.bincount(pred, minlength=10).float() / len(pred),
                 test_accuracy=float((pred == test.labels).double().mean()))
    torch.save(state, out)
    return calibrate(root, Scorer(out))


def calibrate(root: str | Path, scorer: Scorer | None = None, sizes=(500, 1000)) -> dict:
    """What the numbers mean: real training images, blurred, squeezed and noise, scored against the
    test split at each sample count in `sizes`."""
    from ..evaluation.measures import blur, squeeze_brightness, uniform_noise
    from ..training.data import idx_dataset

    scorer = scorer or default_scorer()
    train = idx_dataset("fashion-mnist", root, train=True, download=False)
    out = {"test_accuracy": round(scorer.info.get("test_accuracy", float("nan")), 4)}
    for n in sizes:
        real = train.images[torch.randperm(len(train.images), generator=torch.Generator().manual_seed(n))[:n]]
        rows = {"real training images": real, "blurred (sigma 1 px)": blur(real, 1.0),
                "brightness moved 80% of the way to the mean": squeeze_brightness(real, 0.8),
                "uniform noise": uniform_noise(real, seed=n)}
        out[n] = {name: round(scorer.score(x)["fcd"], 2) for name, x in rows.items()}
    return out


if __name__ == "__main__":  # python -m minidiff.course.scorer build|calibrate ROOT | build-shapes
    import json

    if sys.argv[1:] == ["build-shapes"]:
        torch.set_num_threads(1)
        print(json.dumps(build_shapes(), indent=1))
        sys.exit(0)

    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "calibrate"):
        sys.exit("usage: python -m minidiff.course.scorer build|calibrate FASHION_MNIST_ROOT")
    torch.set_num_threads(1)
    result = build(sys.argv[2]) if sys.argv[1] == "build" else calibrate(sys.argv[2])
    print(json.dumps(result, indent=1))
