"""Editing in the sampler: image-to-image (SDEdit) and inpainting (RePaint), on exact denoisers.

The exact Gaussian denoiser makes every claim checkable: deterministic DDIM with it is a linear map,
so how much of the input survives an edit can be computed step by step by hand.
"""

import math

import numpy as np
import pytest
import torch

from minidiff.exact.analytic import GaussianDenoiser
from minidiff.guidance import dynamic_threshold
from minidiff.samplers import make_timesteps, sample, start_timestep
from minidiff.schedules import Schedule
from minidiff.unet import PRESETS, UNet

SHAPE = (4, 3, 8, 8)
LAM, MU = 0.3, 0.1  # the data: every pixel N(MU, LAM), independent


def gaussian(schedule, prediction="v"):
    return GaussianDenoiser(torch.full(SHAPE[1:], MU), var=torch.full(SHAPE[1:], LAM), schedule=schedule,
                            prediction=prediction)


def two_inputs():
    g = torch.Generator().manual_seed(3)
    return (torch.rand(SHAPE, generator=g, dtype=torch.float64) * 2 - 1,
            -torch.rand(SHAPE, generator=g, dtype=torch.float64))


def edit(model, schedule, init, *, prediction="v", seed=0, dtype=torch.float64, **kwargs):
    kwargs.setdefault("steps", 10)
    return sample(model, SHAPE, schedule, prediction=prediction, init=init, dtype=dtype,
                  generator=torch.Generator().manual_seed(seed), progress=False, **kwargs)


def test_strength_one_at_zero_snr_does_not_see_the_input():
    """Zero terminal SNR: full strength starts from sqrt(0) x0 + eps = eps, so two inputs give the same
    images, bit for bit, on the exact denoiser and on a (random) UNet alike."""
    sched = Schedule.make("scaled_linear", zero_snr=True)
    a, b = two_inputs()
    assert torch.equal(edit(gaussian(sched), sched, a), edit(gaussian(sched), sched, b))
    torch.manual_seed(0)
    net = UNet(**{**PRESETS["tiny"], "image_size": 8, "attn_resolutions": (4,)}).eval()
    assert torch.equal(edit(net, sched, a, steps=3, dtype=torch.float32), edit(net, sched, b, steps=3, dtype=torch.float32))
    # and it is generation: the same draw as sampling from the same noise without an input
    g = torch.Generator().manual_seed(0)
    plain = sample(gaussian(sched), SHAPE, sched, prediction="v", steps=10, dtype=torch.float64, generator=g, progress=False)
    assert torch.equal(edit(gaussian(sched), sched, a), plain)


def ddim_gain(ab_from: float, ab_to: float) -> float:
    """How deterministic DDIM with the exact denoiser scales z = x_t - sqrt(a_t) MU in one step, by hand:
    x0 = MU + sqrt(a) LAM z / v, eps = sqrt(1 - a) z / v (v = a LAM + 1 - a), x_to = sqrt(a') x0 + sqrt(1 - a') eps."""
    v = ab_from * LAM + 1 - ab_from
    return (math.sqrt(ab_from * ab_to) * LAM + math.sqrt((1 - ab_from) * (1 - ab_to))) / v


@pytest.mark.parametrize("kind", ["scaled_linear", "linear"])
def test_strength_one_on_a_flawed_schedule_leaks_what_the_arithmetic_predicts(kind):
    """Without the rescale, x_T = sqrt(a_T) x0 + ...: the output moves with the input by
    sqrt(a_T) times the product of the steps' gains, computed here by hand."""
    sched = Schedule.make(kind)
    a, b = two_inputs()
    diff = edit(gaussian(sched), sched, a) - edit(gaussian(sched), sched, b)
    ab = sched.alphas_cumprod.tolist()
    ts = make_timesteps(1000, 10, "trailing").tolist()
    gain = math.sqrt(ab[ts[0]])
    for t, s in zip(ts, ts[1:] + [None]):
        gain *= ddim_gain(ab[t], 1.0 if s is None else ab[s])
    torch.testing.assert_close(diff, gain * (a - b), rtol=1e-6, atol=0.0)
    assert gain > {"scaled_linear": 0.01, "linear": 1e-4}[kind]  # it does leak: 0.02 of the input for SD's


def test_strength_picks_the_starting_step_and_the_steps_below_it():
    sched = Schedule.make("linear", zero_snr=True)
    a, _ = two_inputs()
    res = edit(gaussian(sched), sched, a, strength=0.6, return_trajectory=True)
    listed = make_timesteps(1000, 10, "trailing")
    assert start_timestep(1000, 0.6) == 599 and start_timestep(1000, 1.0) == 999 and start_timestep(1000, 1e-4) == 0
    assert res.timesteps.tolist() == [599] + [t for t in listed.tolist() if t < 599]
    # the first state is the input noised to step 599 with the sampler's first noise draw
    ab = sched.alphas_cumprod[599].item()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(res.xs[0], math.sqrt(ab) * a + math.sqrt(1 - ab) * noise)


def test_low_strength_keeps_the_input_and_full_strength_forgets_it():
    """On the exact denoiser the output's dependence on the input falls as strength grows, to 0 at 1."""
    sched = Schedule.make("linear", zero_snr=True)
    a, b = two_inputs()
    gaps = [float((edit(gaussian(sched), sched, a, strength=s) - edit(gaussian(sched), sched, b, strength=s)).abs().mean())
            for s in (0.1, 0.4, 0.7, 1.0)]
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] == 0.0
    assert gaps[0] > 0.5 * float((a - b).abs().mean())


def test_mask_keeps_the_known_pixels_exactly_and_draws_the_rest():
    sched = Schedule.make("linear", zero_snr=True)
    a, b = two_inputs()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1  # draw the centre
    out = edit(gaussian(sched), sched, a, mask=mask)
    keep = (mask == 0).expand(SHAPE)
    assert torch.equal(out[keep], a[keep])  # q(x_0 | x0) is x0 itself
    # with independent pixels the centre is generation: the same whatever the input
    assert torch.equal(edit(gaussian(sched), sched, b, mask=mask)[~keep], out[~keep])
    assert torch.equal(edit(gaussian(sched), sched, a, mask=torch.zeros(1, 1, 8, 8)), a)


def test_inpainting_fills_a_correlated_pixel_by_its_conditional_law():
    """Two pixels with correlation 0.9; keep the first at k, draw the second. The exact answer is
    N(0.9 k, 0.19). Replacing the known pixel alone gets the mean only partly (the drawn pixel never
    sees the known one's value, only its noised copies); RePaint's resampling steps close the gap,
    which is Lugmayr et al.'s reason for them."""
    rho, k, n = 0.9, 1.5, 4000
    sched = Schedule.make("linear", zero_snr=True)
    model = GaussianDenoiser(torch.zeros(2), torch.tensor([[1.0, rho], [rho, 1.0]]), schedule=sched, prediction="v")
    init = torch.tensor([k, 0.0], dtype=torch.float64).expand(n, 2).clone()
    mask = torch.tensor([0.0, 1.0])
    errors = []
    for resample in (0, 4, 10):
        out = sample(model, (n, 2), sched, prediction="v", steps=100, sampler="ddpm", init=init, mask=mask,
                     resample=resample, dtype=torch.float64, generator=torch.Generator().manual_seed(1), progress=False)
        assert torch.equal(out[:, 0], init[:, 0])
        errors.append(abs(out[:, 1].mean().item() - rho * k))
    assert errors[0] > 0.3 > errors[1] > errors[2]
    assert errors[2] < 0.06  # 4,000 draws: the mean's standard error is 0.007


def test_dynamic_threshold_matches_numpy_and_leaves_in_range_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64) * torch.tensor([0.2, 1, 2, 3, 5.0]).reshape(-1, 1, 1, 1)
    got = dynamic_threshold(x, 0.9)
    for xi, gi in zip(x.numpy(), got.numpy()):
        s = max(1.0, np.percentile(np.abs(xi), 90))
        np.testing.assert_allclose(gi, np.clip(xi, -s, s) / s, rtol=1e-6)
    inside = x[:1] / x[:1].abs().max()
    assert torch.equal(dynamic_threshold(inside, 0.995), inside)
    assert got.abs().max() <= 1.0


@pytest.mark.parametrize("kwargs, words", [
    (dict(strength=0.0), "strength must lie in (0, 1]"),
    (dict(strength=1.5), "strength must lie in (0, 1]"),
    (dict(mask=torch.full((1, 1, 8, 8), 0.5)), "mask must be binary"),
    (dict(mask=torch.ones(2, 8, 8)), "does not broadcast"),
    (dict(resample=2), "give a mask too"),
])
def test_bad_edits_say_what_is_wrong(kwargs, words):
    sched = Schedule.make("linear", zero_snr=True)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        edit(gaussian(sched), sched, two_inputs()[0], **kwargs)
    with pytest.raises(ValueError, match="must have the samples' shape"):
        edit(gaussian(sched), sched, torch.zeros(4, 1, 8, 8))
    with pytest.raises(ValueError, match="give init"):
        sample(gaussian(sched), SHAPE, sched, strength=0.5, progress=False)
