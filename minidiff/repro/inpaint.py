"""Inpainting (RePaint): the known pixels are the input noised to each step's level, the model fills the mask; resampling against none.

The sampler's inpainting (`samplers.sample(..., init=x, mask=m, resample=r)`, Lugmayr et al. 2022)
takes each step of the ordinary loop from listed timestep t to the next level s, then puts the
known pixels back as the input noised to s:

    x_s  <-  m * step(x_t)  +  (1 - m) * (sqrt(a_s) x + sqrt(1 - a_s) z)       m = 1: the model draws

so the model never sees the known region except as a noisy copy of the input, and after the last
step (a_s = 1) the known pixels are the input exactly. The two halves are noised independently, so
at coarse levels the filled part may not agree with the known part. RePaint's answer, `resample`
= r: after each step go back up to t, x_t = sqrt(a_t / a_s) x_s + sqrt(1 - a_t / a_s) z (q(x_t | x_s)),
and take the step again, r more times, so that the model's next pass sees a harmonised image.

The model is the main job's fixed run (zero terminal SNR, v, trailing) on the scaled-linear schedule,
`main-fixed-scaled_linear` of `minidiff repro brightness --recipe main --main-schedule scaled_linear`
(trained here if the cache lacks it), with its report's sampler and steps, but unconditional (the
null label, no guidance): the model learns the image only from its known pixels. Inputs: held-out
built-in images; masks: the centre square, the left half, the bottom half. Measured per mask and
resample setting: the known pixels (max |output - input| after the uint8 round trip: 0), how the
filled region agrees with the known one (the correlation across images of their mean brightness,
beside the real images'; the filled mean's error against the hidden truth; the pixel jump across
the mask's edge against the real images'), the built-in judge's class accuracy (the shape must be
completed to be recognised), and the time; beside them resample 0 with as many network calls as
the most resampling (more steps instead), to tell resampling from mere extra compute.

    minidiff repro inpaint                    # 200 images x 3 masks, resample 0, 1, 3 (and 0 at 100 steps)
    minidiff repro inpaint --scale test       # seconds
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..training import data as datasets
from ..training.cli import fail
from ..training.sample import sampler_kwargs
from ..training.train import UsageError
from . import brightness_main
from .common import draw, experiment_parser, grid_figure, image_brightness, publish_figures, timer, write_json
from .img2img import input_images, pearson

SCHEDULE = "scaled_linear"
RESAMPLE = (0, 1, 3)
MASKS = ("centre", "left", "bottom")
SIZES = {"cpu": dict(images=200, main_steps=2000, grid=None, show=6, batch=200),
         "test": dict(images=6, main_steps=2, grid=4, show=3, batch=6)}


def make_mask(name: str, size: int = 32) -> torch.Tensor:
    """[1, 1, size, size], 1 where the model draws: the centre square of half the side, the left
    half, or the bottom half."""
    m = torch.zeros(1, 1, size, size)
    q, h = size // 4, size // 2
    if name == "centre":
        m[..., q:size - q, q:size - q] = 1
    elif name == "left":
        m[..., :, :h] = 1
    elif name == "bottom":
        m[..., h:, :] = 1
    else:
        raise ValueError(f"unknown mask {name!r}; choose one of {', '.join(MASKS)}")
    return m


def region_means(images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the mean of the masked pixels (m = 1) and of the known ones (m = 0), all channels."""
    m = mask.expand_as(images).double()
    x = images.double()
    return (x * m).flatten(1).sum(1) / m.flatten(1).sum(1), (x * (1 - m)).flatten(1).sum(1) / (1 - m).flatten(1).sum(1)


def seam_jump(images: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean |x_p - x_q| over neighbouring pixel pairs (p, q) across the mask's edge (one known, one
    filled; horizontal and vertical pairs, every channel): how visible the seam is."""
    x, m = images.double(), mask.expand_as(images)
    jumps = [(x[..., :, 1:] - x[..., :, :-1]).abs()[m[..., :, 1:] != m[..., :, :-1]],
             (x[..., 1:, :] - x[..., :-1, :]).abs()[m[..., 1:, :] != m[..., :-1, :]]]
    return float(torch.cat(jumps).mean())


def known_error(output: torch.Tensor, inputs_u8: torch.Tensor, mask: torch.Tensor) -> int:
    """max |uint8(output) - input| over the known pixels (m = 0): 0 when inpainting keeps them."""
    diff = (datasets.to_uint8(output).int() - inputs_u8.int()).abs()
    return int(diff[(mask.expand_as(diff) == 0)].max())


def accuracy(judge, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The judge's class accuracy on float images (through uint8, as saved)."""
    from ..evaluation.metrics import classify

    _, preds = classify(judge.net, datasets.to_uint8(images))
    return float((torch.as_tensor(preds) == labels).double().mean())


def measures(output: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, judge) -> dict:
    """How the filled region (m = 1) of `output` agrees with the known region of the same image, and
    with the input's hidden truth there."""
    filled, _ = region_means(output.clamp(-1, 1), mask)
    truth, known = region_means(inputs, mask)
    return dict(filled_known_r=pearson(filled, known), filled_mean_error=float((filled - truth).abs().mean()),
                seam_jump=seam_jump(output.clamp(-1, 1), mask), accuracy=accuracy(judge, output, labels))


def run(out: Path, models_dir: Path, *, sizes: dict, resample=RESAMPLE, masks=MASKS, seed: int = 0,
        device: str | None = None, threads: int | None = None, judge=None) -> dict:
    """Load (or train) the fixed run, inpaint `sizes["images"]` images under each mask with each
    resample setting, and write inpaint.json and inpaint_grid.png to `out`. `judge` (default: the
    built-in set's metrics.Judge, cached on disk) is anything with the classifier `net` and its
    held-out `accuracy`."""
    from ..evaluation import metrics

    elapsed = timer()
    data = input_images(sizes["images"], seed)
    inputs_u8, labels = data.images, data.labels
    inputs = datasets.to_float(inputs_u8)
    tm, settings = brightness_main.main_trained("fixed", models_dir, max_steps=sizes["main_steps"], seed=seed,
                                                schedule=SCHEDULE, device=device, threads=threads,
                                                    grid_samples=sizes["grid"])
    judge = judge or metrics.Judge.for_dataset("builtin", resolution=tm.image_size)
    unguided = dict(sampler_kwargs(settings), guidance=1.0, guidance_rescale=0.0, guidance_interval=None)
    scale = dict(device=str(next(tm.model.parameters()).device), sample_batch=sizes["batch"], bf16=False)
    null = torch.full_like(labels, tm.num_classes)
    order = image_brightness(inputs).argsort()
    show = order[torch.linspace(0, len(order) - 1, sizes["show"]).round().long()]  # darkest -> brightest

    rows, cells = [], {}
    print(f"{'mask':6s} {'setting':22s} {'known':>5s} {'r(filled, known)':>16s} {'mean error':>10s} {'seam':>6s} "
          f"{'accuracy':>8s} {'seconds':>7s}")
    for name in masks:
        mask = make_mask(name, tm.image_size)
        masked = inputs * (1 - mask)  # the hidden region mid-grey: what the known pixels alone tell
        rows.append(dict(mask=name, setting="real", **measures(inputs, inputs, labels, mask, judge)))
        rows.append(dict(mask=name, setting="known only (mask grey)", accuracy=accuracy(judge, masked, labels)))
        print_row(rows[-2])
        print_row(rows[-1])
        cells[name] = [inputs[show], masked[show]]
        for r, steps in setups(resample, unguided["steps"]):
            clock = timer()
            x = draw(tm, len(inputs), scale, labels=null, seed=seed + 1, desc=f"{name} resample {r}, {steps} steps", init=inputs,
                     mask=mask, resample=r, **dict(unguided, steps=steps))
            rows.append(dict(mask=name, setting=f"resample {r}, {steps} steps", resample=r, steps=steps, seconds=clock(),
                             known_max_abs_diff=known_error(x, inputs_u8, mask), **measures(x, inputs, labels, mask, judge)))
            cells[name].append(x[show])
            print_row(rows[-1])

    base = {row["mask"]: row["seconds"] for row in rows if row.get("resample") == 0 and row["steps"] == unguided["steps"]}
    for row in rows:
        if "resample" in row and base.get(row["mask"]):
            row["seconds_ratio"] = row["seconds"] / base[row["mask"]]
    result = dict(experiment="inpaint", schedule=SCHEDULE, model=Path(tm.folder).name, main_steps=sizes["main_steps"],
                  sampling=unguided, num_images=len(inputs), seed=seed, masks=list(masks), resample=list(resample),
                  judge_accuracy=judge.accuracy, train_seconds=tm.train_seconds, trained_now=tm.trained_now, rows=rows,
                  known_max_abs_diff=max(row["known_max_abs_diff"] for row in rows if "resample" in row),
                  threads=torch.get_num_threads(), figures=["inpaint_grid.png"])
    labels_ = ["input", "masked"] + [f"resample {r}" + ("" if n == unguided["steps"] else f"\n{n} steps")
                                     for r, n in setups(resample, unguided["steps"])]
    grid_figure([[cells[m][i] for m in masks] for i in range(len(labels_))], labels_, [f"mask: {m}" for m in masks],
                nrow=len(show), path=out / "inpaint_grid.png", cell_size=(len(show) * 0.55, 0.95), dpi=110)
    result["seconds"] = elapsed()
    write_json(out, "inpaint", result)
    return result


def setups(resample, steps: int) -> list[tuple[int, int]]:
    """(resample, steps) of each run: every resample setting at the run's steps, then, when one
    resamples, resample 0 with as many network calls as the most (r + 1 per step): the control that
    tells resampling from mere extra compute."""
    runs = [(r, steps) for r in resample]
    most = max(resample)
    return runs + ([(0, steps * (most + 1))] if most else [])


def print_row(row: dict) -> None:
    """One line of the table (a measure a row lacks is blank)."""
    def cell(key, fmt, width):
        return f"{row[key]:{fmt}}".rjust(width) if key in row else " " * width
    print(f"{row['mask']:6s} {row['setting']:22s} {cell('known_max_abs_diff', 'd', 5)} {cell('filled_known_r', '+.3f', 16)} "
          f"{cell('filled_mean_error', '.3f', 10)} {cell('seam_jump', '.3f', 6)} {cell('accuracy', '.1%', 8)} "
          f"{cell('seconds', '.1f', 7)}")


def main(argv=None):
    p = experiment_parser("inpaint", __doc__.split("\n\n")[0], trained=False)
    brightness_main.add_run_flags(p, SIZES, "cache of trained models (main-fixed-scaled_linear; --scale test: its test-scale folder)",
                                  "seed of the model's training, the images and the noises")
    p.add_argument("--images", type=int, help="images to inpaint under each mask (default: the scale's, 200)")
    p.add_argument("--resample", type=int, nargs="+", default=list(RESAMPLE),
                   help="RePaint's extra passes per step to compare (0: none)")
    p.add_argument("--masks", nargs="+", choices=MASKS, default=list(MASKS), help="which masks")
    p.add_argument("--main-steps", type=int, help="training steps of the fixed run (default: the scale's, 2000)")
    a = p.parse_args(argv)
    sizes = brightness_main.run_sizes(a, SIZES, ("images", "main_steps"))
    sizes["show"] = min(sizes["show"], sizes["images"])
    if min(a.resample) < 0:
        fail(f"--resample counts extra passes per step: 0 or more, got {min(a.resample)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    models = Path(a.models) / ("test-scale" if a.scale == "test" else "")  # a 2-step run never where the default looks
    try:
        res = run(Path(a.out), models, sizes=sizes, resample=tuple(a.resample), masks=tuple(a.masks),
                  seed=a.seed, device=a.device, threads=a.threads)
    except UsageError as err:
        fail(str(err))
    print(f"known pixels: max |output - input| after uint8 {res['known_max_abs_diff']}; wrote {a.out}/inpaint.json and "
          f"inpaint_grid.png in {res['seconds']:.0f} s")
    publish_figures(Path(a.out), a.figures_dir, res["figures"])


if __name__ == "__main__":
    main()
