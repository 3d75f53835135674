"""What both trainers (pixel space: `train.py`; latent space: `latent/train.py`) share.

    errors        UsageError (bad input: one line, exit 2) and TrainingError (a run that cannot go on)
    devices       the default device (cuda, then mps, then cpu) and the check of a --device value
    distributed   joining a torchrun process group, and the two collectives the loops need
    learning rate linear warm-up, then constant or a cosine decay to the end of the run
    batch order   StepOrder: the images of step k are a pure function of (seed, k)
    randomness    every random stream of every rank, as tensors for the checkpoint
    checkpoints   atomic writes that survive a crash or a full disk; loads without pickle
    resume        one rule: a resume may change how long and how fast, never what is trained
    interrupts    the first Ctrl-C finishes the step and saves; metrics.jsonl and loss.png

Nothing here knows either trainer's config class: the trainers pass plain dicts and numbers, so
this file sits below both and imports neither.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import signal
import sys
import threading
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist

# ----------------------------------------------------------------------------------- errors


class UsageError(ValueError):
    """Bad input (a flag out of range, a missing or foreign checkpoint, an unreadable folder).
    Raised before any work starts; a command line prints its one-line message and exits 2."""


class TrainingError(RuntimeError):
    """A run that cannot go on (a NaN loss, a checkpoint that cannot be written)."""


def run_command(fn, *args) -> object:
    """Call fn(*args) as a command line's body: a UsageError (or a missing file) prints one line
    `error: ...` and exits 2, a TrainingError exits 1, Ctrl-C exits 130; no traceback."""
    try:
        return fn(*args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except (UsageError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def require(ok: bool, message: str) -> None:
    """Raise UsageError(message) unless ok: the one-line checks every trainer runs first."""
    if not ok:
        raise UsageError(message)


def check_output_folder(path: str | Path, flag: str) -> Path:
    """A run folder that can be created: not an existing file, not below one."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            require(p.is_dir(), f"{flag} {path} cannot be a folder: {p} is a file. Choose another {flag}.")
            break
    return path


# ----------------------------------------------------------------------------------- devices


def default_device() -> str:
    """The device a command uses when --device is left out: cuda, then mps (the GPU of an Apple
    laptop), then cpu. Every command line takes its default from here."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(name: str | None) -> torch.device:
    """The device a --device value names (None or "auto": default_device()); a UsageError when it
    is not a device, or names an accelerator this machine lacks."""
    name = default_device() if name in (None, "auto") else name
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    require(device.type != "cuda" or torch.cuda.is_available(),
            f"--device {name} asks for CUDA, which is not available here; use --device {default_device()}")
    require(device.type != "mps" or torch.backends.mps.is_available(),
            f"--device {name} asks for Apple's GPU (MPS), which is not available here; use --device {default_device()}")
    return device


# ------------------------------------------------------------------------------ distributed


def setup_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group, nccl
    with one GPU per local rank or gloo on CPU; alone, runs on `device` (None or "auto":
    default_device(), cuda then mps then cpu)."""
    if device in (None, "auto"):
        device = default_device()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def cleanup_distributed(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(values: torch.Tensor, world: int) -> torch.Tensor:
    """The mean over processes (a NaN on any rank shows on every rank, at the same step)."""
    if world > 1:
        dist.all_reduce(values)
        values /= world
    return values


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank if it is true on any: all ranks must stop at the same step."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj, world: int) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------- learning rate

LR_DECAYS = ("constant", "cosine", "wsd")
WSD_COOLDOWN = 0.2  # decay="wsd": the share of the run, at its end, over which the rate falls to 0 (default)


def learning_rate(step: int, *, lr: float, warmup: int, decay: str = "constant", progress: float = 0.0,
                  cooldown: float = WSD_COOLDOWN) -> float:
    """The learning rate of optimizer step `step` (0-indexed).

    Linear warm-up from lr / warmup to lr over `warmup` steps (DDPM, App. B), then constant, or
    with decay="cosine" down to 0 along lr * (1 + cos(pi * progress)) / 2, where progress in
    [0, 1] is how much of the run is done (of its steps or of its wall-clock budget), or with
    decay="wsd" (warm-up, stable, decay) constant until the last `cooldown` share of the run and
    then linearly down to 0 at its end.
    """
    if decay not in LR_DECAYS:
        raise ValueError(f"unknown learning-rate decay {decay!r}; choose one of {', '.join(LR_DECAYS)}")
    rate = lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr
    progress = min(1.0, max(0.0, progress))
    if decay == "cosine":
        rate *= 0.5 * (1 + math.cos(math.pi * progress))
    elif decay == "wsd":
        rate *= min(1.0, (1.0 - progress) / cooldown)
    return rate


# ------------------------------------------------------------------------------ batch order


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers, so that nearby inputs give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class StepOrder:
    """Which items each batch holds: the batch of step k is a pure function of (seed, k).

    Epoch e = floor(k / per_epoch) visits the items in a permutation seeded by (seed, e); each
    global batch of batch_size * world_size items is cut into world_size disjoint slices, one
    per rank; the ragged tail of an epoch is dropped. Resuming at step k needs only k.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        require(batch_size >= 1, f"batch size must be at least 1, got {batch_size}")
        require(batch_size * world_size <= num_items,
                f"batch size {batch_size} x {world_size} process(es) exceeds the dataset size {num_items}; "
                "lower the batch size or add images")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_epoch = num_items // (batch_size * world_size)
        self._epoch, self._order = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, within = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0x5EED))
            self._epoch, self._order = epoch, torch.randperm(self.num_items, generator=g)
        start = (within * self.world_size + self.rank) * self.batch_size
        return self._order[start:start + self.batch_size]


# ------------------------------------------------------------------------------- randomness


def rng_states(generators: dict[str, torch.Generator]) -> dict:
    """Every random stream a step draws from, as CPU tensors: torch's global CPU and CUDA
    generators (dropout) and the loop's own named generators (timesteps, noise, labels)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    for name, g in generators.items():
        states[name] = g.get_state().cpu()
    return states


def set_rng_states(states: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))
    for name, g in generators.items():
        g.set_state(states[name])


# ------------------------------------------------------------------------------ checkpoints

CHECKPOINT = "checkpoint.pt"
RETIRED_AT = "7c7df62"  # the last commit with the options that studies retired (docs/recipe_history.md)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to `path`.tmp, fsync, then rename over `path`: a crash or a full disk during
    the write leaves the previous checkpoint as it was (a rename is atomic)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the checkpoint
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        raise TrainingError(
            f"could not write the checkpoint {path} ({'disk full' if full else err.strerror or err}); "
            + ("the previous checkpoint is intact: free some space, then --resume." if path.exists()
               else "free some space and start again.")) from None


def load_checkpoint(path: str | Path, kind: str | None = None, *, missing: str = "pass the path of a checkpoint.pt") -> dict:
    """A checkpoint as written by save_checkpoint, loaded with weights_only=True (no pickled code
    runs). With `kind`, refuse a checkpoint written by another kind of run, saying which."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}: {missing}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        raise UsageError(f"{path} is not a readable checkpoint ({type(err).__name__}); it may be truncated "
                         "or not a minidiff checkpoint. Delete it to start afresh.") from None
    found = None
    if isinstance(state, dict):  # checkpoints from before `kind` was recorded are told by their keys
        found = state.get("kind") or ("pixel" if "model_config" in state else "latent" if "unet" in state else None)
    if kind is not None and found != kind:
        raise UsageError(f"{path} was written by {found or 'something other than minidiff'} training, not "
                         f"{kind} training; point this run at another output folder.")
    return state


def check_resume(saved: dict, current: dict, keys, unrecorded: dict | None = None) -> None:
    """The one resume rule: the settings that decide what is trained (`keys`) must equal the
    checkpoint's. A resume may change how long and how fast the run goes, nothing else.
    `unrecorded` gives the value a key had in checkpoints written before it was recorded; a key
    that this version no longer has is ignored with a note (ignored_settings)."""
    ignored_settings(saved, current)
    saved = {**(unrecorded or {}), **saved}
    changed = [k for k in keys if saved.get(k) != current.get(k)]
    if changed:
        diffs = ", ".join(f"{k}: {current.get(k)!r} now, {saved.get(k)!r} in the checkpoint" for k in changed)
        raise UsageError(f"--resume would change what is trained ({diffs}). Resume with the checkpoint's "
                         "values, or start a new run in another output folder.")


def ignored_settings(saved: dict, known) -> list[str]:
    """The settings of an older checkpoint that this version does not know (options that studies
    retired, see docs/recipe_history.md): each is ignored, with a note that shows its value."""
    unknown = sorted(k for k in saved if k not in known)
    if unknown:
        print("note: ignoring settings this version of minidiff does not have: "
              + ", ".join(f"{k}={saved[k]!r}" for k in unknown) + f" (the code that used them: git checkout {RETIRED_AT})")
    return unknown


def start_or_resume(out: Path, *, resume: bool, kind: str, config: dict, keys, max_steps: int,
                    out_flag: str, unrecorded: dict | None = None) -> dict | None:
    """The checkpoint a run continues from, or None for a new run.

    A new run never overwrites a checkpoint; a resume must keep `keys` (check_resume). A run
    that has already reached max_steps is finished: say so (the caller then returns, exit 0)."""
    path = Path(out) / CHECKPOINT
    if not resume:
        if path.exists():
            raise UsageError(f"{path} exists: pass --resume to continue that run, or choose another "
                             f"{out_flag} (or delete the folder) to start afresh.")
        return None
    state = load_checkpoint(path, kind, missing="nothing to resume. Drop --resume to start a new run, or "
                                                  f"point {out_flag} at the run you mean.")
    check_resume(state["config"], config, keys, unrecorded)
    if state["step"] >= max_steps:
        print(f"{out} is finished: it reached step {state['step']} of --max-steps {max_steps}. "
              "Nothing to do; pass a larger --max-steps to train on.")
    return state


# ------------------------------------------------------------------------------- interrupts


class StopOnInterrupt:
    """The first Ctrl-C becomes a request that the loop honours after the current step (so the
    checkpoint it saves is exact); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to quit now)")

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def check_finite(losses: torch.Tensor, step: int, ckpt_path: Path) -> None:
    """Stop on the first NaN/inf among the losses of steps step-len(losses)+1 .. step."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        first = int(bad[0])
        raise TrainingError(
            f"loss became {losses[first].item()} at step {step - len(losses) + first + 1}; stopping "
            f"without saving. The last good checkpoint is {ckpt_path} (try a lower --lr, or drop --bf16).")


# ---------------------------------------------------------------------------------- metrics


class MetricsLog:
    """metrics.jsonl (one JSON line per logged step) and its plot loss.png."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        """The logged lines; a line torn by a kill mid-write is dropped."""
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def truncate(self, step: int) -> None:
        """Drop lines logged after `step`: a run killed after its last checkpoint wrote them, and
        the resumed run logs those steps again."""
        if self.path.exists():
            kept = [r for r in self.rows() if r["step"] <= step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self, out: str | Path, title: str | None = None) -> None:
        """Loss against step (log scale) with a running mean, as a PNG."""
        rows = self.rows()
        if not rows:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in rows]
        loss = torch.tensor([r["loss"] for r in rows], dtype=torch.float64)
        window = max(1, len(rows) // 20)
        smooth = loss.unfold(0, window, 1).mean(-1)
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        ax.plot(steps, loss.tolist(), lw=0.6, alpha=0.5, label=f"loss (mean of {rows[0].get('window', 1)} steps)")
        ax.plot(steps[window - 1:], smooth.tolist(), lw=1.5, label=f"running mean ({window} points)")
        ax.set_yscale("log")
        ax.set_title(title or self.path.parent.name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("diffusion loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out)
        plt.close(fig)
