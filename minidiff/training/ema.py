"""Exponential moving average of a model's weights (DDPM, Sec. 4 and App. B: decay 0.9999).

After every optimiser step each EMA weight moves a fraction (1 - decay) of the way to the live
weight: ema <- decay * ema + (1 - decay) * theta. Samples are drawn from the EMA model, which
averages out the last few thousand steps' noise. A decay d averages over about 1 / (1 - d) steps.

Warm-up. With a fixed decay d the initial network keeps a weight d^n after n updates: 0.999^2000
= 14%, and a short run's average is then dominated by an untrained network (whose near-zero output
an eps sampler amplifies into noise). So the decay of update n (0-indexed) is

    decay_n = min(d, (1 + n) / (10 + n))

which averages the first updates almost equally and reaches d after about 9 / (1 - d) updates.
The initial network's weight after n updates is then at most prod_k (1 + k) / (10 + k) =
9! n! / (n + 9)!: 1.1e-5 at n = 10 and 2e-13 at n = 100 (0.999^n gives 0.990 and 0.905). Long runs (DDPM's 800k steps) are unchanged.

A share of the run instead of a fixed decay (Karras et al. 2024, "power function EMA"). A fixed
decay averages a fixed number of steps: 0.995 is the last 200, which is 3% of a 6,000-step run and
10% of a 2,000-step one, where it reaches back to weights that had not learnt the shapes yet. With
`share` s > 0 the decay of update n is instead

    decay_n = (1 - 1 / (n + 1)) ** (1 / s)

which gives the weights of step k a weight proportional to k ** (1 / s - 1): at step t it moves
(1 - decay) ~ 1 / (s t) of the way, like a fixed-decay EMA of the last s * t steps, whenever the run
stops. It needs no warm-up: decay_0 = 0 starts from the first trained weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(decay: float, updates: int, warmup: bool = True, share: float = 0.0) -> float:
    """The decay applied at update number `updates` (0-indexed): min(d, (1 + n) / (10 + n)), or
    with share s > 0 (1 - 1 / (n + 1)) ** (1 / s), whatever `decay` is."""
    if share > 0:
        return (1.0 - 1.0 / (updates + 1)) ** (1.0 / share)
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


class EMA:
    """A frozen copy of `model` whose weights track the live ones with `decay` (warmed up), or,
    with `share` > 0, over about that share of the steps so far."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True, share: float = 0.0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"EMA share must lie in [0, 1] (0: a fixed decay), got {share}")
        self.decay, self.warmup, self.share, self.updates = decay, warmup, share, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- ema + (1 - decay_n) (theta - ema), for every parameter; buffers are copied."""
        d = ema_decay(self.decay, self.updates, self.warmup, self.share)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(buf)
        self.updates += 1

    def state_dict(self) -> dict:
        """The averaged weights (what samplers load); the update count is saved beside them."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict, updates: int | None = None) -> None:
        """Load averaged weights; `updates` (None: a checkpoint from before the warm-up existed,
        taken as fully warmed up) sets where the decay warm-up continues."""
        self.model.load_state_dict(state)
        self.updates = updates if updates is not None else 10**9
