"""Are the samples copies of training images? Nearest-neighbour distances in pixels, against real ones.

A model trained long on a small folder can learn its images by heart and draw them back (Somepalli
et al. 2023; Carlini et al. 2023 find the same in large models). The check: for each sample, the
distance to its nearest training image; for real images of the folder, the distance to their
nearest *other* training image (leave-one-out: what a new real image of the same kind would
come to). A model that generalises draws samples about as far from the training set as real
images lie from each other; one that copies draws them much closer.

Distances are root-mean-square pixel differences in [0, 1] units (0: the same image, about 0.4:
unrelated Fashion-MNIST images). Every training image counts with its mirror image too: a mirrored
copy is still a copy, and the built-in and CIFAR-10 recipes train on both (random flips).

    nearest_distances   each query image's distance to its nearest training image (and which one)
    copy_check          samples against leave-one-out real images: medians, their ratio, the
                        share of samples closer than nearly every real image comes
    format_copy_check   the two lines the reports print
"""

from __future__ import annotations

import numpy as np
import torch

COPY_QUANTILE = 0.01  # "closer than nearly every real image": below the real distances' 1st percentile
MAX_REAL = 2_000      # leave-one-out real images measured (the median is steady long before)


def _flat(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(len(images), -1).float() / 255


@torch.no_grad()
def nearest_distances(queries: torch.Tensor, train: torch.Tensor, *, exclude: torch.Tensor | None = None,
                      flips: bool = True, chunk: int = 4_096, with_index: bool = False):
    """RMS pixel distance (in [0, 1] units) from each uint8 query [Q, C, H, W] to its nearest uint8
    training image [N, C, H, W], and with `flips` to the nearest mirrored one too. `exclude` [Q]:
    the index in `train` of each query's own image (or -1), which is then not counted (leave-one-out).
    With `with_index`, also the index in `train` of each query's nearest image (mirrored or not)."""
    if queries.shape[1:] != train.shape[1:]:
        raise ValueError(f"queries {tuple(queries.shape[1:])} and training images {tuple(train.shape[1:])} differ in shape")
    q = _flat(queries)
    q_sq = (q * q).sum(1)
    best = torch.full((len(q),), float("inf"))
    index = torch.zeros(len(q), dtype=torch.int64)
    views = [train, train.flip(-1)] if flips else [train]
    for view in views:
        for start in range(0, len(view), chunk):
            t = _flat(view[start:start + chunk])
            # ||q - t||^2 = |q|^2 + |t|^2 - 2 q.t, one matrix product per chunk of training images
            d2 = q_sq[:, None] + (t * t).sum(1)[None, :] - 2 * q @ t.T
            if exclude is not None:
                own = exclude - start
                hit = (own >= 0) & (own < len(t))
                d2[hit.nonzero()[:, 0], own[hit]] = float("inf")
            d2_min, at = d2.min(1)
            nearer = d2_min < best
            best, index = torch.where(nearer, d2_min, best), torch.where(nearer, at + start, index)
    distances = (best.clamp_min(0) / q.shape[1]).sqrt().double().numpy()
    return (distances, index.numpy()) if with_index else distances


def copy_check(samples: torch.Tensor, train: torch.Tensor, *, num_real: int | None = None, seed: int = 0,
               flips: bool = True) -> dict:
    """How close uint8 samples come to the uint8 training images, against how close real training
    images come to the others (leave-one-out, `num_real` of them drawn at random, default
    min(len(samples), MAX_REAL)). Returns {"sample_median", "real_median", "median_ratio"
    (samples / real: about 1 for a model that generalises, well under 1 for one that copies),
    "threshold" (the real distances' COPY_QUANTILE quantile), "copy_share" (the share of samples
    nearer a training image than that), "real_share" (the same share of the real images, about
    COPY_QUANTILE by construction), "num", "num_real", "num_train"}."""
    if len(train) < 2:
        raise ValueError(f"the copy check needs at least two training images, got {len(train)}")
    num_real = min(num_real or min(len(samples), MAX_REAL), len(train))
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:num_real]
    d_sample = nearest_distances(samples, train, flips=flips)
    d_real = nearest_distances(train[pick], train, exclude=pick, flips=flips)
    threshold = float(np.quantile(d_real, COPY_QUANTILE))
    sample_median, real_median = float(np.median(d_sample)), float(np.median(d_real))
    return dict(sample_median=sample_median, real_median=real_median,
                median_ratio=sample_median / real_median if real_median > 0 else float("inf"),
                threshold=threshold, copy_share=float((d_sample < threshold).mean()),
                real_share=float((d_real < threshold).mean()), num=len(samples), num_real=num_real,
                num_train=len(train))


def format_copy_check(c: dict) -> str:
    """Two lines: the medians and their ratio, then the share of near-copies."""
    return (f"copies? nearest training image (RMS pixel distance, mirror images included): samples "
            f"median {c['sample_median']:.4f}, real images of the folder (leave-one-out, {c['num_real']}) "
            f"{c['real_median']:.4f}; ratio {c['median_ratio']:.2f} (about 1: new images; well under 1: copies)\n"
            f"        {100 * c['copy_share']:.1f}% of {c['num']} samples lie nearer a training image than "
            f"{100 * (1 - COPY_QUANTILE):.0f}% of real images do (distance < {c['threshold']:.4f}; real: "
            f"{100 * c['real_share']:.1f}%), of {c['num_train']} training images")
