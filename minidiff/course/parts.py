"""The two functions problem set 1 asks for beyond the numbered exercises: the training loop and
the ancestral (DDPM) sampling loop. Their records have the Exercise type (checks, hints, a
reference) but are not in the numbered list: they are graded as parts of the set (sets.py). They
reuse exercise 12's probe model and exercise 13's exact denoiser, so this file imports ex_training.

The checks follow the exercises' rules: fast, deterministic, one line of words per failure.
`train_loop` is graded on the probe model of exercise 12 (a few steps, compared parameter for
parameter with the reference); `ddpm_sample` on the exact Gaussian denoiser of exercise 13, with the
noise drawn from the generator in the order the docstring gives.
"""

from __future__ import annotations

import math

import torch

from .. import samplers
from ..schedules import Schedule
from .core import Exercise, Fail, call, explain, same, tensor_like, tolerance
from .ex_training import ExactDenoiser, Probe, reference_v_loss

DDPM = "Ho et al. 2020"


# ------------------------------------------------------------------------------------------------
# The training loop
# ------------------------------------------------------------------------------------------------


def reference_train_loop(model, images, alphas_cumprod, loss_fn, steps, batch_size, lr, generator):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (steps - step) / (0.2 * steps))
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        loss = loss_fn(model, images[index], alphas_cumprod, generator)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def variant_train_loop(model, images, alphas_cumprod, loss_fn, steps, batch_size, lr, generator, *,
                       zero_grad="before", decay=True, optimizer="adam"):
    """The loop with one known mistake: zero_grad "never" or "after" (between backward and step),
    no learning-rate decay, or SGD in place of Adam."""
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        if decay:
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (steps - step) / (0.2 * steps))
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        loss = loss_fn(model, images[index], alphas_cumprod, generator)
        if zero_grad == "before":
            opt.zero_grad()
        loss.backward()
        if zero_grad == "after":
            opt.zero_grad()
        opt.step()
        losses.append(loss.item())
    return losses


LOOP_HINTS = dict(
    never="the gradients were never cleared: PyTorch adds each backward() to .grad, so call opt.zero_grad() "
          "every step, before loss.backward()",
    after="opt.zero_grad() runs between backward() and step(), so every step applies a zero gradient: clear the "
          "gradients before loss.backward()",
    no_decay="the learning rate was not decayed: hold lr, then take it linearly to 0 over the last fifth of the steps, "
             "lr_now = lr * min(1, (steps - step) / (0.2 * steps))",
    sgd="the parameters moved as plain SGD moves them: the loop uses torch.optim.Adam(model.parameters(), lr=lr)",
)


def loop_checks():
    T, shape, steps, batch = 50, (16, 1, 4, 4), 12, 4
    ab = Schedule.make("linear", T).alphas_cumprod

    def images():
        return torch.randn(shape, generator=torch.Generator().manual_seed(3))

    def run(fn, loss_fn=reference_v_loss, seed=0, model=None):
        model = model or Probe(T, 1)
        losses = call(fn, model, images(), ab, loss_fn, steps, batch, 0.05, torch.Generator().manual_seed(seed))
        return model, losses

    def floats(fn):
        _, losses = run(fn)
        if not isinstance(losses, (list, tuple)) or len(losses) != steps:
            got = f"{len(losses)} values" if isinstance(losses, (list, tuple)) else f"a {type(losses).__name__}"
            raise Fail(f"return the list of the {steps} losses, one a step; got {got}")
        if any(isinstance(v, torch.Tensor) for v in losses):
            raise Fail("the losses are tensors: losses.append(loss) keeps every step's graph in memory; "
                       "append loss.item(), a Python float")
        if not all(isinstance(v, float) and math.isfinite(v) for v in losses):
            raise Fail("every loss must be a finite Python float (loss.item())")

    def batches(fn):
        seen = []

        def spy(model, x0, alphas_cumprod, generator):
            seen.append(x0.detach().clone())
            return reference_v_loss(model, x0, alphas_cumprod, generator)

        run(fn, spy)
        g, data = torch.Generator().manual_seed(0), images()
        for step, x0 in enumerate(seen[:3]):
            index = torch.randint(0, len(data), (batch,), generator=g)
            expected = data[index]
            reference_v_loss(Probe(T, 1), expected, ab, g)  # the loss draws t and the noise from the same generator
            if x0.shape != expected.shape:
                raise Fail(f"the loss got a batch of shape {tuple(x0.shape)}, expected {tuple(expected.shape)}: "
                           "batch_size images a step")
            if not same(x0, expected):
                raise Fail(f"step {step}'s batch is not images[torch.randint(0, len(images), (batch_size,), "
                           "generator=generator)]: draw it from the generator, then call loss_fn with the same generator")
        if len(seen) != steps:
            raise Fail(f"loss_fn was called {len(seen)} times for {steps} steps: once a step")

    def parameters(fn):
        model, _ = run(fn)
        ref = Probe(T, 1)
        reference_train_loop(ref, images(), ab, reference_v_loss, steps, batch, 0.05, torch.Generator().manual_seed(0))
        got = torch.cat([p.detach().flatten() for p in model.parameters()])
        mistakes = []
        for hint, kw in ((LOOP_HINTS["never"], dict(zero_grad="never")), (LOOP_HINTS["after"], dict(zero_grad="after")),
                         (LOOP_HINTS["no_decay"], dict(decay=False)), (LOOP_HINTS["sgd"], dict(optimizer="sgd"))):
            wrong = Probe(T, 1)
            variant_train_loop(wrong, images(), ab, reference_v_loss, steps, batch, 0.05,
                               torch.Generator().manual_seed(0), **kw)
            mistakes.append((hint, torch.cat([p.detach().flatten() for p in wrong.parameters()])))
        if same(got, torch.cat([p.detach().flatten() for p in Probe(T, 1).parameters()])):
            raise Fail("the model's parameters did not move: clear the gradients before loss.backward() (opt.zero_grad() "
                       "between backward() and step() leaves step() a zero gradient), then call opt.step() every step")
        explain(got, torch.cat([p.detach().flatten() for p in ref.parameters()]), mistakes,
                f"after {steps} steps the parameters differ from the reference loop's (Adam at lr, decayed to 0 over "
                "the last fifth; zero_grad, backward, step)", *tolerance(torch.float32))

    def learns(fn):
        model, losses = run(fn, seed=1)
        first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
        if not last < first:
            raise Fail(f"the loss did not fall on the probe model ({first:.3f} -> {last:.3f})")

    return [("returns one float loss a step", floats),
            ("batches drawn from the generator", batches),
            ("the parameters match the reference loop's after 12 steps", parameters),
            ("the loss falls", learns)]


# ------------------------------------------------------------------------------------------------
# The DDPM (ancestral) sampling loop
# ------------------------------------------------------------------------------------------------


def reference_ddpm_sample(denoise, x_T, alphas_cumprod, steps, generator):
    ab = alphas_cumprod.tolist()
    ts = samplers.make_timesteps(len(ab), steps, "trailing").tolist()
    x = x_T
    for i, t in enumerate(ts):
        x0, _ = denoise(x, t)
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) if a_prev < 1 else None
        x = samplers.ddpm_step(x, x0, ab[t], a_prev, noise)
    return x


def variant_ddpm_sample(denoise, x_T, alphas_cumprod, steps, generator, *, noise_scale="std", deterministic=False):
    """The loop with one known mistake: the variance used as the noise's scale, or no noise at all."""
    ab = alphas_cumprod.tolist()
    ts = samplers.make_timesteps(len(ab), steps, "trailing").tolist()
    x = x_T
    for i, t in enumerate(ts):
        x0, _ = denoise(x, t)
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        c_x0, c_xt, var = samplers.ddpm_posterior(ab[t], a_prev)
        x_new = c_x0 * x0 + c_xt * x
        if a_prev < 1:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            if not deterministic:
                x_new = x_new + (var if noise_scale == "var" else math.sqrt(var)) * noise
        x = x_new
    return x


VARIANCE_AS_STD = ("the noise was scaled by the posterior variance (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev), "
                   "not its square root: a variance used as a std")


def ddpm_checks():
    sd = Schedule.make("linear")
    mean = torch.tensor([0.6, -0.4], dtype=torch.float64)
    var = torch.tensor([2.5, 0.09], dtype=torch.float64)

    def exact(ab):
        return ExactDenoiser(mean, var, ab)

    def x_T(n=4, seed=1, dtype=torch.float64):
        return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)

    def shapes(fn):
        for dtype in (torch.float32, torch.float64):
            out = call(fn, exact(sd.alphas_cumprod), x_T(dtype=dtype), sd.alphas_cumprod, 5, torch.Generator().manual_seed(0))
            tensor_like(out, (4, 2), dtype, f"the sample for x_T in {str(dtype).replace('torch.', '')}")

    def seeded(fn):
        ab = sd.alphas_cumprod
        a = call(fn, exact(ab), x_T(), ab, 10, torch.Generator().manual_seed(0))
        b = call(fn, exact(ab), x_T(), ab, 10, torch.Generator().manual_seed(0))
        c = call(fn, exact(ab), x_T(), ab, 10, torch.Generator().manual_seed(1))
        if not same(a, b):
            raise Fail("the same generator seed gave two different samples: draw every step's noise from the "
                       "generator, torch.randn(x.shape, generator=generator, dtype=x.dtype)")
        if same(a, c):
            raise Fail("two generator seeds gave the same sample: DDPM adds fresh noise at every step but the last "
                       "(that is what makes it ancestral sampling, not DDIM)")

    def clean(fn):
        ab = sd.alphas_cumprod
        c = torch.tensor([0.25, -0.75], dtype=torch.float64)

        def denoise(x, t):
            a = ab[int(t)].item()
            return c.expand_as(x).clone(), (x - math.sqrt(a) * c) / math.sqrt(1 - a)

        got = call(fn, denoise, x_T(), ab, 10, torch.Generator().manual_seed(0))
        if not same(got, c.expand(4, 2)):
            raise Fail("a denoiser that always predicts x0 = c must give exactly c: the last step goes to "
                       "alpha_bar = 1, where the posterior is x0_hat itself (no noise is added there)")

    def oracle(fn):
        for S, schedule in ((10, sd), (3, Schedule.make("cosine", 50, zero_snr=True))):
            ab = schedule.alphas_cumprod
            got = call(fn, exact(ab), x_T(6, 2), ab, S, torch.Generator().manual_seed(S))
            expected = reference_ddpm_sample(exact(ab), x_T(6, 2), ab, S, torch.Generator().manual_seed(S))

            def wrong(**kw):
                return variant_ddpm_sample(exact(ab), x_T(6, 2), ab, S, torch.Generator().manual_seed(S), **kw)

            explain(got, expected, [
                ("not finite from the zero-SNR start: the posterior's coefficients never divide by sqrt(alpha_bar_t) "
                 "(minidiff.samplers.ddpm_posterior)", None),
                (VARIANCE_AS_STD, wrong(noise_scale="var")),
                ("no noise was added: each DDPM step but the last draws from the posterior, mean + std * noise",
                 wrong(deterministic=True))],
                f"{S} steps on a {schedule.num_timesteps}-step schedule: differs from posterior steps "
                "(minidiff.samplers.ddpm_step) with the noise drawn from the generator before each step but the last",
                *tolerance(torch.float64))

    return [("returns a sample with x_T's shape and dtype", shapes),
            ("the generator decides the sample", seeded),
            ("the last step goes to alpha_bar = 1 (a clean sample)", clean),
            ("agrees with posterior steps on the exact Gaussian denoiser", oracle)]


# ------------------------------------------------------------------------------------------------

TRAIN_LOOP = Exercise(
    0, "training-loop", "The training loop", DDPM, "training.md", "train_loop",
    "def train_loop(model, images, alphas_cumprod, loss_fn, steps, batch_size, lr, generator):",
    "Train `model` for `steps` steps with Adam and return the list of losses (Python floats).\n\n"
    "Each step: set the learning rate to lr * min(1, (steps - step) / (0.2 * steps)) (held, then\n"
    "linearly to 0 over the last fifth), draw the batch\n"
    "  index = torch.randint(0, len(images), (batch_size,), generator=generator)\n"
    "take loss = loss_fn(model, images[index], alphas_cumprod, generator), then\n"
    "opt.zero_grad(), loss.backward(), opt.step(), and append loss.item().\n"
    "opt = torch.optim.Adam(model.parameters(), lr=lr), made once before the loop.",
    reference_train_loop, "minidiff.training.train (the trainer's loop, with more in it)", loop_checks())

DDPM_SAMPLE = Exercise(
    0, "ddpm-sample", "The ancestral (DDPM) sampling loop", DDPM, "05_ddpm_ddim.md", "ddpm_sample",
    "def ddpm_sample(denoise, x_T, alphas_cumprod, steps, generator):",
    "Ancestral sampling (Ho et al. Algorithm 2, on `steps` trailing timesteps) from x_T to a clean sample.\n\n"
    "denoise(x, t) -> (x0_hat, eps_hat) at the int timestep t. At each listed t, with a_t = alphas_cumprod[t]\n"
    "and a_prev that of the next listed timestep (1 after the last), draw x_prev from the posterior\n"
    "q(x_prev | x_t, x0_hat): with a = a_t / a_prev,\n"
    "  mean = sqrt(a_prev) (1 - a) / (1 - a_t) x0_hat + sqrt(a) (1 - a_prev) / (1 - a_t) x_t\n"
    "  var  = (1 - a_prev) / (1 - a_t) (1 - a)\n"
    "  x_prev = mean + sqrt(var) * torch.randn(x.shape, generator=generator, dtype=x.dtype)\n"
    "drawing no noise for the last step (var = 0 there). Returns x_0 with x_T's shape and dtype.",
    reference_ddpm_sample, "minidiff.samplers.ddpm_step", ddpm_checks())
