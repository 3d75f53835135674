"""How well a trained network reads an image's brightness from the noise: `minidiff brightness-gain CKPT`.

An image's brightness is one number, the mean m of its pixels. In x_t = sqrt(a) x0 + sqrt(1 - a) eps
the mean of x_t is d = sqrt(a) m + sqrt(1 - a) e, where e, the mean of D = C*H*W unit normals, has
variance 1 / D. So d carries m at D times the per-pixel SNR, and the best guess of m from d alone
is the posterior mean E[m | d], computed here exactly on a grid from the real images' histogram of
m. A network that reads d as well as that predicts an x0 whose mean follows E[m | d] with slope 1
(regress the one on the other over many noisy images). A slope below 1 is the network shrinking
every brightness towards the middle at that noise level; sampled step after step, the samples'
brightness range narrows (docs/recipe_history.md, "why the brightness narrowed"). It is regression
dilution: a network that estimates d with noise of its own does best to shrink its estimate.

    slope(t) = Cov(mean of x0_hat, E[m | d]) / Var(E[m | d])      over images x0 and noise eps
    offset(t) = mean of (mean of x0_hat - E[m | d])                 (0: no brightness added or taken)

The offset is the other way to get the brightness wrong: where almost nothing is decided yet
(log-SNR below -9) E[m | d] is about the data's mean, and a network whose guess there sits above
it starts every sample brighter than the data; the sampler then never draws the darkest backgrounds.

`--trajectory N` follows the sampler instead (`trajectory_drift`): N samples drawn with the run's
report settings, and at every step the mean over the samples of the predicted x0's brightness,
minus the data's mean. For the exact denoiser that difference is 0 at every step (E[E[x0 | x_t]]
= E[x0] when x_t has the right law, and DDIM keeps the law exactly for Gaussian data), so the
row where it departs from 0 is where the samples' brightness is pushed off.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from ..objectives import to_x0_eps
from ..samplers import sample
from ..schedules import Schedule

LOG_SNRS = (-12.0, -11.0, -10.0, -9.0, -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0)


def posterior_mean(d: torch.Tensor, prior: torch.Tensor, ab: float, dim: int, bins: int = 400) -> torch.Tensor:
    """E[m | d] for d = sqrt(ab) m + sqrt(1 - ab) e, e ~ N(0, 1 / dim), m drawn from the sample `prior`
    (a histogram of `bins` bins over the prior's range)."""
    lo, hi = float(prior.min()), float(prior.max())
    counts = torch.histc(prior.double(), bins, lo, hi)
    centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    var = (1 - ab) / dim
    log_w = -0.5 * (d.double()[:, None] - math.sqrt(ab) * centres[None]) ** 2 / var + torch.log(counts + 1e-300)[None]
    return (torch.softmax(log_w, dim=1) * centres[None]).sum(dim=1)


def timesteps_at(schedule: Schedule, log_snrs=LOG_SNRS) -> list[int]:
    """The training timestep whose log-SNR is nearest each of `log_snrs` (finite ones only)."""
    lam = schedule.log_snr.clamp(min=-60.0)
    return [int((lam - v).abs().argmin()) for v in log_snrs]


@torch.no_grad()
def brightness_gain(model, schedule: Schedule, prediction: str, images: torch.Tensor, labels=None, *,
                    prior: torch.Tensor | None = None, timesteps=None, seed: int = 0, batch_size: int = 256) -> list[dict]:
    """For each timestep t: the slope of the predicted x0's mean on E[m | d] (1: the brightness read
    as well as d allows), their mean difference (the offset; 0: none), the spread of E[m | d] (how
    much of the brightness is decided by t), and the root mean square gap between the two.
    `images` [N, C, H, W] in [-1, 1]; `prior`: image means of more real images (default: those of
    `images`)."""
    means = images.double().mean(dim=(1, 2, 3))
    prior = means if prior is None else prior
    dim = images[0].numel()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t in timesteps if timesteps is not None else timesteps_at(schedule):
        ab = float(schedule.alphas_cumprod[t])
        predicted, noisy_means = [], []
        for start in range(0, len(images), batch_size):
            x0 = images[start:start + batch_size].float()
            eps = torch.randn(x0.shape, generator=gen)
            x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
            y = None if labels is None else labels[start:start + batch_size]
            t_batch = torch.full((len(x0),), t, dtype=torch.int64)
            x0_hat, _ = to_x0_eps(prediction, model(x_t, t_batch, y=y).float(), x_t, ab)
            predicted.append(x0_hat.double().mean(dim=(1, 2, 3)))
            noisy_means.append(x_t.double().mean(dim=(1, 2, 3)))
        pred, post = torch.cat(predicted), posterior_mean(torch.cat(noisy_means), prior, ab, dim)
        centred = post - post.mean()
        rows.append(dict(t=t, log_snr=float(schedule.log_snr[t]), posterior_std=float(post.std()),
                         slope=float((centred * (pred - pred.mean())).sum() / centred.square().sum()),
                         offset=float((pred - post).mean()),
                         rms_gap=float((pred - post).square().mean().sqrt())))
    return rows


@torch.no_grad()
def trajectory_drift(model, schedule: Schedule, shape, data_mean: float, *, num: int, batch_size: int = 250,
                     seed: int = 0, labels=None, null_label: int | None = None, **sampling) -> list[dict]:
    """For each step of `samplers.sample(model, ...)`: the mean over `num` samples of the brightness
    (mean pixel) of the x0 the sampler used there, minus `data_mean`. `sampling` goes to
    samplers.sample (prediction, sampler, steps, guidance, ...); `labels` [num] with `null_label`
    for guidance. Each batch has its own generator (seed, batch index)."""
    sums, timesteps = None, None
    for i, start in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - start)
        y = None if labels is None else labels[start:start + n]
        uncond = None if y is None or sampling.get("guidance", 1.0) == 1.0 else torch.full_like(y, null_label)
        result = sample(model, (n, *shape), schedule, y=y, uncond_y=uncond, return_trajectory=True, progress=False,
                        generator=torch.Generator().manual_seed(seed * 1_000_003 + i), **sampling)
        batch = torch.stack([x0.double().mean(dim=(1, 2, 3)).sum() for x0 in result.x0s])
        sums, timesteps = (batch if sums is None else sums + batch), result.timesteps.tolist()
    return [dict(t=t, log_snr=float(schedule.log_snr[t]), drift=float(total / num - data_mean))
            for t, total in zip(timesteps, sums)]


def format_drift(rows: list[dict]) -> str:
    lines = ["| step | t | log-SNR | mean predicted brightness - data's |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {r['t']} | {r['log_snr']:.2f} | {r['drift']:+.3f} |" for i, r in enumerate(rows)]
    return "\n".join(lines)


def format_rows(rows: list[dict]) -> str:
    lines = ["| t | log-SNR | spread of E[m given d] | slope | offset | rms gap |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['t']} | {r['log_snr']:.1f} | {r['posterior_std']:.3f} | {r['slope']:.2f} | {r['offset']:+.3f} "
              f"| {r['rms_gap']:.3f} |" for r in rows]
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, rows in runs.items():
        ax.plot([r["log_snr"] for r in rows], [r["slope"] for r in rows], "o-", label=name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    first = next(iter(runs.values()))
    ax2 = ax.twinx()
    ax2.fill_between([r["log_snr"] for r in first], [r["posterior_std"] for r in first], color="0.85", zorder=0)
    ax2.set_ylabel("spread of E[m | d] (grey)")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_xlabel("per-pixel log-SNR of x_t")
    ax.set_ylabel("slope of the predicted brightness on E[m | d]")
    ax.set_ylim(0.4, 2.4)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("How well the network reads the brightness (1 = as well as the noise allows)", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_names(paths: list[str]) -> list[str]:
    """The shortest trailing part of each checkpoint's path that tells the runs apart, for the
    plot's legend: runs/a/seed1/checkpoint.pt and runs/b/seed1/checkpoint.pt are a/seed1 and b/seed1."""
    parts = [[*Path(p).parent.parts, *([] if Path(p).stem == "checkpoint" else [Path(p).stem])] for p in paths]
    for k in range(1, max(len(x) for x in parts) + 1):
        names = ["/".join(x[-k:]) for x in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]  # the same file twice


def main(argv=None) -> None:
    from ..training.runtime import require, run_command
    from ..training.data import builtin_shapes, to_float
    from ..training.sample import class_labels, describe_sampling, load_run, report_sampling, sampler_kwargs, schedule_of

    p = argparse.ArgumentParser(prog="minidiff brightness-gain", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint.pt files of runs on the built-in set")
    p.add_argument("--num", type=int, default=512, help="real images noised at each level")
    p.add_argument("--out", help="also plot the slopes of every checkpoint to this PNG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trajectory", type=int, default=0, metavar="N",
                   help="also draw N samples with the run's report settings and print, step by step, the mean "
                        "predicted brightness minus the data's (0 for the exact denoiser)")
    args = p.parse_args(argv)

    def run(args):
        require(args.num >= 16, f"--num must be at least 16, got {args.num}")
        require(args.trajectory >= 0, f"--trajectory must be 0 (off) or a number of samples, got {args.trajectory}")
        for path in args.checkpoints:
            require(Path(path).is_file(), f"no checkpoint at {path}; give the checkpoint.pt of a run")
        real = builtin_shapes(max(4 * args.num, 2000), seed=args.seed + 7)
        everything = to_float(real.images)
        images, prior = everything[:args.num], everything.mean(dim=(1, 2, 3))
        runs = {}
        for path, name in zip(args.checkpoints, run_names(args.checkpoints)):
            model, config, _ = load_run(path)
            require(config.get("dataset") == "builtin", f"{path} was trained on {config.get('dataset')!r}; "
                    "this measure noises built-in images")
            labels = real.labels[:args.num] if model.config["num_classes"] is not None else None
            rows = brightness_gain(model, schedule_of(config), config["prediction"], images, labels,
                                   prior=prior, seed=args.seed)
            runs[name] = rows
            print(f"{path}\n{format_rows(rows)}\n")
            if args.trajectory:
                settings = report_sampling(config)
                null = model.config["num_classes"]
                drift = trajectory_drift(
                    model, schedule_of(config), (model.config["in_channels"], *images.shape[2:]), float(prior.mean()),
                    num=args.trajectory, seed=args.seed, labels=class_labels(None, args.trajectory, null), null_label=null,
                    prediction=config["prediction"], **sampler_kwargs(settings))
                print(f"along the sampler ({describe_sampling(settings)}), {args.trajectory} samples:\n"
                      f"{format_drift(drift)}\n")
        if args.out:
            plot(runs, args.out)
            print(f"wrote {args.out}")

    run_command(run, args)
