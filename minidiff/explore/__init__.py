"""minidiff explore: one self-contained web page that shows a checkpoint's diffusion step by step.

    forward   alpha_bar of every schedule, a few images and their noise (the forward and schedule panels)
    reverse   every offered sampler setting drawn as `minidiff sample` draws it, x_t and x0 at each step
    script    the page's JavaScript, which draws the panels from the inline data
    page      the HTML, and the command `minidiff explore [CKPT] --out page.html`
"""

from .page import build_page, main

__all__ = ["build_page", "main"]
