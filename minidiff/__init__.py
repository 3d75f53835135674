"""minidiff: a minimal diffusion library for reading, changing and reproducing papers.

The core is the six files beside this one, read in this order; data flows one way:

    schedules.py    betas, alpha_bar, SNR; the rescale to zero terminal SNR      (Lin et al. Alg. 1)
    objectives.py   q(x_t | x0), the eps / x0 / v targets and the loss           (Lin et al. eq. 4, 11-19, 12)
    samplers.py     timestep spacing, the DDIM and DDPM steps, the sampling loop (Lin et al. Table 2)
    solvers.py      DPM-Solver++ and Heun steps on the same loop
    guidance.py     classifier-free guidance and its rescale                     (Lin et al. Alg. 2)
    unet.py         the network: model(x_t, t, y) -> prediction

Everything else is a subpackage that imports the core and is never imported by it: training/
(`minidiff train`, the main job's recipe), evaluation/, latent/ (Stable Diffusion), exact/ (exactly
solvable models), repro/ (both papers' experiments) and course/ (exercises). `minidiff --help`
lists every command.

    from minidiff import Schedule, q_sample, diffusion_loss, make_timesteps, sample, cfg, UNet
"""

from .guidance import cfg
from .objectives import diffusion_loss, q_sample, target, to_x0_eps
from .samplers import make_timesteps, sample
from .schedules import Schedule, make_betas, rescale_zero_terminal_snr
from .unet import UNet

__version__ = "0.1.0"
__all__ = ["Schedule", "make_betas", "rescale_zero_terminal_snr", "q_sample", "target", "to_x0_eps",
           "diffusion_loss", "make_timesteps", "sample", "cfg", "UNet"]
