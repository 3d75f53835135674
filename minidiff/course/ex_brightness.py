"""Exercise 14 (Lin et al. 2023): the brightness experiment. The student applies the paper's three
fixes to Stable Diffusion's flawed settings; the checks grade each fix with its own hint and the
exact brightness spread the settings give (DDIM on the exact Gaussian denoiser); the run
(experiments_training.py) draws the brightness histograms of the flawed and the fixed settings.
"""

from __future__ import annotations

import copy
import math

import torch

from .. import objectives, samplers
from ..exact.analytic import gaussian_sampler_moments
from ..schedules import Schedule
from .core import Exercise, Fail, call

LIN = "Lin et al. 2023"


# ------------------------------------------------------------------------------------------------
# 14. The brightness experiment: the flawed settings and the three fixes
# ------------------------------------------------------------------------------------------------

FLAWED = dict(schedule="scaled_linear", zero_snr=False, prediction="eps", spacing="leading", steps=50)  # Stable Diffusion's
FIXES = dict(zero_snr=True, prediction="v", spacing="trailing")  # Lin et al. Secs. 3.1-3.3


def reference_fix_settings(settings):
    return {**settings, **FIXES}


def settings_hints(key, value) -> str:
    if key == "zero_snr":
        return ("the schedule still ends above zero SNR (Stable Diffusion's keeps SNR(T) = 0.0047, so x_T "
                "leaks the image's brightness and N(0, I) is the wrong start): set zero_snr=True (Algorithm 1)")
    if key == "prediction":
        if value == "eps":
            return ("eps prediction is kept: at zero SNR the input is the noise, so predicting eps says nothing "
                    "about the image (minidiff refuses it); Lin et al. train with prediction='v' (eq. 12)")
        if value == "x0":
            return ("x0 prediction works at zero SNR, but it is not the paper's fix: Lin et al. train with "
                    "prediction='v', a target that stays informative at both ends of the schedule")
        return f"prediction={value!r}: Lin et al. train with prediction='v' (v = sqrt(a) eps - sqrt(1 - a) x0)"
    if value == "leading":
        return ("leading spacing is kept: it never visits the last training step (its first is t = 980 for 50 "
                "steps), so sampling does not start where the zero-SNR schedule ends; use spacing='trailing'")
    if value == "linspace":
        return ("linspace does start at T-1, but spends its last step at t = 0, where almost nothing is left "
                "to denoise; Lin et al. use spacing='trailing', evenly spaced from T-1 (Table 2)")
    return f"spacing={value!r}: Lin et al. use spacing='trailing' (Table 2)"


def settings_checks():
    def result(fn, settings):
        given = copy.deepcopy(settings)
        out = call(fn, given)
        if not isinstance(out, dict):
            raise Fail(f"return a dict of settings, not a {type(out).__name__}")
        if given != settings:
            raise Fail("the settings given were changed in place: return a new dict ({**settings, ...} or "
                       "dict(settings)) and leave the caller's as it was")
        if set(out) != set(settings):
            raise Fail(f"the keys changed: got {sorted(out)}, expected the same keys as given, {sorted(settings)}")
        return out

    def new_dict(fn):
        result(fn, FLAWED)

    def one_fix(key):
        def check(fn):
            out = result(fn, FLAWED)
            if out[key] != FIXES[key] or type(out[key]) is not type(FIXES[key]):
                raise Fail(settings_hints(key, out[key]))
        return check

    def others_kept(fn):
        for settings in (FLAWED, dict(FLAWED, schedule="linear", steps=10)):
            out = result(fn, settings)
            changed = [k for k in settings if k not in FIXES and out[k] != settings[k]]
            if changed:
                raise Fail(f"{', '.join(changed)} changed: only the three fixes (zero_snr, prediction, spacing) "
                           "change; the schedule's kind and the number of steps stay as given")

    def idempotent(fn):
        for settings in (reference_fix_settings(FLAWED), dict(FLAWED, zero_snr=True), dict(FLAWED, spacing="trailing")):
            out = result(fn, settings)
            bad = [k for k in FIXES if out[k] != FIXES[k]]
            if bad:
                raise Fail(f"given settings with some fixes already made, {bad[0]} came back as {out[bad[0]]!r}: "
                           "set each fix (zero_snr=True, ...), do not flip what was given")

    def runnable(fn, settings):
        out = result(fn, settings)
        try:
            schedule = Schedule.make(out["schedule"], 1000, zero_snr=out["zero_snr"])
            objectives.check_prediction(out["prediction"], schedule)
            return schedule, samplers.make_timesteps(1000, out["steps"], out["spacing"]), out
        except (ValueError, KeyError, TypeError) as e:
            raise Fail(f"minidiff cannot run these settings ({out}): {str(e).splitlines()[0]}") from None

    def starts_at_zero_snr(fn):
        for settings in (FLAWED, dict(FLAWED, schedule="linear", steps=10), dict(FLAWED, spacing="linspace", steps=7)):
            schedule, ts, out = runnable(fn, settings)
            a = schedule.alphas_cumprod[ts[0]].item()
            if a != 0:
                raise Fail(f"with {out} sampling starts at t = {int(ts[0])}, where alpha_bar = {a:.3g}, not 0: x_T ~ N(0, I) "
                           "is then not what the model saw in training (it still holds some of the image)")

    def brightness(fn):
        # Lin et al.'s finding, exactly: DDIM with the exact denoiser on Gaussian images whose brightness varies.
        # With the fixes the spread of the samples' brightness tends to the data's as the steps grow (0.97 at
        # 200 steps); with the flawed settings it stays below half of it however many steps are taken.
        schedule, ts, out = runnable(fn, dict(FLAWED, steps=200))
        ratio = brightness_std_ratio(schedule, ts)
        if abs(ratio - 1) > 0.05:
            raise Fail(f"with {out} the exact sampler's brightness spread is {ratio:.3f} of the data's, not about 1: "
                       "only the zero-SNR schedule with sampling from t = T-1 recovers it")

    return [("returns a new dict with the same keys", new_dict),
            ("fix 1: zero terminal SNR", one_fix("zero_snr")), ("fix 2: v prediction", one_fix("prediction")),
            ("fix 3: trailing timesteps", one_fix("spacing")),
            ("keeps the schedule's kind and the number of steps", others_kept),
            ("settings already fixed stay fixed", idempotent),
            ("sampling starts where alpha_bar = 0", starts_at_zero_snr),
            ("200 exact DDIM steps reach the data's brightness spread", brightness)]


# The data of the brightness experiment: Gaussian 3x32x32 images, a brightness offset shared by every pixel
# (std 0.5, mean 0.2) on a texture of std 0.3, as `minidiff repro exact`. Along the brightness direction the
# variance is LAM_B; the image's mean brightness is that coordinate / sqrt(D).
D = 3 * 32 * 32
S_B, S_PIX, MEAN_B = 0.5, 0.3, 0.2
LAM_B, LAM_PIX = S_PIX**2 + D * S_B**2, S_PIX**2


def brightness_std_ratio(schedule, timesteps) -> float:
    """Exact std of the samples' brightness / the data's, for DDIM with the exact denoiser."""
    _, v = gaussian_sampler_moments(torch.tensor(LAM_B), torch.tensor(MEAN_B), schedule, timesteps)
    return math.sqrt(v.item() / LAM_B)


EXERCISES = [
    Exercise(14, "brightness-experiment", "The brightness experiment: the three fixes", LIN, "07_brightness.md",
             "fix_settings", "def fix_settings(settings):",
             "Stable Diffusion's flawed settings with Lin et al.'s three fixes applied (Secs. 3.1-3.3).\n\n"
             "settings: a dict such as dict(schedule=\"scaled_linear\", zero_snr=False, prediction=\"eps\",\n"
             "spacing=\"leading\", steps=50): the schedule's kind, whether it is rescaled to zero terminal\n"
             "SNR, what the network predicts (\"eps\", \"x0\" or \"v\"), the timestep spacing (\"leading\",\n"
             "\"linspace\" or \"trailing\") and the number of sampling steps.\n"
             "Return a new dict with the same keys, each of the three flawed settings fixed and the rest\n"
             "as given; leave `settings` itself unchanged.",
             reference_fix_settings, "the paper's fixes: minidiff's defaults (docs/07_brightness.md)",
             settings_checks()),
]
