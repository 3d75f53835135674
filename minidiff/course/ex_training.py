"""Exercises 12-14 (Lin et al. 2023): the training step, the sampling loop, and the brightness
experiment. Unlike 1-11, each ends in a run that trains or samples: 12 trains a small UNet on the
built-in shapes with the student's loss, 13 draws from a trained model with the student's loop, 14
runs the brightness experiment with the student's settings.

The checks stay fast and deterministic: 12 grades the loss on a small "probe" model (an affine map
of x_t with a bias per timestep, which records what it was called with), 13 grades the loop on the
exact Gaussian denoiser, whose DDIM answer is known in closed form, 14 grades the settings against
the paper's three fixes and the exact brightness spread they give.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch

from .. import objectives, samplers
from ..exact.analytic import GaussianDenoiser, gaussian_sampler_moments
from ..schedules import Schedule
from .core import Exercise, Fail, call, explain, fmt, same, tensor_like, tolerance

LIN = "Lin et al. 2023"
MAIN_JOB_CHECKPOINT = Path("runs/builtin-small-patch2-linear-zsnr-v/checkpoint.pt")  # python train_cifar.py
COURSE_CHECKPOINT = Path("runs/course/12/model.pt")  # what `minidiff course run 12` leaves


def schedule_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> Schedule:
    """The Schedule whose alphas_cumprod these are (betas = 1 - ab_t / ab_{t-1}; a zero-SNR last beta is 1)."""
    ab = alphas_cumprod.to(torch.float64)
    return Schedule(1 - ab / torch.cat([ab.new_ones(1), ab[:-1]]))


# ------------------------------------------------------------------------------------------------
# 12. The training step: Lin et al. eq. 12 with the v target
# ------------------------------------------------------------------------------------------------


def reference_v_loss(model, x0, alphas_cumprod, generator):
    return objectives.diffusion_loss(model, x0, schedule_from_alphas_cumprod(alphas_cumprod), "v", generator=generator)


class Probe(torch.nn.Module):
    """A model for grading a loss: out = scale[c] * x_t + bias[t], so the output depends on both
    inputs, the gradient reaches every parameter, and a wrong x_t or t changes the loss. It keeps
    the (x_t, t) of each call, and says in words when it is called with the wrong kind of input."""

    def __init__(self, num_timesteps: int, channels: int, dtype=torch.float32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.scale = torch.nn.Parameter((0.3 + 0.6 * torch.rand(channels, generator=g, dtype=torch.float64)).to(dtype))
        self.bias = torch.nn.Parameter((0.5 * torch.randn(num_timesteps, generator=g, dtype=torch.float64)).to(dtype))
        self.calls = []

    def forward(self, x, t, y=None):
        if not isinstance(t, torch.Tensor) or t.shape != (x.shape[0],):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise Fail(f"the model was called with t = {got}: pass the drawn timesteps, one per sample "
                       f"(an int64 tensor of shape ({x.shape[0]},)), as model(x_t, t)")
        if t.is_floating_point():
            raise Fail("the model was called with float timesteps: t holds integer training timesteps "
                       "(torch.randint gives int64)")
        if x.dtype != self.scale.dtype:
            raise Fail(f"the model got x_t in {str(x.dtype).replace('torch.', '')} but x0 is "
                       f"{str(self.scale.dtype).replace('torch.', '')}: alphas_cumprod is float64, so cast "
                       "alpha_bar to x0's dtype (alphas_cumprod[t].to(x0.dtype)) before mixing it in")
        self.calls.append((x.detach().clone(), t.detach().clone()))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return self.scale.view(shape) * x + self.bias[t].view((-1,) + (1,) * (x.ndim - 1))


def draw_t_noise(x0, num_timesteps: int, seed: int, noise_first: bool = False):
    """What the docstring asks for: t = randint(0, T, (B,)), then noise = randn(x0.shape), from one generator."""
    g = torch.Generator().manual_seed(seed)
    if noise_first:
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        return torch.randint(0, num_timesteps, (x0.shape[0],), generator=g), noise
    t = torch.randint(0, num_timesteps, (x0.shape[0],), generator=g)
    return t, torch.randn(x0.shape, generator=g, dtype=x0.dtype)


def _noisy(x0, a, noise, how="right"):
    sa, s1a = a.sqrt(), (1 - a).sqrt()
    return {"right": sa * x0 + s1a * noise, "no roots": a * x0 + (1 - a) * noise,
            "swapped": s1a * x0 + sa * noise}[how]


@torch.no_grad()
def variant_loss(model, x0, alphas_cumprod, t, noise, *, x_t="right", goal="v", reduce="mean", ab_index=0):
    """The loss with one known mistake (for the hints): how x_t is built, which target, how it is reduced."""
    a = alphas_cumprod.to(x0.dtype)[(t + ab_index).clamp(0, len(alphas_cumprod) - 1)].view(-1, *[1] * (x0.ndim - 1))
    sa, s1a = a.sqrt(), (1 - a).sqrt()
    target = {"v": sa * noise - s1a * x0, "-v": s1a * x0 - sa * noise, "eps": noise, "x0": x0,
              "v no roots": a * noise - (1 - a) * x0, "v swapped": s1a * noise - sa * x0}[goal]
    err = (model(_noisy(x0, a, noise, x_t), t) - target) ** 2
    return {"mean": err.mean(), "sum": err.sum(), "per-sample sum": err.flatten(1).sum(1).mean(),
            "batch sum": err.flatten(1).mean(1).sum()}[reduce]


def loss_mistakes(x0, alphas_cumprod, t, noise, seed_model) -> list:
    def loss(**kw):
        return variant_loss(seed_model(), x0, alphas_cumprod, t, noise, **kw)

    v = "v = sqrt(a) eps - sqrt(1 - a) x0"
    return [
        (f"the sign of v is wrong: {v} (Lin et al. eq. 11)", loss(goal="-v")),
        (f"the target is eps (the noise): with v prediction the network regresses {v}", loss(goal="eps")),
        (f"the target is x0: with v prediction the network regresses {v}", loss(goal="x0")),
        (f"the target's coefficients need square roots: {v}", loss(goal="v no roots")),
        (f"sqrt(a) and sqrt(1 - a) are swapped in the target: {v}", loss(goal="v swapped")),
        ("x_t is built with a and 1 - a: the coefficients need square roots, x_t = sqrt(a) x0 + sqrt(1 - a) eps",
         loss(x_t="no roots")),
        ("sqrt(a) and sqrt(1 - a) are swapped in x_t: x_t = sqrt(a) x0 + sqrt(1 - a) eps", loss(x_t="swapped")),
        ("the squared error is summed, not averaged: take the mean over every element (batch, channels, "
         "pixels), so the loss does not grow with the image size or the batch", loss(reduce="sum")),
        ("the squared error is summed over each image's pixels: take the mean over every element",
         loss(reduce="per-sample sum")),
        ("the per-image errors are summed over the batch: take the mean over every element", loss(reduce="batch sum")),
        ("alpha_bar is read one step late: a = alphas_cumprod[t] (0-indexed timesteps)", loss(ab_index=1)),
        ("alpha_bar is read one step early: a = alphas_cumprod[t] (0-indexed timesteps)", loss(ab_index=-1)),
    ]


def loss_checks():
    T, shape, seed = 1000, (4, 3, 6, 6), 7
    ab = Schedule.make("linear", T, zero_snr=True).alphas_cumprod

    def inputs(dtype=torch.float32, shape=shape, seed=seed):
        g = torch.Generator().manual_seed(100 + seed)
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)

    def probe(dtype=torch.float32, T=T):
        return Probe(T, shape[1], dtype)

    def scalar(fn):
        out = call(fn, probe(), inputs(), ab, torch.Generator().manual_seed(seed))
        tensor_like(out, (), torch.float32, "the loss")
        if not out.requires_grad:
            raise Fail("the loss carries no gradient: compute it from the model's output with torch operations "
                       "(no .item(), .detach(), torch.no_grad() or torch.tensor(value) on the way)")
        if not bool(torch.isfinite(out)):
            raise Fail(f"the loss is {out.item()}, not a finite number")

    def draws(fn):
        x0 = inputs()
        first, second = probe(), probe()
        a = call(fn, first, x0, ab, torch.Generator().manual_seed(seed))
        b = call(fn, second, x0, ab, torch.Generator().manual_seed(seed))
        if not first.calls:
            raise Fail("the model was never called: the loss compares model(x_t, t) with the target")
        t_seen = first.calls[0][1]
        t, _ = draw_t_noise(x0, T, seed)
        t_noise_first, _ = draw_t_noise(x0, T, seed, noise_first=True)
        if not torch.equal(t_seen.cpu(), t):
            if torch.equal(t_seen.cpu(), t_noise_first):
                raise Fail("the noise was drawn before t: draw t = torch.randint(0, T, (B,), generator=generator) "
                           "first, then noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)")
            raise Fail(f"the model saw t = {t_seen.tolist()}, expected {t.tolist()}: draw t = torch.randint(0, T, (B,), "
                       "generator=generator) first, T = len(alphas_cumprod), one timestep per image")
        if not same(a.detach(), b.detach()):
            raise Fail("the same generator seed gave two different losses: draw the noise from the generator, "
                       "torch.randn(x0.shape, generator=generator, dtype=x0.dtype) (torch.randn_like takes no generator)")

    def noisy_input(fn):
        x0, m = inputs(), probe()
        call(fn, m, x0, ab, torch.Generator().manual_seed(seed))
        if not m.calls:
            raise Fail("the model was never called: the loss compares model(x_t, t) with the target")
        x_seen, t_seen = m.calls[0]
        t, noise = draw_t_noise(x0, T, seed)
        a = ab.to(x0.dtype)[t_seen.cpu()].view(-1, 1, 1, 1)
        explain(x_seen, _noisy(x0, a, noise), [
            ("the model was called with x0: it must see the noisy x_t = sqrt(a) x0 + sqrt(1 - a) eps", x0),
            ("the model was called with the noise: it must see x_t = sqrt(a) x0 + sqrt(1 - a) eps", noise),
            ("x_t is built with a and 1 - a: the coefficients need square roots, x_t = sqrt(a) x0 + sqrt(1 - a) eps",
             _noisy(x0, a, noise, "no roots")),
            ("sqrt(a) and sqrt(1 - a) are swapped in x_t: x_t = sqrt(a) x0 + sqrt(1 - a) eps",
             _noisy(x0, a, noise, "swapped"))],
            "the model's input is not x_t = sqrt(a) x0 + sqrt(1 - a) eps with a = alphas_cumprod[t] and the drawn noise",
            *tolerance(torch.float32))

    def value(fn):
        for s in (seed, seed + 1):
            x0 = inputs(seed=s)
            got = call(fn, probe(), x0, ab, torch.Generator().manual_seed(s))
            t, noise = draw_t_noise(x0, T, s)
            expected = reference_v_loss(probe(), x0, ab, torch.Generator().manual_seed(s))
            explain(got.detach(), expected.detach(), loss_mistakes(x0, ab, t, noise, probe),
                    f"the loss is {fmt(got.item())}, minidiff.objectives.diffusion_loss gives {fmt(expected.item())} "
                    "on the same t and noise", *tolerance(torch.float32))

    def gradient(fn):
        x0 = inputs(seed=seed + 2)
        mine, ref = probe(), probe()
        loss = call(fn, mine, x0, ab, torch.Generator().manual_seed(seed))
        if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
            raise Fail("the loss carries no gradient, so backward() cannot reach the model: compute it from the "
                       "model's output with torch operations")
        loss.backward()
        reference_v_loss(ref, x0, ab, torch.Generator().manual_seed(seed)).backward()
        for name in ("scale", "bias"):
            g_mine, g_ref = getattr(mine, name).grad, getattr(ref, name).grad
            if g_mine is None:
                raise Fail(f"backward() left no gradient on the model's {name}: the loss must be computed from "
                           "the model's output, inside the autograd graph")
            if not same(g_mine, g_ref, *tolerance(torch.float32)):
                raise Fail(f"the gradient of the model's {name} differs from minidiff's (largest difference "
                           f"{fmt((g_mine - g_ref).abs().max().item())}): one Adam step would move the model differently")

    def zero_snr(fn):
        # float64, and a short zero-SNR schedule, so that many draws land on the last step (alpha_bar = 0)
        ab0 = Schedule.make("cosine", 8, zero_snr=True).alphas_cumprod
        x0 = inputs(torch.float64, (32, 3, 4, 4), seed + 3)
        got = call(fn, probe(torch.float64, 8), x0, ab0, torch.Generator().manual_seed(seed))
        t, noise = draw_t_noise(x0, 8, seed)
        expected = reference_v_loss(probe(torch.float64, 8), x0, ab0, torch.Generator().manual_seed(seed))
        mistakes = [("the loss is not finite at alpha_bar = 0 (zero SNR): with v nothing divides, "
                     "x_t = eps and the target is v = -x0 there", None)]
        explain(got.detach(), expected.detach(), mistakes + loss_mistakes(x0, ab0, t, noise, lambda: probe(torch.float64, 8)),
                f"on float64 images and a zero-SNR schedule of 8 steps the loss is {fmt(got.item())}, minidiff's "
                f"{fmt(expected.item())}", 1e-5, 1e-7)

    return [("a scalar tensor that carries the gradient", scalar),
            ("t, then the noise, drawn from the generator", draws),
            ("the model sees x_t = sqrt(a) x0 + sqrt(1 - a) eps", noisy_input),
            ("equals minidiff's diffusion_loss on the same t and noise", value),
            ("one backward pass gives minidiff's gradient", gradient),
            ("float64 images and a zero-SNR schedule", zero_snr)]


# ------------------------------------------------------------------------------------------------
# 13. The sampling loop: DDIM over trailing timesteps
# ------------------------------------------------------------------------------------------------


def reference_ddim_sample(denoise, x_T, alphas_cumprod, steps):
    ab = alphas_cumprod.tolist()
    ts = samplers.make_timesteps(len(ab), steps, "trailing").tolist()
    x = x_T
    for i, t in enumerate(ts):
        x0, eps = denoise(x, t)
        x = samplers.ddim_step(x, x0, eps, ab[t], ab[ts[i + 1]] if i + 1 < len(ts) else 1.0)
    return x


def variant_ddim_sample(denoise, x_T, alphas_cumprod, steps, *, spacing="trailing", last="clean", swap=False,
                        via_eps=False):
    """The loop with one known mistake: another spacing, no step to a clean sample (last="stop") or
    one to alphas_cumprod[0] (last="ab0"), x0 and eps swapped, x0 re-derived from eps (divides by sqrt(a))."""
    ab = alphas_cumprod.tolist()
    ts = samplers.make_timesteps(len(ab), steps, spacing).tolist()
    x = x_T
    for i, t in enumerate(ts):
        if i + 1 == len(ts) and last == "stop":
            break
        x0, eps = denoise(x, t)
        if swap:
            x0, eps = eps, x0
        if via_eps:
            x0 = (x - math.sqrt(1 - ab[t]) * eps) / math.sqrt(ab[t]) if ab[t] > 0 else x * math.nan
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else (ab[0] if last == "ab0" else 1.0)
        x = samplers.ddim_step(x, x0, eps, ab[t], a_prev)
    return x


class ExactDenoiser:
    """denoise(x, t) -> (x0_hat, eps_hat) of the exact Gaussian denoiser; keeps the timesteps it was asked for."""

    def __init__(self, mean, var, alphas_cumprod):
        self.den = GaussianDenoiser(mean, var=var, schedule=Schedule.make("linear", 10), prediction="x0")
        self.ab, self.visited = alphas_cumprod.tolist(), []

    def __call__(self, x, t):
        if isinstance(t, torch.Tensor) and t.numel() != 1:
            raise Fail(f"denoise was called with t of shape {tuple(t.shape)}: pass one timestep (an int) per call")
        t = int(t)
        if not 0 <= t < len(self.ab):
            raise Fail(f"denoise was called with t = {t}, outside 0..{len(self.ab) - 1}: timesteps are 0-indexed")
        self.visited.append(t)
        a = self.ab[t]
        x0 = self.den.posterior_mean(x, a).to(x.dtype)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a) if a < 1 else torch.zeros_like(x)
        return x0, eps


DDIM_SPACING_HINTS = {
    "leading": "the loop does not start at t = T-1: that is leading spacing (Table 2), which never visits the "
               "last training step; trailing starts where training ends: t = round(T - k T / S) - 1, k = 0..S-1",
    "linspace": "the loop visits linspace's timesteps (it ends at t = 0): trailing starts at T-1 and steps down by "
                "T / S, t = round(T - k T / S) - 1, k = 0..S-1 (Table 2)",
}


def sampling_checks():
    sd0 = Schedule.make("scaled_linear", zero_snr=True)
    mean = torch.tensor([0.6, -0.4], dtype=torch.float64)
    var = torch.tensor([2.5, 0.09], dtype=torch.float64)

    def exact(ab, dtype=torch.float64, d=2):
        return ExactDenoiser(mean[:d].to(dtype), var[:d].to(dtype), ab)

    def shapes(fn):
        for i, (shape, dtype) in enumerate([((3, 2), torch.float32), ((2, 3, 4, 4), torch.float64)]):
            m = torch.randn(shape[1:], generator=torch.Generator().manual_seed(i), dtype=torch.float64)
            den = ExactDenoiser(m, torch.full(shape[1:], 0.3, dtype=torch.float64), sd0.alphas_cumprod)
            x_T = torch.randn(shape, generator=torch.Generator().manual_seed(10 + i), dtype=torch.float64).to(dtype)
            tensor_like(call(fn, den, x_T, sd0.alphas_cumprod, 5), shape, dtype, f"the sample for x_T of shape {shape} ({dtype})")

    def visits(fn):
        for T, S in ((1000, 10), (1000, 7), (50, 50), (1000, 1)):
            ab = Schedule.make("scaled_linear", T, zero_snr=True).alphas_cumprod
            den = exact(ab)
            call(fn, den, torch.zeros(1, 2, dtype=torch.float64), ab, S)
            expected = samplers.make_timesteps(T, S, "trailing").tolist()
            if den.visited == expected:
                continue
            for spacing, hint in DDIM_SPACING_HINTS.items():
                if den.visited == samplers.make_timesteps(T, S, spacing).tolist() and den.visited != expected:
                    raise Fail(hint)
            if den.visited == expected[::-1]:
                raise Fail("the timesteps are visited in ascending order: sampling goes from noise (t = T-1) to data")
            if den.visited == expected[:-1]:
                raise Fail(f"the loop stops one timestep early (it never denoises at t = {expected[-1]}): every "
                           "listed timestep gets a step, the last one to alpha_bar = 1")
            raise Fail(f"with T = {T}, {S} steps, denoise was called at t = {den.visited[:12]}; the trailing "
                       f"timesteps are {expected[:12]} (Table 2 minus one), each once, in that order")

    def clean(fn):
        ab = sd0.alphas_cumprod
        c = torch.tensor([0.25, -0.75], dtype=torch.float64)
        x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

        def denoise(x, t):
            a = ab[int(t)].item()
            return c.expand_as(x).clone(), (x - math.sqrt(a) * c) / math.sqrt(1 - a)

        got = call(fn, denoise, x_T, ab, 10)
        explain(got, c.expand_as(x_T), [
            ("the samples are still noisy: after the last listed timestep comes one more step, to alpha_bar = 1 "
             "(a clean sample: x_0 = the predicted x0)", variant_ddim_sample(denoise, x_T, ab, 10, last="stop")),
            ("the last step goes to alphas_cumprod[0], not to alpha_bar = 1: the step after the last listed "
             "timestep lands on a clean sample, x_0 = the predicted x0", variant_ddim_sample(denoise, x_T, ab, 10, last="ab0")),
            ("x0 and eps are swapped: denoise returns (x0_hat, eps_hat), and x_prev = sqrt(a_prev) x0_hat + "
             "sqrt(1 - a_prev) eps_hat", variant_ddim_sample(denoise, x_T, ab, 10, swap=True))],
            "a denoiser that always predicts x0 = c must give exactly c: the last step goes to alpha_bar = 1, "
            "where x_prev = sqrt(1) x0_hat + sqrt(0) eps_hat")

    def moments(fn):
        # The exact denoiser makes every DDIM step affine in x, so the loop maps x_T to A x_T + b: two runs
        # (x_T = 0 and x_T = 1) give b and A, and the sample's law N(b, A^2), exactly.
        for S in (10, 3):
            ab = sd0.alphas_cumprod
            x_T = torch.stack([torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)])
            out = call(fn, exact(ab), x_T.clone(), ab, S)
            m, v = gaussian_sampler_moments(var, mean, sd0, samplers.make_timesteps(1000, S, "trailing"))
            expected = torch.stack([m, m + v.sqrt()])

            def wrong(**kw):
                return variant_ddim_sample(exact(ab), x_T.clone(), ab, S, **kw)

            explain(out, expected, [
                ("not finite from the zero-SNR start: at alpha_bar = 0 never divide by sqrt(alpha_bar_t); use the "
                 "x0_hat that denoise returns (the step in x0 form, exercise 6)", None),
                ("x0 and eps are swapped: denoise returns (x0_hat, eps_hat), and x_prev = sqrt(a_prev) x0_hat + "
                 "sqrt(1 - a_prev) eps_hat", wrong(swap=True)),
                (DDIM_SPACING_HINTS["leading"], wrong(spacing="leading")),
                (DDIM_SPACING_HINTS["linspace"], wrong(spacing="linspace")),
                ("the samples are still noisy: after the last listed timestep comes one more step, to alpha_bar = 1",
                 wrong(last="stop"))],
                f"on Gaussian data N({mean.tolist()}, {var.tolist()}) with {S} steps the samples should have mean "
                f"{[round(x, 4) for x in m.tolist()]} and variance {[round(x, 4) for x in v.tolist()]} exactly "
                f"(minidiff.exact.analytic.gaussian_sampler_moments); yours: mean {[round(x, 4) for x in out[0].tolist()]}, "
                f"variance {[round(x, 4) for x in ((out[1] - out[0]) ** 2).tolist()]}")

    def oracle(fn):
        cases = [(sd0, 25, torch.float32), (Schedule.make("linear"), 10, torch.float64),
                 (Schedule.make("cosine", 50, zero_snr=True), 50, torch.float64), (Schedule.make("linear", 7), 1, torch.float64)]
        for i, (schedule, S, dtype) in enumerate(cases):
            shape = (3, 2, 4, 4)
            m = torch.randn(shape[1:], generator=torch.Generator().manual_seed(20 + i), dtype=torch.float64)
            v = torch.rand(shape[1:], generator=torch.Generator().manual_seed(30 + i), dtype=torch.float64) * 2
            x_T = torch.randn(shape, generator=torch.Generator().manual_seed(40 + i), dtype=torch.float64).to(dtype)
            den = GaussianDenoiser(m, var=v, schedule=schedule, prediction="x0")
            expected = samplers.sample(den, shape, schedule, prediction="x0", steps=S, spacing="trailing", sampler="ddim",
                                       x_T=x_T, dtype=dtype, progress=False)
            got = call(fn, ExactDenoiser(m, v, schedule.alphas_cumprod), x_T.clone(), schedule.alphas_cumprod, S)
            if not same(got, expected, *tolerance(dtype)):
                raise Fail(f"{S} steps on a {schedule.num_timesteps}-step schedule, {dtype}: differs from "
                           "minidiff.samplers.sample(..., sampler='ddim', spacing='trailing', eta=0)")

    return [("returns a sample with x_T's shape and dtype", shapes),
            ("visits the trailing timesteps, from T-1 down", visits),
            ("the last step goes to alpha_bar = 1 (a clean sample)", clean),
            ("exact Gaussian data: the known mean and variance", moments),
            ("agrees with minidiff's DDIM sampler", oracle)]


# ------------------------------------------------------------------------------------------------
# 14. The brightness experiment: the flawed settings and the three fixes
# ------------------------------------------------------------------------------------------------

FLAWED = dict(schedule="scaled_linear", zero_snr=False, prediction="eps", spacing="leading", steps=50)  # Stable Diffusion's
FIXES = dict(zero_snr=True, prediction="v", spacing="trailing")  # Lin et al. Secs. 3.1-3.3


def reference_fix_settings(settings):
    return {**settings, **FIXES}


def settings_hints(key, value) -> str:
    if key == "zero_snr":
        return ("the schedule still ends above zero SNR (Stable Diffusion's keeps SNR(T) = 0.0047, so x_T "
                "leaks the image's brightness and N(0, I) is the wrong start): set zero_snr=True (Algorithm 1)")
    if key == "prediction":
        if value == "eps":
            return ("eps prediction is kept: at zero SNR the input is the noise, so predicting eps says nothing "
                    "about the image (minidiff refuses it); Lin et al. train with prediction='v' (eq. 12)")
        if value == "x0":
            return ("x0 prediction works at zero SNR, but it is not the paper's fix: Lin et al. train with "
                    "prediction='v', a target that stays informative at both ends of the schedule")
        return f"prediction={value!r}: Lin et al. train with prediction='v' (v = sqrt(a) eps - sqrt(1 - a) x0)"
    if value == "leading":
        return ("leading spacing is kept: it never visits the last training step (its first is t = 980 for 50 "
                "steps), so sampling does not start where the zero-SNR schedule ends; use spacing='trailing'")
    if value == "linspace":
        return ("linspace does start at T-1, but spends its last step at t = 0, where almost nothing is left "
                "to denoise; Lin et al. use spacing='trailing', evenly spaced from T-1 (Table 2)")
    return f"spacing={value!r}: Lin et al. use spacing='trailing' (Table 2)"


def settings_checks():
    def result(fn, settings):
        given = copy.deepcopy(settings)
        out = call(fn, given)
        if not isinstance(out, dict):
            raise Fail(f"return a dict of settings, not a {type(out).__name__}")
        if given != settings:
            raise Fail("the settings given were changed in place: return a new dict ({**settings, ...} or "
                       "dict(settings)) and leave the caller's as it was")
        if set(out) != set(settings):
            raise Fail(f"the keys changed: got {sorted(out)}, expected the same keys as given, {sorted(settings)}")
        return out

    def new_dict(fn):
        result(fn, FLAWED)

    def one_fix(key):
        def check(fn):
            out = result(fn, FLAWED)
            if out[key] != FIXES[key] or type(out[key]) is not type(FIXES[key]):
                raise Fail(settings_hints(key, out[key]))
        return check

    def others_kept(fn):
        for settings in (FLAWED, dict(FLAWED, schedule="linear", steps=10)):
            out = result(fn, settings)
            changed = [k for k in settings if k not in FIXES and out[k] != settings[k]]
            if changed:
                raise Fail(f"{', '.join(changed)} changed: only the three fixes (zero_snr, prediction, spacing) "
                           "change; the schedule's kind and the number of steps stay as given")

    def idempotent(fn):
        for settings in (reference_fix_settings(FLAWED), dict(FLAWED, zero_snr=True), dict(FLAWED, spacing="trailing")):
            out = result(fn, settings)
            bad = [k for k in FIXES if out[k] != FIXES[k]]
            if bad:
                raise Fail(f"given settings with some fixes already made, {bad[0]} came back as {out[bad[0]]!r}: "
                           "set each fix (zero_snr=True, ...), do not flip what was given")

    def runnable(fn, settings):
        out = result(fn, settings)
        try:
            schedule = Schedule.make(out["schedule"], 1000, zero_snr=out["zero_snr"])
            objectives.check_prediction(out["prediction"], schedule)
            return schedule, samplers.make_timesteps(1000, out["steps"], out["spacing"]), out
        except (ValueError, KeyError, TypeError) as e:
            raise Fail(f"minidiff cannot run these settings ({out}): {str(e).splitlines()[0]}") from None

    def starts_at_zero_snr(fn):
        for settings in (FLAWED, dict(FLAWED, schedule="linear", steps=10), dict(FLAWED, spacing="linspace", steps=7)):
            schedule, ts, out = runnable(fn, settings)
            a = schedule.alphas_cumprod[ts[0]].item()
            if a != 0:
                raise Fail(f"with {out} sampling starts at t = {int(ts[0])}, where alpha_bar = {a:.3g}, not 0: x_T ~ N(0, I) "
                           "is then not what the model saw in training (it still holds some of the image)")

    def brightness(fn):
        # Lin et al.'s finding, exactly: DDIM with the exact denoiser on Gaussian images whose brightness varies.
        # With the fixes the spread of the samples' brightness tends to the data's as the steps grow (0.97 at
        # 200 steps); with the flawed settings it stays below half of it however many steps are taken.
        schedule, ts, out = runnable(fn, dict(FLAWED, steps=200))
        ratio = brightness_std_ratio(schedule, ts)
        if abs(ratio - 1) > 0.05:
            raise Fail(f"with {out} the exact sampler's brightness spread is {ratio:.3f} of the data's, not about 1: "
                       "only the zero-SNR schedule with sampling from t = T-1 recovers it")

    return [("returns a new dict with the same keys", new_dict),
            ("fix 1: zero terminal SNR", one_fix("zero_snr")), ("fix 2: v prediction", one_fix("prediction")),
            ("fix 3: trailing timesteps", one_fix("spacing")),
            ("keeps the schedule's kind and the number of steps", others_kept),
            ("settings already fixed stay fixed", idempotent),
            ("sampling starts where alpha_bar = 0", starts_at_zero_snr),
            ("200 exact DDIM steps reach the data's brightness spread", brightness)]


# The data of the brightness experiment: Gaussian 3x32x32 images, a brightness offset shared by every pixel
# (std 0.5, mean 0.2) on a texture of std 0.3, as `minidiff repro exact`. Along the brightness direction the
# variance is LAM_B; the image's mean brightness is that coordinate / sqrt(D).
D = 3 * 32 * 32
S_B, S_PIX, MEAN_B = 0.5, 0.3, 0.2
LAM_B, LAM_PIX = S_PIX**2 + D * S_B**2, S_PIX**2


def brightness_std_ratio(schedule, timesteps) -> float:
    """Exact std of the samples' brightness / the data's, for DDIM with the exact denoiser."""
    _, v = gaussian_sampler_moments(torch.tensor(LAM_B), torch.tensor(MEAN_B), schedule, timesteps)
    return math.sqrt(v.item() / LAM_B)


# ------------------------------------------------------------------------------------------------
# The runs
# ------------------------------------------------------------------------------------------------


def _figures():
    from ..repro.common import image_brightness, mosaic, pyplot, save_figure, wasserstein1
    return image_brightness, mosaic, pyplot, save_figure, wasserstein1


# 16x16 images: in three CPU-minutes the small model learns the ten shapes at 16 pixels (3,767 steps: every
# row of the grid its shape and colour) but not at 32 (1,695 steps: coloured blobs), on a shared 2-core machine.
TRAIN_FULL = dict(preset="small-patch2", resolution=16, images=10_000, batch=32, steps=6000, seconds=180.0, samples=100)
TRAIN_QUICK = dict(preset="tiny", resolution=16, images=256, batch=16, steps=40, seconds=60.0, samples=20)
GUIDANCE = dict(guidance=2.5, guidance_from=-3.0)  # the built-in recipe's: guided where log-SNR >= -3
LABEL_DROPOUT = 0.1


def train_model(loss_fn, quick: bool, seed: int = 0):
    """A class-conditional UNet trained on the built-in shapes with loss_fn(model, x0, alphas_cumprod,
    generator), as the built-in recipe trains it: Adam (lr 2e-3 after 100 warm-up steps, beta2 0.99,
    falling to 0 over the last fifth of the run), gradients clipped at 1, an EMA over about the last
    thirtieth of the steps, labels dropped 10% of the time (for guidance); the main job's schedule
    (linear, zero terminal SNR) and target (v). loss_fn sees a model(x_t, t) that adds the batch's
    labels itself. Stops at the step count or the time budget, whichever comes first.
    Returns (EMA model, info)."""
    from ..training.config import EMA_SHARE
    from ..training.data import Batches, builtin_shapes
    from ..training.ema import EMA
    from ..unet import UNet

    size = TRAIN_QUICK if quick else TRAIN_FULL
    torch.manual_seed(seed)
    data = builtin_shapes(size["images"], seed=seed, resolution=size["resolution"])
    classes = len(data.classes)
    model = UNet.from_preset(size["preset"], image_size=size["resolution"], num_classes=classes)
    ema = EMA(model, 0.995, share=EMA_SHARE)
    schedule = Schedule.make("linear", zero_snr=True)
    ab = schedule.alphas_cumprod
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.99))
    batches, gen = Batches(data, size["batch"], seed=seed), torch.Generator().manual_seed(seed + 1)
    labels = {}

    def labelled(x, t, y=None):  # the model as the loss sees it: model(x_t, t), labels added here
        return model(x, t, y=labels["y"])

    losses, start = [], time.perf_counter()
    for step in range(size["steps"]):
        progress = max(step / size["steps"], (time.perf_counter() - start) / size["seconds"])
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 100, (1 - progress) / 0.2)
        x0, y = batches.batch(step)
        drop = torch.rand(y.shape, generator=gen) < LABEL_DROPOUT
        labels["y"] = torch.where(drop, torch.full_like(y, classes), y)
        loss = loss_fn(labelled, x0, ab, gen)
        if not bool(torch.isfinite(loss)):
            raise Fail(f"the loss is {loss.item()} at step {step}: training stopped")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        losses.append(loss.item())
    info = dict(steps=len(losses), seconds=time.perf_counter() - start, losses=losses, schedule=schedule,
                data=data, preset=size["preset"], resolution=size["resolution"], samples=size["samples"],
                guide=dict(classes=classes, **GUIDANCE))
    return ema.model, info


def draw(model, schedule, prediction, guide, n, res, channels=3, steps=25, seed=0, loop=None):
    """n samples (DDIM, trailing; guided as `guide` says, one class a row of ten), with minidiff's loop
    or `loop(denoise, x_T, alphas_cumprod, steps)`."""
    ab, log_snr = schedule.alphas_cumprod, schedule.log_snr.tolist()
    y = uncond = None
    if guide:
        y = torch.arange(n) // 10 % guide["classes"]
        uncond = torch.full_like(y, guide["classes"])

    @torch.no_grad()
    def denoise(x, t):
        t = int(t)
        w = guide.get("guidance", 1.0) if log_snr[t] >= guide.get("guidance_from", -math.inf) else 1.0
        output = samplers.guided_output(model, x, torch.full((x.shape[0],), t), y=y,
                                        uncond_y=uncond if w != 1 else None, guidance=w)
        return objectives.to_x0_eps(prediction, output, x, ab[t].item())

    x_T = torch.randn(n, channels, res, res, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return (loop or reference_ddim_sample)(denoise, x_T, ab, steps)


def run_training(fn, out: Path, quick: bool):
    image_brightness, mosaic, pyplot, save_figure, wasserstein1 = _figures()
    from ..training.data import to_float

    model, info = train_model(fn, quick)
    n, res = info["samples"], info["resolution"]
    t0 = time.perf_counter()
    x = draw(model, info["schedule"], "v", info["guide"], n, res)
    sample_seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    torch.save(dict(model_config=model.config, ema=model.state_dict(), schedule="linear", zero_snr=True,
                    prediction="v", steps=info["steps"], guide=info["guide"]), out / "model.pt")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6.3))
    ax.imshow(mosaic(x, nrow=10).numpy(), interpolation="nearest"), ax.axis("off")
    ax.set_title(f"trained {info['steps']} steps with your loss ({info['preset']}, {info['seconds']:.0f} s)\n"
                 f"25 DDIM steps, trailing, v; one class a row, guidance {GUIDANCE['guidance']}", fontsize=8)
    save_figure(fig, out / "samples.png")

    losses = torch.tensor(info["losses"])
    w = max(1, len(losses) // 30)
    smooth = torch.nn.functional.avg_pool1d(losses[None, None], w, 1)[0, 0] if len(losses) >= w else losses
    data_b = image_brightness(to_float(info["data"].images[:2000]))
    samp_b = image_brightness(x)
    w1 = wasserstein1(samp_b, data_b)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].plot(losses, alpha=0.3, lw=0.6, label="your loss, per step")
    axes[0].plot(torch.arange(len(smooth)) + w - 1, smooth, label=f"mean of {w} steps")
    axes[0].set_yscale("log"), axes[0].set_xlabel("training step"), axes[0].set_ylabel("v loss (eq. 12)")
    axes[0].grid(alpha=0.3), axes[0].legend(fontsize=8)
    bins = torch.linspace(-1, 1, 31).tolist()
    axes[1].hist(data_b.numpy(), bins=bins, density=True, alpha=0.5, label="training images")
    axes[1].hist(samp_b.numpy(), bins=bins, density=True, histtype="step", lw=1.5, label=f"{n} samples")
    axes[1].set_xlabel("image brightness (mean pixel, [-1, 1])"), axes[1].legend(fontsize=8)
    axes[1].set_title(f"brightness, W1 to the data = {w1:.3f}", fontsize=9)
    save_figure(fig, out / "training.png")

    first, last = losses[: max(1, w)].mean().item(), losses[-max(1, w):].mean().item()
    return [f"trained {info['preset']} ({res}x{res}) on the built-in shapes with your loss: {info['steps']} steps "
            f"in {info['seconds']:.0f} s, loss {first:.3f} -> {last:.3f} (mean of {w} steps)",
            f"  {n} samples (25 DDIM steps, trailing, v, guidance {GUIDANCE['guidance']}) in {sample_seconds:.0f} s; "
            f"brightness W1 to the data {w1:.3f}, sample brightness std {samp_b.std().item():.3f} (data {data_b.std().item():.3f})",
            f"wrote {out / 'samples.png'}", f"wrote {out / 'training.png'} (loss curve, brightness histogram)",
            f"wrote {out / 'model.pt'} (exercise 13's run samples it)"]


def load_for_sampling(checkpoint: Path):
    """(model, schedule, prediction, guidance settings) from the main job's checkpoint (guided as its
    report was) or from exercise 12's model.pt."""
    from ..unet import UNet

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "model_config" in state and "config" not in state:  # exercise 12's
        model = UNet(**state["model_config"])
        model.load_state_dict(state["ema"])
        return (model.eval(), Schedule.make(state["schedule"], zero_snr=state["zero_snr"]), state["prediction"],
                dict(state.get("guide") or {}))
    from ..training.sample import load_run, schedule_of

    model, config, settings = load_run(checkpoint)
    guide = {}
    if config.get("class_cond"):
        guide = dict(classes=model.config["num_classes"], guidance=settings["guidance"],
                     guidance_from=settings.get("guidance_from", -math.inf))
    return model, schedule_of(config), config["prediction"], guide


def run_sampling(fn, out: Path, quick: bool, checkpoint: str | Path | None = None):
    _, mosaic, pyplot, save_figure, _ = _figures()
    lines = []
    if checkpoint is None and not quick:
        checkpoint = next((p for p in (MAIN_JOB_CHECKPOINT, COURSE_CHECKPOINT) if p.exists()), None)
    if checkpoint is not None:
        model, schedule, prediction, guide = load_for_sampling(Path(checkpoint))
        lines.append(f"the model of {checkpoint}")
    else:
        model, info = train_model(reference_v_loss, quick)
        lines.append(f"no checkpoint{'' if quick else ' (neither ' + str(MAIN_JOB_CHECKPOINT) + ' nor ' + str(COURSE_CHECKPOINT) + ')'}: "
                     f"trained {info['preset']} for {info['steps']} steps here ({info['seconds']:.0f} s)")
        schedule, prediction, guide = info["schedule"], "v", info["guide"]
    res, n, steps = model.config["image_size"], 20 if quick else 40, 10 if quick else 25
    kw = dict(n=n, res=res, channels=model.config["in_channels"], steps=steps)
    t0 = time.perf_counter()
    yours = draw(model, schedule, prediction, guide, loop=fn, **kw)
    seconds = time.perf_counter() - t0
    ref = draw(model, schedule, prediction, guide, **kw)
    diff = (yours.float() - ref).abs().max().item()
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.3 * math.ceil(n / 10) + 0.6))
    nrow = 10
    for ax, (label, images) in zip(axes, (("your ddim_sample", yours), ("minidiff's DDIM", ref))):
        ax.imshow(mosaic(images.float(), nrow=nrow).numpy(), interpolation="nearest"), ax.axis("off")
        ax.set_title(f"{label}: {steps} trailing steps from the same x_T", fontsize=9)
    save_figure(fig, out / "samples.png")
    return lines + [f"  {n} samples, {steps} steps with your loop in {seconds:.1f} s; largest difference from "
                    f"minidiff's DDIM on the same x_T: {diff:.2e}", f"wrote {out / 'samples.png'}"]


def gaussian_brightness(settings: dict, n: int, seed: int = 0) -> torch.Tensor:
    """Image brightness of n samples drawn with `settings` by the exact denoiser of the Gaussian images
    (in their two directions: brightness and one texture direction)."""
    schedule = Schedule.make(settings["schedule"], 1000, zero_snr=settings["zero_snr"])
    mean = torch.tensor([MEAN_B * math.sqrt(D), 0.0], dtype=torch.float64)
    var = torch.tensor([LAM_B, LAM_PIX], dtype=torch.float64)
    den = GaussianDenoiser(mean, var=var, schedule=schedule, prediction=settings["prediction"])
    x = samplers.sample(den, (n, 2), schedule, prediction=settings["prediction"], steps=settings["steps"],
                        spacing=settings["spacing"], sampler="ddim", generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64, progress=False)
    return x[:, 0] / math.sqrt(D)


def run_brightness(fn, out: Path, quick: bool):
    _, _, pyplot, save_figure, wasserstein1 = _figures()
    n = 4000 if quick else 50_000
    fixed = fn(dict(FLAWED))
    data = MEAN_B + math.sqrt(LAM_B / D) * torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rows = [("flawed (Stable Diffusion)", FLAWED)] + [(f"flawed + {k}={v!r}", {**FLAWED, k: v}) for k, v in FIXES.items()]
    rows += [("yours", fixed), ("minidiff's fix", reference_fix_settings(FLAWED))]
    lines = [f"Gaussian 3x32x32 images (brightness mean {MEAN_B}, std {S_B}), the exact denoiser, DDIM, "
             f"{FLAWED['steps']} steps; brightness of {n} samples against the data's:"]
    drawn = {}
    for label, settings in rows:
        try:
            b = gaussian_brightness(settings, n)
        except ValueError as e:
            lines.append(f"  {label:34s} refused: {str(e).split(':')[0]}")
            continue
        drawn[label] = b
        exact = brightness_std_ratio(Schedule.make(settings["schedule"], zero_snr=settings["zero_snr"]),
                                     samplers.make_timesteps(1000, settings["steps"], settings["spacing"]))
        lines.append(f"  {label:34s} std {b.std().item():.3f} (data {data.std().item():.3f}), "
                     f"W1 {wasserstein1(b, data):.3f}, exact std ratio {exact:.3f}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = torch.linspace(-2, 2.4, 89).tolist()
    ax.hist(data.numpy(), bins=bins, density=True, alpha=0.35, color="k", label="data")
    for label, settings in (("flawed (Stable Diffusion)", FLAWED), ("yours", fixed)):
        if label in drawn:
            said = ", ".join(f"{k}={settings[k]}" for k in FIXES)
            ax.hist(drawn[label].numpy(), bins=bins, density=True, histtype="step", lw=1.6, label=f"{label}: {said}")
    ax.set_xlabel("image brightness (mean pixel)"), ax.set_ylabel("density"), ax.legend(fontsize=7)
    ax.set_title("the brightness experiment: flawed settings against yours (exact Gaussian denoiser)", fontsize=9)
    save_figure(fig, out / "brightness.png")
    return lines + [f"wrote {out / 'brightness.png'}"]


# ------------------------------------------------------------------------------------------------

EXERCISES = [
    Exercise(12, "training-step", "The training step: the v loss of eq. 12", LIN, "training.md", "v_loss",
             "def v_loss(model, x0, alphas_cumprod, generator):",
             "The denoising loss of Lin et al. eq. 12 with the v target, for one batch of clean images x0.\n\n"
             "T = len(alphas_cumprod) (float64). Draw, in this order and from `generator`:\n"
             "  t = torch.randint(0, T, (B,), generator=generator)               one timestep per image\n"
             "  noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
             "With a = alphas_cumprod[t] (cast to x0's dtype, shaped [B, 1, 1, 1]):\n"
             "  x_t = sqrt(a) x0 + sqrt(1 - a) noise        v = sqrt(a) noise - sqrt(1 - a) x0\n"
             "Return the mean over every element of (model(x_t, t) - v) ** 2: a scalar tensor that\n"
             "backward() can differentiate.",
             reference_v_loss, "minidiff.objectives.diffusion_loss", loss_checks(), run_training),
    Exercise(13, "sampling-loop", "The sampling loop: DDIM from x_T to x_0", LIN, "05_ddpm_ddim.md", "ddim_sample",
             "def ddim_sample(denoise, x_T, alphas_cumprod, steps):",
             "Deterministic DDIM (eta = 0) from pure noise x_T to a clean sample, over `steps` trailing\n"
             "timesteps (Lin et al. Table 2: t = round(T - k T / steps) - 1 for k = 0..steps-1, T-1 first).\n\n"
             "denoise(x, t) -> (x0_hat, eps_hat): the model's prediction at x and the int timestep t.\n"
             "alphas_cumprod: float64 [T]; alphas_cumprod[t] is alpha_bar at t (0 at T-1 on a zero-SNR schedule).\n"
             "At each listed t, step to the next listed timestep's alpha_bar; after the last one, to\n"
             "alpha_bar = 1. Each step: x = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps_hat (exercise 6;\n"
             "minidiff.samplers.ddim_step may be used). Returns x_0 with x_T's shape and dtype.",
             reference_ddim_sample, "minidiff.samplers.sample(..., sampler='ddim', spacing='trailing')",
             sampling_checks(), run_sampling),
    Exercise(14, "brightness-experiment", "The brightness experiment: the three fixes", LIN, "07_brightness.md",
             "fix_settings", "def fix_settings(settings):",
             "Stable Diffusion's flawed settings with Lin et al.'s three fixes applied (Secs. 3.1-3.3).\n\n"
             "settings: a dict such as dict(schedule=\"scaled_linear\", zero_snr=False, prediction=\"eps\",\n"
             "spacing=\"leading\", steps=50): the schedule's kind, whether it is rescaled to zero terminal\n"
             "SNR, what the network predicts (\"eps\", \"x0\" or \"v\"), the timestep spacing (\"leading\",\n"
             "\"linspace\" or \"trailing\") and the number of sampling steps.\n"
             "Return a new dict with the same keys, each of the three flawed settings fixed and the rest\n"
             "as given; leave `settings` itself unchanged.",
             reference_fix_settings, "the paper's fixes: minidiff's defaults (docs/07_brightness.md)",
             settings_checks(), run_brightness),
]
