"""The reverse-process and brightness panels' numbers: a checkpoint's samples, step by step.

For every sampler setting the page offers (`offered_settings`) this draws one batch exactly as
`minidiff sample CKPT --num N --seed S` with those settings draws it (the same call of
`samplers.sample` that `training.sample.generate` makes, with its trajectory kept), so the page's
last step is that command's image, bit for bit in uint8. It keeps x_t and the predicted x0 at every
step for the first few samples, and the mean brightness of all N for the histogram.

The frames of one setting travel as one PNG: row r of step s sits at sprite row r (S + 1) + s, so
PNG's "up" filter predicts each step from the step before, and x_t, which changes little from one
step to the next, costs a fraction of its size as separate images (the page's size budget).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch

from ..samplers import sample
from ..training.data import to_uint8
from ..training.sample import class_labels, describe_sampling, guidance_interval_from, schedule_of

SAMPLER_NAMES = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)", "dpmpp_3m": "DPM-Solver++(3M)",
                 "ddpm": "DDPM", "heun": "Heun", "euler": "Euler (flow)"}
STEPS = (10, 25, 50)
SPACINGS = ("trailing", "leading")
GUIDANCES = (1.0, 7.5)  # and the checkpoint's own
RESCALES = (0.0, 0.7)   # phi of Lin et al. Algorithm 2, and the checkpoint's own
BATCH = 256  # `minidiff sample`'s --batch-size: up to this many samples are one draw of its generator


def _unique(values):
    return list(dict.fromkeys(values))


def offered_settings(report: dict, conditional: bool, steps=STEPS) -> list[dict]:
    """Every sampler setting the page offers, in two groups that each start from the checkpoint's own
    setting (the run's report's): DDIM, DPM-Solver++(2M) and its own sampler x `steps` (10, 25, 50) and its own
    steps x trailing, leading and its own spacing, at its own guidance; and, for a class-conditional
    model, guidance 1, its own weight and 7.5 (each guided weight with rescale 0, 0.7 and its own) at
    its own sampler, steps and spacing. The full product would cost some 20 times the sampling
    and the page's size budget. What is not chosen (guidance_from, clip_x0) stays the report's, as in
    `minidiff sample`."""
    out = [dict(report, sampler=sampler, steps=n, spacing=spacing)
           for sampler in _unique(["ddim", "dpmpp_2m", report["sampler"]])
           for n in sorted(set(steps) | {report["steps"]})
           for spacing in _unique([*SPACINGS, report["spacing"]])]
    if conditional:
        for w in sorted(set(GUIDANCES) | {report["guidance"]}):
            for phi in (sorted(set(RESCALES) | {report["guidance_rescale"]}) if w != 1.0 else [0.0]):
                if (w, phi) != (report["guidance"], report["guidance_rescale"]):
                    out.append(dict(report, guidance=w, guidance_rescale=phi))
    return out


def setting_key(s: dict) -> str:
    """The page's name of a setting, e.g. "ddim|25|trailing|2.5|0"."""
    return f"{s['sampler']}|{s['steps']}|{s['spacing']}|{s['guidance']:g}|{s['guidance_rescale']:g}"


def sample_command(s: dict, report: dict, num: int, seed: int) -> str:
    """The `minidiff sample` flags that draw the same batch (flags equal to the report's are left out)."""
    flags = [f"--{k.replace('_', '-')} {s[k]:g}" if isinstance(s[k], float) else f"--{k} {s[k]}"
             for k in ("sampler", "steps", "spacing", "guidance", "guidance_rescale") if s[k] != report[k]]
    return " ".join(["minidiff sample CKPT", *flags, f"--num {num}", f"--seed {seed}"])


@torch.no_grad()
def trajectory(model, config: dict, setting: dict, num: int, seed: int, device="cpu"):
    """(samples uint8 [num, C, H, W], xs, x0s, timesteps): one batch drawn as `generate(model, config, num,
    seed=seed, **setting)` draws it (its first batch: generator seed * 1_000_003), with x_t at every step
    (x_T first, the sample last) and the x0 predicted at every step."""
    if num > BATCH:
        raise ValueError(f"num = {num}: `minidiff sample` draws more than {BATCH} in batches of their own seeds")
    size, channels = model.config["image_size"], model.config["in_channels"]
    labels = class_labels(None, num, model.config["num_classes"])
    guided = setting["guidance"] != 1.0
    y = uncond = None
    if labels is not None:
        y = labels.to(device)
        uncond = torch.full_like(y, model.config["num_classes"])
    gen = torch.Generator(device).manual_seed(seed * 1_000_003)
    result = sample(model, (num, channels, size, size), schedule_of(config), prediction=config["prediction"],
                    steps=setting["steps"], spacing=setting["spacing"], sampler=setting["sampler"], eta=0.0,
                    y=y, uncond_y=uncond if guided else None, guidance=setting["guidance"],
                    guidance_rescale=setting["guidance_rescale"],
                    guidance_interval=guidance_interval_from(setting.get("guidance_from")),
                    clip_x0=setting.get("clip_x0", False), threshold=None, generator=gen, device=device,
                    progress=False, return_trajectory=True)
    return to_uint8(result.samples).cpu(), result.xs, result.x0s, result.timesteps


def png_data_uri(array: np.ndarray) -> str:
    """A uint8 [H, W, 3] (or [H, W]) array as a data:image/png URI (no colour profile: drawn as stored)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def interleaved_sprite(frames: list[torch.Tensor]) -> np.ndarray:
    """Frames (each uint8 [K, C, H, W]: K images side by side) as one [H (S+1), K W, 3] array whose
    row r (S+1) + s is row r of frame s; the page undoes it. Grey images are repeated to RGB."""
    stack = torch.stack(frames)                      # [S+1, K, C, H, W]
    if stack.shape[2] == 1:
        stack = stack.expand(-1, -1, 3, -1, -1)
    s1, k, c, h, w = stack.shape
    return stack.permute(3, 0, 1, 4, 2).reshape(h * s1, k * w, c).contiguous().numpy()


def brightness(images: torch.Tensor) -> list[float]:
    """Mean brightness of each uint8 image in [-1, 1] (evaluation.measures.brightness), 4 decimals."""
    return [round(float(b), 4) for b in images.double().mean((1, 2, 3)) / 127.5 - 1]


def setting_data(model, config: dict, setting: dict, report: dict, *, num: int, shown: int, seed: int,
                 device="cpu") -> dict:
    """One setting's part of the page: the two sprites, the timesteps, brightness, the command."""
    images, xs, x0s, timesteps = trajectory(model, config, setting, num, seed, device)
    ab = schedule_of(config).alphas_cumprod
    xs_u8 = [to_uint8(x[:shown]) for x in xs]
    x0_u8 = [to_uint8(x[:shown]) for x in x0s]
    x0_u8.append(xs_u8[-1])  # at the last position the "prediction" is the sample itself
    # the spread of all `num` predicted x0s' brightness at each step: when it stops growing, brightness is decided
    spread = [float(np.std(brightness(to_uint8(x0)))) for x0 in x0s] + [float(np.std(brightness(images)))]
    return dict(label=describe_sampling(setting), command=sample_command(setting, report, num, seed),
                timesteps=timesteps.tolist(), alpha_bar=[float(ab[t]) for t in timesteps.tolist()],
                xt=png_data_uri(interleaved_sprite(xs_u8)), x0=png_data_uri(interleaved_sprite(x0_u8)),
                brightness=brightness(images), spread=[round(v, 4) for v in spread])


def network_calls(settings: list[dict]) -> int:
    """Batched network calls of all the settings (a guided one counts twice: its batch is doubled)."""
    return sum(s["steps"] * (2 if s["guidance"] != 1.0 else 1) for s in settings)


def reverse_panel(model, config: dict, report: dict, *, num: int = 32, shown: int = 4, seed: int = 0,
                  steps=STEPS, device="cpu", progress: bool = True) -> dict:
    """Everything the reverse and brightness panels show, for every offered setting."""
    from tqdm.auto import tqdm

    conditional = model.config["num_classes"] is not None
    settings = offered_settings(report, conditional, steps)
    bar = tqdm(total=network_calls(settings), desc="explore: sampling every offered setting", unit="call",
               disable=not progress)
    data = {}
    for s in settings:
        data[setting_key(s)] = setting_data(model, config, s, report, num=num, shown=min(shown, num), seed=seed,
                                            device=device)
        bar.update(s["steps"] * (2 if s["guidance"] != 1.0 else 1))
    bar.close()
    labels = class_labels(None, min(shown, num), model.config["num_classes"])
    return dict(settings=data, own=setting_key(report), num=num, shown=min(shown, num), seed=seed,
                size=model.config["image_size"], conditional=conditional,
                labels=None if labels is None else labels.tolist(),
                samplers={s: SAMPLER_NAMES.get(s, s) for s in _unique(x["sampler"] for x in settings)},
                steps=sorted({x["steps"] for x in settings}), spacings=_unique(x["spacing"] for x in settings),
                guidances=sorted({x["guidance"] for x in settings}),
                rescales=sorted({x["guidance_rescale"] for x in settings}))

