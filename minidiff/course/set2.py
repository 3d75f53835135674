"""Problem set 2: conditioning, guidance and the paper's fixes (Lin et al. 2023; Ho and Salimans 2022).

The student writes Algorithm 1 (zero terminal SNR), the paper's trailing timesteps (Table 2), the
class-conditional loss with label dropout, and classifier-free guidance with the rescale
(Algorithm 2); then those four functions train the same small UNet twice on the built-in shapes,
with Stable Diffusion's flawed settings and with the fixes, and draw both with guidance
(set2_training.py). Graded by the checks, then by the fixed run's class accuracy, its FCD and the
brightness spread the fixes win back over the flawed run (bands in docs/exercises/problem_sets.md).

The conditional loss is the one function here that no numbered exercise asks for: its record
(COND_LOSS) is below, graded on exercise 12's probe model with a class term added.
"""

from __future__ import annotations

import torch

from .. import objectives
from .core import Exercise, Fail, call, explain, same, tolerance
from .ex_training import Probe, draw_t_noise
from .exercises import EXERCISES
from .set2_training import BUDGET
from .problem_set import Part, ProblemSet

HO_SALIMANS = "Ho and Salimans 2022"


# ------------------------------------------------------------------------------------------------
# The class-conditional loss with label dropout
# ------------------------------------------------------------------------------------------------


class LabelProbe(Probe):
    """Exercise 12's probe plus a per-class bias: out = scale[c] x_t + bias[t] + cls[y]; it keeps the
    labels of each call."""

    def __init__(self, num_timesteps: int, channels: int, classes: int = 4, dtype=torch.float32, seed: int = 0):
        super().__init__(num_timesteps, channels, dtype, seed)
        g = torch.Generator().manual_seed(seed + 1)
        self.cls = torch.nn.Parameter(torch.randn(classes + 1, generator=g, dtype=torch.float64).to(dtype))
        self.labels = []

    def forward(self, x, t, y=None):
        if y is None:
            raise Fail("the model was called without labels: pass them, model(x_t, t, y), with the null label "
                       "where a label is dropped")
        if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.is_floating_point():
            raise Fail("y must be an int64 tensor of shape [B]: one class per image")
        if int(y.min()) < 0 or int(y.max()) >= len(self.cls):
            raise Fail(f"the model got the label {int(y.min()) if int(y.min()) < 0 else int(y.max())}: labels are "
                       f"0..{len(self.cls) - 2}, and a dropped one is null_label ({len(self.cls) - 1}), the extra class")
        self.labels.append(y.detach().clone())
        return super().forward(x, t) + self.cls[y].view((-1,) + (1,) * (x.ndim - 1))


def variant_cond_loss(model, x0, labels, alphas_cumprod, generator, prediction="v", p_uncond=0.1, null_label=10, *,
                      drop="right", target=None, order="right"):
    """The loss with one known mistake: drop "never", "inverted" (kept where dropped), "zero" (a dropped
    label becomes class 0); target "eps", "x0" or "-v" whatever `prediction` says; order "mask first"
    (the dropout drawn before t and the noise)."""
    B = x0.shape[0]
    if order == "mask first":
        u = torch.rand(B, generator=generator)
    t, noise = (torch.randint(0, len(alphas_cumprod), (B,), generator=generator),
                torch.randn(x0.shape, generator=generator, dtype=x0.dtype))
    if order != "mask first":
        u = torch.rand(B, generator=generator)
    dropped = {"right": u < p_uncond, "never": torch.zeros(B, dtype=torch.bool), "inverted": u >= p_uncond,
               "zero": u < p_uncond}[drop]
    y = torch.where(dropped, torch.full_like(labels, 0 if drop == "zero" else null_label), labels)
    a = alphas_cumprod[t].to(x0.dtype).view((-1,) + (1,) * (x0.ndim - 1))
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    kind = target or prediction
    goal = {"eps": noise, "x0": x0, "v": a.sqrt() * noise - (1 - a).sqrt() * x0,
            "-v": (1 - a).sqrt() * x0 - a.sqrt() * noise}[kind]
    return ((model(x_t, t, y) - goal) ** 2).mean()


def reference_cond_loss(model, x0, labels, alphas_cumprod, generator, prediction="v", p_uncond=0.1, null_label=10):
    B = x0.shape[0]
    t = torch.randint(0, len(alphas_cumprod), (B,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    dropped = torch.rand(B, generator=generator) < p_uncond
    y = torch.where(dropped, torch.full_like(labels, null_label), labels)
    a = objectives.extract(alphas_cumprod, t, x0)
    x_t = objectives.q_sample(x0, a, noise)
    return ((model(x_t, t, y=y) - objectives.target(prediction, x0, noise, a)) ** 2).mean()


NO_DROPOUT = ("the labels were never dropped: with probability p_uncond a label becomes null_label, so the same "
              "network also learns the unconditional output that guidance needs")
INVERTED = ("the labels were dropped where they should be kept: drop where torch.rand(B, generator=generator) "
            "< p_uncond, a share p_uncond of them")
ZERO_CLASS = ("a dropped label became class 0, a real class: it must become null_label (the number of classes, the "
              "UNet's extra embedding)")
MASK_FIRST = ("the dropout was drawn before t and the noise: draw t, then the noise, then torch.rand(B) for the "
              "dropout, all from the generator")


def cond_loss_checks():
    T, C, K = 40, 2, 4

    def inputs(dtype=torch.float32, B=64):
        g = torch.Generator().manual_seed(5)
        x0 = torch.randn(B, C, 3, 3, generator=g, dtype=torch.float64).to(dtype)
        return x0, torch.randint(0, K, (B,), generator=g)

    def schedule():
        from ..schedules import Schedule
        return Schedule.make("linear", T).alphas_cumprod

    def run(fn, p, prediction="v", seed=0, dtype=torch.float32):
        model = LabelProbe(T, C, K, dtype)
        x0, y = inputs(dtype)
        loss = call(fn, model, x0, y, schedule(), torch.Generator().manual_seed(seed), prediction, p, K)
        return model, loss

    def scalar(fn):
        model, loss = run(fn, 0.3)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise Fail(f"return the mean squared error as a 0-dim tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        if not loss.requires_grad:
            raise Fail("the loss does not reach the model's parameters: compute it from model(x_t, t, y), in torch "
                       "(no .item(), no .detach())")
        loss.backward()
        if model.cls.grad is None or not bool(model.cls.grad.abs().sum() > 0):
            raise Fail("no gradient reached the class embedding: pass the labels to the model, model(x_t, t, y)")

    def labels_seen(fn):
        model, _ = run(fn, 0.5)
        if len(model.labels) != 1:
            raise Fail(f"the model was called {len(model.labels)} times: once, on the whole batch")
        got = model.labels[0]
        x0, y = inputs()

        def seen(**kw):
            ref = LabelProbe(T, C, K)
            variant_cond_loss(ref, x0, y, schedule(), torch.Generator().manual_seed(0), "v", 0.5, K, **kw)
            return ref.labels[0]

        explain(got, seen(), [(NO_DROPOUT, seen(drop="never")), (INVERTED, seen(drop="inverted")),
                              (ZERO_CLASS, seen(drop="zero")), (MASK_FIRST, seen(order="mask first"))],
                "the labels the model saw differ from labels with null_label where torch.rand(B, generator=generator) "
                "< p_uncond, drawn after t and the noise")

    def extremes(fn):
        x0, y = inputs()
        model, _ = run(fn, 0.0)
        if not torch.equal(model.labels[0], y):
            raise Fail("with p_uncond = 0 every label must be kept")
        model, _ = run(fn, 1.0)
        if not bool((model.labels[0] == K).all()):
            raise Fail("with p_uncond = 1 every label must be null_label")

    def value(prediction):
        def check(fn):
            for dtype in (torch.float32, torch.float64):
                for seed in (0, 1):
                    _, loss = run(fn, 0.2, prediction, seed, dtype)
                    x0, y = inputs(dtype)

                    def wrong(**kw):
                        return variant_cond_loss(LabelProbe(T, C, K, dtype), x0, y, schedule(),
                                                 torch.Generator().manual_seed(seed), prediction, 0.2, K, **kw)

                    expected = reference_cond_loss(LabelProbe(T, C, K, dtype), x0, y, schedule(),
                                                   torch.Generator().manual_seed(seed), prediction, 0.2, K)
                    other = "eps" if prediction == "v" else "v"
                    explain(torch.as_tensor(loss).detach(), expected.detach(), [
                        (f"the target is {other} where prediction={prediction!r} asks for "
                         f"{'v = sqrt(a) eps - sqrt(1 - a) x0' if prediction == 'v' else 'the noise eps'}",
                         wrong(target=other).detach()),
                        ("the sign of v is flipped: v = sqrt(a) eps - sqrt(1 - a) x0", wrong(target="-v").detach()),
                        ("the target is x0: this loss regresses v (or eps with prediction='eps')", wrong(target="x0").detach()),
                        (NO_DROPOUT, wrong(drop="never").detach()), (MASK_FIRST, wrong(order="mask first").detach())],
                        f"the {prediction} loss differs from the mean squared error of model(x_t, t, y) against the "
                        f"{prediction} target, with t, the noise and the dropout drawn in that order",
                        *tolerance(dtype))
        return check

    return [("returns a scalar whose gradient reaches the model and its class embedding", scalar),
            ("labels dropped to null_label where torch.rand(B) < p_uncond", labels_seen),
            ("p_uncond 0 keeps every label, 1 drops every one", extremes),
            ("the v loss matches the reference", value("v")),
            ("prediction='eps' regresses the noise", value("eps"))]


COND_LOSS = Exercise(
    0, "cond-loss", "The class-conditional loss with label dropout", HO_SALIMANS, "06_guidance.md", "cond_loss",
    'def cond_loss(model, x0, labels, alphas_cumprod, generator, prediction="v", p_uncond=0.1, null_label=10):',
    "The class-conditional diffusion loss with label dropout (Ho and Salimans 2022).\n\n"
    "x0: images [B, C, H, W]; labels: int64 [B]; alphas_cumprod: float64 [T]. Draw from the generator,\n"
    "in this order:\n"
    "  t = torch.randint(0, T, (B,), generator=generator)\n"
    "  noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)\n"
    "  dropped = torch.rand(B, generator=generator) < p_uncond\n"
    "y is the labels with null_label where dropped. x_t = sqrt(a) x0 + sqrt(1 - a) noise with\n"
    "a = alphas_cumprod[t] in x0's dtype, shaped [B, 1, 1, 1]. Return the mean squared error of\n"
    "model(x_t, t, y) against the target: v = sqrt(a) noise - sqrt(1 - a) x0 for prediction='v',\n"
    "the noise for prediction='eps'.",
    reference_cond_loss, "minidiff.objectives.diffusion_loss(..., y=...) and the trainer's label dropout",
    cond_loss_checks())


# ------------------------------------------------------------------------------------------------
# The solution's cells
# ------------------------------------------------------------------------------------------------

S2_ZSNR = '''def rescale_zero_terminal_snr(betas):
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)   # last value 0, first value kept
    ab = root ** 2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    new = 1 - alphas
    new[0] = betas[0]   # unchanged by construction; keeps its digits
    return new'''

S2_TIMESTEPS = '''def make_timesteps(num_train_timesteps, num_steps, spacing):
    from fractions import Fraction   # exact halves, rounded to even as the table's rule says

    T, S = num_train_timesteps, num_steps
    if spacing == "leading":
        one_indexed = [1 + k * (T // S) for k in range(S)]
    elif spacing == "linspace":
        one_indexed = [round(Fraction(S - 1 + k * (T - 1), S - 1)) for k in range(S)] if S > 1 else [1]
    elif spacing == "trailing":
        one_indexed = [round(Fraction(T * (S - k), S)) for k in range(S)]
    else:
        raise ValueError(spacing)
    return torch.tensor(sorted(one_indexed, reverse=True), dtype=torch.int64) - 1'''

S2_COND_LOSS = '''def cond_loss(model, x0, labels, alphas_cumprod, generator, prediction="v", p_uncond=0.1, null_label=10):
    B = x0.shape[0]
    t = torch.randint(0, len(alphas_cumprod), (B,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    dropped = torch.rand(B, generator=generator) < p_uncond
    y = torch.where(dropped, torch.full_like(labels, null_label), labels)
    a = alphas_cumprod[t].to(x0.dtype).view(-1, *[1] * (x0.ndim - 1))
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    goal = noise if prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
    return ((model(x_t, t, y) - goal) ** 2).mean()'''

S2_CFG = '''def cfg(cond, uncond, scale, rescale=0.0):
    guided = uncond + scale * (cond - uncond)
    if rescale == 0:
        return guided
    dims = tuple(range(1, cond.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))   # a constant sample: left as it is
    return guided * (rescale * ratio + 1 - rescale)'''

S2_SNR_FIGURE = '''# The figure of part 1: sqrt(alpha_bar) of Stable Diffusion's schedule and of its rescale.
import matplotlib.pyplot as plt
from minidiff.schedules import make_betas

betas = make_betas("scaled_linear")
for label, b in (("scaled_linear", betas), ("rescaled (your Algorithm 1)", rescale_zero_terminal_snr(betas.clone()))):
    ab = torch.cumprod(1 - b, 0)
    plt.plot(ab.sqrt().numpy(), label=f"{label}: SNR(T) = {(ab[-1] / (1 - ab[-1])).item():.3g}")
plt.xlabel("t"), plt.ylabel("sqrt(alpha_bar)"), plt.legend(), plt.show()'''

S2_TIMESTEPS_FIGURE = '''# The figure of part 2: the 10 timesteps of each spacing (Lin et al. Table 2, minus one).
for spacing in ("leading", "linspace", "trailing"):
    print(f"{spacing:9s}", make_timesteps(1000, 10, spacing).tolist())'''

S2_TRAIN = f'''# Part 5: your functions train the model twice (flawed and fixed) and draw both. This is what the
# grader runs, with the budget below ({BUDGET["steps"]} steps a model: a few minutes on two CPU cores).
# MINIDIFF_SET_STEPS=N in the environment trains a shorter run (the bands are set at the full budget).
import base64
import os
from IPython.display import Image, display

from minidiff.course.set2_training import BUDGET, figures, train_and_draw

steps = int(os.environ.get("MINIDIFF_SET_STEPS", BUDGET["steps"]))
fns = dict(rescale_zero_terminal_snr=rescale_zero_terminal_snr, make_timesteps=make_timesteps, cond_loss=cond_loss, cfg=cfg)
result = train_and_draw(fns, steps=steps)
print(f"{{steps}} steps a model in {{result['train_seconds']:.0f}} s; fixed: accuracy {{result['accuracy']:.2f}}, "
      f"FCD {{result['fcd']:.2f}}; brightness spread flawed x{{result['brightness_ratio_flawed']:.2f}}, "
      f"fixed x{{result['brightness_ratio_fixed']:.2f}} of the data's")
for name, data in figures(result).items():
    display(Image(data=base64.b64decode(data)))'''

_TRAINED_TEXT = (
    f"Your four functions train minidiff's `small-patch2` UNet (ten classes and the null one) on 10,000 built-in "
    f"shapes at 16x16, whose backgrounds run from nearly black to nearly white, twice for {BUDGET['steps']} steps of "
    f"batch {BUDGET['batch_size']}: **flawed** (Stable Diffusion's scaled-linear schedule, eps target, leading "
    f"timesteps, plain guidance) and **fixed** (the schedule rescaled by your Algorithm 1, v target, trailing "
    f"timesteps, guidance rescaled with phi = {BUDGET['rescale']:g}). Each draws {BUDGET['samples']} samples, 50 a "
    f"class, guided at w = {BUDGET['guidance']:g} in {BUDGET['sample_steps']} DDIM steps, and as many at w = 1 (your "
    "`cfg` must return the conditional output there). The grader scores three things, each by a band set from the "
    "reference solution on three seeds (docs/exercises/problem_sets.md): ")

SET2 = ProblemSet(
    2, "Conditioning, guidance and the paper's fixes",
    "Set 1's model was unconditional and its schedule the usual one. Here you add what a text-to-image model "
    "has: a class label the network is trained with (and, one time in ten, without), classifier-free "
    "guidance with Lin et al.'s rescale, and the paper's fixes to the schedule and the sampler. Then your "
    "functions train the same network twice, with Stable Diffusion's flawed settings and with the fixes, "
    "and you see what the paper's Figure 1 shows: the flawed model cannot draw a very dark or a very bright "
    "image.\n\nWork top to bottom; the hints name the mistakes on record (docs/exercises/mistakes.md). "
    "Grading runs your answer cells in a fresh kernel, checks every part and trains both models itself.",
    [
        Part("1", "Zero terminal SNR (Algorithm 1)",
             "Write `rescale_zero_terminal_snr(betas)`: take sqrt(alpha_bar), shift it so its last value is 0, scale "
             "it so its first value is unchanged, square it and turn it back into betas (Lin et al. Algorithm 1). "
             "Stable Diffusion's schedule ends at SNR(T) = 0.0047: sqrt(alpha_bar_T) = 0.068 of the image is left "
             "at the last step, and its mean brightness leaks through to the network. After the rescale x_T is pure "
             "noise, as at sampling.",
             [EXERCISES[3]], 10, S2_ZSNR, S2_SNR_FIGURE,
             "After the rescale, why can the network no longer be trained to predict eps?",
             "At t = T, alpha_bar = 0 so x_T = eps: predicting eps is the identity and says nothing about the image, "
             "and turning it into x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) divides by zero. v = sqrt(a) eps - "
             "sqrt(1 - a) x0 becomes -x0 there, an informative target (Lin et al. Sec. 3.2)."),
        Part("2", "Trailing timesteps (Table 2)",
             "Write `make_timesteps(num_train_timesteps, num_steps, spacing)` for the three spacings of Lin et al. "
             "Table 2, 0-indexed (the table minus one), descending. Only trailing starts at the last training step "
             "T - 1 for every number of steps: the step where the zero-SNR schedule is pure noise.",
             [EXERCISES[5]], 10, S2_TIMESTEPS, S2_TIMESTEPS_FIGURE,
             "With T = 1000 and 10 steps, where does each spacing start, and why does it matter after part 1?",
             "leading at t = 900, linspace and trailing at t = 999. With zero terminal SNR only t = 999 holds pure "
             "noise, what x_T ~ N(0, I) is; leading starts the sampler at a step where the network expects "
             "sqrt(alpha_bar_900) of an image in its input and finds none."),
        Part("3", "Class conditioning with label dropout",
             "Write `cond_loss`: set 1's loss with the class label passed to the network, `model(x_t, t, y)`, and "
             "each label replaced by the null label with probability p_uncond (Ho and Salimans 2022). The one "
             "network then learns both the conditional output and the unconditional one; guidance needs both. "
             "It also takes `prediction`: the flawed run of part 5 trains with the eps target, the fixed one with v.",
             [COND_LOSS], 15, S2_COND_LOSS, "",
             "What would guidance compute if the labels were never dropped?",
             "The null label's embedding would never be trained, so the 'unconditional' output is the network's "
             "answer for an input it never saw: cond - uncond is then not the direction towards the class, and "
             "guidance amplifies noise."),
        Part("4", "Classifier-free guidance with the rescale (Algorithm 2)",
             "Write `cfg(cond, uncond, scale, rescale)`: guided = uncond + w (cond - uncond), then with phi = "
             "rescale, guided * (phi std(cond) / std(guided) + 1 - phi), the std taken per sample over all but the "
             "batch dimension (Lin et al. eq. 15-16). Strong guidance inflates the output's spread; with zero SNR "
             "the images it makes are over-exposed, and the rescale brings the spread back to the conditional "
             "output's.",
             [EXERCISES[8]], 15, S2_CFG, "",
             "Why is the std taken per sample and not over the whole batch?",
             "Each sample's guided output has its own spread (a dark image and a bright one need different factors); "
             "a batch-wide std rescales every sample by one number, so the result depends on what else is in the "
             "batch (a mistake on record: mistakes.md M10)."),
        Part("5", "Train both ways: class accuracy",
             _TRAINED_TEXT + "here, the share of the fixed model's samples that the shapes scorer puts in the class "
             "asked for.", [], 15, "", S2_TRAIN, trained=True, measure="accuracy",
             band=dict(full=0.70, zero=0.40)),
        Part("6", "Train both ways: quality", _TRAINED_TEXT + "here, the FCD of the fixed model's samples (lower is "
             "better).", [], 15, "", "", trained=True, measure="fcd", band=dict(full=20.0, zero=26.0)),
        Part("7", "Train both ways: the brightness effect",
             _TRAINED_TEXT + "here, the brightness spread (std of each sample's mean pixel) of the fixed run's samples "
             "at w = 1 minus the flawed run's, each as a share of the data's: the gain the fixes bring, counted only when part 6 scores "
             "(samples that are not shapes say nothing about brightness). (At w = 1, "
             "because the rescale multiplies each sample's whole output, its mean too, by one factor: guided with "
             "phi = 0.7 the spread shrinks for a reason of its own.)",
             [], 20, "", "", trained=True, measure="brightness_gain", band=dict(full=0.07, zero=0.03), gate="6",
             question="Why are the flawed model's samples crowded towards medium brightness?",
             answer="It was trained on x_T that still held 0.068 of the image, so it learnt to read the image's mean "
                    "brightness from x_T's mean. At sampling x_T is pure noise, whose mean says 'medium', so the "
                    "first steps commit every sample to a middling brightness that later steps cannot undo; with "
                    "zero SNR the network learns that x_T says nothing and draws the brightness from the data's law."),
    ],
    "4-5 hours", band={}, trainer="minidiff.course.set2_training",
    needed=("rescale_zero_terminal_snr", "make_timesteps", "cond_loss", "cfg"), train_minutes="6", data=None,
)
