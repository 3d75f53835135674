"""Image-to-image (SDEdit) from strength 0.2 to 1: at zero terminal SNR full strength forgets the input; a flawed schedule leaks its brightness.

SDEdit (Meng et al. 2022) edits an image x by noising it to the timestep t_S = round(S T) - 1 of a
strength S and sampling back from there (`samplers.sample(..., init=x, strength=S)`):

    x_{t_S} = sqrt(a_{t_S}) x + sqrt(1 - a_{t_S}) z,    z ~ N(0, I)

At S = 1 the start is the last training step. On a zero-terminal-SNR schedule a_{T-1} = 0, so the
start is z itself, whatever the input: full-strength editing *is* generation, bit for bit. On
Stable Diffusion's scaled-linear schedule sqrt(a_{T-1}) = 0.068 of the input survives; an image's
mean brightness m averages its noise down over d = 3,072 values, so its SNR at the last step is
a/(1 - a) Var(m) d = 3.9 (brightness_main.last_step_mean_snr), and a model trained to read it
carries the input's brightness into a "generated" image (Lin et al. Sec. 3; Set B question 5).

The models are the main job's recipe trained fixed and flawed on the scaled-linear schedule, the
pair of `minidiff repro brightness --recipe main --main-schedule scaled_linear` (trained here if
the cache lacks them; brightness_main.py), each sampled with the settings of its run's own report:
the flawed one with leading steps and x0 clipped to [-1, 1], which are part of its flaw. Inputs:
held-out built-in images (brightness uniform over [-0.9, 0.9]), each edited with its own noise and
its own class label. Measured at each strength: the correlation r between input and output mean
brightness; and the exact check, two different inputs at S = 1 with one shared noise.

    minidiff repro img2img                  # 500 inputs, strengths 0.2 to 1, both models
    minidiff repro img2img --scale test     # seconds: 12 inputs, models of 2 training steps
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..samplers import start_timestep
from ..training import data as datasets
from ..training.cli import fail
from ..training.sample import sampler_kwargs
from ..training.train import UsageError
from . import brightness_main
from .common import draw, experiment_parser, image_brightness, mosaic, publish_figures, pyplot, save_figure, timer, write_json

SCHEDULE = "scaled_linear"   # Stable Diffusion's: its last step still shows an image's brightness
RUNS = {"fixed": "zero SNR, v, trailing", "flawed": "SD's a_T, eps, leading, x0 clipped"}
STRENGTHS = (0.2, 0.5, 0.8, 0.9, 0.95, 1.0)
INPUT_SEED = 2_000_003       # held-out inputs: far from the seeds the models (0) and the judge (1,000,003+) use
SIZES = {"cpu": dict(inputs=500, main_steps=2000, grid=None, show=8, batch=250),
         "test": dict(inputs=12, main_steps=2, grid=4, show=4, batch=12)}


def input_images(n: int, seed: int = 0) -> datasets.ImageSet:
    """n held-out built-in images (uint8), brightness uniform over [-0.9, 0.9], balanced classes."""
    return datasets.builtin_shapes(n, seed=INPUT_SEED + seed, resolution=32)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """r = cov(a, b) / (sd(a) sd(b)), in float64 (nan when either is constant)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def slope(x: torch.Tensor, y: torch.Tensor) -> float:
    """Least-squares slope of y on x: cov(x, y) / var(x) (how much of the input's brightness passes)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return float((x * y).sum() / (x * x).sum())


def leak_at_start(inputs: torch.Tensor, ab: float, seed: int) -> dict:
    """What the start of an edit shows of the input's mean m, for alpha_bar = ab at its first step:
    the mean of sqrt(ab) x + sqrt(1 - ab) z has SNR = ab / (1 - ab) Var(m) d (z's mean has variance
    1/d), so its correlation with m is sqrt(SNR / (1 + SNR)); and that correlation measured on
    these inputs with one noise draw. A model can carry no more of m than its start holds."""
    m = inputs.double().flatten(1).mean(1)
    d = inputs[0].numel()
    snr = ab / (1 - ab) * float(m.var()) * d
    z = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    start = math.sqrt(ab) * inputs.double() + math.sqrt(1 - ab) * z
    return dict(sqrt_alpha_bar_T=math.sqrt(ab), mean_snr_T=snr, r_predicted=math.sqrt(snr / (1 + snr)),
                r_measured=pearson(start.flatten(1).mean(1), m))


def edit(tm, settings: dict, inputs: torch.Tensor, labels: torch.Tensor, strength: float, sizes: dict,
         seed: int, desc: str = "") -> torch.Tensor:
    """SDEdit of float `inputs` at `strength` with the run's report settings (common.draw: each input
    its own noise, the same seed the same noises)."""
    scale = dict(device=str(next(tm.model.parameters()).device), sample_batch=sizes["batch"], bf16=False)
    return draw(tm, len(inputs), scale, labels=labels, seed=seed, desc=desc, init=inputs, strength=strength,
                **sampler_kwargs(settings))


def strength_one_gap(tm, settings: dict, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, sizes: dict,
                     seed: int) -> float:
    """max |edit(a) - edit(b)| at strength 1 with one shared noise and the same labels: exactly 0
    at zero terminal SNR, where the start sqrt(0) x + sqrt(1) z = z forgets the input."""
    outs = [edit(tm, settings, x, labels, 1.0, sizes, seed, desc="shared noise") for x in (a, b)]
    return float((outs[0] - outs[1]).abs().max())


def run(out: Path, models_dir: Path, *, sizes: dict, strengths=STRENGTHS, seed: int = 0,
        device: str | None = None, threads: int | None = None) -> dict:
    """Load (or train) both runs, edit `sizes["inputs"]` images at every strength, and write
    img2img.json, img2img_grid.png and img2img_r.png to `out`."""
    elapsed = timer()
    data = input_images(sizes["inputs"], seed)
    inputs, labels = datasets.to_float(data.images), data.labels
    b_in = image_brightness(inputs)
    order = b_in.argsort()
    show = order[torch.linspace(0, len(order) - 1, sizes["show"]).round().long()]  # darkest -> brightest
    # the exact check: the darkest half of the shown inputs against the brightest half, one label
    half = sizes["show"] // 2
    pair_a, pair_b, pair_y = inputs[show[:half]], inputs[show.flip(0)[:half]], labels[show[:half]]

    rows, shown = {}, {}
    for name in RUNS:
        tm, settings = brightness_main.main_trained(name, models_dir, max_steps=sizes["main_steps"], seed=seed,
                                                    schedule=SCHEDULE, device=device, threads=threads,
                                                    grid_samples=sizes["grid"])
        ab_T = float(tm.schedule.alphas_cumprod[-1])
        entry = dict(run=Path(tm.folder).name, flags=brightness_main.main_flags(name, SCHEDULE), sampling=settings,
                     train_seconds=tm.train_seconds, trained_now=tm.trained_now,
                     leak=leak_at_start(inputs, ab_T, seed), strengths=[])
        for s in strengths:
            clock = timer()
            x = edit(tm, settings, inputs, labels, s, sizes, seed + 1, desc=f"{name} S={s:g}")
            b_out = image_brightness(x)
            t_s = start_timestep(tm.schedule.num_timesteps, s)
            start = leak_at_start(inputs, float(tm.schedule.alphas_cumprod[t_s]), seed)
            entry["strengths"].append(dict(strength=s, start_timestep=t_s, r=pearson(b_in, b_out), slope=slope(b_in, b_out),
                                           output_brightness_std=float(b_out.std()), start_mean_snr=start["mean_snr_T"],
                                           start_r_predicted=start["r_predicted"], seconds=clock()))
            shown[(name, s)] = x[show]
            print(f"{name:6s} strength {s:4.2f}: r {entry['strengths'][-1]['r']:+.3f}, slope "
                  f"{entry['strengths'][-1]['slope']:+.3f} ({entry['strengths'][-1]['seconds']:.0f} s)")
        entry["strength_one_max_abs_difference"] = strength_one_gap(tm, settings, pair_a, pair_b, pair_y, sizes, seed + 2)
        rows[name] = entry

    n = len(inputs)
    r_at_1 = {k: next((e["r"] for e in v["strengths"] if e["strength"] == 1.0), math.nan) for k, v in rows.items()}
    result = dict(experiment="img2img", schedule=SCHEDULE, main_steps=sizes["main_steps"], num_inputs=n, seed=seed,
                  strengths=list(strengths), input_brightness=dict(min=float(b_in.min()), max=float(b_in.max()),
                                                                  std=float(b_in.std())),
                  r_noise_sd=1 / math.sqrt(max(n - 1, 1)), r_at_strength_1=r_at_1, runs=rows,
                  threads=torch.get_num_threads(), figures=["img2img_grid.png", "img2img_r.png"])
    plot_grid(result, inputs[show], shown, out / "img2img_grid.png")
    plot_r(result, out / "img2img_r.png")
    result["seconds"] = elapsed()
    write_json(out, "img2img", result)
    return result


def plot_grid(result: dict, inputs: torch.Tensor, shown: dict, path: Path) -> None:
    """Rows: the inputs (darkest -> brightest), then each run's outputs of them at each strength."""
    rows = [("inputs", inputs)]
    for name, entry in result["runs"].items():
        rows += [(f"{name}, S = {e['strength']:g}  (r {e['r']:+.2f})", shown[(name, e["strength"])])
                 for e in entry["strengths"]]
    plt = pyplot()
    k = len(inputs)
    fig, axes = plt.subplots(len(rows), 1, figsize=(k * 0.5 + 2.2, len(rows) * 0.6))
    for ax, (label, images) in zip(axes, rows):
        ax.imshow(mosaic(images, nrow=k).numpy(), interpolation="nearest")
        ax.set(xticks=[], yticks=[])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    axes[0].set_title(f"SDEdit on {result['schedule']}: each column one input, its own noise", fontsize=8)
    save_figure(fig, path, dpi=110)


def plot_r(result: dict, path: Path) -> None:
    """r(input brightness, output brightness) against strength for both runs, with the band that
    sampling noise alone reaches (|r| < 0.1) and the correlation the noised input itself holds at the start."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.axhspan(-0.1, 0.1, color="0.88", label="|r| < 0.1")
    for (name, entry), colour in zip(result["runs"].items(), ("tab:blue", "tab:red")):
        s = [e["strength"] for e in entry["strengths"]]
        ax.plot(s, [e["r"] for e in entry["strengths"]], "o-", color=colour, label=f"{name}: {RUNS[name]}")
        ax.plot(s, [e["start_r_predicted"] for e in entry["strengths"]], ":", color=colour, lw=1.2,
                label=f"{name}: r its start holds, sqrt(SNR/(1+SNR)) (sqrt(a_T) = {entry['leak']['sqrt_alpha_bar_T']:.3f})")
    ax.set(xlabel="strength S (start at t = round(1000 S) - 1)", ylabel="r(input, output brightness)",
           ylim=(-0.2, 1.05), title=f"{result['num_inputs']} inputs, main recipe on {result['schedule']}")
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def parse_strengths(values: list[float]) -> tuple:
    """--strengths: each in (0, 1], ascending order kept as given."""
    bad = [s for s in values if not 0.0 < s <= 1.0]
    if bad:
        fail(f"--strengths must lie in (0, 1] (1: start from the last step), got {bad[0]:g}")
    return tuple(values)


def main(argv=None):
    p = experiment_parser("img2img", __doc__.split("\n\n")[0], trained=False)
    brightness_main.add_run_flags(p, SIZES, "cache of trained models (main-fixed/flawed-scaled_linear; --scale test: its test-scale folder)",
                                  "seed of the models' training, the inputs and the noises")
    p.add_argument("--inputs", type=int, help="images to edit (default: the scale's, 500)")
    p.add_argument("--strengths", type=float, nargs="+", help=f"edit strengths (default: {' '.join(map(str, STRENGTHS))})")
    p.add_argument("--main-steps", type=int, help="training steps of each run (default: the scale's, 2000)")
    a = p.parse_args(argv)
    sizes = brightness_main.run_sizes(a, SIZES, ("inputs", "main_steps"))
    sizes["show"] = min(sizes["show"], sizes["inputs"] // 2 * 2)
    strengths = parse_strengths(a.strengths) if a.strengths else STRENGTHS
    if a.threads:
        torch.set_num_threads(a.threads)
    models = Path(a.models) / ("test-scale" if a.scale == "test" else "")  # a 2-step run never where the default looks
    try:
        res = run(Path(a.out), models, sizes=sizes, strengths=strengths, seed=a.seed, device=a.device,
                  threads=a.threads)
    except UsageError as err:
        fail(str(err))
    print("strength  " + "  ".join(f"r {name:>6s}" for name in RUNS))
    for i, s in enumerate(strengths):
        print(f"{s:8.2f}  " + "  ".join(f"{res['runs'][name]['strengths'][i]['r']:+8.3f}" for name in RUNS))
    print(f"r at strength 1: fixed {res['r_at_strength_1']['fixed']:+.3f}, flawed {res['r_at_strength_1']['flawed']:+.3f} "
          f"(sampling noise alone: sd {res['r_noise_sd']:.3f}); shared-noise difference at strength 1: fixed "
          f"{res['runs']['fixed']['strength_one_max_abs_difference']:.3g}, flawed "
          f"{res['runs']['flawed']['strength_one_max_abs_difference']:.3g}; wrote {a.out}/img2img.json and the figures "
          f"in {res['seconds']:.0f} s")
    publish_figures(Path(a.out), a.figures_dir, res["figures"])


if __name__ == "__main__":
    main()
