"""--device left out means cuda, then mps (an Apple laptop's GPU), then cpu, in every command; and the
float64 schedule tables reach a device without float64 (mps) cast once, with the numbers unchanged.

No Mac runs these tests: the choice is tested by faking what torch reports, and the cast by faking
the one rule that says which devices lack float64 (`schedules.has_float64`)."""

import argparse
import re

import pytest
import torch

from minidiff import objectives, schedules
from minidiff.training import runtime
from minidiff.training.loss import recipe_loss
from minidiff.training.cli import add_common_flags, resolve_device
from minidiff.schedules import Schedule
from minidiff.training.config import TrainConfig


def fake_accelerators(monkeypatch, *, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_default_device_is_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    fake_accelerators(monkeypatch, cuda=cuda, mps=mps)
    assert runtime.default_device() == expected


def test_every_command_takes_the_default_from_one_function(monkeypatch):
    """The sampling and repro commands (cli.resolve_device), the pixel trainer (TrainConfig.resolved)
    and both trainers' process set-up (runtime.setup_distributed) all pick mps on a Mac without CUDA."""
    fake_accelerators(monkeypatch, cuda=False, mps=True)
    p = argparse.ArgumentParser()
    add_common_flags(p)
    assert p.parse_args([]).device is None and "mps" in p.format_help()
    monkeypatch.setattr(runtime, "check_device", lambda name: torch.device(name or runtime.default_device()))
    assert resolve_device(None) == torch.device("mps")
    assert TrainConfig(out="x").resolved().device == "mps"
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert runtime.setup_distributed(None)[2] == torch.device("mps")


def test_no_command_picks_its_own_default():
    """Nothing outside runtime.default_device decides the default with `cuda.is_available() else cpu`."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("minidiff/**/*.py"), *root.glob("benchmarks/*.py"), root / "train_cifar.py",
             root / "train_latent.py"]
    own = re.compile(r"cuda\.is_available\(\)[^\n]*else \"cpu\"")
    offenders = [str(f.relative_to(root)) for f in files if own.search(f.read_text())]
    assert offenders == []


def test_an_mps_device_this_machine_lacks_is_one_line_and_exit_2(monkeypatch, capsys):
    fake_accelerators(monkeypatch, cuda=False, mps=False)
    with pytest.raises(SystemExit) as exit_:
        resolve_device("mps")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "MPS" in err and "--device cpu" in err


def test_mps_has_no_float64_and_every_other_device_has():
    assert not schedules.has_float64("mps") and not schedules.has_float64(torch.device("mps"))
    assert schedules.has_float64("cpu") and schedules.has_float64("cuda:1")


def test_a_table_is_cast_once_to_float32_where_float64_is_missing(monkeypatch):
    ab = Schedule.make("linear", zero_snr=True).alphas_cumprod
    assert schedules.table_on(ab, "cpu").dtype == torch.float64  # kept where float64 exists
    monkeypatch.setattr(schedules, "has_float64", lambda device: False)
    on_mps = schedules.table_on(ab, "cpu")
    assert on_mps.dtype == torch.float32 and torch.equal(on_mps, ab.float())
    ints = torch.arange(3)
    assert schedules.table_on(ints, "cpu").dtype == torch.int64  # only float64 is cast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_network_sees_the_same_numbers_with_or_without_float64(monkeypatch, dtype):
    """extract() (every schedule entry the loss and the model input use) and the whole loss are
    bit-for-bit the same when the device lacks float64."""
    schedule = Schedule.make("cosine", zero_snr=True)
    x = torch.randn(6, 3, 4, 4).to(dtype)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    model = lambda x_t, t, y=None: x_t * 0.5  # noqa: E731

    def loss():
        g = torch.Generator().manual_seed(0)
        return objectives.diffusion_loss(model, x, schedule, "v", t=t, generator=g)

    with_f64 = objectives.extract(schedule.alphas_cumprod, t, x), loss()
    snr = Schedule.make("linear")
    min_snr = recipe_loss(model, x, snr, "x0", t=t, generator=torch.Generator().manual_seed(0), weighting="min_snr")
    monkeypatch.setattr(schedules, "has_float64", lambda device: False)
    without = objectives.extract(schedule.alphas_cumprod, t, x), loss()
    assert without[0].dtype == dtype and torch.equal(with_f64[0], without[0])
    assert torch.equal(with_f64[1], without[1])
    assert torch.equal(min_snr, recipe_loss(model, x, snr, "x0", t=t, weighting="min_snr",
                                                          generator=torch.Generator().manual_seed(0)))
