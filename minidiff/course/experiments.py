"""`minidiff course run N FILE`: the experiment each Lin et al. exercise belongs to, with
the student's function in the place of minidiff's (exercises 1-9; 10-11 are in experiments_highdim).

Each run(fn, out, quick) writes a figure into `out` and returns the lines to print. Most of them
use the exact Gaussian denoiser, so they take seconds and need no training: the data is an image
whose brightness varies (the direction of all-equal pixels has variance LAM_B) on top of a small
texture (LAM_PIX), as in `minidiff repro exact`, kept as two coordinates.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import objectives, samplers, solvers
from ..exact.analytic import GaussianDenoiser
from ..repro.common import pyplot, save_figure
from ..repro.exact import exact_moments
from ..repro.leakage import leakage
from ..schedules import BETA_SCHEDULES, Schedule, alphas_cumprod, log_snr, make_betas, rescale_zero_terminal_snr
from ..training import data as datasets
from .ex_schedules import TABLE1

D = 3 * 32 * 32                   # pixels of the image the two coordinates stand for
LAM_B, LAM_PIX = 0.3**2 + D * 0.5**2, 0.3**2   # variance along the brightness direction and of the texture
MU = torch.tensor([0.2 * math.sqrt(D), 0.0], dtype=torch.float64)  # mean brightness 0.2
LAM = torch.tensor([LAM_B, LAM_PIX], dtype=torch.float64)
SD, SD_ZERO = Schedule.make("scaled_linear"), Schedule.make("scaled_linear", zero_snr=True)
CHECKPOINT = Path("runs/builtin-small-patch2-linear-zsnr-v/checkpoint.pt")  # the main job's


def exact_x0(x, a):
    """The exact E[x0 | x_t] of the two-coordinate data (minidiff's)."""
    sa = math.sqrt(a)
    return MU + sa * LAM / (a * LAM + 1 - a) * (x - sa * MU)


def ddim_brightness(schedule, timesteps, n=20_000, *, posterior=exact_x0, convert=None, prediction="x0",
                    step=samplers.ddim_step) -> float:
    """DDIM with the exact denoiser on the two coordinates; returns the samples' brightness std / the data's.

    posterior, convert (the eps/x0/v conversion) and step are where a student's function goes in."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ab, ts = schedule.alphas_cumprod.tolist(), [int(t) for t in timesteps]
    for i, t in enumerate(ts):
        a, a_prev = ab[t], (ab[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        x0 = posterior(x, a)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        if convert is not None:  # the model speaks `prediction`; the student's conversion reads it
            x0, eps = convert(prediction, objectives.from_x0_eps(prediction, x0, eps, a), x, a)
        x = step(x, x0, eps, a, a_prev)
    return (x[:, 0].std() / math.sqrt(LAM_B)).item()


def _brightness_figure(path, curves, title, steps):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, (yours, ref) in curves.items():
        line, = ax.plot(steps, yours, "o-", label=f"{label}: yours")
        ax.plot(steps, ref, "--", color=line.get_color(), alpha=0.6, label=f"{label}: minidiff")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xscale("log"), ax.set_xlabel("DDIM steps (trailing)"), ax.set_ylabel("brightness std, samples / data")
    ax.set_title(title, fontsize=9), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    save_figure(fig, path)


def _curves(configs, steps, n, student_kw, spacing="trailing"):
    curves, lines = {}, []
    for label, schedule, extra in configs:
        yours, ref = [], []
        for s in steps:
            ts = samplers.make_timesteps(schedule.num_timesteps, s, spacing)
            yours.append(ddim_brightness(schedule, ts, n, **extra, **student_kw))
            ref.append(ddim_brightness(schedule, ts, n, **extra))
        curves[label] = (yours, ref)
        lines.append(f"  {label:28s} brightness std / data at {steps[-1]} steps: yours {yours[-1]:.3f}, minidiff {ref[-1]:.3f}")
    return curves, lines


def _images(n, quick):
    return datasets.to_float(datasets.builtin_shapes(n, seed=0, resolution=16 if quick else 32).images)


# ------------------------------------------------------------------------------------------------


def run_forward(fn, out: Path, quick: bool):
    images = _images(64 if quick else 2000, quick)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    ts = [0, 250, 500, 750, 900, 999]
    plt = pyplot()
    fig, axes = plt.subplots(2, len(ts), figsize=(2 * len(ts), 4.4))
    lines = []
    for row, (name, s) in enumerate((("Stable Diffusion", SD), ("SD, zero SNR", SD_ZERO))):
        for col, t in enumerate(ts):
            x = fn(images[:1], s.alphas_cumprod[t].item(), noise[:1])
            axes[row, col].imshow(((x[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy())
            axes[row, col].set_title(f"{name}\nt = {t}" if col == 0 else f"t = {t}", fontsize=8)
            axes[row, col].axis("off")
        x_T = fn(images, s.alphas_cumprod[-1].item(), noise)
        b, b_T = images.flatten(1).mean(1), x_T.flatten(1).mean(1).double()
        r2 = float(torch.corrcoef(torch.stack([b.double(), b_T]))[0, 1]) ** 2 if s.alphas_cumprod[-1] > 0 else 0.0
        lines.append(f"  {name:17s} at t = 999: brightness readable from mean(x_T), r^2 = {r2:.3f} "
                     f"(minidiff: {leakage(images, noise, s)['r2_mean']:.3f})")
    fig.tight_layout()
    save_figure(fig, out / "forward.png")
    return [f"q(x_t | x0) with your q_sample on {len(images)} built-in images:"] + lines + [f"wrote {out / 'forward.png'}"]


def run_table1(fn, out: Path, quick: bool):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    lines = ["Table 1 with your alphas_cumprod:", f"  {'schedule':14s} {'SNR(T)':>13s} {'paper':>13s} {'sqrt(ab_T)':>11s} {'paper':>9s}"]
    for kind in BETA_SCHEDULES:
        ab = fn(kind, 1000).double()
        a = ab[-1].item()
        snr_T = a / (1 - a) if a < 1 else math.inf
        paper_snr, paper_sab = TABLE1[kind]
        lines.append(f"  {kind:14s} {snr_T:13.6e} {paper_snr:13.6e} {math.sqrt(max(a, 0)):11.6f} {paper_sab:9.6f}")
        line, = axes[0].plot(ab.clamp(min=0).sqrt(), label=f"{kind}: yours")
        ref = alphas_cumprod(make_betas(kind, 1000))
        axes[0].plot(ref.sqrt(), "--", color=line.get_color(), alpha=0.6, label=f"{kind}: minidiff")
        axes[1].plot(log_snr(ab.clamp(1e-300, 1 - 1e-16)), color=line.get_color())
        axes[1].plot(log_snr(ref), "--", color=line.get_color(), alpha=0.6)
    axes[0].set_title("sqrt(alpha_bar_t)"), axes[1].set_title("log SNR(t)"), axes[1].set_ylim(-22, 12)
    for ax in axes:
        ax.set_xlabel("timestep t"), ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(fig, out / "table1.png")
    return lines + [f"wrote {out / 'table1.png'}"]


def run_leakage(fn, out: Path, quick: bool):
    images = _images(200 if quick else 2000, quick)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
    lines = ["signal leakage at t = T-1 on built-in images, with your rescale:"]
    b = images.flatten(1).mean(1)
    for ax, (name, betas) in zip(axes, (("Stable Diffusion", SD.betas), ("SD, your rescale", fn(SD.betas.clone())),
                                        ("SD, minidiff's rescale", rescale_zero_terminal_snr(SD.betas)))):
        ab_T = alphas_cumprod(betas.double())[-1].item()
        x_T = objectives.q_sample(images.double(), ab_T, noise.double())
        corr = float(torch.corrcoef(torch.stack([b.double(), x_T.flatten(1).mean(1)]))[0, 1]) if ab_T > 0 else 0.0
        ax.scatter(b, x_T.flatten(1).mean(1), s=3, alpha=0.4)
        ax.set_title(f"{name}\nSNR(T) = {ab_T / (1 - ab_T):.3g}, r^2 = {corr**2:.2f}", fontsize=9)
        ax.set_xlabel("mean of x0"), ax.grid(alpha=0.3)
        lines.append(f"  {name:24s} SNR(T) = {ab_T / (1 - ab_T):.3g}; brightness readable from mean(x_T): r^2 = {corr**2:.3f}")
    axes[0].set_ylabel("mean of x_T")
    save_figure(fig, out / "leakage.png")
    return lines + [f"wrote {out / 'leakage.png'}"]


def run_objectives(fn, out: Path, quick: bool):
    steps = [5, 25] if quick else [5, 10, 25, 50, 200]
    configs = [("SD, eps prediction", SD, dict(prediction="eps")), ("SD zero SNR, v prediction", SD_ZERO, dict(prediction="v")),
               ("SD zero SNR, x0 prediction", SD_ZERO, dict(prediction="x0"))]
    curves, lines = _curves(configs, steps, 2000 if quick else 20_000, dict(convert=fn))
    _brightness_figure(out / "objectives.png", curves, "DDIM with the exact denoiser, read through your to_x0_eps", steps)
    return ["exact Gaussian, brightness spread of the samples (1 = the data's):"] + lines + [f"wrote {out / 'objectives.png'}"]


def run_timesteps(fn, out: Path, quick: bool):
    lines = ["Table 2 with your make_timesteps (T = 1000, 10 steps), plus one to compare with the paper:"]
    for spacing in samplers.SPACINGS:
        lines.append(f"  {spacing:9s} {sorted((fn(1000, 10, spacing) + 1).tolist())}")
    steps = [5, 10, 25] if quick else [5, 10, 25, 50, 100]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (name, s) in zip(axes, (("Stable Diffusion", SD), ("SD, zero SNR", SD_ZERO))):
        for spacing in samplers.SPACINGS:
            ys = [exact_moments(s, fn(1000, n, spacing), "ddim", 0.0, LAM_B, LAM_PIX, 0.2)["brightness_std_ratio"] for n in steps]
            ref = [exact_moments(s, samplers.make_timesteps(1000, n, spacing), "ddim", 0.0, LAM_B, LAM_PIX, 0.2)["brightness_std_ratio"]
                   for n in steps]
            line, = ax.plot(steps, ys, "o-", label=f"{spacing}: yours")
            ax.plot(steps, ref, "--", color=line.get_color(), alpha=0.6, label=f"{spacing}: minidiff")
            lines.append(f"  {name:16s} {spacing:9s} brightness std / data at {steps[0]} steps: yours {ys[0]:.3f}, minidiff {ref[0]:.3f}")
        ax.axhline(1, color="k", lw=0.6), ax.set_xscale("log"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
        ax.set_title(f"{name}: exact DDIM on Gaussian data", fontsize=9), ax.set_xlabel("steps")
    axes[0].set_ylabel("brightness std, samples / data")
    save_figure(fig, out / "spacing.png")
    return lines + [f"wrote {out / 'spacing.png'}"]


def _checkpoint_samples(step, out: Path) -> list[str]:
    """DDIM samples of the main job's trained model with the student's step, if it was trained here."""
    if not CHECKPOINT.exists():
        return [f"  (no {CHECKPOINT}: run `python train_cifar.py` to also see your step on the trained model)"]
    from ..repro.common import mosaic
    from ..training.sample import load_model, schedule_of

    model, config = load_model(CHECKPOINT)
    schedule = schedule_of(config)
    n, size, channels = 20, int(config.get("resolution") or 32), model.in_channels if hasattr(model, "in_channels") else 3
    y = torch.arange(n) % 10 if config.get("class_cond") else None
    with torch.no_grad():
        x = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(0))
        ts = samplers.make_timesteps(1000, 25, "trailing").tolist()
        ab = schedule.alphas_cumprod.tolist()
        for i, t in enumerate(ts):
            a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
            outp = model(x, torch.full((n,), t), y=y)
            x0, eps = objectives.to_x0_eps(config.get("prediction", "v"), outp, x, ab[t])
            x = step(x, x0, eps, ab[t], a_prev)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.imshow(mosaic(x, nrow=10).numpy()), ax.axis("off"), ax.set_title("the main job's model, 25 DDIM steps with your step")
    save_figure(fig, out / "checkpoint_samples.png")
    return [f"  wrote {out / 'checkpoint_samples.png'} (the trained main job sampled with your step)"]


def run_ddim(fn, out: Path, quick: bool):
    steps = [5, 25] if quick else [5, 10, 25, 50, 200, 1000]
    configs = [("Stable Diffusion", SD, {}), ("SD, zero SNR", SD_ZERO, {})]
    curves, lines = _curves(configs, steps, 2000 if quick else 20_000, dict(step=fn))
    _brightness_figure(out / "ddim.png", curves, "DDIM with your step and the exact denoiser", steps)
    extra = [] if quick else _checkpoint_samples(fn, out)
    return ["exact Gaussian, brightness spread of the samples (1 = the data's):"] + lines + extra + [f"wrote {out / 'ddim.png'}"]


def run_denoiser(fn, out: Path, quick: bool):
    steps = [5, 25] if quick else [5, 10, 25, 50, 200, 1000]
    mean, var = MU.clone(), LAM.clone()
    yours = lambda x, a: fn(x, a, mean, var)
    configs = [("Stable Diffusion", SD, {}), ("SD, zero SNR", SD_ZERO, {})]
    curves, lines = _curves(configs, steps, 2000 if quick else 20_000, dict(posterior=yours))
    _brightness_figure(out / "brightness.png", curves, "DDIM with your exact Gaussian denoiser", steps)
    return (["brightness of samples from your exact denoiser (Lin et al.: only zero SNR reaches 1):"] + lines
            + [f"wrote {out / 'brightness.png'}"])


def run_guidance(fn, out: Path, quick: bool):
    """Two classes of 3x16x16 Gaussian images; exact v models; DDIM with your guidance."""
    shape = (3, 16, 16)
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    means = [(0.45 + 0.3 * torch.where(xx < 8, 1.0, -1.0)).expand(shape).double(),   # bright, two halves
             (-0.45 + 0.3 * torch.where((yy - 7.5).abs() + (xx - 7.5).abs() < 6, 1.0, -1.0)).expand(shape).double()]
    var = torch.full(shape, 0.04, dtype=torch.float64)
    uncond = GaussianDenoiser((means[0] + means[1]) / 2, var=var + ((means[0] - means[1]) / 2) ** 2,
                              schedule=SD_ZERO, prediction="v")
    settings = [(1.0, 0.0), (3.0, 0.0), (7.5, 0.0), (7.5, 0.7)]
    n = 4 if quick else 16
    plt = pyplot()
    fig, axes = plt.subplots(1, len(settings), figsize=(3.2 * len(settings), 3.4))
    lines = ["two classes of Gaussian images, exact v models on SD zero SNR, 25 trailing DDIM steps, your cfg:"]
    from ..repro.common import mosaic
    for ax, (w, phi) in zip(axes, settings):
        xs = []
        for c, m in enumerate(means):
            cond = GaussianDenoiser(m, var=var, schedule=SD_ZERO, prediction="v")
            model = lambda x, t, y=None: fn(cond(x, t), uncond(x, t), w, phi)
            xs.append(samplers.sample(model, (n, *shape), SD_ZERO, prediction="v", steps=25, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(c), progress=False))
        x = torch.cat(xs)
        over = (x.abs() > 1).double().mean().item()
        ax.imshow(mosaic(x[::max(1, n // 4)].float(), nrow=4).numpy()), ax.axis("off")
        ax.set_title(f"w = {w}, phi = {phi}\npixels beyond [-1, 1]: {over:.1%}", fontsize=9)
        lines.append(f"  w = {w:3}, phi = {phi}: pixel std {x.std().item():.2f} (data about 0.6), beyond [-1, 1]: {over:.1%}")
    save_figure(fig, out / "guidance.png")
    return lines + [f"wrote {out / 'guidance.png'}"]


def run_solver(fn, out: Path, quick: bool):
    """Error of the sampled brightness spread against the exact answer, per number of steps."""
    steps = [5, 10, 20] if quick else [4, 6, 10, 16, 25, 40, 64]
    x_T = torch.stack([torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)])
    ab = SD_ZERO.alphas_cumprod.tolist()

    def spread_error(step2, n):
        ts = samplers.make_timesteps(1000, n, "trailing").tolist()
        x, prev = x_T.clone(), None
        for i, t in enumerate(ts):
            a, a_s = ab[t], (ab[ts[i + 1]] if i + 1 < len(ts) else 1.0)
            x0 = exact_x0(x, a)
            if prev is None or a_s == 1.0 or step2 is None:
                x_new = solvers.first_order_step(x, x0, a, a_s)
            else:
                x_new = step2(x, x0, prev[0], a, a_s, prev[1])
            prev, x = (x0, a), x_new
        return abs(((x[1, 0] - x[0, 0]) ** 2 / LAM_B).sqrt().item() - 1)  # affine map: the slope is the std ratio

    rows = {"DDIM (first order)": [spread_error(None, n) for n in steps],
            "DPM-Solver++(2M), yours": [spread_error(fn, n) for n in steps],
            "DPM-Solver++(2M), minidiff": [spread_error(solvers.dpmpp_2m_step, n) for n in steps]}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, errs), style in zip(rows.items(), ("s-", "o-", "--")):
        ax.plot(steps, [max(e, 1e-16) for e in errs], style, label=label)
    ax.set_xscale("log"), ax.set_yscale("log"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    ax.set_xlabel("steps (trailing, SD zero SNR)"), ax.set_ylabel("|brightness std ratio - 1| (exact)")
    save_figure(fig, out / "solver_error.png")
    lines = ["error of the brightness spread against the exact answer (exact Gaussian, zero SNR):"]
    for label, errs in rows.items():
        lines.append(f"  {label:28s} " + "  ".join(f"{n}: {e:.1e}" for n, e in zip(steps, errs)))
    return lines + [f"wrote {out / 'solver_error.png'}"]


def run_flow(fn, out: Path, quick: bool) -> list[str]:
    """Exercise 15: Euler on the rectified flow, each step's (x0, eps) from your conversion of the
    exact Gaussian model's u, against minidiff's DDIM from the same noise (they are one update)."""
    from ..repro.flow import plot_paths

    flow = Schedule.make("flow")
    g = torch.Generator().manual_seed(0)
    mean = 0.5 * torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    model = GaussianDenoiser(mean, var=0.05 + torch.rand(3, 8, 8, generator=g, dtype=torch.float64), schedule=flow,
                             prediction="u")
    x_T = torch.randn(64, 3, 8, 8, generator=g, dtype=torch.float64)
    ab, lines = flow.alphas_cumprod.tolist(), []
    for steps in (10,) if quick else (10, 25, 50):
        ts = samplers.make_timesteps(1000, steps, "trailing").tolist()
        ddim = samplers.sample(model, x_T.shape, flow, prediction="u", steps=steps, sampler="ddim", x_T=x_T,
                               dtype=torch.float64, return_trajectory=True, progress=False).xs
        x, worst = x_T.clone(), 0.0
        for i, t in enumerate(ts):
            ab_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
            x0, eps = fn(model(x, torch.full((len(x),), t)), x, ab[t])
            x = samplers.flow_euler_step(x, x0, eps, ab[t], ab_prev)
            worst = max(worst, (x - ddim[i + 1]).abs().max().item())
        lines.append(f"{steps} steps: Euler on the flow through your u_to_x0_eps against minidiff's DDIM: "
                     f"largest difference {worst:.1e} (float64)")
    plot_paths(out / "flow_snr.png")
    return lines + [f"wrote {out / 'flow_snr.png'} (the flow's log-SNR and alpha_bar beside Table 1's schedules)"]


def _inpaint_pixel(fn, model, init, mask, steps: int, resample: int, seed: int = 1):
    """RePaint with DDIM steps (eta = 1) and the known pixels put back by `fn`, drawing its noise in the
    order `samplers.sample` does, so that a right fn gives minidiff's samples bit for bit."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda: torch.randn(init.shape, generator=g, dtype=torch.float64)
    ab, ts, x = model.schedule.alphas_cumprod.tolist(), samplers.make_timesteps(1000, steps, "trailing").tolist(), draw()
    for i, t in enumerate(ts):
        a, a_next = ab[t], (ab[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        for r in range(resample + 1 if a_next < 1 else 1):
            if r > 0:  # back up to t with fresh noise, q(x_t | x_next)
                x = samplers.noised(x, a / a_next, draw())
            x0, eps = objectives.to_x0_eps("x0", model(x, torch.full((len(x),), t)), x, a)
            x_next = samplers.ddim_step(x, x0, eps, a, a_next, 1.0, draw() if a_next < 1 else None)
            x = fn(x_next, init, mask, a_next, draw())
    return x


def run_editing(fn, out: Path, quick: bool) -> list[str]:
    """Exercise 16: two pixels of correlation rho, the first kept at k, the second filled; its exact law
    given the first is N(rho k, 1 - rho^2). Your keep_known in RePaint's loop against minidiff's sample."""
    rho, k = 0.9, 1.5
    n, steps = (1000, 25) if quick else (4000, 100)
    passes = (0, 3) if quick else (0, 1, 3, 10)
    sched = Schedule.make("linear", zero_snr=True)
    model = GaussianDenoiser(torch.zeros(2), torch.tensor([[1.0, rho], [rho, 1.0]]), schedule=sched, prediction="x0")
    init, mask = torch.tensor([k, 0.0], dtype=torch.float64).expand(n, 2).clone(), torch.tensor([0.0, 1.0], dtype=torch.float64)
    lines = [f"inpainting x2 given x1 = {k} (correlation {rho}; exact: mean {rho * k:.3f}, std {math.sqrt(1 - rho**2):.3f}), "
             f"{steps} DDIM steps (eta 1), {n} draws, your keep_known:",
             f"  {'resample':>8s} {'mean':>7s} {'minidiff':>8s} {'std':>6s} {'x1 kept: max |x1 - k|':>22s} {'yours - minidiff':>17s}"]
    yours, ref = {}, {}
    for r in passes:
        yours[r] = _inpaint_pixel(fn, model, init, mask, steps, r)
        ref[r] = samplers.sample(model, (n, 2), sched, prediction="x0", steps=steps, sampler="ddim", eta=1.0, init=init,
                                 mask=mask, resample=r, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                                 progress=False)
        y = yours[r]
        lines.append(f"  {r:8d} {y[:, 1].mean().item():7.3f} {ref[r][:, 1].mean().item():8.3f} {y[:, 1].std().item():6.3f} "
                     f"{(y[:, 0] - k).abs().max().item():22.1e} {(y - ref[r]).abs().max().item():17.1e}")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    calls = [r + 1 for r in passes]
    axes[0].plot(calls, [yours[r][:, 1].mean().item() for r in passes], "o-", label="yours")
    axes[0].plot(calls, [ref[r][:, 1].mean().item() for r in passes], "--", alpha=0.7, label="minidiff's sample")
    axes[0].axhline(rho * k, color="k", lw=0.8, label=f"exact E[x2 | x1 = {k}] = {rho * k:.2f}")
    axes[0].set_xscale("log"), axes[0].set_xlabel("passes per step (resample + 1)"), axes[0].set_ylabel("mean of the filled x2")
    axes[0].grid(alpha=0.3), axes[0].legend(fontsize=8), axes[0].set_title("the fill's mean against its exact value", fontsize=9)
    grid = torch.linspace(-1.5, 3.5, 201, dtype=torch.float64)
    for r in (passes[0], passes[-1]):
        axes[1].hist(yours[r][:, 1].numpy(), bins=60, range=(-1.5, 3.5), density=True, alpha=0.45, label=f"yours, resample {r}")
    density = torch.exp(-((grid - rho * k) ** 2) / (2 * (1 - rho**2))) / math.sqrt(2 * math.pi * (1 - rho**2))
    axes[1].plot(grid, density, "k", lw=1, label="exact N(rho k, 1 - rho^2)")
    axes[1].set_xlabel("filled x2"), axes[1].legend(fontsize=8), axes[1].grid(alpha=0.3)
    axes[1].set_title(f"kept x1: largest |x1 - k| = {max((yours[r][:, 0] - k).abs().max().item() for r in passes):.1e}", fontsize=9)
    save_figure(fig, out / "inpaint_pixel.png")
    return lines + [f"wrote {out / 'inpaint_pixel.png'}"]


RUNS = {1: run_forward, 2: run_table1, 3: run_leakage, 4: run_objectives, 5: run_timesteps, 6: run_ddim,
        7: run_denoiser, 8: run_guidance, 9: run_solver, 15: run_flow, 16: run_editing}
