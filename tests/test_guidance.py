"""Classifier-free guidance and Lin et al. Algorithm 2."""

import pytest
import torch

from minidiff.guidance import cfg


def test_algorithm2_worked_example():
    pos = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    neg = torch.tensor([[0.0, 1.0, 1.0, 2.0]])
    out = cfg(pos, neg, 7.5, rescale=0.7)
    expected = torch.tensor([[3.6216411, 4.1045266, 7.7261677, 8.2090532]])
    assert torch.allclose(out, expected, atol=5e-7)


def test_phi_zero_is_plain_cfg_and_phi_one_keeps_cond_std():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(5, 3, 8, 8, generator=g), torch.randn(5, 3, 8, 8, generator=g)
    plain = uncond + 4.0 * (cond - uncond)
    assert torch.allclose(cfg(cond, uncond, 4.0, rescale=0.0), plain)
    full = cfg(cond, uncond, 4.0, rescale=1.0)
    assert torch.allclose(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-5)
    assert torch.allclose(cfg(cond, uncond, 1.0), cond)


def test_std_is_per_sample():
    cond = torch.stack([torch.linspace(-1, 1, 16), 10 * torch.linspace(-1, 1, 16)]).reshape(2, 1, 4, 4)
    uncond = torch.zeros_like(cond)
    out = cfg(cond, uncond, 3.0, rescale=1.0)
    assert torch.allclose(out, cond, atol=1e-6)  # each sample rescaled back to its own spread


def test_zero_spread_sample_is_safe():
    cond = torch.full((2, 1, 4, 4), 0.5)
    uncond = torch.zeros_like(cond)
    out = cfg(cond, uncond, 7.5, rescale=0.7)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.full_like(cond, 3.75))  # unchanged plain CFG


def test_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        cfg(torch.zeros(1, 4), torch.zeros(1, 5), 2.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cfg(torch.zeros(1, 4), torch.zeros(1, 4), 2.0, rescale=1.5)
