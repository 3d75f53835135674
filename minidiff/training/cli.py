"""The flags every command line shares: --seed and --device, with one default convention.

    --seed    0: every random stream of the run is seeded from it, so a rerun repeats the run
    --device  left out: cuda, then mps (an Apple laptop's GPU), then cpu (`runtime.default_device`)

    parser = argparse.ArgumentParser(...)
    add_common_flags(parser)               # or add_common_flags(parser, device=False)
    args = parser.parse_args()
    device = resolve_device(args.device)
"""

from __future__ import annotations

import argparse
import math
import sys

import torch


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default after its help, unless there is none to show (None: the help says where the
    value comes from, such as the recipe or the run's report) or the help already names it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_common_flags(parser: argparse.ArgumentParser, *, seed: bool = True, device: bool = True) -> None:
    """Add --seed (default 0) and --device (default: cuda, then mps, then cpu) to `parser`.

    Pass seed=False or device=False to a command that has no randomness or runs on the CPU only,
    so that it offers no flag that does nothing.
    """
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seed of every random stream of the run")
    if device:
        parser.add_argument("--device", default=None,
                            help="torch device, e.g. cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu)")


def resolve_device(name: str | None) -> torch.device:
    """The device a --device value names; None means cuda, then mps, then cpu (`runtime.default_device`).

    A device this machine lacks (CUDA or Apple's MPS) is refused with one line that says what to do.
    """
    from .runtime import UsageError, check_device

    try:
        return check_device(name)
    except UsageError as err:
        fail(str(err))


def fail(message: str) -> None:
    """Bad input on the command line: one line on stderr, exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_guidance_from(value: float | None) -> None:
    """--guidance-from (train_cifar.py and minidiff.training.sample): a log-SNR, or -inf for every step."""
    from .runtime import require

    require(value is None or (not math.isnan(value) and value != math.inf),
            f"--guidance-from must be a log-SNR (a number, or --guidance-from=-inf for every step), got {value}")


def check_sampling_flags(args: argparse.Namespace) -> None:
    """The flags both sampling commands share (--steps, --guidance, --guidance-rescale, --eta,
    --sampler), checked before any model is loaded: a UsageError (one line, exit 2) names the flag."""
    from .runtime import require

    # None: not given, filled later from the checkpoint (minidiff.training.sample), then checked again
    require(args.steps is None or 1 <= args.steps <= 1000,
            f"--steps must be from 1 to 1000 (the training steps), got {args.steps}")
    require(args.guidance is None or (args.guidance >= 0 and math.isfinite(args.guidance)),
            f"--guidance must be 0 or more, got {args.guidance}")
    require(args.guidance_rescale is None or 0 <= args.guidance_rescale <= 1,
            f"--guidance-rescale must lie in [0, 1], got {args.guidance_rescale}")
    check_guidance_from(getattr(args, "guidance_from", None))
    require(0 <= args.eta <= 1, f"--eta must lie in [0, 1], got {args.eta}")
    require(not args.eta or args.sampler in ("ddim", "ddpm", None),
            f"--eta is DDIM's noise; --sampler {args.sampler} takes none (drop --eta or use --sampler ddim)")
