"""Exponential moving average of a model's weights (DDPM, Sec. 4 and App. B: decay 0.9999).

After every optimiser step each EMA weight moves a fraction (1 - decay) of the way to the live
weight: ema <- decay * ema + (1 - decay) * theta. Samples are drawn from the EMA model, which
averages out the last few thousand steps' noise. A decay d averages over about 1 / (1 - d) steps
(its half-life is ln 2 / (1 - d) steps): 0.9999 suits DDPM's 800k steps, not a 10-minute run.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of `model` whose weights track the live ones with `decay`."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- ema + (1 - decay) (theta - ema), for every parameter; buffers are copied."""
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for ema_buf, buf in zip(self.model.buffers(), model.buffers()):
            ema_buf.copy_(buf)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
