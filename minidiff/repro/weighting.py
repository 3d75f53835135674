"""The v loss's weight per timestep (none, min-SNR, level_mean) and the guidance rescale phi, swept.

Course question B 9 and the authors' second direction: how much do the results hang on the loss weight
lambda_t and on phi? Two sweeps on the brightness experiment (built-in shapes, trailing DDIM, the same
noises for every setup):

    lambda_t   small v models that differ only in the loss weight, sampled without guidance:
                 sd-v          SD's schedule, none          (cached, the brightness experiment's)
                 sd-v-minsnr   SD's schedule, min-SNR-5     (Hang et al. 2023; trained here)
                 zsnr-v        zero SNR, none               (Lin et al.'s v loss; cached)
                 zsnr-v-level  zero SNR, level_mean         (the main job's: each level's loss over its
                                                             running mean; trained here)
               min-SNR with zero SNR is not in the list because the trainer refuses it
               (training.loss.check_weighting): min(SNR, 5) / (SNR + 1) is exactly 0 at SNR = 0, so the
               last step, the one the rescale adds, would never be trained. The run records that refusal
               and the weights it would have given; min-SNR is compared on SD's schedule instead.
    phi        the guidance rescale (Algorithm 2) on zsnr-v at guidance weight w = 4, phi in
               {0, 0.3, 0.5, 0.7, 0.9, 1}: brightness W1, dark and bright shares, the share of pixels
               outside [-1, 1] and the per-image std over the data's (cfg_rescale.overexposure)

    minidiff repro weighting     # trains sd-v-minsnr and zsnr-v-level (about a minute each)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..schedules import Schedule
from ..training import data as datasets
from ..training.loss import LossPerLevel, check_weighting, min_snr_weight
from ..training.train import CHECKPOINT, load_checkpoint
from .cfg_rescale import overexposure
from .common import (brightness_stats, brightness_strips, data_brightness_stats, draw,
                     experiment_parser, image_brightness, publish_figures, pyplot, save_figure, scale_of, timer,
                     trained_model, training_data, write_json)


COMPARED = (("sd-v", "SD schedule, v, none"), ("sd-v-minsnr", "SD schedule, v, min-SNR 5"),
            ("zsnr-v", "zero SNR, v, none (Lin et al.)"), ("zsnr-v-level", "zero SNR, v, level_mean"))
PHIS = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)
GUIDANCE = 4.0
MIN_SNR_GAMMA = 5.0  # the trainer's (recipe_loss's default)


def normalised(weights: torch.Tensor) -> torch.Tensor:
    """lambda_t / mean_t lambda_t: the weights' shape, the scale that Adam's normalisation removes."""
    w = weights.double()
    return w / w.mean()


def min_snr_weights(schedule: Schedule) -> torch.Tensor:
    """min(SNR_t, gamma) / (SNR_t + 1): min-SNR-gamma's weight on the v loss at every timestep."""
    return min_snr_weight(schedule.snr, "v", MIN_SNR_GAMMA)


def level_mean_weights(folder: str | Path, num_timesteps: int = 1000) -> torch.Tensor:
    """1 / (running mean of the plain loss in t's bin): level_mean's weight at every timestep, as the
    trained run's checkpoint left it (LossPerLevel's buffers). A bin never drawn (only in very short
    runs) gets the mean weight of the others."""
    state = load_checkpoint(Path(folder) / CHECKPOINT)["loss_per_level"]
    seen = state["seen"]
    per_bin = torch.ones(len(seen), dtype=torch.float64)
    if seen.any():
        per_bin[seen] = 1.0 / state["mean_loss"].double()[seen].clamp(min=1e-12)
        per_bin[~seen] = per_bin[seen].mean()
    return per_bin[LossPerLevel(num_timesteps, num_bins=len(seen)).bins(torch.arange(num_timesteps))]


def min_snr_with_zero_snr() -> dict:
    """What min-SNR would do on SD's schedule rescaled to zero SNR, and the trainer's refusal of it."""
    rows = {}
    for key, sch in (("sd", Schedule.make("scaled_linear")), ("zero_snr", Schedule.make("scaled_linear", zero_snr=True))):
        w = min_snr_weights(sch)
        noisy = sch.snr < 1
        rows[key] = {"weight_last_step": float(w[-1]), "noisy_steps": int(noisy.sum()),
                     "noisy_steps_weight_below_0.01": int((noisy & (w < 0.01)).sum())}
    try:
        check_weighting("min_snr", Schedule.make("scaled_linear", zero_snr=True))
        rows["refusal"] = None
    except ValueError as err:
        rows["refusal"] = str(err)
    return rows


def run(scale: dict, out: Path, models_dir: Path, *, guidance: float = GUIDANCE, phis=PHIS, seed: int = 0) -> dict:
    """Both sweeps; writes weighting.json and the two figures."""
    elapsed = timer()
    data = training_data(scale, seed)
    data_b = image_brightness(data.images)
    data_std = float(datasets.to_float(data.images).flatten(1).std(1).mean())
    refused = min_snr_with_zero_snr()
    print(f"min-SNR on zero SNR: weight at the last step {refused['zero_snr']['weight_last_step']:g}, "
          f"{refused['zero_snr']['noisy_steps_weight_below_0.01']} of {refused['zero_snr']['noisy_steps']} steps with "
          f"SNR < 1 weigh under 0.01 (SD's schedule: {refused['sd']['noisy_steps_weight_below_0.01']} of "
          f"{refused['sd']['noisy_steps']}); the trainer refuses it: {refused['refusal']}")

    rows, samples, train_seconds, models = [], {}, {}, {}
    for name, label in COMPARED:
        tm = models[name] = trained_model(name, scale, models_dir, seed)
        train_seconds[name] = {"seconds": round(tm.train_seconds, 1), "trained_now": tm.trained_now}
        x = samples[name] = draw(tm, scale["num_samples"], scale, steps=scale["sample_steps"], spacing="trailing",
                                 seed=seed + 1, desc=name)
        rows.append({"model": name, "label": label, "weighting": tm.spec.weighting, "model_label": tm.spec.label,
                     **brightness_stats(x, data_b)})
        r = rows[-1]
        print(f"{label:34s} W1 {r['wasserstein1']:.3f}  dark {r['dark_share']:.1%}  bright {r['bright_share']:.1%}")

    tm = models["zsnr-v"]
    n = max(tm.num_classes, scale["num_samples"] // 2 // tm.num_classes * tm.num_classes)
    phi_rows = []
    for phi in phis:
        x = draw(tm, n, scale, steps=scale["sample_steps"], spacing="trailing", guidance=guidance,
                 guidance_rescale=phi, seed=seed + 1, desc=f"w={guidance:g} phi={phi:g}")
        b = brightness_stats(x, data_b)
        phi_rows.append({"phi": phi, "guidance": guidance, **overexposure(x, data_std, data_b),
                         "dark_share": b["dark_share"], "bright_share": b["bright_share"]})
        r = phi_rows[-1]
        print(f"zsnr-v, w {guidance:g}, phi {phi:3g}: brightness W1 {r['brightness_w1']:.3f}  dark {r['dark_share']:.1%}  "
              f"bright {r['bright_share']:.1%}  saturated {r['saturated_share']:.2%}  std ratio {r['std_ratio']:.2f}")

    weights = {"none": torch.ones(1000, dtype=torch.float64),
               "min_snr (SD schedule)": normalised(min_snr_weights(Schedule.make("scaled_linear"))),
               "min_snr (zero SNR, refused)": normalised(min_snr_weights(Schedule.make("scaled_linear", zero_snr=True))),
               "level_mean (zero SNR, learned)": normalised(level_mean_weights(models["zsnr-v-level"].folder))}
    result = {"experiment": "weighting", "scale": scale, "num_samples": scale["num_samples"],
              "steps": scale["sample_steps"], "min_snr_gamma": MIN_SNR_GAMMA, "min_snr_with_zero_snr": refused,
              "data": data_brightness_stats(data_b), "data_per_image_std": data_std, "models": rows,
              "phi_sweep": {"model": "zsnr-v", "guidance": guidance, "num_samples": n, "rows": phi_rows},
              "weights_every_100": {k: [float(v) for v in w[::100]] + [float(w[-1])] for k, w in weights.items()},
              "train_seconds": train_seconds, "threads": torch.get_num_threads()}
    plot_sweeps(result, weights, out / "weighting.png")
    brightness_strips([("data", data.images)] + [(f"{r['label']}\nW1 {r['wasserstein1']:.3f}", samples[r["model"]])
                                                 for r in rows],
                      out / "weighting_strips.png", "per-image brightness, darkest -> brightest, by loss weight")
    result["seconds"] = elapsed()
    write_json(out, "weighting", result)
    return result


def plot_sweeps(result: dict, weights: dict, path: Path) -> None:
    """The weights lambda_t (each over its mean), the models' brightness W1, and the phi sweep's measures."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 5, figsize=(21, 3.8))
    for (label, w), ls in zip(weights.items(), ("-", "-", "--", "-")):
        axes[0].plot(torch.arange(len(w)), w.clamp(min=1e-4), ls=ls, label=label)
    axes[0].set(xlabel="timestep t", ylabel="lambda_t / mean (clipped at 1e-4)", yscale="log",
                title="loss weight on the v loss")
    axes[0].legend(fontsize=7)
    models = result["models"]
    axes[1].barh([r["label"] for r in models], [r["wasserstein1"] for r in models], color="tab:blue")
    axes[1].invert_yaxis()
    axes[1].tick_params(axis="y", labelsize=7)
    axes[1].set(xlabel="brightness W1 to the data (unguided)", title="by loss weight")
    rows = result["phi_sweep"]["rows"]
    phis = [r["phi"] for r in rows]
    panels = (("saturated_share", "% pixels outside [-1, 1]", 100), ("std_ratio", "per-image std, samples / data", 1),
              ("brightness_w1", "brightness W1 to the data", 1))
    for ax, (field, ylabel, factor) in zip(axes[2:], panels):
        ax.plot(phis, [factor * r[field] for r in rows], marker="o")
        ax.set(xlabel="guidance rescale phi", ylabel=ylabel, title=f"zsnr-v, w = {result['phi_sweep']['guidance']:g}")
    axes[3].axhline(1.0, color="k", lw=0.8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Loss weights ({result['num_samples']} samples a model) and the guidance rescale "
                 f"({result['phi_sweep']['num_samples']} samples a phi), {result['steps']} trailing DDIM steps", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    p = experiment_parser("weighting", __doc__.split("\n\n")[0])
    p.add_argument("--guidance", type=float, default=GUIDANCE, help="guidance weight w of the phi sweep")
    p.add_argument("--phis", type=float, nargs="+", default=list(PHIS), help="guidance rescales phi, each in [0, 1]")
    a = p.parse_args(argv)
    if a.guidance < 0:
        p.error(f"--guidance must be 0 or more (1: no guidance), got {a.guidance}")
    if not all(0 <= phi <= 1 for phi in a.phis):
        p.error(f"--phis must each lie in [0, 1] (0: plain guidance, 0.7: the paper's), got {a.phis}")
    out = Path(a.out)
    res = run(scale_of(a), out, Path(a.models), guidance=a.guidance, phis=a.phis, seed=a.seed)
    print(f"wrote {out}/weighting.json, weighting.png, weighting_strips.png in {res['seconds']:.0f} s")
    publish_figures(out, a.figures_dir, ["weighting.png", "weighting_strips.png"])


if __name__ == "__main__":
    main()
