"""What the measures of minidiff.evaluation.metrics compute on uint8 images, and the damage their
calibration does to real images. Pure functions of images, no network:

    blur, squeeze_brightness, uniform_noise     the calibration's degradations
    brightness, background, background_shares   per-image brightness and background
    saturation, mean_colour                     per-image colour: HSV saturation, mean R, G, B
    wasserstein1                                W1 between two 1-D samples, exactly
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BACKGROUND_CORNER = 3           # pixels: the side of each corner square that stands for the background
NEAR_BLACK, NEAR_WHITE = 0.15, 0.85  # background brightness thresholds, in [0, 1]


# ------------------------------------------------------------------------------ degradations


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of uint8 images with standard deviation `sigma` pixels (reflected edges)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-taps**2 / (2 * sigma**2))
    kernel /= kernel.sum()
    c = images.shape[1]
    x = F.pad(images.float(), (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along rows
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along columns
    return x.round().clamp(0, 255).to(torch.uint8)


def squeeze_brightness(images: torch.Tensor, amount: float, centre: float | None = None) -> torch.Tensor:
    """Shift each image so its mean brightness moves `amount` of the way towards `centre` (default:
    the set's mean), contrast kept: the effect Lin et al. see in samples of flawed schedules."""
    x = images.float()
    means = x.mean((1, 2, 3), keepdim=True)
    centre = float(means.mean()) if centre is None else centre
    return (x - amount * (means - centre)).round().clamp(0, 255).to(torch.uint8)


def uniform_noise(like: torch.Tensor, seed: int) -> torch.Tensor:
    """Independent uniform uint8 pixels, the shape of `like`: the worst a model can do."""
    return torch.randint(0, 256, like.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ------------------------------------------------------------------------------------ measures


def brightness(images: torch.Tensor) -> np.ndarray:
    """Mean brightness of each uint8 image, in the library's [-1, 1] units (float64 [N])."""
    return (images.double().mean((1, 2, 3)) / 127.5 - 1).numpy()


def saturation(images: torch.Tensor) -> np.ndarray:
    """Mean HSV saturation of each uint8 colour image [N, 3, H, W], in [0, 1] (float64 [N]): per pixel
    (max - min) / max over R, G, B (0 for a black pixel, where max = 0), then the mean over pixels.
    A grey image has 0 whatever its brightness; a washed-out colour model draws too little."""
    x = images.double()
    hi, lo = x.amax(1), x.amin(1)
    per_pixel = torch.where(hi > 0, (hi - lo) / hi.clamp(min=1), torch.zeros_like(hi))
    return per_pixel.flatten(1).mean(1).numpy()


def mean_colour(images: torch.Tensor) -> np.ndarray:
    """Mean red, green and blue of each uint8 colour image [N, 3, H, W], in [0, 1] (float64 [N, 3])."""
    return (images.double().mean((2, 3)) / 255).numpy()


def background(images: torch.Tensor, corner: int = BACKGROUND_CORNER) -> np.ndarray:
    """Background brightness of each uint8 image, in [0, 1] (float64 [N]): the median over the
    pixels of its four corner squares (corner x corner each) of the mean over colour channels."""
    k = corner
    x = images.double().mean(1) / 255  # [N, H, W]
    corners = torch.cat([x[:, :k, :k], x[:, :k, -k:], x[:, -k:, :k], x[:, -k:, -k:]], dim=1)
    return corners.flatten(1).median(dim=1).values.numpy()


def background_shares(images: torch.Tensor) -> tuple[float, float]:
    """(share of near-black backgrounds, share of near-white backgrounds) of uint8 images."""
    b = background(images)
    return float((b < NEAR_BLACK).mean()), float((b > NEAR_WHITE).mean())


def wasserstein1(a, b) -> float:
    """W1 between the empirical distributions of two 1-D samples: the integral of |F_a - F_b|,
    the gap between their cumulative distribution functions, exactly (no binning)."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, grid[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))
