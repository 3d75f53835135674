"""The built-in dataset's pictures, drawn in code: ten classes of simple shapes, each its own shape
and colour, on a background whose brightness is uniform from nearly black to nearly white (the
quantity Lin et al.'s brightness effect is about). `minidiff.training.data.builtin_shapes` turns
them into the trainer's ImageSet."""

from __future__ import annotations

import math

import torch

BUILTIN_CLASSES = ("disc", "square", "triangle", "ring", "cross",
                   "diamond", "stripes", "bars", "checker", "dot-pair")
# One saturated colour per class (RGB in [0, 1]), so class shows in shape and in colour.
BUILTIN_COLOURS = torch.tensor([
    [1.00, 0.20, 0.20], [0.20, 0.60, 1.00], [0.25, 0.85, 0.25], [1.00, 0.80, 0.10],
    [0.80, 0.30, 1.00], [0.10, 0.90, 0.90], [1.00, 0.50, 0.00], [1.00, 0.30, 0.70],
    [0.60, 0.60, 0.60], [0.50, 1.00, 0.40],
], dtype=torch.float64)


def _shape_distance(kind: int, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (in pixels, negative inside) to shape `kind` of radius r centred at 0."""
    ax, ay = x.abs(), y.abs()
    if kind == 0:  # disc
        return torch.sqrt(x**2 + y**2) - r
    if kind == 1:  # square
        return torch.maximum(ax, ay) - 0.85 * r
    if kind == 2:  # triangle pointing up (image y grows downwards)
        return torch.maximum(y - 0.6 * r, (2 * ax - y - r) / math.sqrt(5))
    if kind == 3:  # ring
        return (torch.sqrt(x**2 + y**2) - 0.75 * r).abs() - 0.25 * r
    if kind == 4:  # plus-shaped cross
        arm = 0.3 * r
        return torch.minimum(torch.maximum(ax - arm, ay - r), torch.maximum(ay - arm, ax - r))
    if kind == 5:  # diamond
        return (ax + ay - 1.1 * r) / math.sqrt(2)
    if kind == 6:  # square filled with horizontal stripes
        period = 0.5 * r
        stripe = ((y / period).frac() - 0.5).abs() * period - 0.25 * period
        return torch.maximum(torch.maximum(ax, ay) - 0.9 * r, stripe)
    if kind == 7:  # two vertical bars
        return torch.maximum((ax - 0.5 * r).abs() - 0.2 * r, ay - r)
    if kind == 8:  # 2x2 checkerboard
        checker = torch.where((x > 0) == (y > 0), -torch.minimum(ax, ay), torch.minimum(ax, ay))
        return torch.maximum(torch.maximum(ax, ay) - 0.85 * r, checker)
    if kind == 9:  # two dots on a diagonal
        d1 = torch.sqrt((x - 0.5 * r) ** 2 + (y - 0.5 * r) ** 2)
        d2 = torch.sqrt((x + 0.5 * r) ** 2 + (y + 0.5 * r) ** 2)
        return torch.minimum(d1, d2) - 0.4 * r
    raise ValueError(f"unknown built-in shape {kind}")


def draw_shapes(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Draw one image per label: float32 [N, 3, size, size] in [-1, 1]."""
    n = labels.shape[0]

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=generator)

    # Target mean brightness: the quantity Lin et al.'s effect is about, uniform over nearly the
    # whole range [-0.9, 0.9] (pixel levels 13 to 242). A gentle gradient in a random direction
    # keeps the background from being flat.
    brightness = uniform(-0.9, 0.9)
    tilt, angle = uniform(-0.1, 0.1), uniform(0, 2 * math.pi)
    scale = size / 32
    centre = uniform(-3 * scale, 3 * scale, 2)
    radius = uniform(8 * scale, 11 * scale)
    contrast = uniform(0.9, 1.3)

    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    ramp = xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]
    background = brightness[:, None, None] + tilt[:, None, None] * ramp * (2 / size)

    distance = torch.empty(n, size, size)
    x = xx - centre[:, 0, None, None]
    y = yy - centre[:, 1, None, None]
    for kind in labels.unique().tolist():
        rows = labels == kind
        distance[rows] = _shape_distance(kind, x[rows], y[rows], radius[rows, None, None])
    coverage = (0.5 - distance).clamp_(0, 1)[:, None]  # one-pixel antialiased edge

    # The shape is the class colour, lighter than a dark background and darker than a light one,
    # with the same hue either way (a dark red stays red), so it is visible at every brightness.
    colour = BUILTIN_COLOURS.float()[labels]  # [N, 3]
    light = brightness > 0  # a light background gets a dark shape
    weight = 0.35 + 0.65 * torch.where(light[:, None], 1 - colour, colour)
    shape = brightness[:, None] + torch.where(light, -contrast, contrast)[:, None] * weight
    image = background[:, None] + coverage * (shape[:, :, None, None] - background[:, None])
    # Shift each image so its mean is the drawn brightness (the shape would pull it to the middle).
    image += (brightness - image.mean((1, 2, 3)))[:, None, None, None]
    return image.clamp_(-1, 1)
