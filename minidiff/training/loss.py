"""The main job's loss: the paper's loss (objectives.diffusion_loss) and what the recipe adds to it.

Lin et al.'s loss (eq. 12) draws t uniformly, regresses on the v target of the one x0 that made x_t,
and weighs every timestep alike. The built-in recipe (training/recipes.py BUILTIN) changes
three of these, each measured in docs/recipe_history.md, and `recipe_loss` puts them together; a
fourth extra is in no recipe:

    timestep_probabilities   where t is drawn: log-SNR ~ N(2.4, 2.4) as EDM, plus a share at
                             N(-6, 2) where an image's brightness is decided, plus a uniform share
    LossPerLevel             weighting "level_mean": each noise level's loss over its running mean
    stable_target            the Stable Target Field (Xu et al. 2023): below log-SNR 0 the target's
                             x0 is E[x0 | x_t] over a reference set, not one random image
    offset_noise             Guttenberg's offset noise, the older brightness fix Lin et al. compare
                             with (Sec. 5.4; in no recipe, used by `minidiff repro brightness`)

plus `min_snr_weight` (Hang et al. 2023), which Lin et al.'s zero-SNR schedule refuses. The labels'
dropout for classifier-free guidance is in training/train.py (`drop_labels`).
"""

from __future__ import annotations

import math

import torch

from ..objectives import PREDICTIONS, check_prediction, extract, q_sample, randn, squared_error, target
from ..schedules import Schedule, table_on

TIMESTEP_DISTRIBUTIONS = ("uniform", "logsnr_normal", "logit_normal")
LOGIT_NORMAL = (0.0, 1.0)  # (mean, std) of logit(s), Esser et al. 2024's default for the rectified flow
WEIGHTINGS = ("none", "min_snr", "level_mean")
LOW_SNR = (-6.0, 2.0)  # (mean, std) of the log-SNR normal where a 32x32 image's brightness is decided
LOG_SNR_BANDS = (-9.0, -3.0, 0.0, 3.0, 6.0)  # the edges logsnr_band_shares reports between
STF_MAX_LOG_SNR = 0.0  # the Stable Target Field is computed below this log-SNR; above it x0 alone counts


def recipe_loss(model, x0: torch.Tensor, schedule: Schedule, prediction: str = "v", *, y=None,
                t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None, timestep_probs: torch.Tensor | None = None,
                offset: float = 0.0, weighting: str = "none", min_snr_gamma: float = 5.0,
                loss_per_level: "LossPerLevel | None" = None, reference=None, null_class: int | None = None):
    """objectives.diffusion_loss with the recipe's extras; with none of them it is that loss.

    t ~ `timestep_probs` (made once by timestep_probabilities; None: uniform) and eps with `offset`
    noise, unless given. `reference` = (images, labels or None) puts the Stable Target Field's x0
    into the target below log-SNR 0 (labels equal to `null_class` use every image). `weighting`
    "min_snr" multiplies by min_snr_weight; "level_mean" divides each sample's loss by its level's
    running mean (`loss_per_level`, whose `last_unweighted` keeps the plain loss for the log).
    """
    check_prediction(prediction, schedule)
    check_weighting(weighting, schedule)
    if t is None:
        t = draw_timesteps(len(x0), schedule, timestep_probs, generator, x0.device)
    if noise is None:
        noise = offset_noise(x0.shape, offset, generator=generator, device=x0.device, dtype=x0.dtype)
    ab = extract(schedule.alphas_cumprod, t, x0)
    x_t = q_sample(x0, ab, noise)
    out = model(x_t, t, y=y)
    plain = per_sample = squared_error(out, target(prediction, x0, noise, ab))
    if reference is not None:  # the Stable Target Field, where the image is still hidden
        hidden = table_on(schedule.log_snr, x0.device)[t] < STF_MAX_LOG_SNR
        if hidden.any():
            x0_goal = x0.clone()
            x0_goal[hidden] = stable_target(x0[hidden], x_t[hidden], ab[hidden], reference[0], reference_y=reference[1],
                                            y=None if y is None else y[hidden], null_class=null_class)
            eps_goal = (x_t - ab.sqrt() * x0_goal) / (1 - ab).sqrt()  # the noise that pairs with it in x_t
            per_sample = squared_error(out, target(prediction, x0_goal, eps_goal, ab))
    if weighting == "min_snr":
        per_sample = per_sample * min_snr_weight(table_on(schedule.snr, x0.device)[t], prediction, min_snr_gamma).float()
    if weighting == "level_mean":
        if loss_per_level is None:
            raise ValueError("weighting 'level_mean' needs loss_per_level=LossPerLevel(...), which keeps the running means")
        per_sample = loss_per_level(per_sample, t, scale=plain)  # the plain loss sets the divisor
    return per_sample.mean()


def draw_timesteps(batch: int, schedule: Schedule, probs: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """`batch` timesteps drawn on the generator's device: uniform (DDPM) or from p(t) = `probs`."""
    gen_device = generator.device if generator is not None else device
    if probs is None:
        t = torch.randint(0, schedule.num_timesteps, (batch,), generator=generator, device=gen_device)
    else:
        t = torch.multinomial(probs.to(gen_device), batch, replacement=True, generator=generator)
    return t.to(device)


# ----------------------------------------------------------------------- the timestep density


def timestep_probabilities(schedule: Schedule, distribution: str = "uniform", mean: float = 2.4, std: float = 2.4,
                           uniform_share: float = 0.1, low_snr_share: float = 0.0) -> torch.Tensor:
    """p(t) over the training timesteps 0..T-1 (float64, sums to 1).

    "uniform" is DDPM's t ~ U{0..T-1}. "logsnr_normal" puts the weight where the log-SNR
    lambda_t is likely under N(mean, std) (Karras et al. 2022 sample ln sigma ~ N(-1.2, 1.2); with
    sigma^2 = 1 / SNR that is lambda ~ N(2.4, 2.4)): p(t) is proportional to the normal density at
    lambda_t times the width of lambda that step t covers, mixed with a `uniform_share` of the
    uniform law so that every step, the zero-SNR one included (lambda = -inf), is still trained.

    `low_snr_share` moves that share of the draws to a second normal, N(LOW_SNR) in log-SNR.
    N(2.4, 2.4) is where shapes and edges are learned, but an image's overall brightness is
    decided far below it: the mean of d = 3 * 32 * 32 pixels sees about d / 3 times the per-pixel
    SNR of the data's brightness spread, so it emerges from the noise near lambda = -ln(1000) = -7,
    where N(2.4, 2.4) draws about 1% of the timesteps (`logsnr_band_shares` prints the split).

    "logit_normal" is Stable Diffusion 3's density for the rectified flow (Esser et al. 2024,
    Sec. 3.1): logit(s) ~ N(LOGIT_NORMAL), s the flow's time. On any schedule s = sqrt(1 - a) /
    (sqrt(a) + sqrt(1 - a)) (eq. F1), so logit(s) = -lambda / 2 and the law is the log-SNR normal
    N(-2 m, 2 std): the same code, mixed with the same shares.
    """
    T = schedule.num_timesteps
    if distribution == "uniform":
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
    if distribution == "logit_normal":
        mean, std = -2 * LOGIT_NORMAL[0], 2 * LOGIT_NORMAL[1]
    elif distribution != "logsnr_normal":
        raise ValueError(f"unknown timestep distribution {distribution!r}; choose one of {', '.join(TIMESTEP_DISTRIBUTIONS)}")
    if not (0 <= uniform_share <= 1 and 0 <= low_snr_share <= 1 - uniform_share):
        raise ValueError(f"uniform_share {uniform_share} and low_snr_share {low_snr_share} must be shares "
                         "that add up to at most 1")
    lam = schedule.log_snr.clamp(min=-30.0)  # -inf at zero SNR: a finite stand-in, far in the tail
    edges = torch.cat([lam[:1] + (lam[0] - lam[1]) / 2, (lam[1:] + lam[:-1]) / 2, lam[-1:] - 1.0])
    width = edges[:-1] - edges[1:]

    def normal(m: float, s: float) -> torch.Tensor:
        density = torch.exp(-0.5 * ((lam - m) / s) ** 2) * width
        return density / density.sum()

    return ((1 - uniform_share - low_snr_share) * normal(mean, std) + low_snr_share * normal(*LOW_SNR)
            + uniform_share / T)


def logsnr_band_shares(schedule: Schedule, probs: torch.Tensor, edges=LOG_SNR_BANDS) -> dict[str, float]:
    """The share of training draws p(t) whose log-SNR falls in each band between `edges`, e.g.
    {"< -9": 0.011, "-9..-3": 0.046, ...}: where a timestep distribution spends the training (the
    zero-SNR step, log-SNR -inf, counts in the first band)."""
    lam = schedule.log_snr.nan_to_num(neginf=-1e300)
    bounds = [-math.inf, *edges, math.inf]
    names = [f"< {edges[0]:g}", *(f"{a:g}..{b:g}" for a, b in zip(edges[:-1], edges[1:])), f"> {edges[-1]:g}"]
    return {name: float(probs[(lam > lo) & (lam <= hi)].sum()) for name, lo, hi in zip(names, bounds[:-1], bounds[1:])}


# ------------------------------------------------------------------------------- weighting


def check_weighting(weighting: str, schedule: Schedule) -> None:
    """Refuse min-SNR weighting on a zero-terminal-SNR schedule.

    Min-SNR weighs the x0 error by min(SNR, gamma), which is exactly 0 at SNR = 0: the last
    timestep, the one Lin et al.'s rescale exists for (it teaches the model to draw an image's
    brightness from pure noise), would never be trained, and on Stable Diffusion's rescaled
    schedule 163 more timesteps get a weight below 0.01. Lin et al. train the plain v loss.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if weighting == "min_snr" and schedule.zero_terminal_snr:
        raise ValueError(
            "min-SNR weighting gives the zero-SNR timestep a weight of exactly 0 (it weighs the x0 error "
            "by min(SNR, gamma)), so the step the zero-terminal-SNR rescale adds would never be trained. "
            "Use weighting 'none' (Lin et al.'s v loss), or turn the zero-SNR rescale off.")


def min_snr_weight(snr: torch.Tensor, prediction: str, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), written to stay finite at SNR = 0 and inf.

    The weighting is min(SNR, gamma) on the x0 error. Each parameterisation's squared error
    is a multiple of the x0 error: |eps err|^2 = SNR |x0 err|^2 and |v err|^2 = (SNR + 1) |x0 err|^2,
    so the weights on the eps, x0 and v losses are min(SNR, gamma) divided by SNR, 1 and SNR + 1.
    For eps that is min(1, gamma / SNR), never the 0/0 of min(SNR, gamma) / SNR at zero SNR.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    clipped = torch.clamp(snr, max=gamma)
    if prediction == "eps":
        return torch.clamp(gamma / snr, max=1.0)  # gamma / 0 = inf, clamped to 1
    if prediction == "x0":
        return clipped
    return clipped / (snr + 1)


class LossPerLevel(torch.nn.Module):
    """Weighting "level_mean": each noise level's loss divided by its own running mean.

    The v loss is far larger where little of the image survives (at zero SNR it is the whole
    variance of x0 that the class cannot explain) than where the image is nearly clean, so the
    gradient of a batch is dominated by its noisiest draws, and giving the low-SNR band more draws
    costs the shapes (docs/recipe_history.md). Karras et al. 2024 (EDM2) learn a per-level uncertainty
    u(sigma) and minimise L / exp(u) + u, whose optimum is exp(u) = E[L | level]; this keeps that
    optimum directly, as a running mean of the loss in each of `num_bins` bins of timesteps
    (decay `decay` per update), so every level's loss enters the gradient at about the same size.
    A buffer, not a parameter: it is saved in the checkpoint and needs no optimiser.
    `last_unweighted` keeps the plain mean loss of the last batch: the weighted one hovers near 1
    by construction, so the trainer logs this one, comparable across weightings.
    """

    def __init__(self, num_timesteps: int = 1000, num_bins: int = 50, decay: float = 0.99):
        super().__init__()
        self.num_timesteps, self.num_bins, self.decay = num_timesteps, num_bins, decay
        self.register_buffer("mean_loss", torch.zeros(num_bins, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros(num_bins, dtype=torch.bool))

    def bins(self, t: torch.Tensor) -> torch.Tensor:
        return (t * self.num_bins) // self.num_timesteps

    def forward(self, per_sample: torch.Tensor, t: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """per_sample [B] losses at timesteps t [B] -> the same divided by their bins' running means
        (updated with this batch first, so a level's first loss is divided by itself). `scale` [B]:
        the losses whose running means set the divisor instead (the plain target's, when the loss
        itself is on the Stable Target Field: its smaller noisy-level losses must not weigh more)."""
        b = self.bins(t).to(self.mean_loss.device)
        scale = per_sample if scale is None else scale
        self.last_unweighted = scale.detach().mean()
        with torch.no_grad():
            sums = torch.zeros_like(self.mean_loss).index_add_(0, b, scale.detach().double())
            counts = torch.zeros_like(self.mean_loss).index_add_(0, b, torch.ones_like(sums[b]))
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(sums)  # every rank keeps the same means
                torch.distributed.all_reduce(counts)
            hit = counts > 0
            batch_mean = sums[hit] / counts[hit]
            old = self.mean_loss[hit]
            self.mean_loss[hit] = torch.where(self.seen[hit], self.decay * old + (1 - self.decay) * batch_mean, batch_mean)
            self.seen |= hit
        return per_sample / self.mean_loss[b].to(per_sample.dtype).clamp(min=1e-12)


# -------------------------------------------------------------- the Stable Target Field


def stable_target(x0: torch.Tensor, x_t: torch.Tensor, ab: torch.Tensor, reference: torch.Tensor, *,
                  y: torch.Tensor | None = None, reference_y: torch.Tensor | None = None,
                  null_class: int | None = None) -> torch.Tensor:
    """E[x0 | x_t] estimated over a reference set: Xu, Tong and Jaakkola 2023, the Stable Target
    Field (their eq. 5), used in place of the one x0 that made x_t.

        x0_stf = sum_j w_j r_j,   w_j proportional to N(x_t; sqrt(ab) r_j, (1 - ab) I)

    over r_j in {x0} and the `reference` images (of the sample's own class when labels are given;
    every image for the null class). Where the noise hides the image (zero SNR: every w_j equal)
    this is the mean of the reference, not one random x0, so the target of the noisiest levels
    loses most of its variance; where x_t shows the image, x0's own weight is 1 to machine
    precision and the target is the usual one. x0, x_t [B, ...], ab [B, 1, ...], reference [K, ...]."""
    b = x0.shape[0]
    pool = torch.cat([x0, reference]).reshape(b + len(reference), -1).float()  # [B + K, D]; row i of the first B is x0_i
    a2 = ab.reshape(b, 1).float()
    # log w_ij = -|x_t,i - a r_j|^2 / (2 (1 - a^2)); the |x_t,i|^2 part is the same for every j
    logits = (2 * a2.sqrt() * (x_t.reshape(b, -1).float() @ pool.T) - a2 * pool.square().sum(1)[None]) / (2 * (1 - a2))
    allowed = torch.zeros_like(logits, dtype=torch.bool)
    allowed[torch.arange(b), torch.arange(b)] = True  # x0 itself
    if y is None or reference_y is None:
        allowed[:, b:] = True
    else:
        unconditional = (y == null_class) if null_class is not None else torch.zeros_like(y, dtype=torch.bool)
        allowed[:, b:] = (reference_y[None] == y[:, None]) | unconditional[:, None]
    weights = torch.softmax(logits.masked_fill(~allowed, -math.inf), dim=1)
    return (weights @ pool).reshape(x0.shape).to(x0.dtype)


# ---------------------------------------------------------------------------- offset noise


def offset_noise(shape, offset: float, *, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Guttenberg 2023 (Lin et al. Sec. 5.4): eps + offset * delta, one delta ~ N(0, 1) per sample and channel.

    The shared shift makes the noise's mean say nothing about the image's mean, so the model
    learns to change brightness freely. It is the earlier fix that the paper compares with.
    """
    noise = randn(shape, generator=generator, device=device, dtype=dtype)
    if offset:
        shift = randn(shape[:2], generator=generator, device=device, dtype=dtype)
        noise = noise + offset * shift.reshape(*shape[:2], *([1] * (len(shape) - 2)))
    return noise
