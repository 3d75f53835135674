"""The forward-process and schedule panels' numbers: alpha_bar of every schedule, a few images, noise.

The page computes x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (Lin et al. eq. 4) itself, for
every t under its slider, from the images, one draw of eps and the schedules' alpha_bar written here
in full float64 precision; so every timestep is on the page without one image per timestep.

The leaked correlation is the one of `repro leakage` (docs/02_snr_leakage.md): over many images, the
correlation between an image's mean brightness and the mean of its x_t; the page computes it at the
slider's t from the images' means and their noise's means written here. At zero terminal SNR it is
exactly 0 at t = T: x_T holds no signal at all.
"""

from __future__ import annotations

import base64

import torch

from ..schedules import Schedule
from ..training.data import builtin_shapes, load_dataset

KINDS = ("linear", "cosine", "scaled_linear", "flow")
NAMES = {"linear": "linear (DDPM)", "cosine": "cosine (iDDPM)", "scaled_linear": "scaled linear (Stable Diffusion)",
         "flow": "rectified flow"}
FLAWED = ("scaled_linear", "linear")  # the forward panel's choices of flawed schedule; the first is shown first


def schedules_panel(num_timesteps: int = 1000) -> dict:
    """alpha_bar of each schedule as made and rescaled to zero terminal SNR (Algorithm 1), as Python
    floats: JSON writes them with every digit (repr), so the page prints what Schedule holds."""
    return {kind: dict(name=NAMES[kind],
                       flawed=Schedule.make(kind, num_timesteps).alphas_cumprod.tolist(),
                       zero=Schedule.make(kind, num_timesteps, zero_snr=True).alphas_cumprod.tolist())
            for kind in KINDS}


def training_images(config: dict | None, num: int, resolution: int, channels: int) -> tuple[torch.Tensor, str]:
    """`num` uint8 images of the run's dataset (without a network), else built-in shapes; and what they are."""
    if config is not None and config.get("dataset", "builtin") != "builtin":
        try:
            data = load_dataset(config["dataset"], data_root=config.get("data_root"), resolution=resolution,
                                download=False, num=num)
            images = data.images[torch.randperm(len(data.images), generator=torch.Generator().manual_seed(0))[:num]]
            if images.shape[1] == channels:
                return images, f"{num} images of {config['dataset']}"
        except Exception as err:  # no data on this machine: the shapes still show the forward process
            print(f"explore: the run's dataset is not here ({err}); the forward panel shows built-in shapes")
    images = builtin_shapes(num, seed=1, resolution=resolution).images
    if channels == 1:
        images = images.float().mean(1, keepdim=True).round().to(torch.uint8)
    return images, f"{num} built-in shapes"


def b64(tensor: torch.Tensor) -> str:
    """A tensor's bytes (little-endian, C order) in base64, for the page's typed arrays."""
    return base64.b64encode(tensor.contiguous().numpy().tobytes()).decode("ascii")


def forward_panel(config: dict | None = None, *, resolution: int = 32, channels: int = 3, shown: int = 4,
                  num: int = 512, seed: int = 0) -> dict:
    """The images shown under the slider (uint8), their noise (float32), and every image's brightness and
    the mean of its noise (for the leaked correlation and the brightness panel's data histogram)."""
    images, what = training_images(config, num, resolution, channels)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen, dtype=torch.float32)
    x0 = images.double() / 127.5 - 1
    return dict(what=what, size=resolution, channels=channels, shown=shown,
                x0=b64(images[:shown].permute(0, 2, 3, 1)), eps=b64(noise[:shown].permute(0, 2, 3, 1)),
                brightness=[round(float(b), 5) for b in x0.mean((1, 2, 3))],
                noise_mean=[round(float(m), 6) for m in noise.double().mean((1, 2, 3))],
                dims=images[0].numel())
