"""Speed of minidiff's UNet presets, and of diffusers' UNet2DModel built as DDPM's CIFAR-10 network.

    python benchmarks/bench_unet.py                        # CPU (+ CUDA if present), short run
    python benchmarks/bench_unet.py --iters 20 --batch 32  # steadier figures
    python benchmarks/bench_unet.py --presets ddpm-cifar10 --device cuda --batch 128
    python benchmarks/bench_unet.py --choose-small         # the study behind the `small` preset

Figures printed, per preset and device:
  train img/s    images per second through one training step: forward, MSE backward, Adam step
  sample img/s   images per second through one forward pass without gradients (one sampler step)
  peak memory    CUDA: torch.cuda.max_memory_allocated. CPU: parameters + gradients + Adam state
                 + the tensors autograd saves for backward (counted by a saved-tensor hook)
  GFLOP/img      forward FLOPs per image, counted by torch.utils.flop_counter.FlopCounterMode

On a machine without a GPU it prints a GPU ESTIMATE: 3 x forward FLOPs per training image divided
into an assumed sustained throughput (--assumed-tflops). It is arithmetic, not a measurement.

Timing: the median over --iters steps after --warmup steps. When minidiff and diffusers are compared,
their steps alternate (A, B, A, B, ...) so that load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minidiff.training.runtime import default_device  # noqa: E402
from minidiff.unet import PRESETS, UNet  # noqa: E402

# ------------------------------------------------------------------------------------ models


class DiffusersUNet(torch.nn.Module):
    """diffusers.UNet2DModel with minidiff's call signature model(x, t, y=None) -> tensor."""

    def __init__(self, net, patch_size: int = 1):
        super().__init__()
        self.net, self.patch_size = net, patch_size

    def forward(self, x, t, y=None):
        p = self.patch_size
        if p == 1:
            return self.net(x, t).sample
        # minidiff's space-to-depth stem, around a UNet2DModel on the p*p*C-channel image
        return torch.nn.functional.pixel_shuffle(self.net(torch.nn.functional.pixel_unshuffle(x, p), t).sample, p)


def diffusers_unet(config: dict) -> torch.nn.Module | None:
    """diffusers.UNet2DModel built as the minidiff UNet `config` (a PRESETS entry), or None when
    diffusers is not installed. The same levels, widths, ResBlocks per level, attention
    resolutions, heads, GroupNorm groups and dropout, so the two have equal parameter counts;
    DDPM's conventions for the rest (GroupNorm eps 1e-6, stride-2 downsampling convs padded on the
    bottom and right, the timestep sinusoid as [sin, cos] with frequency shift 1). With
    PRESETS["ddpm-cifar10"] this is google/ddpm-cifar10-32's configuration. A preset with a
    space-to-depth stem (patch_size p) becomes UNet2DModel on the p*p*C-channel image of side
    size/p, between pixel_unshuffle and pixel_shuffle."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    if config.get("num_classes"):
        raise ValueError("the diffusers comparison is for unconditional presets (num_classes=None)")
    patch = config.get("patch_size", 1)
    size, ch, mults = config["image_size"] // patch, config["base_channels"], config["channel_mults"]
    widths = [ch * m for m in mults]
    attn = [size // 2**level in config["attn_resolutions"] for level in range(len(mults))]
    heads = config["num_heads"]
    head_dim = None  # diffusers: one head as wide as the block
    if heads > 1:  # diffusers takes one head width for every attention block: it must be unique
        dims = {w // heads for w, a in zip(widths, attn) if a} | {widths[-1] // heads}
        if len(dims) != 1:
            raise ValueError(f"attention blocks of widths giving head widths {sorted(dims)}: UNet2DModel "
                             "needs one head width for all of them")
        head_dim = dims.pop()
    net = UNet2DModel(
        sample_size=size, in_channels=config["in_channels"] * patch**2, out_channels=config["out_channels"] * patch**2,
        layers_per_block=config["num_res_blocks"], block_out_channels=tuple(widths),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        dropout=config["dropout"], attention_head_dim=head_dim, norm_num_groups=config["norm_groups"],
        norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    )
    return DiffusersUNet(net, patch)


def diffusers_ddpm_cifar10() -> torch.nn.Module | None:
    """UNet2DModel configured as DDPM's CIFAR-10 network (google/ddpm-cifar10-32's config)."""
    return diffusers_unet(PRESETS["ddpm-cifar10"])


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------- measuring


class Setting:
    """One way of running a model: device, batch, bf16 autocast or not, channels_last memory format
    or not, torch.compile (with which backend) or not."""

    def __init__(self, device: str, batch: int, bf16: bool = False, compile: bool = False,
                 channels_last: bool = False, compile_backend: str = "inductor"):
        self.device, self.batch, self.bf16, self.compile = torch.device(device), batch, bf16, compile
        self.channels_last, self.compile_backend = channels_last, compile_backend

    def label(self) -> str:
        compiled = "compile" if self.compile_backend == "inductor" else f"compile[{self.compile_backend}]"
        flags = [f for f, on in (("bf16", self.bf16), ("channels_last", self.channels_last),
                                 (compiled, self.compile)) if on]
        return f"{self.device.type} b{self.batch}" + (" " + "+".join(flags) if flags else " fp32")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


class Runner:
    """Holds a model, its optimizer and fixed inputs; `train_step()` and `sample_step()` time one step."""

    def __init__(self, model: torch.nn.Module, image_size: int, channels: int, s: Setting):
        self.s = s
        model = model.to(s.device)
        if s.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.fn = torch.compile(model, backend=s.compile_backend) if s.compile else model
        self.opt = torch.optim.Adam(model.parameters(), lr=2e-4)
        g = torch.Generator().manual_seed(0)
        shape = (s.batch, channels, image_size, image_size)
        self.x = torch.randn(shape, generator=g).to(s.device)
        self.target = torch.randn(shape, generator=g).to(s.device)
        self.t = torch.randint(0, 1000, (s.batch,), generator=g).to(s.device)
        if s.channels_last:
            self.x = self.x.to(memory_format=torch.channels_last)

    def _sync(self):
        if self.s.device.type == "cuda":
            torch.cuda.synchronize(self.s.device)
        elif self.s.device.type == "mps":
            torch.mps.synchronize()

    def train_step(self) -> float:
        self.model.train()
        self._sync()
        start = time.perf_counter()
        with self.s.autocast():
            out = self.fn(self.x, self.t)
        loss = F.mse_loss(out.float(), self.target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self._sync()
        return time.perf_counter() - start

    @torch.no_grad()
    def sample_step(self) -> float:
        self.model.eval()
        self._sync()
        start = time.perf_counter()
        with self.s.autocast():
            self.fn(self.x, self.t)
        self._sync()
        return time.perf_counter() - start


def timed(runners: list[Runner], step: str, warmup: int, iters: int) -> list[float]:
    """Median seconds per step for each runner, their steps interleaved."""
    for _ in range(warmup):
        for r in runners:
            getattr(r, step)()
    times = [[] for _ in runners]
    for _ in range(iters):
        for i, r in enumerate(runners):
            times[i].append(getattr(r, step)())
    return [statistics.median(ts) for ts in times]


def cpu_training_memory(model: torch.nn.Module, image_size: int, channels: int, batch: int) -> int:
    """Bytes a float32 CPU training step holds at its peak, counted rather than sampled.

    Parameters + gradients + Adam's two moments (4 x params) plus every tensor autograd saves for
    backward (activations). Tensors saved twice (same storage) are counted once, and saved
    parameters not at all (they are already in the 4 x params).
    """
    seen = {(p.untyped_storage().data_ptr(), p.untyped_storage().nbytes()) for p in model.parameters()}
    saved = [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            saved[0] += key[1]
        return t

    x = torch.randn(batch, channels, image_size, image_size)
    t = torch.zeros(batch, dtype=torch.long)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, t).square().mean()
    return 4 * 4 * num_params(model) + saved[0]


def cuda_training_memory(r: "Runner") -> int:
    """Peak CUDA bytes of one training step of this runner alone.

    Other runners' tensors stay allocated, so the peak is taken relative to what was allocated
    before the step (which, after the warm-up, includes this model's parameters, gradients and
    Adam moments), plus those four copies of the parameters.
    """
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    r.train_step()
    persistent = 4 * sum(p.numel() * p.element_size() for p in r.model.parameters())
    return torch.cuda.max_memory_allocated() - before + persistent


def forward_flops(model: torch.nn.Module, image_size: int, channels: int) -> float:
    """FLOPs of one forward pass for one image (multiply-add = 2 FLOPs), by FlopCounterMode."""
    model.eval()
    x = torch.randn(1, channels, image_size, image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.zeros(1, dtype=torch.long))
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------- report


def row(name, setting, n_params, train_s, sample_s, mem_bytes, mem_kind):
    b = setting.batch
    print(f"  {name:<22} {setting.label():<22} {n_params / 1e6:8.3f}M "
          f"{b / train_s:10.2f} {b / sample_s:11.2f} {mem_bytes / 2**20:10.0f} MiB ({mem_kind})", flush=True)


def header():
    print(f"  {'model':<22} {'setting':<22} {'params':>9} {'train img/s':>10} {'sample img/s':>11} "
          f"{'peak memory':>10}")


def bench_device(device: str, args) -> None:
    settings = [Setting(device, args.batch)]
    if device == "cpu" and args.cpu_variants:
        settings = [Setting(device, args.batch, bf16, comp) for bf16 in (False, True) for comp in (False, True)]
    if device == "cuda":
        settings = [Setting(device, args.cuda_batch, bf16, comp, channels_last=True)
                    for bf16 in (False, True) for comp in (False, True)]
    for s in settings:
        print(f"\n{s.label()}  (median of {args.iters} steps after {args.warmup} warm-up)")
        header()
        for name in args.presets:
            cfg = PRESETS[name]
            size, ch = cfg["image_size"], cfg["in_channels"]
            torch.manual_seed(0)
            runners = [Runner(UNet.from_preset(name), size, ch, s)]
            names = [f"minidiff {name}"]
            if name == "ddpm-cifar10" and not args.no_diffusers:
                theirs = diffusers_ddpm_cifar10()
                if theirs is None:
                    print("  (diffusers not installed: pip install diffusers to compare)")
                else:
                    runners.append(Runner(theirs, size, ch, s))
                    names.append("diffusers UNet2DModel")
            train = timed(runners, "train_step", args.warmup, args.iters)
            sample = timed(runners, "sample_step", args.warmup, args.iters)
            for r, n, tr, sa in zip(runners, names, train, sample):
                if s.device.type == "cuda":
                    mem, kind = cuda_training_memory(r), "cuda max allocated"
                else:
                    mem, kind = cpu_training_memory(r.model, size, ch, s.batch), "counted, train"
                row(n, s, num_params(r.model), tr, sa, mem, kind)
            if len(runners) == 2:
                print(f"  -> minidiff train step is {train[1] / train[0]:.2f}x diffusers' speed, "
                      f"sampling {sample[1] / sample[0]:.2f}x")
            del runners


def gpu_estimate(args) -> None:
    print(f"\nGPU ESTIMATE (no GPU here; arithmetic, not a measurement): training FLOPs per image = "
          f"3 x forward; assumed sustained throughput {args.assumed_tflops:g} TFLOP/s")
    print(f"  {'preset':<14} {'fwd GFLOP/img':>13} {'ESTIMATE train img/s':>21} {'ESTIMATE sample img/s':>22}")
    for name in args.presets:
        cfg = PRESETS[name]
        flops = forward_flops(UNet.from_preset(name), cfg["image_size"], cfg["in_channels"])
        rate = args.assumed_tflops * 1e12
        print(f"  {name:<14} {flops / 1e9:13.3f} {rate / (3 * flops):21.0f} {rate / flops:22.0f}")


# ------------------------------------------------------------------------ the small preset study

# Candidates for the `small` preset: what trains best in a few CPU minutes (docs/unet.md).
def _small(ch, mults, blocks=1, attn=()):
    return dict(base_channels=ch, channel_mults=mults, num_res_blocks=blocks, attn_resolutions=attn,
                norm_groups=8, dropout=0.0)


SMALL_CANDIDATES = {
    "c16-122-r1": _small(16, (1, 2, 2)),
    "c16-124-r1": _small(16, (1, 2, 4)),
    "c16-1248-r1": _small(16, (1, 2, 4, 8)),
    "c16-124-r1-a8": _small(16, (1, 2, 4), attn=(8,)),
    "c16-124-r2": _small(16, (1, 2, 4), blocks=2),
    "c32-122-r1": _small(32, (1, 2, 2)),
}


def choose_small(args) -> None:
    """Equal-CPU-time training of each candidate on the built-in data; lower held-out loss wins.

    Loss: minidiff.objectives.diffusion_loss, v prediction, linear schedule rescaled to zero terminal
    SNR (Lin et al.'s fixes). The held-out loss uses 512 fixed images, timesteps and noises, so
    every candidate is scored on the same draws.
    """
    from minidiff.training.data import Batches, builtin_shapes, to_float
    from minidiff.objectives import diffusion_loss
    from minidiff.schedules import Schedule

    torch.set_num_threads(args.threads)
    schedule = Schedule.make("linear", zero_snr=True)
    train_set = builtin_shapes(20_000, seed=0)
    held = to_float(builtin_shapes(512, seed=1).images)
    g = torch.Generator().manual_seed(123)
    held_t = torch.randint(0, 1000, (len(held),), generator=g)
    held_noise = torch.randn(held.shape, generator=g)

    def held_out_loss(model):
        model.eval()
        with torch.no_grad():
            return sum(diffusion_loss(model, held[i:i + 128], schedule, "v", t=held_t[i:i + 128],
                                      noise=held_noise[i:i + 128]).item() for i in range(0, 512, 128)) / 4

    runs = [(name, args.small_batch, args.small_lr) for name in args.candidates]
    runs += [(args.candidates[0], b, lr) for b, lr in args.extra_runs]
    print(f"\nsmall-preset study: {args.seconds:g} CPU-seconds of training each, {args.threads} threads, "
          "builtin data, v prediction, linear schedule with zero terminal SNR")
    print(f"  {'candidate':<16} {'params':>8} {'batch':>5} {'lr':>7} {'img/CPU-s':>11} {'steps':>6} "
          f"{'wall s':>6} {'held-out loss':>13}")
    for name, batch, lr in runs:
        torch.manual_seed(0)
        model = UNet.from_preset("small", **SMALL_CANDIDATES[name])
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        batches = Batches(train_set, batch, seed=0)
        gen = torch.Generator().manual_seed(0)
        step, start, cpu_start = 0, time.perf_counter(), time.process_time()
        model.train()
        # The budget is process CPU time, not wall clock: on a CPU shared with other jobs, wall
        # clock would reward whichever candidate ran while the others were idle.
        while time.process_time() - cpu_start < args.seconds:
            x, _ = batches.batch(step)
            loss = diffusion_loss(model, x, schedule, "v", generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        print(f"  {name:<16} {num_params(model) / 1e6:7.2f}M {batch:5d} {lr:7.0e} "
              f"{step * batch / cpu:11.1f} {step:6d} {wall:6.0f} {held_out_loss(model):13.4f}", flush=True)


# --------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto: CPU, then the default accelerator when present (CUDA, else Apple's MPS)")
    p.add_argument("--batch", type=int, default=8, help="CPU batch size")
    p.add_argument("--cuda-batch", type=int, default=128, help="CUDA batch size")
    p.add_argument("--cpu-variants", action="store_true",
                   help="on CPU too, run every combination of bf16 autocast and torch.compile")
    p.add_argument("--iters", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (compile happens here)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers UNet2DModel comparison")
    p.add_argument("--assumed-tflops", type=float, default=100.0,
                   help="sustained TFLOP/s assumed by the GPU ESTIMATE (bf16; ~100 is a guess for an "
                        "A100/H100-class GPU on this small conv net)")
    p.add_argument("--choose-small", action="store_true", help="run the small-preset study instead")
    p.add_argument("--candidates", nargs="+", default=list(SMALL_CANDIDATES), choices=list(SMALL_CANDIDATES))
    p.add_argument("--seconds", type=float, default=90.0, help="process CPU seconds per candidate in the study (about twice the wall clock of an idle 2-core machine)")
    p.add_argument("--small-batch", type=int, default=32)
    p.add_argument("--small-lr", type=float, default=1e-3)
    p.add_argument("--extra-runs", nargs="*", default=[], type=lambda s: tuple(float(v) for v in s.split(",")),
                   metavar="BATCH,LR", help="extra study runs of the first candidate with this batch and lr")
    args = p.parse_args(argv)
    args.extra_runs = [(int(b), lr) for b, lr in args.extra_runs]

    torch.set_num_threads(args.threads)
    if args.choose_small:
        choose_small(args)
        return
    print(f"torch {torch.__version__}, {args.threads} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA device"))
    if args.device in ("auto", "cpu"):
        bench_device("cpu", args)
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        bench_device("cuda", args)
    if args.device == "mps" or (args.device == "auto" and default_device() == "mps"):
        bench_device("mps", args)  # the CPU batch size; memory as on the CPU (parameters + Adam state)
    if not torch.cuda.is_available():
        gpu_estimate(args)


if __name__ == "__main__":
    main()
