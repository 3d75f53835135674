"""Zero terminal SNR by design (flow, cosine without its clip) or by rescale (linear, or a log-SNR tail bend).

Lin et al. reach zero terminal SNR by rescaling an existing schedule (Algorithm 1: shift and scale
sqrt(alpha_bar), a linear map), and suggest that new schedules be designed with beta_T = 1 from the
start. Algorithm 1 changes the whole curve: on Stable Diffusion's schedule the SNR at the middle
step drops by 17% and the log-SNR at t = 0.9 T by 1.6. This experiment asks whether that matters
(course questions B 1, B 3; the authors' first direction), in three parts:

    schedules  the log-SNR and sqrt(alpha_bar) of each design beside SD's, and how far each rescale
               moves the schedule: max |d log-SNR| below the tail, the SNR change at the middle step
    exact      the exact Gaussian denoiser (minidiff.exact.analytic) sampled with trailing DDIM on each
               schedule: std of the sampled law / the data's along three directions, the image mean
               (variance 207 at 3x16x16, see EXACT_VARIANCES), a unit-variance one and a detail (0.01).
               No network, so only the schedule and the step count differ; the tail rescale is judged
               only here, because a trained model knows the noise levels of its own schedule only
    trained    the brightness experiment's small v models, one per schedule the trainer can name,
               sampled from the same noises: sd-v (no rescale), zsnr-v (SD + Algorithm 1, cached),
               cosine-zsnr-v (cosine + Algorithm 1: the clipped cosine ends at sqrt(alpha_bar) = 4.9e-5,
               so this is the cosine with its clip removed to within 4.9e-5 in sqrt(alpha_bar)) and
               flow-v (the rectified flow's schedule, alpha_bar_T = 0 by construction), all with v

The tail rescale (`tail_rescale_zero_terminal_snr`) is this module's non-linear rescale: it keeps
the log-SNR exactly for t < start T and bends only the last steps down to -inf:

    log-SNR'_t = log-SNR_t + 2 log(1 - r_t),   r_t = ((t - t0) / (T - 1 - t0))^2 for t > t0, else 0

    minidiff repro zero-snr-designs     # trains flow-v and cosine-zsnr-v (about a minute each)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..exact.analytic import gaussian_sampler_moments
from ..samplers import make_timesteps
from ..schedules import Schedule, alphas_cumprod, make_betas, rescale_zero_terminal_snr
from .common import (brightness_stats, brightness_strips, data_brightness_stats, draw,
                     experiment_parser, image_brightness, publish_figures, pyplot, save_figure, scale_of, timer,
                     trained_model, training_data, write_json)


TRAINED = (("sd-v", "SD schedule, no rescale"), ("zsnr-v", "SD + Algorithm 1"),
           ("cosine-zsnr-v", "cosine + Algorithm 1 (~ clip removed)"), ("flow-v", "flow (alpha_bar_T = 0 by design)"))
EXACT_STEPS = (5, 10, 25, 50, 200, 1000)
# Variances of three directions of a 3x16x16 image. The per-image mean brightness m is uniform on
# [-0.9, 0.9] (variance 1.8^2 / 12 = 0.27); along the unit vector (1, ..., 1) / sqrt(d) the image's
# coordinate is sqrt(d) m, so that direction's variance is d 0.27 = 207 at d = 768: the lowest frequency
# carries by far the most variance, which is why SD's SNR(T) = 0.0047 still shows it (0.0047 * 207 ~ 1).
EXACT_VARIANCES = {"brightness": 768 * 0.27, "unit": 1.0, "detail": 0.01}
TAIL_START = 0.9


# ------------------------------------------------------------------------------ the tail rescale


def tail_ramp(num_timesteps: int, start: float = TAIL_START) -> torch.Tensor:
    """r_t = ((t - t0) / (T - 1 - t0))^2 for t > t0 = round(start T) - 1, and 0 for t <= t0.

    0 up to t0 (so nothing below start T moves), 1 at the last step T - 1, with zero slope at t0
    (the bend starts smoothly)."""
    t0 = round(start * num_timesteps) - 1
    if not 0 <= t0 < num_timesteps - 1:
        raise ValueError(f"start must leave at least one step on each side of the tail, got {start}")
    u = ((torch.arange(num_timesteps, dtype=torch.float64) - t0) / (num_timesteps - 1 - t0)).clamp(min=0)
    return u**2


def tail_rescale_zero_terminal_snr(betas: torch.Tensor, start: float = TAIL_START) -> torch.Tensor:
    """A non-linear rescale to zero terminal SNR that moves only the steps t > t0 (see `tail_ramp`):

        SNR'_t = SNR_t (1 - r_t)^2      (log-SNR'_t = log-SNR_t + 2 log(1 - r_t))
        alpha_bar'_t = SNR'_t / (1 + SNR'_t) = ab_t (1 - r_t)^2 / (1 - ab_t + ab_t (1 - r_t)^2)

    SNR' is a product of two non-increasing factors, one of them strictly decreasing, so alpha_bar'
    still falls at every step; r_{T-1} = 1 makes alpha_bar'_{T-1} exactly 0 (the last beta 1). The
    betas up to t0 are returned untouched, so alpha_bar there is bit for bit the original's.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)
    ab, r = alphas_cumprod(betas), tail_ramp(len(betas), start)
    keep = (1 - r) ** 2
    ab_new = torch.where(r > 0, ab * keep / (1 - ab + ab * keep), ab)
    new = betas.clone()
    tail = torch.nonzero(r > 0).flatten()
    new[tail] = 1 - ab_new[tail] / ab_new[tail - 1]
    return new


def schedules(tail_start: float = TAIL_START) -> dict[str, tuple[str, Schedule]]:
    """The schedules compared, by key: (label, Schedule)."""
    sd = make_betas("scaled_linear")
    return {
        "sd": ("SD (scaled_linear), no rescale", Schedule(sd)),
        "sd-alg1": ("SD + Algorithm 1 (linear in sqrt(alpha_bar))", Schedule(rescale_zero_terminal_snr(sd))),
        "sd-tail": (f"SD + tail rescale (log-SNR kept below {tail_start:g} T)",
                    Schedule(tail_rescale_zero_terminal_snr(sd, tail_start))),
        "cosine-noclip": ("cosine, clip removed (beta_T = 1 by design)", Schedule(make_betas("cosine", cosine_clip=None))),
        "cosine-alg1": ("cosine + Algorithm 1", Schedule.make("cosine", zero_snr=True)),
        "flow": ("flow (alpha_bar_T = 0 by design)", Schedule.make("flow")),
    }


def schedule_change(new: Schedule, old: Schedule, start: float = TAIL_START) -> dict:
    """How far `new` moved from `old`: max |d log-SNR| over t < start T and over every t < T - 1 (where
    both are finite), SNR'/SNR - 1 at the middle step T/2 - 1, and max |d sqrt(alpha_bar)| over all t."""
    T = old.num_timesteps
    d = (new.log_snr - old.log_snr).abs()
    mid = T // 2 - 1
    return {
        "max_abs_dlogsnr_below_tail": float(d[:round(start * T)].max()),
        "max_abs_dlogsnr_before_last": float(d[:-1].max()),
        "snr_rel_change_middle": float(new.snr[mid] / old.snr[mid] - 1),
        "max_abs_dsqrt_alpha_bar": float((new.alphas_cumprod.sqrt() - old.alphas_cumprod.sqrt()).abs().max()),
    }


def exact_std_ratios(table: dict, steps_list=EXACT_STEPS, variances=EXACT_VARIANCES) -> list[dict]:
    """std of trailing DDIM's output law / the data's, with the exact denoiser of N(0, lam) data, for
    each schedule, step count and direction (gaussian_sampler_moments: no sampling, exact moments)."""
    rows = []
    for key, (label, sch) in table.items():
        for steps in steps_list:
            ts = make_timesteps(sch.num_timesteps, steps, "trailing")
            row = {"schedule": key, "label": label, "steps": steps}
            for name, lam in variances.items():
                _, var = gaussian_sampler_moments(lam, 0.0, sch, ts)
                row[f"{name}_std_ratio"] = math.sqrt(float(var) / lam)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------- the run


def run(scale: dict, out: Path, models_dir: Path, *, steps: int | None = None, tail_start: float = TAIL_START,
        seed: int = 0) -> dict:
    """All three parts; writes zero_snr_designs.json and the two figures."""
    elapsed = timer()
    table = schedules(tail_start)
    pairs = (("sd-alg1", "sd"), ("sd-tail", "sd"), ("cosine-alg1", "cosine-noclip"))
    changes = {f"{new} vs {old}": schedule_change(table[new][1], table[old][1], tail_start) for new, old in pairs}
    for pair, c in changes.items():
        print(f"{pair:30s} max |d log-SNR| below {tail_start:g} T {c['max_abs_dlogsnr_below_tail']:.3g}, "
              f"before the last step {c['max_abs_dlogsnr_before_last']:.3g}; "
              f"SNR at the middle step {c['snr_rel_change_middle']:+.1%}; "
              f"max |d sqrt(alpha_bar)| {c['max_abs_dsqrt_alpha_bar']:.2g}")
    exact = exact_std_ratios(table)
    for r in exact:
        if r["steps"] in (5, 50):
            print(f"exact Gaussian, {r['steps']:4d} steps, {r['label']:48s} sampled std / data std: "
                  + ", ".join(f"{k} {r[f'{k}_std_ratio']:.3f}" for k in EXACT_VARIANCES))

    steps = steps or scale["sample_steps"]
    data_b = image_brightness(training_data(scale, seed).images)
    rows, samples, train_seconds = [], {}, {}
    for name, label in TRAINED:
        tm = trained_model(name, scale, models_dir, seed)
        train_seconds[name] = {"seconds": round(tm.train_seconds, 1), "trained_now": tm.trained_now}
        x = draw(tm, scale["num_samples"], scale, steps=steps, spacing="trailing", seed=seed + 1, desc=name)
        samples[name] = x
        rows.append({"model": name, "label": label, "model_label": tm.spec.label, **brightness_stats(x, data_b)})
        r = rows[-1]
        print(f"trained {label:40s} W1 {r['wasserstein1']:.3f}  dark {r['dark_share']:.1%}  bright {r['bright_share']:.1%}")

    result = {"experiment": "zero-snr-designs", "scale": scale, "tail_start": tail_start, "steps": steps,
              "num_samples": scale["num_samples"], "schedule_changes": changes, "exact": exact,
              "exact_variances": EXACT_VARIANCES, "data": data_brightness_stats(data_b), "trained": rows,
              "train_seconds": train_seconds, "threads": torch.get_num_threads()}
    plot_schedules(table, exact, tail_start, out / "zero_snr_designs.png")
    brightness_strips([("data", training_data(scale, seed).images)]
                      + [(f"{r['label']}\nW1 {r['wasserstein1']:.3f}", samples[r["model"]]) for r in rows],
                      out / "zero_snr_designs_strips.png",
                      f"per-image brightness, darkest -> brightest, {steps} trailing DDIM steps, v models")
    result["seconds"] = elapsed()
    write_json(out, "zero_snr_designs", result)
    return result


def plot_schedules(table: dict, exact: list[dict], tail_start: float, path: Path) -> None:
    """log-SNR(t) and sqrt(alpha_bar)(t) of every schedule, the change each rescale makes to SD's
    log-SNR, and the exact denoiser's brightness std ratio against the number of steps."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    t = torch.arange(1000)
    styles = {"sd": ("k", "-"), "sd-alg1": ("tab:red", "-"), "sd-tail": ("tab:blue", "-"),
              "cosine-noclip": ("tab:green", "-"), "cosine-alg1": ("tab:olive", ":"), "flow": ("tab:purple", "-")}
    for key, (label, sch) in table.items():
        color, ls = styles[key]
        axes[0].plot(t, sch.log_snr.clamp(min=-20), color=color, ls=ls, label=label)
        axes[1].plot(t, sch.alphas_cumprod.sqrt(), color=color, ls=ls, label=label)
    sd = table["sd"][1]
    for key in ("sd-alg1", "sd-tail"):
        moved = (table[key][1].log_snr - sd.log_snr)[:-1].clamp(min=-20)
        axes[2].plot(t[:-1], moved, color=styles[key][0], label=table[key][0])
    axes[0].set(ylabel="log-SNR (clipped at -20; the last step is -inf)", title="log-SNR(t)")
    axes[1].set(ylabel="sqrt(alpha_bar)", title="sqrt(alpha_bar)(t)")
    axes[1].set_yscale("log")
    axes[1].set_ylim(1e-4, 1.1)
    axes[2].set(ylabel="log-SNR' - log-SNR of SD", title="what each rescale moves")
    axes[2].axvline(round(tail_start * 1000) - 1, color="0.5", lw=0.8, ls=":")
    for key, (label, _) in table.items():
        pts = [(r["steps"], r["brightness_std_ratio"]) for r in exact if r["schedule"] == key]
        axes[3].plot(*zip(*pts), marker="o", color=styles[key][0], ls=styles[key][1], label=label)
    axes[3].axhline(1.0, color="k", lw=0.8)
    axes[3].set(xlabel="trailing DDIM steps", ylabel="sampled std / data std", xscale="log",
                title="exact Gaussian denoiser, image-mean direction (var 207)")
    for ax in axes[:3]:
        ax.set_xlabel("timestep t")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    p = experiment_parser("zero-snr-designs", __doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, help="DDIM steps for the trained models (default: the scale's)")
    p.add_argument("--tail-start", type=float, default=TAIL_START,
                   help="the tail rescale keeps log-SNR unchanged for t < TAIL_START * T (a fraction in (0, 1))")
    a = p.parse_args(argv)
    if not (0 < a.tail_start < 1 and 1 <= round(a.tail_start * 1000) <= 999):
        p.error(f"--tail-start must be a fraction in (0, 1) that leaves a tail, e.g. 0.9; got {a.tail_start}")
    if a.steps is not None and not 1 <= a.steps <= 1000:
        p.error(f"--steps must be from 1 to 1000, got {a.steps}")
    out = Path(a.out)
    res = run(scale_of(a), out, Path(a.models), steps=a.steps, tail_start=a.tail_start, seed=a.seed)
    print(f"wrote {out}/zero_snr_designs.json, zero_snr_designs.png, zero_snr_designs_strips.png in {res['seconds']:.0f} s")
    publish_figures(out, a.figures_dir, ["zero_snr_designs.png", "zero_snr_designs_strips.png"])


if __name__ == "__main__":
    main()
