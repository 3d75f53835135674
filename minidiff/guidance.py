"""Classifier-free guidance (Ho and Salimans 2022) with the rescale of Lin et al. Sec. 3.4.

    x_cfg   = x_neg + w (x_pos - x_neg)                         eq. 13
    x_resc  = x_cfg * std(x_pos) / std(x_cfg)                   eqs. 14-15
    x_final = phi x_resc + (1 - phi) x_cfg                      eq. 16

With a large w the guided output's spread grows far beyond what the model ever produced,
and on a zero-SNR v model that shows as over-exposed images. Rescaling back to the
conditional output's standard deviation undoes that; phi (0.7 in the paper) mixes a little
of the plain guided output back in, because full rescaling makes images look plain.
The paper applies this to its v-prediction model's output; minidiff applies it to whatever
the model outputs, so for a v model it is exactly the paper's operation.

Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3) attacks the same over-saturation in
image space instead, on each predicted x0 (`dynamic_threshold`; the samplers' `threshold`):

    s  = max(1, percentile_p |x0|)        per sample
    x0 = clip(x0, -s, s) / s
"""

from __future__ import annotations

import torch


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """Guided model output (Lin et al. Algorithm 2).

    cond, uncond: model outputs with and without the condition, shape [B, ...].
    scale: the guidance weight w (1 returns cond).
    rescale: the guidance rescale, the paper's phi (eq. 16), in [0, 1]; 0 is plain CFG, 0.7 the
    paper's choice. `samplers.sample` and every command line call it `guidance_rescale`.
    std is taken per sample over all non-batch dimensions. A sample whose guided output has
    zero spread (a constant image) is left as it is rather than divided by zero.
    """
    if cond.shape != uncond.shape:
        raise ValueError(f"cond and uncond must have the same shape, got {tuple(cond.shape)} and {tuple(uncond.shape)}")
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale (phi) must lie in [0, 1], got {rescale}")
    guided = uncond + scale * (cond - uncond)
    if rescale == 0.0:
        return guided
    dims = tuple(range(1, cond.ndim))
    std_cond = cond.float().std(dim=dims, keepdim=True)
    std_guided = guided.float().std(dim=dims, keepdim=True)
    ratio = torch.where(std_guided > 0, std_cond / std_guided.clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(std_guided))
    factor = rescale * ratio + (1 - rescale)
    return (guided * factor).to(cond.dtype)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.995) -> torch.Tensor:
    """Imagen's dynamic thresholding of a predicted x0 [B, ...] (Saharia et al. 2022, Sec. 2.3).

    s is the `percentile` (a fraction, 0.995 in Imagen's code) of |x0| over each sample's values,
    never below 1: a sample already inside [-1, 1] is left as it is; one with values beyond is
    clipped at s and divided by s, which pulls saturated pixels back inside without flattening them
    all to the edge as a plain clip to [-1, 1] (s = 1) does.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must lie in (0, 1] (Imagen: 0.995), got {percentile}")
    x = x0 if x0.dtype == torch.float64 else x0.float()
    s = torch.quantile(x.abs().flatten(1), percentile, dim=1).clamp_min(1.0).reshape(-1, *([1] * (x0.ndim - 1)))
    return (torch.minimum(torch.maximum(x, -s), s) / s).to(x0.dtype)
