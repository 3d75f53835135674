"""The flags every command line shares (`minidiff.training.cli`): one default convention, one error style."""

import argparse

import pytest
import torch

from minidiff.training.cli import add_common_flags, resolve_device


def test_defaults_are_seed_0_and_cuda_if_available():
    p = argparse.ArgumentParser()
    add_common_flags(p)
    args = p.parse_args([])
    assert args.seed == 0 and args.device is None
    assert resolve_device(args.device).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert p.parse_args(["--seed", "7", "--device", "cpu"]).seed == 7
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_command_without_randomness_or_device_gets_neither_flag():
    p = argparse.ArgumentParser()
    add_common_flags(p, seed=False, device=False)
    with pytest.raises(SystemExit):
        p.parse_args(["--seed", "1"])


@pytest.mark.parametrize("name", ["gpu7", "cuda:0" if not torch.cuda.is_available() else "nonsense"])
def test_a_bad_device_is_one_line_and_exit_2(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        resolve_device(name)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: --device")
