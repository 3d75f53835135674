"""The recipes: a run's defaults for each dataset, one block a recipe, one setting a line and why.

    CIFAR10   DDPM's recipe (Ho et al. 2020), the GPU run the paper made
    BUILTIN   the main job: the built-in shapes in ten CPU-minutes (docs/recipe_history.md)
    FOLDER    a user's own images, Fashion-MNIST and MNIST: chosen on Fashion-MNIST
              (docs/recipe_history.md, "the folder recipe")

A flag or `--set NAME=VALUE` changes a setting for one run (minidiff.training.config, where
TrainConfig fills what a run leaves out from RECIPES[dataset]); `recipe_values` writes each recipe's
value into the flag's help.
"""

import math
from fractions import Fraction

# Defaults that depend on the dataset: one block a recipe, one setting a line, and why. CIFAR-10 is
# DDPM's recipe. The built-in set's is chosen by measurement so that the README's main job (no flags)
# draws recognisable samples in a 10-minute run on a 2-core CPU (docs/training.md, docs/recipe_history.md).
# Any setting can be changed for one run with its flag or `--set NAME=VALUE` (`--set unet.base_channels=64`).
EMA_SHARE = 1 / 30  # the built-in recipe's EMA: the last thirtieth of the run (0.995 at 6,000 steps)
LABELS = "labels"  # class_cond: on when the data has classes (a folder with one sub-folder per class)
BY_BUDGET = "by budget"  # preset: chosen from --minutes and the device's measured speed (training/budget.py)

CIFAR10 = dict(  # DDPM (Ho et al. 2020), App. B: the GPU recipe the paper trained for 800k steps
    preset="ddpm-cifar10",        # the paper's 35.7M-parameter UNet
    batch_size=128, lr=2e-4,      # the paper's batch and Adam rate
    warmup=5000,                  # the paper's linear warm-up
    lr_decay="constant",          # the paper keeps the rate
    adam_beta2=0.999,             # PyTorch's (and the paper's) Adam
    ema_decay=0.9999, ema_share=0.0,  # the paper's EMA
    max_steps=800_000, minutes=None,  # the paper's length
    class_cond=False,             # the paper's model is unconditional
    timesteps="uniform", timesteps_uniform=1.0, timesteps_low_snr=0.0,  # the paper's loss: t ~ U
    weighting="none", stf_reference=0,  # the paper's loss: every level alike, the one x0
    sample_every=10_000, ckpt_every=5_000,
    sampler="ddim", sample_steps=50,  # the grids: DDIM (Song et al.'s 50 steps)
    guidance=1.0, guidance_rescale=0.7, guidance_from=-math.inf,  # unguided; Lin et al.'s phi when guided
    judge_samples=0,              # scored by FID (minidiff fid), not the CPU measure
    flip=True,                    # the paper's random horizontal flips
)

BUILTIN = dict(  # the main job: shapes in 10 CPU-minutes (docs/recipe_history.md has each study)
    preset="small-patch2",        # `small` twice as wide behind a 2x2 patch stem: half the cost a step, more learnt a step
    batch_size=32, lr=2e-3,       # small batches, many steps: what ten CPU-minutes reward
    warmup=100,
    lr_decay="wsd",               # hold, then linear to 0 over the last fifth: drew the full brightness range where constant squeezed it
    adam_beta2=0.99,              # EDM2's: squared gradients over ~100 steps; class accuracy 72.0% -> 88.2% at 2,000 steps (seed 1)
    ema_decay=0.995,              # used only with --ema-share 0
    ema_share=EMA_SHARE,          # power EMA over the last thirtieth of the run: 0.995 at 6,000 steps, 0.985 at 2,000
    max_steps=100_000, minutes=10.0,  # the README's ten minutes
    class_cond=True,              # ten classes: row r of a grid is class r
    timesteps="logsnr_normal",    # log-SNR ~ N(2.4, 2.4) as EDM ...
    timesteps_uniform=0.05,       # ... plus 5% uniform, so the zero-SNR step is trained ...
    timesteps_low_snr=0.08,       # ... plus 8% at log-SNR ~ N(-6, 2), where an image's brightness is decided
    weighting="level_mean",       # each level's loss over its running mean, so the noisy levels do not drown the shapes
    stf_reference=512,            # Stable Target Field below log-SNR 0: seed 1's W1 0.096 -> 0.045 at 5,000 steps
    sample_every=500, ckpt_every=500,
    sampler="dpmpp_2m", sample_steps=25,  # one call a step as DDIM, wider brightness range at 25 steps (W1 0.040 vs 0.063)
    guidance=2.5,                 # the report's guidance weight
    guidance_rescale=0.0,         # at w = 3 the rescale squeezed the brightness: W1 0.19 against 0.11 (docs/06_guidance.md)
    guidance_from=-3.0,           # guide only at log-SNR >= -3: worst W1 of nine checkpoints 0.175 -> 0.099
    judge_samples=1000,           # at 500, real against real alone ranges over W1 0.013-0.071
    flip=True,                    # random horizontal flips, as DDPM (every class drawn either way)
)

FOLDER = dict(  # a user's own images, and Fashion-MNIST / MNIST by name: chosen on Fashion-MNIST
    # (docs/recipe_history.md, "the folder recipe"; FCD on the shared scorer, 2,000 samples, one seed a row)
    preset=BY_BUDGET,             # training/budget.py: small-patch2 for ten CPU-minutes on colour (FCD 122.7 -> 93.1 on
                                  # icons against small), medium-patch2 when --minutes buys it 5,000 steps, and small
                                  # at Fashion-MNIST's 28x28 (small-patch2 resized to 32 drew FCD 62.2 against 51.0)
    batch_size=64, lr=1e-3,       # lr 2e-3 drew FCD 52.5 against 51.0: no gain
    warmup=200,
    # The main job's lessons, measured together on Fashion-MNIST at 2,900 steps (the old recipe's ten
    # minutes): lr_decay, adam_beta2, ema_share, timesteps_low_snr, weighting and stf_reference below,
    # with the sampler further down: FCD 63.3 -> 51.0, brightness W1 0.041 -> 0.013, one seed.
    lr_decay="wsd",               # hold the rate, then linear to 0 over the last fifth of the run
    adam_beta2=0.99,              # EDM2's: squared gradients over ~100 steps, not 1,000
    ema_decay=0.999,              # used only with --ema-share 0
    ema_share=0.05,               # power EMA over the last 5% of the run (EDM2: 0.05-0.10); a fixed 0.999
                                  # reached back a third of a 2,900-step run
    timesteps="logsnr_normal", timesteps_uniform=0.1,  # log-SNR ~ N(2.4, 2.4) as EDM, 10% uniform (on the shapes
                                  # 0.3 and 0.5 drew worse: docs/recipe_history.md)
    timesteps_low_snr=0.08,       # 8% at log-SNR ~ N(-6, 2), where an image's brightness is decided
    weighting="level_mean",       # each level's loss over its running mean
    stf_reference=512,            # Stable Target Field below log-SNR 0: the noisiest levels learn the data's mean
    max_steps=100_000, minutes=None,  # no time limit unless --minutes is given
    class_cond=LABELS,            # class-conditional when the folder has one sub-folder per class
    sample_every=2_000, ckpt_every=2_000,
    sampler="dpmpp_2m", sample_steps=25,  # FCD 50.4 at 25 steps, 51.0 at 50; DDIM at 50 54.8
    guidance=1.5,                 # labelled folder: FCD 37.7 at w 1.5 against 41.4 unguided
    guidance_rescale=0.0, guidance_from=-3.0,  # as the main job: guided only above log-SNR -3, no rescale
    judge_samples=500,
    flip=False,                   # a folder is drawn as it is: Fashion-MNIST's shoes all face left, and half
                                  # mirrored its real images score FCD 43 against 1.0 (docs/recipe_history.md)
)

RECIPES = {"cifar10": CIFAR10, "builtin": BUILTIN, "folder": FOLDER, "fashion-mnist": FOLDER, "mnist": FOLDER}

RECIPE_NAMES = ("builtin", "folder", "cifar10")  # the three blocks of RECIPES (fashion-mnist and mnist are folder's)
RECIPE_KEYS = {key for name in RECIPE_NAMES for key in RECIPES[name]}


def recipe_values(key: str) -> str:
    """Each recipe's value of setting `key` as a flag's help shows it: 'builtin 0.99, folder 0.99, cifar10 0.999'."""
    def plain(value):
        if value is LABELS:
            return "on when the data has classes"
        if isinstance(value, bool):
            return "on" if value else "off"
        if value is None:
            return "no limit"  # minutes: None
        if isinstance(value, float) and math.isfinite(value) and float(f"{value:.4g}") != value:
            fraction = Fraction(value).limit_denominator(1000)
            return f"{fraction.numerator}/{fraction.denominator}"  # 1/30, not 0.0333333
        return f"{value:g}" if isinstance(value, float) else str(value)
    return ", ".join(f"{name} {plain(RECIPES[name][key])}" for name in RECIPE_NAMES)
