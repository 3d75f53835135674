"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core CPU run fastest, and the same every time, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The checkpoint of a 2-step tiny run of the built-in recipe: zero terminal SNR, v prediction,
    class-conditional, guided 2.5 from log-SNR -3, DPM-Solver++ (shared by the tests that only
    need a real checkpoint to load and draw from)."""
    from minidiff.training import train as T

    out = tmp_path_factory.mktemp("tiny-run")
    T.train(T.TrainConfig(dataset="builtin", num_images=32, preset="tiny", batch_size=8, max_steps=2, minutes=0,
                          sample_every=0, ckpt_every=0, num_samples=4, sample_steps=2, device="cpu",
                          judge_samples=0, out=str(out)))
    return out / T.CHECKPOINT
