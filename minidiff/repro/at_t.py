"""What a model predicts at the last step, t = T-1 (Lin et al. Sec. 3.2 and Fig. 2).

With zero terminal SNR the input at T-1 is pure noise, x_T = eps, and v = -x0, so the v model's
best answer is x0_hat = E[x0 | y]: the mean of the data of class y, the same for every noise. Its
x0 predictions for many different noises should therefore agree (small spread) and match the
class's mean image, and the sampler's first step is a step towards that mean.

The flawed model (Stable Diffusion's schedule, eps) has no such fixed point: it was trained to
read the image out of the 6.8% of signal left at T-1, so its x0 prediction follows the noise, and
its brightness follows the noise's mean (the correlation is reported).

    minidiff repro at-T          # reuses the brightness experiment's models
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..objectives import to_x0_eps
from ..training import data as datasets
from .common import (experiment_parser, mosaic, publish_figures, pyplot, save_figure, scale_of, timer, trained_model,
                     training_data, write_json)

MODELS_COMPARED = ("zsnr-v", "sd-eps")


@torch.no_grad()
def predictions_at_T(tm, num_noises: int, labels: list[int], device, seed: int = 0):
    """x0 predicted at t = T-1 for `num_noises` noises and each label: [labels, noises, C, H, W],
    and the noises' means [noises] (the same noises for every label and model)."""
    t_last = tm.schedule.num_timesteps - 1
    ab = tm.schedule.alphas_cumprod[t_last].item()
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn((num_noises, 3, tm.image_size, tm.image_size), generator=gen)
    out = []
    for label in labels:
        y = torch.full((num_noises,), label, dtype=torch.int64, device=device)
        t = torch.full((num_noises,), t_last, dtype=torch.int64, device=device)
        x = x_T.to(device)
        x0, _ = to_x0_eps(tm.prediction, tm.model(x, t, y=y).float(), x, ab)
        out.append(x0.cpu())
    return torch.stack(out), x_T.flatten(1).mean(1)


def summarise(pred: torch.Tensor, noise_means: torch.Tensor, class_means: torch.Tensor, class_stds: torch.Tensor,
              data_brightness_std: float) -> dict:
    """Spread of the predictions across noises, and their distance to the class means (RMS over pixels)."""
    spread = pred.std(dim=1).flatten(1).pow(2).mean(1).sqrt()            # per label
    centre_err = (pred.mean(dim=1) - class_means).flatten(1).pow(2).mean(1).sqrt()
    each_err = (pred - class_means[:, None]).flatten(2).pow(2).mean(2).sqrt().mean(1)
    brightness = pred.clamp(-1, 1).flatten(2).mean(2)                     # [labels, noises]
    corr = torch.stack([torch.corrcoef(torch.stack([noise_means, b]))[0, 1] for b in brightness])
    return {
        "spread_rms": float(spread.mean()), "spread_rms_per_label": spread.tolist(),
        "error_of_mean_rms": float(centre_err.mean()), "error_of_each_rms": float(each_err.mean()),
        "data_pixel_std_rms": float(class_stds.mean()), "data_brightness_std": data_brightness_std,
        "brightness_noise_corr": float(torch.nan_to_num(corr).mean()),
        # how much the predicted brightness moves with the noise, against the data's brightness spread
        "brightness_std_across_noises": float(brightness.std(dim=1).mean()),
    }


def main(argv=None):
    p = experiment_parser("at-T", __doc__.split("\n\n")[0])
    p.add_argument("--num-noises", type=int, default=64, help="noises x_T per class")
    a = p.parse_args(argv)
    scale, out, elapsed = scale_of(a), Path(a.out), timer()
    data = training_data(scale, a.seed)
    images = datasets.to_float(data.images)
    k = data.num_classes
    labels = list(range(k)) + [k]  # every class, then the null class (unconditional: the mean of all data)
    class_means = torch.stack([images[data.labels == c].mean(0) for c in range(k)] + [images.mean(0)])
    class_stds = torch.stack([images[data.labels == c].std(0).pow(2).mean().sqrt() for c in range(k)]
                             + [images.std(0).pow(2).mean().sqrt()])

    result = {"experiment": "at-T", "scale": scale, "num_noises": a.num_noises, "labels": labels, "models": {}}
    preds = {}
    for name in MODELS_COMPARED:
        tm = trained_model(name, scale, Path(a.models), a.seed)
        pred, noise_means = predictions_at_T(tm, a.num_noises, labels, scale["device"], a.seed + 7)
        preds[name] = pred
        result["models"][name] = {"label": tm.spec.label, **summarise(pred, noise_means, class_means, class_stds,
                                                                      float(images.flatten(1).mean(1).std()))}
        r = result["models"][name]
        print(f"{name:8s} ({tm.spec.label}): spread across noises {r['spread_rms']:.3f}, distance of their mean "
              f"to the class mean {r['error_of_mean_rms']:.3f} (data pixel std {r['data_pixel_std_rms']:.3f}), "
              f"std of predicted brightness across noises {r['brightness_std_across_noises']:.3f} (data's brightness std "
              f"{r['data_brightness_std']:.3f}; corr with the noise mean {r['brightness_noise_corr']:+.2f})")
    result["seconds"] = elapsed()
    write_json(out, "at_T", result)
    plot(class_means, preds, result, out / "at_T.png")
    print(f"wrote {out}/at_T.json and at_T.png")
    publish_figures(out, a.figures_dir, ["at_T.png"])


def plot(class_means, preds, result, path: Path, rows: int = 4) -> None:
    """Per model: the data's class means (top row) and x0 predicted at T-1 from `rows` noises."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(preds), figsize=(6.5 * len(preds), 4.2))
    for ax, (name, pred) in zip(axes, preds.items()):
        block = torch.cat([class_means[None], pred[:, :rows].transpose(0, 1)])  # [1 + rows, labels, ...]
        ax.imshow(mosaic(block.flatten(0, 1), nrow=pred.shape[0]).numpy(), interpolation="nearest")
        r = result["models"][name]
        ax.set_title(f"{r['label']}: x0 predicted at t = T-1\nspread across noises {r['spread_rms']:.3f}, "
                     f"brightness std across noises {r['brightness_std_across_noises']:.3f}", fontsize=9)
        ax.set_yticks([(i + 0.5) * (pred.shape[-1] + 1) for i in range(rows + 1)],
                      ["data class mean"] + [f"noise {i + 1}" for i in range(rows)], fontsize=7)
        ax.set_xticks([(j + 0.5) * (pred.shape[-1] + 1) for j in range(pred.shape[0])],
                      [str(c) for c in result["labels"][:-1]] + ["null"], fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
