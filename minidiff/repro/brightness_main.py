"""Flawed against fixed on the main job's own recipe: `minidiff repro brightness --recipe main`.

The brightness experiment's small models (brightness.py) isolate each fix. This one asks the
course's central question of the model a student actually trains: `python train_cifar.py` with
every default (zero terminal SNR, v prediction, trailing steps), against the same command with Lin
et al.'s fixes turned off and nothing else changed:

    fixed    python train_cifar.py --max-steps N
    flawed   python train_cifar.py --max-steps N --no-zero-snr --prediction eps --spacing leading --clip-x0

`--clip-x0` clips each predicted x0 to [-1, 1] while sampling, as DDPM's own sampler does: an eps
model's x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) multiplies the network's error by up to 1 / sqrt(a),
107 at the first of 25 leading steps, and unclipped the flawed run collapses instead of showing the
squeeze (docs/07). The fixed run's v prediction needs no clipping.

Both runs train for the same number of steps with the same seed, timestep law and network, and
both are judged by the same report (minidiff.evaluation.metrics: class accuracy, Frechet distance, brightness
W1, and the shares of near-black and near-white backgrounds beside the real images'), each drawn
with the settings its run would use. The figure puts the two runs' samples side by side, ordered by
brightness, under the real images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .common import brightness_strips, write_json

RUNS = {
    "fixed": dict(),
    "flawed": dict(zero_snr=False, prediction="eps", spacing="leading", clip_x0=True),
}
FLAGS = {"fixed": "", "flawed": "--no-zero-snr --prediction eps --spacing leading --clip-x0"}


def run(out: Path, models_dir: Path, *, max_steps: int, num_samples: int, seed: int = 0,
        schedule: str = "linear", device: str | None = None, threads: int | None = None, judge=None) -> dict:
    """Train (or finish) both runs in models_dir/main-{fixed,flawed}, judge `num_samples` of each
    (with `judge`, default the built-in set's metrics.Judge), and write brightness_main.json and
    brightness_main.png to `out`."""
    from ..evaluation import metrics
    from ..training.sample import generate

    results, images = {}, {}
    suffix = run_suffix(schedule)
    for name in RUNS:
        model, config, settings = main_model(name, models_dir, max_steps=max_steps, seed=seed, schedule=schedule,
                                             device=device, threads=threads)
        judge = judge or metrics.Judge.for_dataset("builtin", resolution=config["resolution"])
        labels = torch.arange(num_samples) % len(judge.real.classes)
        images[name] = generate(model, config, num_samples, labels=labels, seed=seed + 777, progress=False,
                                device=str(next(model.parameters()).device), **settings)
        score = judge.score(images[name], labels)
        results[name] = dict(score, sampling=settings, flags=main_flags(name, schedule), steps=max_steps)
        print(metrics.format_table(score, judge.calibration(score["num"]), judge.describe()))
    calibration = judge.calibration(num_samples)
    result = dict(experiment="brightness --recipe main", max_steps=max_steps, num_samples=num_samples, seed=seed,
                  schedule=schedule, last_step_mean_snr=last_step_mean_snr(schedule),
                  runs=results, calibration=calibration,
                  w1_ratio=results["flawed"]["brightness_w1"] / max(results["fixed"]["brightness_w1"], 1e-12))
    name = "brightness_main" + suffix
    result["figure"] = f"{name}.png"
    write_json(out, name, result)
    plot(result, images, judge.real.other[0], out / result["figure"])
    return result


def run_suffix(schedule: str) -> str:
    """What a run's folder name adds for a schedule other than the recipe's: main-fixed-scaled_linear."""
    return "" if schedule == "linear" else f"-{schedule}"


def main_flags(name: str, schedule: str = "linear") -> str:
    """The flags of `python train_cifar.py` beyond --max-steps that make run `name` (fixed or flawed)."""
    schedule_flag = "" if schedule == "linear" else f"--schedule {schedule}"
    return (schedule_flag + " " + FLAGS[name]).strip()


def main_model(name: str, models_dir: Path, *, max_steps: int = 2000, seed: int = 0, schedule: str = "linear",
               device: str | None = None, threads: int | None = None, grid_samples: int | None = None):
    """The main recipe's run `name` (a key of RUNS) in models_dir/main-NAME[-SCHEDULE]: trained, or
    finished from where it stopped, or loaded when it has reached `max_steps` (then nothing is
    written). `grid_samples` changes only the size of the grid drawn when training ends (the
    recipe's 100; fewer for a quick test). Returns `training.sample.load_run`'s (EMA model, config,
    the sampler settings of the run's own report)."""
    from ..training import train as T
    from ..training.sample import load_run

    cfg = T.TrainConfig(max_steps=max_steps, minutes=0, seed=seed, device=device, threads=threads, schedule=schedule,
                        judge_samples=0, sample_every=0, out=str(Path(models_dir) / f"main-{name}{run_suffix(schedule)}"),
                        **RUNS[name])
    cfg.num_samples = grid_samples or cfg.num_samples
    ckpt = Path(cfg.out) / T.CHECKPOINT
    cfg.resume = ckpt.exists()
    print(f"== {name}: python train_cifar.py --max-steps {max_steps} {main_flags(name, schedule)}".rstrip())
    try:
        T.train(cfg)
    except T.UsageError as err:  # a model of an older recipe in --models: say which flag to change
        raise T.UsageError(f"{err} Here: pass another --models folder ({models_dir} holds {Path(cfg.out).name} "
                           "from other settings).") from None
    return load_run(ckpt, device=cfg.resolved().device)


def main_trained(name: str, models_dir: Path, **kwargs):
    """`main_model`'s run as the experiments' common.TrainedModel (what common.draw samples), with
    the sampler settings of its report: (TrainedModel, settings). `kwargs` are main_model's."""
    import json
    import math

    from ..training.runtime import CHECKPOINT, load_checkpoint
    from ..training.sample import schedule_of
    from .common import ModelSpec, TrainedModel

    folder = Path(models_dir) / f"main-{name}{run_suffix(kwargs.get('schedule', 'linear'))}"
    ckpt = folder / CHECKPOINT
    trained_now = not ckpt.exists() or load_checkpoint(ckpt)["step"] < kwargs.get("max_steps", 2000)
    model, config, settings = main_model(name, models_dir, **kwargs)
    log = folder / "metrics.jsonl"  # the training's own clock: elapsed_s of its last line
    lines = log.read_text().splitlines() if log.exists() else []
    seconds = json.loads(lines[-1]).get("elapsed_s", math.nan) if lines else math.nan
    spec = ModelSpec(folder.name, schedule=config["schedule"], zero_snr=config["zero_snr"], prediction=config["prediction"])
    tm = TrainedModel(spec, model, schedule_of(config), model.config["num_classes"], model.config["image_size"],
                      str(folder), seconds, trained_now)
    return tm, settings


def report_samples() -> int:
    """How many samples the main job's own report scores (the built-in recipe's judge_samples): the
    comparison's default, so that its numbers carry the same sampling noise as a run's report."""
    from ..training.config import RECIPES

    return RECIPES["builtin"]["judge_samples"]


def last_step_mean_snr(schedule: str, image_shape=(3, 32, 32), brightness_var: float = 1.8 ** 2 / 12) -> float:
    """The SNR of an image's mean brightness at the last training step without the rescale:
    alpha_bar_T / (1 - alpha_bar_T) * Var(m) * d, for d pixel values whose noise averages down to
    variance 1 / d, and the built-in set's mean brightness m uniform on [-0.9, 0.9]. Far below 1
    the last step hides the brightness and there is little leak for a model to learn to rely on;
    above 1 it shows it, which is Lin et al.'s flaw."""
    from ..schedules import Schedule

    ab = Schedule.make(schedule, 1000, zero_snr=False).alphas_cumprod[-1].item()
    d = image_shape[0] * image_shape[1] * image_shape[2]
    return ab / (1 - ab) * brightness_var * d


def plot(result: dict, images: dict, real: torch.Tensor, path: Path, k: int = 16) -> None:
    """Rows: real images, then each run, k images at evenly spaced brightness quantiles."""
    real_row = result["calibration"]["real"]
    rows = [(f"real images\nnear-black {real_row['black_backgrounds']:.0%}, near-white {real_row['white_backgrounds']:.0%}",
             real)]
    for name, x in images.items():
        r = result["runs"][name]
        rows.append((f"{name}: W1 {r['brightness_w1']:.3f}, class acc. {r['accuracy']:.0%}\n"
                     f"near-black {r['black_backgrounds']:.0%}, near-white {r['white_backgrounds']:.0%}", x))
    sched = "" if result.get("schedule", "linear") == "linear" else f", {result['schedule']} schedule"
    brightness_strips(rows, path, f"the main job's recipe{sched}, {result['max_steps']:,} steps: darkest -> brightest", k,
                      row_height=0.85, label_width=3.6)


def add_run_flags(p, sizes: dict, models_help: str, seed_help: str) -> None:
    """The flags of the experiments that reuse the main recipe's runs (img2img, inpaint): their own run
    sizes (--scale), the model cache, the seed, the device and the CPU threads."""
    p.add_argument("--scale", choices=sorted(sizes), default="cpu", help="run size: cpu (default, minutes), test (seconds)")
    p.add_argument("--models", default="runs/repro/models", help=models_help)
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--device", default=None, help="torch device (default: cuda, then mps, then cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest on a CPU shared with other jobs)")


def run_sizes(args, sizes: dict, keys: tuple) -> dict:
    """The scale's sizes (`sizes[args.scale]`) with the command line's overrides of `keys` applied,
    each at least 2 (one line and exit 2 otherwise)."""
    from ..training.cli import fail

    chosen = dict(sizes[args.scale])
    for key in keys:
        value = getattr(args, key)
        if value is not None and value < 2:
            fail(f"--{key.replace('_', '-')} must be at least 2, got {value}")
        chosen[key] = value or chosen[key]
    return chosen
