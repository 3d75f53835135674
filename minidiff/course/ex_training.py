"""Exercises 12 and 13 (Lin et al. 2023): the training step and the sampling loop. Unlike 1-11,
each ends in a run that trains or samples (experiments_training.py): 12 trains a small UNet on the
built-in shapes with the student's loss, 13 draws from a trained model with the student's loop.

The checks stay fast and deterministic: 12 grades the loss on a small "probe" model (an affine map
of x_t with a bias per timestep, which records what it was called with), 13 grades the loop on the
exact Gaussian denoiser, whose DDIM answer is known in closed form.
"""

from __future__ import annotations

import math

import torch

from .. import objectives, samplers
from ..exact.analytic import GaussianDenoiser, gaussian_sampler_moments
from ..schedules import Schedule
from .core import Exercise, Fail, call, explain, fmt, same, tensor_like, tolerance

LIN = "Lin et al. 2023"


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


UNSHAPED_ALPHA_BAR = ("a = alphas_cumprod[t] has shape [B]: against x0 [B, C, H, W] it lines up with the last axis "
                      "(the width), not the batch; shape it [B, 1, 1, 1] (alphas_cumprod[t].view(-1, 1, 1, 1)) so "
                      "that image i gets alpha_bar[t_i]")


def call_loss(fn, model, x0, *args):
    """The student's loss; an alpha_bar of shape [B] that does not broadcast against x0 is named."""
    try:
        return call(fn, model, x0, *args)
    except RuntimeError as e:
        if "must match the size of tensor" in str(e) and f"non-singleton dimension {x0.ndim - 1}" in str(e):
            raise Fail(UNSHAPED_ALPHA_BAR) from None
        raise


def loss_checks():
    T, shape, seed = 1000, (4, 3, 6, 6), 7
    ab = Schedule.make("linear", T, zero_snr=True).alphas_cumprod

    def inputs(dtype=torch.float32, shape=shape, seed=seed):
        g = torch.Generator().manual_seed(100 + seed)
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)

    def probe(dtype=torch.float32, T=T):
        return Probe(T, shape[1], dtype)

    def scalar(fn):
        out = call_loss(fn, probe(), inputs(), ab, torch.Generator().manual_seed(seed))
        tensor_like(out, (), torch.float32, "the loss")
        if not out.requires_grad:
            raise Fail("the loss carries no gradient: compute it from the model's output with torch operations "
                       "(no .item(), .detach(), torch.no_grad() or torch.tensor(value) on the way)")
        if not bool(torch.isfinite(out)):
            raise Fail(f"the loss is {out.item()}, not a finite number")

    def draws(fn):
        x0 = inputs()
        first, second = probe(), probe()
        a = call_loss(fn, first, x0, ab, torch.Generator().manual_seed(seed))
        b = call_loss(fn, second, x0, ab, torch.Generator().manual_seed(seed))
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
        call_loss(fn, m, x0, ab, torch.Generator().manual_seed(seed))
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
            got = call_loss(fn, probe(), x0, ab, torch.Generator().manual_seed(s))
            t, noise = draw_t_noise(x0, T, s)
            expected = reference_v_loss(probe(), x0, ab, torch.Generator().manual_seed(s))
            explain(got.detach(), expected.detach(), loss_mistakes(x0, ab, t, noise, probe),
                    f"the loss is {fmt(got.item())}, minidiff.objectives.diffusion_loss gives {fmt(expected.item())} "
                    "on the same t and noise", *tolerance(torch.float32))

    def gradient(fn):
        x0 = inputs(seed=seed + 2)
        mine, ref = probe(), probe()
        loss = call_loss(fn, mine, x0, ab, torch.Generator().manual_seed(seed))
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
        got = call_loss(fn, probe(torch.float64, 8), x0, ab0, torch.Generator().manual_seed(seed))
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


INDEX_FOR_TIMESTEP = ("denoise was called with the loop's index 0, 1, 2, ... instead of the timestep: pass "
                      "t = timesteps[i] (the training timestep the model was trained on), not i")
FRESH_NOISE = ("two runs from the same x_T gave different samples: DDIM with eta = 0 draws no fresh noise; the noise "
               "term of each step is the eps_hat that denoise returns (fresh noise every step is DDPM, or eta = 1)")


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

    def deterministic(fn):
        ab = sd0.alphas_cumprod
        x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        first, second = call(fn, exact(ab), x_T.clone(), ab, 10), call(fn, exact(ab), x_T.clone(), ab, 10)
        if not same(first, second):
            raise Fail(FRESH_NOISE)

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
            if S > 1 and den.visited == list(range(S)):
                raise Fail(INDEX_FOR_TIMESTEP)
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
            ("the same x_T gives the same sample (no fresh noise)", deterministic),
            ("visits the trailing timesteps, from T-1 down", visits),
            ("the last step goes to alpha_bar = 1 (a clean sample)", clean),
            ("exact Gaussian data: the known mean and variance", moments),
            ("agrees with minidiff's DDIM sampler", oracle)]


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
             reference_v_loss, "minidiff.objectives.diffusion_loss", loss_checks()),
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
             sampling_checks()),
]
