"""Exercise 16 (editing, docs/10_editing.md): RePaint's known pixels. After every step of an
inpainting loop the pixels the mask keeps are put back as the input noised to the level the step
reached, so that the model fills the rest of an image that is noisy everywhere alike. Its run
(experiments.py) inpaints one of two correlated pixels with the exact Gaussian model through the
student's function and compares the filled pixel with its exact conditional law."""

from __future__ import annotations

import math

import torch

from .. import samplers
from .core import Exercise, Fail, call, explain, random_inputs, same, tensor_like, tolerance

REPAINT = "RePaint (Lugmayr et al. 2022); SDEdit (Meng et al. 2022)"


def reference_keep_known(x_next, init, mask, ab_next, noise):
    """m x_next + (1 - m) (sqrt(a) init + sqrt(1 - a) noise), a = ab_next: minidiff's loop step."""
    return mask * x_next + (1 - mask) * samplers.noised(init, ab_next, noise)


def keep_known_mistakes(x_next, init, mask, ab: float, noise) -> list:
    """Known wrong answers of keep_known, each with what went wrong: [(hint, answer)]."""
    sa, s1a = math.sqrt(ab), math.sqrt(1 - ab)
    drawn, kept = mask * x_next, 1 - mask
    return [("the mask is inverted: 1 marks the pixels the model draws (x_next stays there), 0 the pixels "
             "kept from init", (1 - mask) * x_next + mask * (sa * init + s1a * noise)),
            ("the kept pixels need square roots: sqrt(ab_next) init + sqrt(1 - ab_next) noise, not "
             "ab_next init + (1 - ab_next) noise", drawn + kept * (ab * init + (1 - ab) * noise)),
            ("sqrt(ab_next) and sqrt(1 - ab_next) are swapped: init gets sqrt(ab_next), the noise sqrt(1 - ab_next)",
             drawn + kept * (s1a * init + sa * noise)),
            ("the kept pixels miss their noise: x_next is at noise level ab_next, so init must be noised to it "
             "too, + sqrt(1 - ab_next) noise", drawn + kept * sa * init),
            ("the kept pixels are init itself, clean: before the last step x_next is noisy, so init must be "
             "noised to its level, sqrt(ab_next) init + sqrt(1 - ab_next) noise", drawn + kept * init),
            ("the noise is added to every pixel: only the kept ones (mask 0) get sqrt(1 - ab_next) noise; "
             "x_next already carries its own", drawn + kept * sa * init + s1a * noise),
            ("the noise's coefficient is sqrt(1 - ab_next), not 1 - sqrt(ab_next)",
             drawn + kept * (sa * init + (1 - sa) * noise))]


def _inputs(seed: int, shape, dtype=torch.float64, mask_shape=None):
    """(x_next, init, mask, noise) with a random binary mask of `mask_shape` (default: shape)."""
    x_next, init, noise = random_inputs(seed, shape, shape, shape, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1000)
    mask = (torch.rand(mask_shape or shape, generator=g) < 0.5).to(dtype)
    return x_next, init, mask, noise


def keep_known_checks():
    def kind(fn):
        x_next, init, mask, noise = _inputs(0, (2, 3, 4, 4), torch.float32)
        before = [t.clone() for t in (x_next, init, mask, noise)]
        tensor_like(call(fn, x_next, init, mask, 0.5, noise), x_next.shape, x_next.dtype)
        if not all(torch.equal(a, b) for a, b in zip(before, (x_next, init, mask, noise))):
            raise Fail("your function changed one of its inputs in place: the loop uses init and x_next again, "
                       "so build a new tensor (no mul_, add_ or [...] = on them)")

    def mask_ends(fn):
        x_next, init, _, noise = _inputs(1, (3, 5))
        ones, zeros = torch.ones_like(x_next), torch.zeros_like(x_next)
        explain(call(fn, x_next, init, ones, 0.3, noise), x_next,
                [("the mask is inverted: with a mask of ones the model draws every pixel, so the result is x_next; "
                  "0 marks the pixels kept from init", samplers.noised(init, 0.3, noise))],
                "with a mask of ones the model draws every pixel: the result must be x_next itself")
        explain(call(fn, x_next, init, zeros, 1.0, noise), init,
                [("the mask is inverted: with a mask of zeros every pixel is kept from init", x_next)],
                "at ab_next = 1 (after the last step) the kept pixels are init exactly: sqrt(1) init + sqrt(0) noise")
        explain(call(fn, x_next, init, zeros, 0.0, noise), noise,
                [("the mask is inverted: with a mask of zeros every pixel is kept from init", x_next),
                 ("at ab_next = 0 the kept pixels are pure noise, sqrt(0) init + sqrt(1) noise; you return init "
                  "there: its coefficient is sqrt(ab_next), and the noise's sqrt(1 - ab_next)", init),
                 ("at ab_next = 0 the kept pixels are pure noise, sqrt(0) init + sqrt(1) noise: the noise is "
                  "missing", zeros)],
                "at ab_next = 0 the kept pixels are the noise itself: sqrt(0) init + sqrt(1) noise")

    def level(fn):
        x_next, init, mask, noise = _inputs(2, (4, 6))
        for ab in (0.02, 0.3, 0.85):
            explain(call(fn, x_next, init, mask, ab, noise), reference_keep_known(x_next, init, mask, ab, noise),
                    keep_known_mistakes(x_next, init, mask, ab, noise),
                    f"at ab_next = {ab} the result is not m x_next + (1 - m)(sqrt(ab_next) init + sqrt(1 - ab_next) noise)")

    def broadcast(fn):
        x_next, init, mask, noise = _inputs(3, (2, 3, 4, 4), mask_shape=(1, 1, 4, 4))
        got = call(fn, x_next, init, mask, 0.6, noise)
        tensor_like(got, x_next.shape, x_next.dtype)
        full = mask.expand_as(x_next).clone()
        right_when_full = same(call(fn, x_next, init, full, 0.6, noise), reference_keep_known(x_next, init, full, 0.6, noise))
        explain(got, reference_keep_known(x_next, init, mask, 0.6, noise), keep_known_mistakes(x_next, init, mask, 0.6, noise),
                "with one [1, 1, H, W] mask for every image and channel the result is wrong, though a mask of x_next's "
                "own shape gives the right one: write it with tensor operations that broadcast (mask * x_next, "
                "1 - mask), not indexing by the mask's shape" if right_when_full else
                "the result is wrong with a mask of x_next's own shape too: the formula itself is off (see the "
                "checks above), not how the mask broadcasts")

    def oracle(fn):
        for i, (shape, dtype) in enumerate([((2, 3, 8, 8), torch.float32), ((5, 7), torch.float64)]):
            x_next, init, mask, noise = _inputs(10 + i, shape, dtype)
            for ab in (0.0, 0.0047, 0.4, 0.999, 1.0):
                got, ref = call(fn, x_next, init, mask, ab, noise), reference_keep_known(x_next, init, mask, ab, noise)
                if not same(got, ref, *tolerance(dtype)):
                    raise Fail(f"at ab_next = {ab}, shape {shape}, {dtype}: differs from "
                               "mask * x_next + (1 - mask) * minidiff.samplers.noised(init, ab_next, noise)")

    return [("returns a new tensor with x_next's shape and dtype", kind),
            ("the mask's two values: ones give x_next; zeros give init at ab_next = 1 and the noise at 0", mask_ends),
            ("the kept pixels are init noised to ab_next", level),
            ("one [1, 1, H, W] mask broadcasts over images and channels", broadcast),
            ("agrees with minidiff on random inputs", oracle)]


EXERCISES = [
    Exercise(16, "editing", "Editing: RePaint's known pixels, noised to the next step's level", REPAINT,
             "10_editing.md", "keep_known", "def keep_known(x_next, init, mask, ab_next, noise):",
             "Put the known pixels back after one step of an inpainting loop (docs/10_editing.md, RePaint).\n\n"
             "x_next is the sampler's step from timestep t to the next level, at noise level a = ab_next.\n"
             "mask is 1 where the model draws the pixel and 0 where it keeps the input init. The kept pixels\n"
             "are init carried to x_next's noise level by q(x_s | x0) with the fresh standard normal noise:\n"
             "    keep_known = mask * x_next + (1 - mask) * (sqrt(a) init + sqrt(1 - a) noise)\n"
             "After the last step a = 1 and the kept pixels are init exactly. ab_next: a float in [0, 1];\n"
             "mask broadcasts against x_next (e.g. [1, 1, H, W]). Returns a new tensor with x_next's shape\n"
             "and dtype; the inputs stay as they were.",
             reference_keep_known, "mask * x_next + (1 - mask) * minidiff.samplers.noised(init, ab_next, noise)",
             keep_known_checks()),
]
