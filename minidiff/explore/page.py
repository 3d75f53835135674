"""`minidiff explore CKPT --out explore.html`: one self-contained web page per checkpoint.

    minidiff explore runs/NAME/checkpoint.pt --out explore.html     # four panels
    minidiff explore --out schedules.html                          # no checkpoint: the schedule panels

Every image is a data: URI and every number and the script are inline; the page's Content-Security-
Policy forbids it to fetch anything, so it works from disk, offline, as an attachment. Its controls
are <input type="range"> sliders and buttons. docs/11_explore.md shows it and says what to look for.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from pathlib import Path

import torch

from ..evaluation.measures import wasserstein1
from ..training.cli import HelpFormatter, add_common_flags, resolve_device
from ..training.runtime import require, run_command
from .forward import FLAWED, NAMES, forward_panel, schedules_panel
from .reverse import BATCH, STEPS, reverse_panel
from .script import SCRIPT

CSP = "default-src 'none'; img-src data:; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 980px; margin: 1em auto; padding: 0 1em; color: #222; }
section { border-top: 1px solid #ccc; padding: 0.4em 0 1em; }
canvas.pixels { image-rendering: pixelated; height: 96px; border: 1px solid #999; }
figure { display: inline-block; width: 400px; margin: 0.5em 1.5em 0.5em 0; vertical-align: top; }
button[aria-pressed="true"] { background: #1f77b4; color: #fff; }
input[type=range] { width: 420px; vertical-align: middle; }
.swatch { display: inline-block; width: 1em; height: 0.7em; margin-right: 0.4em; }
code { background: #f3f3f3; padding: 0 0.2em; } td, th { padding: 0 0.8em 0 0; text-align: left; }
"""


def body(reverse: dict | None, forward: dict, name: str) -> str:
    """The page's HTML without its data and script."""
    flawed = "".join(f'<button type="button" data-flawed="{k}">{html.escape(NAMES[k])}</button>' for k in FLAWED)
    figures = "".join(f"""<figure><canvas class="pixels" id="fwd-{w}"></canvas><figcaption><b id="name-{w}"></b><br>
      alpha_bar = <span id="ab-{w}"></span>, SNR = <span id="snr-{w}"></span>, log-SNR = <span id="logsnr-{w}"></span><br>
      leaked correlation of brightness: <span id="corr-{w}"></span></figcaption></figure>""" for w in ("flawed", "zero"))
    parts = [f"""<h1>minidiff explore: {html.escape(name)}</h1>
<section id="forward"><h2>1. Forward process</h2>
<p>Noise is added to {html.escape(forward['what'])} as x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (docs/01_forward_process.md).
At the last step t = T a flawed schedule still holds some of the image: its brightness leaks into x_T, which the model then learns to read (docs/02_snr_leakage.md).
The leaked correlation is that of each image's mean brightness with the mean of its x_t, over {len(forward['brightness'])} images
(chance alone gives about &plusmn;{1 / math.sqrt(len(forward['brightness'])):.2f}; with no signal at all it is written 0).</p>
<p><label for="t">timestep t (0 to T = 999)</label> <input type="range" id="t" min="0" max="999" step="1" value="999">
t = <output id="t-value" for="t"></output></p>
<p>flawed schedule: {flawed}</p>{figures}</section>
<section id="schedules"><h2>2. Schedules</h2>
<p>log-SNR(t) = log(alpha_bar / (1 - alpha_bar)) of four schedules as made (solid) and rescaled to zero terminal SNR by Lin et al.'s Algorithm 1 (dashed; the flow is zero-SNR as made).
A rescaled curve falls to -inf at t = T (drawn at the bottom). The black line is the forward slider's t (docs/02_snr_leakage.md, docs/09_flow_matching.md).</p>
<canvas id="schedule-plot" width="900" height="320"></canvas><table id="schedule-table"></table></section>"""]
    if reverse is None:
        parts.append('<section id="reverse"><h2>3. Reverse process and 4. brightness</h2><p>No checkpoint given: '
                     "<code>minidiff explore CKPT --out page.html</code> adds a trained model's sampling.</p></section>")
        return "\n".join(parts)
    guided = """<p>guidance weight w: <span id="guidance-buttons"></span> rescale phi: <span id="rescale-buttons"></span></p>""" \
        if reverse["conditional"] else ""
    parts.append(f"""<section id="reverse"><h2>3. Reverse process of this checkpoint</h2>
<p>The first {reverse['shown']} of {reverse['num']} samples (seed {reverse['seed']}) from noise to image: x_t at every step and the x0 the model predicts from it.
Leading spacing never visits t = T (docs/04_sample_steps.md); guidance pushes towards the class and rescale phi keeps its spread (docs/06_guidance.md); samplers: docs/05_ddpm_ddim.md, docs/08_fast_samplers.md.</p>
<p>sampler: <span id="sampler-buttons"></span> steps: <span id="steps-buttons"></span> spacing: <span id="spacing-buttons"></span></p>
{guided}<p id="choice-note"></p>
<p><label for="step">sampling step</label> <input type="range" id="step" min="0" max="1" step="1" value="0">
step <output id="step-value" for="step"></output>; <span id="rev-t"></span></p>
<figure><canvas class="pixels" id="rev-xt"></canvas><figcaption>x_t at this step</figcaption></figure>
<figure><canvas class="pixels" id="rev-x0"></canvas><figcaption>predicted x0 at this step<br>
  its mean brightness: <span id="rev-brightness"></span></figcaption></figure>
<p>spread (std) of the mean brightness of all {reverse['num']} predicted x0 at this step: <span id="rev-spread"></span>
(the data's: <span id="data-spread"></span>); where it stops growing, the samples' brightness is decided.</p>
<p>setting: <span id="rev-label"></span><br>the same images: <code id="rev-command"></code></p></section>
<section id="brightness"><h2>4. Brightness</h2>
<p>The mean brightness of all {reverse['num']} samples (red) against the data's (grey) for the chosen setting: a flawed schedule or a bad sampler squeezes it towards grey (Lin et al. Figure 1; docs/07_brightness.md).</p>
<canvas id="hist" width="600" height="220"></canvas><p id="hist-text"></p></section>""")
    return "\n".join(parts)


def inline_json(data) -> str:
    """JSON to sit inside a <script> element: "</" written as "<\\/" so no string can end the element."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def build_page(checkpoint: str | Path | None = None, *, num: int = 32, shown: int = 4, seed: int = 0,
               steps=STEPS, device="cpu", progress: bool = True) -> str:
    """The page's HTML (a string): the schedule panels, and with a checkpoint its sampling too."""
    from ..training.sample import load_run

    model = config = reverse = None
    if checkpoint is not None:
        model, config, report = load_run(checkpoint, device=device)
    size = model.config["image_size"] if model is not None else 32
    channels = model.config["in_channels"] if model is not None else 3
    forward = forward_panel(config, resolution=size, channels=channels, shown=shown, seed=seed)
    if model is not None:
        reverse = reverse_panel(model, config, report, num=num, shown=shown, seed=seed, steps=steps,
                                device=device, progress=progress)
        for d in reverse["settings"].values():
            d["w1"] = round(wasserstein1(d["brightness"], forward["brightness"]), 4)
    data = dict(schedules=schedules_panel(), forward=forward, reverse=reverse)
    name = str(checkpoint) if checkpoint is not None else "noise schedules"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>minidiff explore: {html.escape(name)}</title><style>{STYLE}</style></head>
<body data-drawn="0">
{body(reverse, forward, name)}
<script>const DATA = {inline_json(data)};</script>
<script>{SCRIPT}</script>
</body></html>
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="minidiff explore", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", nargs="?", help="a checkpoint.pt written by train_cifar.py (none: schedules only)")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--num", type=int, default=32, help="samples per setting (the brightness histogram)")
    p.add_argument("--shown", type=int, default=4, help="samples shown step by step")
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS),
                   help="the numbers of sampling steps offered (and the checkpoint's own)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest on a CPU shared with other jobs)")
    add_common_flags(p)  # --seed, --device
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    require(1 <= args.num <= BATCH and 1 <= args.shown <= 8,
            f"--num must lie in 1..{BATCH} (one batch of minidiff sample) and --shown in 1..8")
    require(all(1 <= n <= 1000 for n in args.steps), "--steps: each number of steps must lie in 1..1000")
    require(args.checkpoint is None or Path(args.checkpoint).is_file(), f"{args.checkpoint}: no such file")
    out = Path(args.out)
    require(not out.is_dir(), f"--out {out} is a folder; give a file name")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device) if args.checkpoint else "cpu"
    page = build_page(args.checkpoint, num=args.num, shown=args.shown, seed=args.seed, steps=args.steps, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); open it in a browser, no network needed")
    if out.stat().st_size > 10e6:  # what an LMS or a mail attachment may refuse
        print("note: over 10 MB; --shown 2 or fewer --steps make it smaller")
    return out


def main(argv=None) -> Path:
    return run_command(run, parse_args(argv))

