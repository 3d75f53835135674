"""A fixed yardstick for each colour set of colour_sets.py: samples scored by a small classifier's features.

    python benchmarks/colour_fcd.py score SET SAMPLES    SET: icons or stamps; SAMPLES: an .npz or a folder of PNGs
    python benchmarks/colour_fcd.py calibrate SET        what the numbers mean: real vs real, blurred, squeezed, noise
    python benchmarks/colour_fcd.py train SET            (once) the classifier, written to scorers/SET_net.pt

SAMPLES is what `minidiff sample CKPT --npz s.npz` writes (`images`, uint8 [N, H, W, 3]; an .npz
without `images` gives its first array, NHWC or NCHW), or a folder of PNGs (read recursively, sorted,
each composited on white and fitted into 32x32 as the exporter does). Images of another size are
resized to 32x32.

The reference is the set itself, re-exported from the Debian packages by colour_sets.build at every
call (a few seconds), never a folder path, so scores compare across days and machines. The
classifier (scorers/SET_net.pt, trained once by `train`, seed 0) records a fingerprint of the images
it was trained on; `score` warns when the packages now give other images.

Score prints JSON:
  fcd             Frechet distance between the samples' and ALL the set's real images' 128 features
                  (the classifier's penultimate layer)
  class_kl        KL(data || samples) of the classifier's predicted-category histograms
  brightness_*    per-image mean brightness (all pixels and channels, in the library's [-1, 1] units):
                  W1 between samples and data, and the mean and std over images of each
  saturation      mean over images of the image's mean HSV saturation, (max - min) / max over R, G, B
                  per pixel (0 where max = 0): 0 for greys, 1 for pure colours
  colour_mean     mean R, G, B over all pixels of all images, in [-1, 1]
each with a *_data twin for the set's real images.

The classifier: three stages of 3x3 convolutions (32, 64, 128 channels) with batch norm, a 128-unit
feature layer, a linear read-out over the set's categories. Trained on a random 80% of each
category (seed 0) with shifts of up to 3 pixels (white fill) and no flips: mirrored text, arrows
and letters are mistakes a sampler can make, and a flip-blind scorer would not see them.

Held-out accuracy (the other 20%; the committed weights are this very network):
  icons  (9 contexts, 1,567 images)      0.684 of 313 (actions, 47% of the set, is the majority)
  stamps (12 categories, 949 images)     0.613 of 191 (symbols, 27%, is the majority)

Calibration (`calibrate SET`): every row but the half splits is 2,000 images drawn with replacement
from the set (seed 0), then damaged, scored by `score` against all the set's images, as a model's
2,000 samples are. "real, 2,000 drawn" is then the score of a model that copies training images,
the floor of this protocol; "half vs other half" (mean of 5 random splits) is real against unseen
real at half the set's size.

                                     icons (n = 1,567)   stamps (n = 949)
  real, 2,000 drawn with replacement       0.47               0.61
  new real images (estimated, below)       1.9                2.0
  real half vs all (mean of 5)             1.08               1.40
  real half vs other half (mean of 5)      4.22               5.54
  saturation to 80%                        1.52               1.65
  contrast to 80%                        128                 59
  the other set, 2,000 drawn              88                105
  3x3 box blur                           180                108
  uniform noise                          545                658
"half vs all" shares half its images with the reference, so it sits between the copier and unseen
real images. Between disjoint real sets of sizes a and b the FCD is close to c (1/a + 1/b), c about
1,500 on both sets (measured from a = b = 100 to n/2), so 2,000 new images from the set's own
distribution would score about c (1/2000 + 1/n): the "estimated" row, printed by `calibrate`. The
blur is the issue's bar; it costs as much as swapping in the other set's images (stamps) or twice
as much (icons): the classifiers lean on the sharp edges of drawn images. Saturation at 80% barely moves the FCD: read
the saturation figures for colour (data 0.135 icons, 0.127 stamps; squeezed 0.110, 0.101).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import colour_sets  # noqa: E402
from minidiff.evaluation.fid import frechet_distance  # noqa: E402
from minidiff.evaluation.measures import wasserstein1  # noqa: E402

SCORERS = HERE / "scorers"
SIZE = colour_sets.SIZE
SEED = 0
HELD_OUT = 0.2   # share of each category kept out of training, to measure accuracy
SHIFT = 3        # pixels: the largest shift of the training augmentation
EPOCHS, BATCH, LR, WEIGHT_DECAY = 60, 64, 2e-3, 5e-4
CALIBRATION_N = 2000


class UsageError(Exception):
    """Bad input on the command line; the message says what to give instead."""


# ------------------------------------------------------------------------------ the network


class Net(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()

        def stage(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.stages = nn.Sequential(stage(3, 32), nn.MaxPool2d(2), stage(32, 64), nn.MaxPool2d(2), stage(64, 128))
        self.f1 = nn.Linear(128 * 4, 128)
        self.fc = nn.Linear(128, num_classes)

    def features(self, x):  # x in [-1, 1], (N, 3, 32, 32)
        x = F.adaptive_avg_pool2d(self.stages(x), 2).flatten(1)
        return F.relu(self.f1(x))

    def forward(self, x):
        return self.fc(F.dropout(self.features(x), 0.3, self.training))


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 32, 32, 3] -> float [N, 3, 32, 32] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def fingerprint(images: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


def net_path(name: str) -> Path:
    return SCORERS / f"{name}_net.pt"


def load_net(name: str) -> tuple[Net, dict]:
    path = net_path(name)
    if not path.is_file():
        raise UsageError(f"no scorer at {path}: run python benchmarks/colour_fcd.py train {name}")
    saved = torch.load(path, weights_only=True)
    net = Net(len(saved["classes"]))
    net.load_state_dict(saved["state_dict"])
    return net.eval(), saved


@torch.no_grad()
def run_net(net: Net, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(features float64 [N, 128], predicted class [N]) of uint8 [N, 32, 32, 3] images."""
    feats, preds = [], []
    for i in range(0, len(images), batch):
        f = net.features(to_unit(images[i:i + batch]))
        feats.append(f.double().numpy())
        preds.append(net.fc(f).argmax(1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


# ----------------------------------------------------------------------------- training


def split(labels: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: HELD_OUT of each category held out, at random."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, round(HELD_OUT * len(idx)))
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to SHIFT pixels each way; the uncovered border is white (1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (SHIFT,) * 4, value=1.0)
    dy, dx = torch.randint(0, 2 * SHIFT + 1, (2, n), generator=generator)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train(images: np.ndarray, labels: np.ndarray, num_classes: int, *, epochs: int = EPOCHS,
          seed: int = SEED, log=print) -> tuple[Net, float]:
    """A classifier trained on the training split; returns it and its held-out accuracy."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    tr, held = split(labels, seed)
    x, y = to_unit(images[tr]), torch.from_numpy(labels[tr])
    net = Net(num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = epochs * -(-len(tr) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=steps, pct_start=0.15)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(tr), generator=g)
        for i in range(0, len(tr), BATCH):
            b = order[i:i + BATCH]
            loss = F.cross_entropy(net(shift(x[b], g)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            acc = accuracy(net.eval(), images[held], labels[held])
            log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out accuracy {acc:.3f}")
    net.eval()
    return net, accuracy(net, images[held], labels[held])


def accuracy(net: Net, images: np.ndarray, labels: np.ndarray) -> float:
    return float((run_net(net, images)[1] == labels).mean())


# ------------------------------------------------------------------------------ measures


def saturation(images: np.ndarray) -> np.ndarray:
    """Each image's mean HSV saturation (max - min) / max over R, G, B per pixel, 0 where max = 0 (float64 [N])."""
    x = images.astype(np.float64)
    hi, lo = x.max(-1), x.min(-1)
    s = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    return s.reshape(len(images), -1).mean(1)


def brightness(images: np.ndarray) -> np.ndarray:
    """Each image's mean over pixels and channels, in [-1, 1] (float64 [N])."""
    return images.reshape(len(images), -1).mean(1, dtype=np.float64) / 127.5 - 1


def colour_mean(images: np.ndarray) -> list[float]:
    return [round(float(v) / 127.5 - 1, 4) for v in images.reshape(-1, 3).mean(0, dtype=np.float64)]


def stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.mean(0), np.cov(feats, rowvar=False)


class Reference:
    """The real images of a set, with what every score compares against, computed once."""

    def __init__(self, net: Net, images: np.ndarray, num_classes: int):
        self.net, self.images, self.num_classes = net, images, num_classes
        feats, preds = run_net(net, images)
        self.stats = stats(feats)
        self.hist = np.bincount(preds, minlength=num_classes) / len(preds)
        self.brightness, self.saturation, self.colour = brightness(images), saturation(images), colour_mean(images)

    def score(self, samples: np.ndarray) -> dict:
        feats, preds = run_net(self.net, samples)
        hs = np.bincount(preds, minlength=self.num_classes) / len(preds) + 1e-6
        hd = self.hist + 1e-6
        b = brightness(samples)
        return dict(n=len(samples), n_data=len(self.images),
                    fcd=frechet_distance(*stats(feats), *self.stats),
                    class_kl=float((hd * np.log(hd / hs)).sum()),
                    brightness_w1=wasserstein1(b, self.brightness),
                    brightness_mean=float(b.mean()), brightness_mean_data=float(self.brightness.mean()),
                    brightness_std=float(b.std()), brightness_std_data=float(self.brightness.std()),
                    saturation=float(saturation(samples).mean()), saturation_data=float(self.saturation.mean()),
                    colour_mean=colour_mean(samples), colour_mean_data=self.colour)


def reference(name: str) -> Reference:
    net, saved = load_net(name)
    images, _, classes, _ = colour_sets.build(name)
    if fingerprint(images) != saved["fingerprint"] or tuple(classes) != tuple(saved["classes"]):
        print(f"colour_fcd.py: warning: the installed packages give other {name} images than the scorer was "
              f"trained on ({len(images)} now, {saved['num_images']} then): scores do not compare with "
              "earlier ones", file=sys.stderr)
    return Reference(net, images, len(saved["classes"]))


# ------------------------------------------------------------------------------- samples


def as_nhwc(a: np.ndarray, what: str) -> np.ndarray:
    """uint8 [N, 32, 32, 3] from uint8 images NHWC or NCHW (1 or 3 channels) or [N, H, W] grey."""
    if a.dtype != np.uint8:
        raise UsageError(f"{what} holds {a.dtype} images; give uint8 (minidiff sample CKPT --npz writes them)")
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or len(a) == 0:
        raise UsageError(f"{what} holds an array of shape {a.shape}; give images [N, H, W, 3] or [N, 3, H, W]")
    if a.shape[-1] not in (1, 3) and a.shape[1] in (1, 3):
        a = a.transpose(0, 2, 3, 1)
    if a.shape[-1] not in (1, 3):
        raise UsageError(f"{what} holds an array of shape {a.shape}; give images with 1 or 3 channels")
    if a.shape[-1] == 1:
        a = a.repeat(3, -1)
    if a.shape[1:3] != (SIZE, SIZE):
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        a = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(a)


def read_samples(path: str | Path) -> np.ndarray:
    """uint8 [N, 32, 32, 3] from an .npz (`images`, else its first array) or a folder of PNGs."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist: write samples with minidiff sample CKPT --npz FILE")
    if path.is_file() and path.suffix == ".npz":
        with np.load(path) as d:
            if not d.files:
                raise UsageError(f"{path} holds no arrays")
            return as_nhwc(d["images"] if "images" in d.files else d[d.files[0]], str(path))
    if path.is_dir():
        files = sorted(path.rglob("*.png"))
        if not files:
            raise UsageError(f"no PNGs in {path}")
        images = []
        for f in files:
            with Image.open(f) as im:
                images.append(colour_sets.to_square_rgb(im))
        return np.stack(images)
    raise UsageError(f"{path} is neither an .npz nor a folder of PNGs: write samples with minidiff sample CKPT --npz FILE")


# --------------------------------------------------------------------------- calibration


def box_blur(images: np.ndarray) -> np.ndarray:
    """A 3x3 box blur (mean of each pixel's 3x3 neighbourhood, edges replicated), per channel."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def squeeze_contrast(images: np.ndarray, amount: float = 0.8) -> np.ndarray:
    """Every value moved towards mid-grey: 127.5 + amount * (x - 127.5)."""
    return np.round(127.5 + amount * (images.astype(np.float64) - 127.5)).astype(np.uint8)


def squeeze_saturation(images: np.ndarray, amount: float = 0.8) -> np.ndarray:
    """Each pixel's channels moved towards its max, max - amount * (max - c): value kept, saturation times `amount`."""
    x = images.astype(np.float64)
    hi = x.max(-1, keepdims=True)
    return np.round(hi - amount * (hi - x)).astype(np.uint8)


def calibration_rows(ref: Reference, other: np.ndarray | None = None, n: int = CALIBRATION_N,
                     splits: int = 5) -> list[tuple[str, dict]]:
    images = ref.images
    drawn = images[np.random.default_rng(SEED).integers(0, len(images), n)]
    rows = [("real, 2,000 drawn with replacement", ref.score(drawn))]
    halves, vs_all = [], []
    for s in range(splits):
        perm = np.random.default_rng(SEED + s).permutation(len(images))
        a, b = images[perm[: len(images) // 2]], images[perm[len(images) // 2:]]
        halves.append(Reference(ref.net, b, ref.num_classes).score(a))
        vs_all.append(ref.score(a))
    mean = lambda rs: {k: float(np.mean([r[k] for r in rs])) for k in ("fcd", "class_kl", "brightness_w1", "saturation")}
    rows += [(f"real half vs other half (mean of {splits})", mean(halves)),
             (f"real half vs all (mean of {splits})", mean(vs_all)),
             ("3x3 box blur", ref.score(box_blur(drawn))),
             ("contrast to 80%", ref.score(squeeze_contrast(drawn))),
             ("saturation to 80%", ref.score(squeeze_saturation(drawn))),
             ("uniform noise", ref.score(np.random.default_rng(SEED + 1).integers(0, 256, drawn.shape, dtype=np.uint8)))]
    if other is not None:
        rows.append(("the other set, 2,000 drawn", ref.score(other[np.random.default_rng(SEED).integers(0, len(other), n)])))
    return rows


def new_images_floor(fcd_halves: float, n: int, num: int = CALIBRATION_N) -> float:
    """The FCD of `num` new images from the set's own distribution against all `n`, estimated from
    the halves: between disjoint real sets of sizes a and b the FCD is close to c (1/a + 1/b) (on
    both sets, c within 10% of 1,500 for a = b from 100 to n/2), so c = fcd_halves / (1/a + 1/b)."""
    a = n // 2
    return fcd_halves / (1 / a + 1 / (n - a)) * (1 / num + 1 / n)


def calibration_table(name: str, rows: list[tuple[str, dict]], saturation_data: float) -> str:
    lines = [f"{name}: FCD of 2,000 images against all {rows[0][1]['n_data']:,} (saturation of the data {saturation_data:.3f})",
             "| images | FCD | class_kl | brightness W1 | saturation |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {label} | {r['fcd']:.2f} | {r['class_kl']:.4f} | {r['brightness_w1']:.4f} | {r['saturation']:.3f} |"
              for label, r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- command


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="colour_fcd.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help=f"train the set's classifier and write scorers/SET_net.pt")
    t.add_argument("set", choices=colour_sets.SETS)
    t.add_argument("--epochs", type=int, default=EPOCHS)
    s = sub.add_parser("score", help="score samples against the set: JSON")
    s.add_argument("set", choices=colour_sets.SETS)
    s.add_argument("samples", help=".npz from minidiff sample --npz, or a folder of PNGs")
    c = sub.add_parser("calibrate", help="the scores of real, damaged and random images")
    c.add_argument("set", choices=colour_sets.SETS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        if args.command == "train":
            images, labels, classes, _ = colour_sets.build(args.set)
            net, acc = train(images, labels, len(classes), epochs=args.epochs)
            SCORERS.mkdir(exist_ok=True)
            torch.save(dict(state_dict=net.state_dict(), classes=list(classes), held_out_accuracy=acc,
                            num_images=len(images), fingerprint=fingerprint(images), epochs=args.epochs),
                       net_path(args.set))
            print(f"{args.set}: held-out accuracy {acc:.3f} ({len(split(labels)[1])} images) -> {net_path(args.set)}")
        elif args.command == "score":
            samples = read_samples(args.samples)
            print(json.dumps(reference(args.set).score(samples), indent=1))
        else:
            ref = reference(args.set)
            other = colour_sets.build("stamps" if args.set == "icons" else "icons")[0]
            rows = calibration_rows(ref, other)
            print(calibration_table(args.set, rows, float(ref.saturation.mean())))
            print(f"new real images, 2,000 against all (estimated): {new_images_floor(rows[1][1]['fcd'], len(ref.images)):.2f}")
    except (UsageError, colour_sets.MissingData) as err:
        print(f"colour_fcd.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
