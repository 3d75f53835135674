"""The pixel-space trainer and its recipe: what `minidiff train` (train_cifar.py) runs.

    recipes.py   the recipes: each dataset's defaults (builtin, folder, cifar10), a setting a line
    config.py    every setting of a run and its flag, filled from the recipe; checked before work
    loss.py      the trainer's loss: the paper's loss plus the recipe's extras (timestep density,
                 per-level weights, the Stable Target Field, offset noise)
    train.py     the loop, to read top to bottom
    report.py    the sample grids and the end-of-run quality report
    sample.py    `minidiff sample CKPT`: images from a checkpoint, with the settings of its report
    data.py      datasets held as one tensor, and the batch order as a function of (seed, step)
    ema.py       the exponential moving average of the weights
    runtime.py   devices, checkpoints written atomically, resume, DDP, clear errors
    cli.py       the --seed and --device flags every command shares
"""
