"""The pixel-space trainer and its recipe: what `minidiff train` (train_cifar.py) runs.

    config.py    every flag, and the recipe of defaults per dataset (builtin, cifar10, folder)
    recipe.py    the main job's extras on top of the paper's loss: timestep density, per-level
                 weights, the Stable Target Field, offset noise
    train.py     the loop, to read top to bottom
    report.py    the sample grids and the end-of-run quality report
    sample.py    `minidiff sample CKPT`: images from a checkpoint, with the settings of its report
    data.py      datasets held as one tensor, and the batch order as a function of (seed, step)
    ema.py       the exponential moving average of the weights
    runtime.py   devices, checkpoints written atomically, resume, DDP, clear errors
    cli.py       the --seed and --device flags every command shares
"""
