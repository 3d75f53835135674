"""The graded part of problem set 2: the student's functions train the same small class-conditional
UNet twice on the built-in shapes, once with Stable Diffusion's flawed settings and once with Lin et
al.'s fixes, draw both with classifier-free guidance, and the shapes scorer (scorer.py) measures them.

    train_and_draw(fns, steps=..., seed=...) -> dict with the measures, the losses and the samples

fns holds the student's rescale_zero_terminal_snr, make_timesteps, cond_loss and cfg. The two runs:

    flawed   scaled_linear schedule (SNR(T) = 0.0047), eps target, leading timesteps, plain guidance
    fixed    the same schedule rescaled by the student's Algorithm 1, v target, trailing timesteps,
             guidance rescaled with phi = 0.7 (Algorithm 2)

Everything else is fixed here, so two students' scores differ only by their code: the network
(minidiff's `small-patch2` preset, 16x16 colour, ten classes and the null class), the data (the
first 10,000 built-in shapes of seed 0: backgrounds spread evenly from nearly black to nearly
white), the training loop (Adam, lr held then taken to 0 over the last fifth), the batch, the
guidance weight and the seeds. The measures: the class accuracy of the fixed run's guided samples
(the scorer's class against the class asked for), their FCD, and the brightness spread of each
run's conditional samples (w = 1) against the data's (std of the per-image mean pixel, samples / data).
"""

from __future__ import annotations

import math
import time

import torch

from .. import objectives
from ..schedules import make_betas

BUDGET = dict(steps=2000, batch_size=32, lr=2e-3, images=10_000, samples=500, sample_steps=25, preset="small-patch2",
              size=16, schedule="scaled_linear", guidance=3.0, rescale=0.7, p_uncond=0.1, classes=10)
SETUPS = dict(flawed=dict(zero_snr=False, prediction="eps", spacing="leading", rescale=0.0),
              fixed=dict(zero_snr=True, prediction="v", spacing="trailing", rescale=BUDGET["rescale"]))
_DATA: dict = {}


def shapes(n: int = BUDGET["images"]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n built-in shapes of seed 0 at 16x16: float [n, 3, 16, 16] in [-1, 1] and labels [n]."""
    from ..training.data import builtin_shapes, to_float

    if n not in _DATA:
        data = builtin_shapes(n, seed=0, resolution=BUDGET["size"])
        _DATA[n] = (to_float(data.images), data.labels.long())
    return _DATA[n]


def brightness(images: torch.Tensor) -> torch.Tensor:
    """Each image's mean pixel, [N]."""
    return images.float().flatten(1).mean(1)


def alphas_cumprod(fns: dict, zero_snr: bool) -> torch.Tensor:
    betas = make_betas(BUDGET["schedule"])
    if zero_snr:
        betas = torch.as_tensor(fns["rescale_zero_terminal_snr"](betas.clone()), dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def train_one(fns: dict, setup: dict, steps: int, seed: int):
    """The model trained by the student's cond_loss under `setup`; (model, losses, seconds)."""
    from ..unet import UNet

    images, labels = shapes()
    ab = alphas_cumprod(fns, setup["zero_snr"])
    torch.manual_seed(seed)
    model = UNet.from_preset(BUDGET["preset"], image_size=BUDGET["size"], num_classes=BUDGET["classes"])
    opt = torch.optim.Adam(model.parameters(), lr=BUDGET["lr"])
    g = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = BUDGET["lr"] * min(1.0, (steps - step) / (0.2 * steps))
        index = torch.randint(0, len(images), (BUDGET["batch_size"],), generator=g)
        loss = fns["cond_loss"](model, images[index], labels[index], ab, g, setup["prediction"], BUDGET["p_uncond"],
                                BUDGET["classes"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return model, losses, time.perf_counter() - start


@torch.no_grad()
def draw(model, fns: dict, setup: dict, samples: int, seed: int, guidance: float = BUDGET["guidance"],
         ab: torch.Tensor | None = None) -> torch.Tensor:
    """`samples` images, class k % 10 for the k-th, guided at `guidance` by the student's cfg (with the
    setup's rescale), DDIM on the student's timesteps; the last step goes to alpha_bar = 1."""
    ab = alphas_cumprod(fns, setup["zero_snr"]) if ab is None else ab
    ts = [int(t) for t in fns["make_timesteps"](len(ab), BUDGET["sample_steps"], setup["spacing"])]
    abl = ab.tolist()
    out = []
    x_T = torch.randn(samples, 3, BUDGET["size"], BUDGET["size"], generator=torch.Generator().manual_seed(10_000 + seed))
    for start in range(0, samples, 250):
        x = x_T[start:start + 250]
        y = torch.arange(start, start + len(x)) % BUDGET["classes"]
        both = torch.cat([y, torch.full_like(y, BUDGET["classes"])])
        for i, t in enumerate(ts):
            o = model(torch.cat([x, x]), torch.full((2 * len(x),), t, dtype=torch.long), both)
            guided = fns["cfg"](o[:len(x)], o[len(x):], guidance, setup["rescale"])
            x0, eps = objectives.to_x0_eps(setup["prediction"], guided, x, abl[t])
            a_prev = abl[ts[i + 1]] if i + 1 < len(ts) else 1.0
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        out.append(x)
    return torch.cat(out).float()


def _finite(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    finite = bool(torch.isfinite(x).all())
    return torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1), finite


def train_and_draw(fns: dict, *, steps: int = BUDGET["steps"], seed: int = 0, samples: int = BUDGET["samples"],
                   score: bool = True) -> dict:
    """Both runs trained and drawn twice: guided at BUDGET["guidance"] (class accuracy and FCD) and at
    w = 1, the conditional output, which the student's cfg must return unchanged (the brightness: a
    rescaled guidance multiplies each sample's whole output, its mean too, by one factor, which would
    mix its own effect on the brightness into the schedule's). With score, the measures in the result."""
    from .scorer import shapes_scorer

    images, _ = shapes()
    data_std = float(brightness(images).std())
    out = dict(steps=steps, seed=seed, samples=samples, data_brightness_std=round(data_std, 4), runs={})
    for name, setup in SETUPS.items():
        model, losses, seconds = train_one(fns, setup, steps, seed)
        start = time.perf_counter()
        x, finite = _finite(draw(model, fns, setup, samples, seed))
        plain, plain_finite = _finite(draw(model, fns, setup, samples, seed, guidance=1.0))
        run = dict(train_seconds=round(seconds, 1), sample_seconds=round(time.perf_counter() - start, 1),
                   finite=finite and plain_finite, losses=losses, images=x, conditional=plain,
                   brightness_ratio=round(float(brightness(plain).std()) / data_std, 4) if plain_finite else 0.0)
        if score:
            scorer = shapes_scorer()
            _, pred = scorer.features(x)
            asked = torch.arange(samples) % BUDGET["classes"]
            run.update(fcd=scorer.score(x)["fcd"] if finite else math.inf,
                       accuracy=round(float((pred == asked).double().mean()), 4) if finite else 0.0)
        out["runs"][name] = run
    fixed, flawed = out["runs"]["fixed"], out["runs"]["flawed"]
    out.update(train_seconds=round(fixed["train_seconds"] + flawed["train_seconds"], 1),
               sample_seconds=round(fixed["sample_seconds"] + flawed["sample_seconds"], 1),
               brightness_gain=round(fixed["brightness_ratio"] - flawed["brightness_ratio"], 4),
               brightness_ratio_fixed=fixed["brightness_ratio"], brightness_ratio_flawed=flawed["brightness_ratio"])
    if score:
        out.update(fcd=fixed["fcd"], accuracy=fixed["accuracy"], fcd_flawed=flawed["fcd"],
                   accuracy_flawed=flawed["accuracy"])
    out["images"], out["losses"] = fixed["images"], fixed["losses"]
    return out


def figures(result: dict) -> dict:
    """{"samples.png", "brightness.png", "loss.png"}: both runs' samples (a class a column), their
    brightness histograms against the data's, and both loss curves, as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..repro.common import mosaic
    from .set_training import png

    runs = result["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, name in zip(axes, ("flawed", "fixed")):
        r = runs[name]
        ax.imshow(mosaic(r["images"][:100], nrow=10).numpy(), interpolation="nearest")
        ax.axis("off")
        ax.set_title(f"{name}: brightness std x{r['brightness_ratio']:.2f} of the data's"
                     + (f"\naccuracy {r['accuracy']:.2f}, FCD {r['fcd']:.1f}" if "fcd" in r else ""), fontsize=8)
    samples = png(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    bins = torch.linspace(-1, 1, 41).numpy()
    ax.hist(brightness(shapes()[0]).numpy(), bins=bins, density=True, color="0.7", label="data")
    for name, colour in (("flawed", "tab:red"), ("fixed", "tab:blue")):
        ax.hist(brightness(runs[name]["conditional"]).numpy(), bins=bins, density=True, histtype="step", lw=1.5, color=colour,
                label=name)
    ax.set_xlabel("image brightness (mean pixel), samples at w = 1"), ax.legend(fontsize=7)
    hist = png(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, colour in (("flawed", "tab:red"), ("fixed", "tab:blue")):
        losses = torch.tensor(runs[name]["losses"] or [math.nan])
        w = max(1, len(losses) // 30)
        smooth = torch.nn.functional.avg_pool1d(losses[None, None], w, 1)[0, 0] if len(losses) >= w else losses
        ax.plot(smooth.numpy(), color=colour, label=f"{name} ({'eps' if name == 'flawed' else 'v'} target)")
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend(fontsize=7)
    return {"samples.png": samples, "brightness.png": hist, "loss.png": png(fig)}
