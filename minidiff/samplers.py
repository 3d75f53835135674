"""Sampling: which timesteps to visit, one DDIM or DDPM step, and the loop that runs them.

The loop also runs the higher-order samplers of `minidiff.solvers` ("dpmpp_2m", "dpmpp_3m",
"heun"), written in the same x0 form (docs/08_fast_samplers.md).

Both updates are written in x0 form (Lin et al. Sec. 6): the model output is first turned
into (x0, eps) with `objectives.to_x0_eps`, and the step never divides by sqrt(alpha_bar_t).
So they stay finite at alpha_bar = 0, where a zero-terminal-SNR schedule starts.

Each step goes from a listed timestep t to the *next listed* timestep s (not t - T // S,
which is wrong for linspace and for trailing when S does not divide T); after the last
listed timestep it goes to alpha_bar = 1, a clean sample.

The same loop edits images (docs/10_editing.md). Image-to-image (SDEdit, Meng et al. 2022): start
at the timestep t_S = round(S T) - 1 of a strength S in (0, 1], from the input noised there by
q(x_t | x0), and visit the listed timesteps below it. Inpainting (RePaint, Lugmayr et al. 2022):
after every step, the pixels the mask keeps are replaced by the input noised to the step's level,
so the model only fills the rest; `resample` = r goes back up and repeats each step r more times.
At zero terminal SNR, strength 1 starts from sqrt(0) x0 + sqrt(1) eps = eps: pure noise whatever the
input, so editing at full strength is generation. A flawed schedule leaks the input through
sqrt(alpha_bar_T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .guidance import cfg, dynamic_threshold
from .objectives import check_prediction, randn, to_x0_eps
from .schedules import Schedule
from .solvers import SOLVER_ORDERS, dpmpp_2m_step, dpmpp_3m_step, first_order_step, heun_step

SPACINGS = ("leading", "linspace", "trailing")
SAMPLERS = ("ddim", "ddpm", "dpmpp_2m", "dpmpp_3m", "heun", "euler")


def _round_half_even(num: int, den: int) -> int:
    """round(num / den) computed exactly, ties to even (numpy's rule), with integers only."""
    q, r = divmod(num, den)
    return q + (2 * r > den or (2 * r == den and q % 2 == 1))


def make_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "trailing", steps_offset: int = 0) -> torch.Tensor:
    """The S timesteps a sampler visits, descending, 0-indexed: Lin et al. Table 2 minus one.

    In the paper's 1-indexed rules, with k = 0..S-1:
      leading  (DDIM, PNDM):    arange(1, T+1, floor(T/S)), first S   ->  1 + k floor(T/S)
      linspace (iDDPM):         round(linspace(1, T, S))               ->  round(1 + k (T-1)/(S-1))
      trailing (DPM-Solver):    round(flip(arange(T, 0, -T/S)))        ->  round(T (S-k) / S)
    then minus one; leading adds `steps_offset` (Stable Diffusion's tooling uses 1). The
    fractions are rounded exactly, ties to even: float implementations of the same rules
    (numpy's arange and linspace) can land one step apart at exact .5 ties, e.g. S = 3
    linspace rounds 500.5 to 500 (timestep 499) here. Only trailing starts at the last step T-1 for every S.
    """
    T, S = num_train_timesteps, num_steps
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not (isinstance(S, int) and 1 <= S <= T):
        raise ValueError(f"num_steps must be an integer from 1 to num_train_timesteps={T}, got {S!r}")
    if steps_offset and spacing != "leading":
        raise ValueError("steps_offset only applies to 'leading' spacing")
    if spacing == "leading":
        one_indexed = [1 + k * (T // S) for k in range(S)]
    elif spacing == "linspace":
        one_indexed = [_round_half_even(S - 1 + k * (T - 1), S - 1) for k in range(S)] if S > 1 else [1]
    else:
        one_indexed = [_round_half_even(T * (S - k), S) for k in range(S)]
    steps = torch.tensor(one_indexed, dtype=torch.int64) - 1 + steps_offset
    if steps.min() < 0 or steps.max() > T - 1:
        raise ValueError(
            f"{spacing} spacing with {S} steps and steps_offset={steps_offset} leaves [0, {T - 1}]: "
            f"lower steps_offset or num_steps"
        )
    return steps.sort(descending=True).values


def start_timestep(num_train_timesteps: int, strength: float) -> int:
    """SDEdit's starting timestep for an edit of strength S in (0, 1]: t_S = round(S T) - 1, so S = 1
    is the last training step (generation, at zero terminal SNR) and small S keeps most of the input."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1] (1: start from the last step), got {strength}")
    return max(0, round(strength * num_train_timesteps) - 1)


def edit_timesteps(timesteps: torch.Tensor, t_start: int) -> torch.Tensor:
    """The timesteps an edit visits: t_start, then the listed ones below it."""
    below = timesteps[timesteps < t_start]
    return torch.cat([torch.tensor([t_start], dtype=torch.int64), below])


def ddim_coefficients(ab_t: float, ab_prev: float, eta: float = 0.0) -> tuple[float, float]:
    """DDIM's noise scale sigma and the coefficient sqrt(1 - a_prev - sigma^2) of eps (Song et al. eq. 12)."""
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(max(0.0, 1 - ab_t / ab_prev))
    return sigma, math.sqrt(max(0.0, 1 - ab_prev - sigma**2))


def ddim_step(x_t, x0, eps, ab_t: float, ab_prev: float, eta: float = 0.0, noise=None):
    """One DDIM update from alpha_bar_t to alpha_bar_prev (Song et al. eq. 12; Lin eqs. 21-22).

        sigma  = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)
        x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z

    eta = 0 is deterministic (the probability-flow direction); eta = 1 has the variance
    of the DDPM posterior. At a_prev = 1 the result is x0 exactly.
    """
    sigma, c_eps = ddim_coefficients(ab_t, ab_prev, eta)
    x_prev = math.sqrt(ab_prev) * x0 + c_eps * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs `noise`")
        x_prev = x_prev + sigma * noise
    return x_prev


def flow_euler_step(x_t, x0, eps, ab_t: float, ab_prev: float):
    """One Euler step of the rectified flow's ODE d x^flow / ds = u (Liu et al. 2023), in the VP view:

        x^flow = x_t / (sqrt(a_t) + sqrt(1 - a_t)),   s = sqrt(1 - a) / (sqrt(a) + sqrt(1 - a))   (F3, F1)
        x^flow_prev = x^flow + (s_prev - s_t) u,      u = eps - x0
        x_prev = (sqrt(a_prev) + sqrt(1 - a_prev)) x^flow_prev

    It is deterministic DDIM in other coordinates: (1 - s_prev) x0 + s_prev eps is the flow state of
    sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, so the two agree to round-off (docs/09_flow_matching.md).
    """
    c_t, c_prev = math.sqrt(ab_t) + math.sqrt(1 - ab_t), math.sqrt(ab_prev) + math.sqrt(1 - ab_prev)
    s_t, s_prev = math.sqrt(1 - ab_t) / c_t, math.sqrt(1 - ab_prev) / c_prev
    return c_prev * (x_t / c_t + (s_prev - s_t) * (eps - x0))


def ddpm_posterior(ab_t: float, ab_prev: float) -> tuple[float, float, float]:
    """Coefficients of q(x_prev | x_t, x0) for any pair of steps (Ho et al. eqs. 6-7; Lin eq. 20).

    With a = a_t / a_prev (the signal kept between the two steps):
        mean = sqrt(a_prev) (1 - a) / (1 - a_t) x0 + sqrt(a) (1 - a_prev) / (1 - a_t) x_t
        var  = (1 - a_prev) / (1 - a_t) (1 - a)
    Returns (coefficient of x0, coefficient of x_t, variance). Finite at a_t = 0.
    """
    a = ab_t / ab_prev
    c_x0 = math.sqrt(ab_prev) * (1 - a) / (1 - ab_t)
    c_xt = math.sqrt(a) * (1 - ab_prev) / (1 - ab_t)
    var = (1 - ab_prev) / (1 - ab_t) * (1 - a)
    return c_x0, c_xt, var


def ddpm_step(x_t, x0, ab_t: float, ab_prev: float, noise=None):
    """One ancestral (DDPM) step: a draw from the posterior q(x_prev | x_t, x0 = predicted x0)."""
    c_x0, c_xt, var = ddpm_posterior(ab_t, ab_prev)
    x_prev = c_x0 * x0 + c_xt * x_t
    if var > 0:
        if noise is None:
            raise ValueError("ddpm_step needs `noise` unless it steps to a clean sample")
        x_prev = x_prev + math.sqrt(var) * noise
    return x_prev


def guided_output(model, x, t, *, y=None, uncond_y=None, guidance: float = 1.0, guidance_rescale: float = 0.0):
    """The model output at (x, t), with classifier-free guidance when guidance != 1.

    With `uncond_y` the conditional and unconditional passes share one batch [x, x] with
    labels [y, uncond_y]; without it the unconditional pass is model(x, t, y=None).
    """
    if guidance == 1.0:
        return model(x, t, y=y)
    if uncond_y is None:
        cond, uncond = model(x, t, y=y), model(x, t, y=None)
    else:
        both = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, uncond_y]))
        cond, uncond = both.chunk(2)
    return cfg(cond, uncond, guidance, guidance_rescale)


@dataclass
class SampleResult:
    """Samples plus what the docs plot: x at each visited step (x_T first, the sample last)
    and the x0 predicted at each visited timestep."""

    samples: torch.Tensor
    xs: list
    x0s: list
    timesteps: torch.Tensor


def noised(x0: torch.Tensor, ab: float, noise: torch.Tensor) -> torch.Tensor:
    """x0 carried to noise level alpha_bar = ab: sqrt(ab) x0 + sqrt(1 - ab) noise (q(x_t | x0), eq. 4).
    Also one step back up, from x_s to x_t with ab = a_t / a_s (q(x_t | x_s))."""
    return math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise


def _check_edit(shape, init, strength: float, mask, resample: int) -> None:
    """An edit's inputs, checked before any work: what is wrong and what to give instead."""
    if init is None:
        if mask is not None or strength != 1.0 or resample:
            raise ValueError("strength, mask and resample edit an image: give init (the image to edit) too")
        return
    if tuple(init.shape) != tuple(shape):
        raise ValueError(f"init must have the samples' shape {tuple(shape)}, got {tuple(init.shape)}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1] (1: start from the last step), got {strength}")
    if mask is not None:
        try:
            torch.broadcast_shapes(mask.shape, init.shape)
        except RuntimeError:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast against the images {tuple(init.shape)}") from None
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must be binary: 1 where the model draws, 0 where the input is kept")
    if not (isinstance(resample, int) and resample >= 0):
        raise ValueError(f"resample must be a whole number of extra passes, 0 or more, got {resample!r}")
    if resample and mask is None:
        raise ValueError("resample repeats inpainting steps: give a mask too")


def _check_timesteps(timesteps: torch.Tensor, T: int) -> torch.Tensor:
    timesteps = torch.as_tensor(timesteps, dtype=torch.int64).flatten()
    if len(timesteps) == 0 or timesteps.min() < 0 or timesteps.max() > T - 1:
        raise ValueError(f"timesteps must be a non-empty list of integers in [0, {T - 1}]")
    if len(timesteps) > 1 and not (timesteps[1:] < timesteps[:-1]).all():
        raise ValueError("timesteps must be strictly descending (the sampler goes from noise to data)")
    return timesteps


@torch.no_grad()
def sample(
    model,
    shape,
    schedule: Schedule,
    *,
    prediction: str = "v",
    steps: int = 50,
    spacing: str = "trailing",
    steps_offset: int = 0,
    sampler: str = "ddim",
    eta: float = 0.0,
    timesteps=None,
    y=None,
    uncond_y=None,
    guidance: float = 1.0,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    clip_x0: bool = False,
    threshold: float | None = None,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
    mask: torch.Tensor | None = None,
    resample: int = 0,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = True,
):
    """Draw samples from `model` by running DDIM, DDPM, DPM-Solver++ (2M, 3M), Heun or the flow's
    Euler steps over a list of timesteps.

    model(x, t, y=None) is any callable returning the `prediction` parameterisation (eps, x0,
    v or u) with t an int64 tensor [B] of training timesteps. `timesteps` overrides
    (steps, spacing). Sampling starts from x_T ~ N(0, I) whatever alpha_bar of the first
    timestep is: that mismatch is exactly what Lin et al. fix.

    `guidance_interval` = (lo, hi) applies the guidance only at timesteps whose log-SNR lies in
    [lo, hi] and samples unguided elsewhere (Kynkaanniemi et al. 2024: guidance at high noise
    levels narrows what is drawn, at low noise levels it does little).

    `clip_x0` clips every predicted x0 to the data range [-1, 1] and takes eps from the clipped x0
    (DDPM's sampler does; diffusers' clip_sample). It rescues eps prediction where x0 = (x_t -
    sqrt(1 - a) eps) / sqrt(a) magnifies the network's error by 1 / sqrt(a), 157 at the last step
    of DDPM's linear schedule; with v prediction it is rarely needed. `threshold` = p is Imagen's
    dynamic thresholding instead (`guidance.dynamic_threshold`): each x0 is clipped at its own p-th
    percentile of |x0| (when over 1) and divided by it.

    Editing: `init` [B, C, H, W] (images in [-1, 1]) starts the loop at `start_timestep(T, strength)`
    from init noised there with x_T as the noise (drawn when not given); `mask` (1: the model draws
    the pixel, 0: the pixel is init's; broadcast against init) keeps init's pixels, noised to each
    step's level, and `resample` repeats every step that many more times, going back up with fresh
    noise in between (RePaint's jumps of one step).
    """
    check_prediction(prediction, schedule)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if eta and sampler not in ("ddim", "ddpm"):
        raise ValueError(f"eta is DDIM's noise; sampler {sampler!r} takes none (use eta=0, or sampler='ddim')")
    if timesteps is None:
        timesteps = make_timesteps(schedule.num_timesteps, steps, spacing, steps_offset)
    timesteps = _check_timesteps(timesteps, schedule.num_timesteps)
    _check_edit(shape, init, strength, mask, resample)
    if clip_x0 and threshold is not None:
        raise ValueError("clip_x0 and threshold both clip x0; give one (threshold=p: Imagen's dynamic thresholding)")
    if device is None:
        device = x_T.device if x_T is not None else "cpu"
    x = randn(shape, generator=generator, device=device, dtype=dtype) if x_T is None else x_T.to(device, dtype)
    ab = schedule.alphas_cumprod.tolist()
    if init is not None:  # SDEdit: x_t of the input at the starting step, with x_T as its noise
        init = init.to(device, dtype)
        timesteps = edit_timesteps(timesteps, start_timestep(schedule.num_timesteps, strength))
        x = noised(init, ab[timesteps[0]], x)
        mask = None if mask is None else mask.to(device, dtype)
    stochastic = sampler == "ddpm" or eta > 0
    xs, x0s = ([x.cpu()], []) if return_trajectory else (None, None)

    log_snr = None if guidance_interval is None else schedule.log_snr.tolist()

    def denoise(x, t):
        """(x0, eps) predicted at (x, t), guided (inside guidance_interval, if one is given)."""
        t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=device)
        w = guidance if log_snr is None or guidance_interval[0] <= log_snr[t] <= guidance_interval[1] else 1.0
        out = guided_output(model, x, t_batch, y=y, uncond_y=uncond_y, guidance=w, guidance_rescale=guidance_rescale)
        x0, eps = to_x0_eps(prediction, out.to(dtype), x, ab[t])
        if clip_x0 or threshold is not None:
            x0 = x0.clamp(-1.0, 1.0) if clip_x0 else dynamic_threshold(x0, threshold)
            if ab[t] < 1:  # eps from the clipped x0, as if the network had predicted it
                _, eps = to_x0_eps("x0", x0, x, ab[t])
        return x0, eps

    ts = timesteps.tolist()

    def step(x, i, t, ab_t, ab_prev, history):
        """One step of `sampler` from listed timestep ts[i] = t to the next level: (x_next, x0, history)."""
        x0, eps = denoise(x, t)
        noise = randn(x.shape, generator=generator, device=device, dtype=dtype) if stochastic and ab_prev < 1 else None
        if sampler == "ddim":
            return ddim_step(x, x0, eps, ab_t, ab_prev, eta, noise), x0, history
        if sampler == "ddpm":
            return ddpm_step(x, x0, ab_t, ab_prev, noise), x0, history
        if sampler == "euler":
            return flow_euler_step(x, x0, eps, ab_t, ab_prev), x0, history
        if sampler == "heun":
            # the step to a clean sample has no end point to evaluate the model at: Euler there, as in EDM
            x_next = first_order_step(x, x0, ab_t, ab_prev)
            if ab_prev < 1:
                x0_end, _ = denoise(x_next, ts[i + 1])
                x_next = heun_step(x, x0, x0_end, ab_t, ab_prev)
            return x_next, x0, history
        # as many past predictions as exist, up to the solver's order; first order to a clean sample
        order = 1 if ab_prev == 1.0 else min(SOLVER_ORDERS[sampler], len(history) + 1)
        if order == 1:
            x_next = first_order_step(x, x0, ab_t, ab_prev)
        elif order == 2:
            x_next = dpmpp_2m_step(x, x0, history[0][0], ab_t, ab_prev, history[0][1])
        else:
            x_next = dpmpp_3m_step(x, x0, history[0][0], history[1][0], ab_t, ab_prev, history[0][1], history[1][1])
        return x_next, x0, [(x0, ab_t)] + history[:1]

    history = []  # the multistep solvers' past (x0, alpha_bar), newest first
    for i, t in enumerate(tqdm(ts, desc=f"{sampler} sampling", disable=not progress, leave=False)):
        ab_t = ab[t]
        ab_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        for r in range(resample + 1 if mask is not None and ab_prev < 1 else 1):
            if r > 0:  # RePaint: back up to step t with fresh noise, then take the step again
                x = noised(x, ab_t / ab_prev, randn(x.shape, generator=generator, device=device, dtype=dtype))
            x_next, x0, history_next = step(x, i, t, ab_t, ab_prev, history)
            if mask is not None:  # the known pixels: the input, noised to the next step's level
                known = noised(init, ab_prev, randn(x.shape, generator=generator, device=device, dtype=dtype))
                x_next = mask * x_next + (1 - mask) * known
            x = x_next
        history = history_next
        if return_trajectory:
            xs.append(x.cpu())
            x0s.append(x0.cpu())

    if return_trajectory:
        return SampleResult(samples=x, xs=xs, x0s=x0s, timesteps=timesteps)
    return x


def network_evaluations(sampler: str, steps: int) -> int:
    """Model calls (guided calls count once) for `steps` listed timesteps: Heun calls it twice a
    step except on the step to a clean sample; every other sampler once a step."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return 2 * steps - 1 if sampler == "heun" else steps
