"""Sampling CLI end to end, and FID's arithmetic and image pipeline with a stand-in feature
extractor (no Inception weights can be downloaded here)."""

import math

import numpy as np
import pytest
import torch

from minidiff.training import data, sample, train as T
from minidiff.evaluation import fid


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class RandomProjection:
    """Stand-in for Inception: a fixed random linear map of the (4x4-pooled) image to 8 numbers."""

    def __init__(self, dim: int = 8, seed: int = 0):
        self.weight = torch.randn(3 * 4 * 4, dim, generator=torch.Generator().manual_seed(seed))
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1  # the pipeline's contract
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) @ self.weight


# ---------------------------------------------------------------------- Frechet distance


def test_frechet_distance_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).normal(size=(400, 12)) @ np.random.default_rng(1).normal(size=(12, 12))
    mu, sigma = fid.statistics(f)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_frechet_distance_diagonal_closed_form():
    """Diagonal covariances: ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_on_full_covariances():
    """An independent route: scipy's matrix square root of the non-symmetric product S1 S2."""
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(10, 10)), rng.normal(size=(10, 10))
    s1, s2 = a @ a.T + 0.1 * np.eye(10), b @ b.T  # s2 rank 10, s1 well conditioned
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx(fid.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)  # symmetric


def test_frechet_distance_of_singular_covariances_is_finite():
    """Fewer samples than dimensions make S singular; the eigen route still gives a real number."""
    f1 = np.random.default_rng(4).normal(size=(5, 20))
    f2 = np.random.default_rng(5).normal(size=(5, 20))
    d = fid.frechet_distance(*fid.statistics(f1), *fid.statistics(f2))
    assert np.isfinite(d) and d > 0


# ------------------------------------------------------------------------- image pipeline


def test_uint8_round_trip_through_npz_and_pipeline(tmp_path):
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    sample.save_npz(images, None, tmp_path / "s.npz")
    loaded = fid.load_images(tmp_path / "s.npz")
    assert loaded.dtype == np.uint8 and loaded.shape == (5, 8, 8, 3)
    unit = fid.uint8_to_unit(loaded)
    assert torch.equal(unit, images.float() / 255)  # channel order and levels kept exactly
    assert torch.equal(data.to_uint8(unit * 2 - 1), images)
    with pytest.raises(ValueError, match="uint8"):
        fid.check_uint8_images(loaded.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="channels last"):
        fid.check_uint8_images(images.numpy())


def test_fid_tells_same_distribution_from_shifted():
    """Two draws of the built-in set score far closer to each other than to a darkened copy."""
    extractor = RandomProjection()
    a = data.builtin_shapes(300, seed=0, resolution=16).images.permute(0, 2, 3, 1).numpy()
    b = data.builtin_shapes(300, seed=1, resolution=16).images.permute(0, 2, 3, 1).numpy()
    real = fid.statistics(fid.features(a, extractor, progress=False))
    darker = (b // 2).astype(np.uint8)
    same = fid.fid(b, real, extractor, progress=False)
    shifted = fid.fid(darker, real, extractor, progress=False)
    assert 0 < same < 0.2 * shifted


def test_real_statistics_are_cached_and_reused(tmp_path):
    extractor, loads = RandomProjection(), []
    images = data.builtin_shapes(50, seed=0, resolution=16).images.permute(0, 2, 3, 1).numpy()

    def load():
        loads.append(1)
        return images

    cache = tmp_path / "stats" / "real.npz"
    mu1, s1 = fid.cached_statistics(cache, load, extractor, batch_size=16, progress=False)
    calls = extractor.calls
    assert cache.exists() and calls == 4 and loads == [1]  # 50 images in batches of 16
    mu2, s2 = fid.cached_statistics(cache, load, extractor, batch_size=16, progress=False)
    assert extractor.calls == calls and loads == [1]  # neither images nor network touched again
    assert np.array_equal(mu1, mu2) and np.array_equal(s1, s2) and s1.dtype == np.float64
    # a cache written for other data is refused, not silently reused
    fid.cached_statistics(tmp_path / "a.npz", load, extractor, source="folder:/one:16", batch_size=16, progress=False)
    with pytest.raises(ValueError, match="folder:/one:16"):
        fid.cached_statistics(tmp_path / "a.npz", load, extractor, source="folder:/two:16", batch_size=16, progress=False)


# ------------------------------------------------------------------------- sampling CLI


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    T.train(T.TrainConfig(dataset="builtin", num_images=32, preset="tiny", class_cond=True,
                          batch_size=8, max_steps=2, minutes=0, sample_every=0, ckpt_every=0,
                          num_samples=4, sample_steps=2, device="cpu", judge_samples=0, out=str(out)))
    return out / T.CHECKPOINT


def test_sample_cli_writes_png_and_npz(tiny_checkpoint, tmp_path):
    from PIL import Image

    png, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    argv = [str(tiny_checkpoint), "--num", "6", "--steps", "3", "--batch-size", "4", "--class", "2", "7",
            "--guidance", "3", "--guidance-rescale", "0.7", "--png", str(png), "--npz", str(npz), "--seed", "5"]
    sample.main(argv)
    with np.load(npz) as f:
        images, labels = f["images"], f["labels"]
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [2, 7, 2, 7, 2, 7]
    with Image.open(png) as im:  # 6 images in rows of 2 (one column per class), 1-pixel padding
        assert im.size == (2 * 17 + 1, 3 * 17 + 1)
    # Same seed, same images; another seed, other images.
    sample.main(argv[:-1] + ["5"])
    with np.load(npz) as f:
        assert np.array_equal(f["images"], images)
    sample.main(argv[:-1] + ["6"])
    with np.load(npz) as f:
        assert not np.array_equal(f["images"], images)


def test_sample_uses_ema_weights_by_default(tiny_checkpoint):
    ckpt = T.load_checkpoint(tiny_checkpoint)
    ema_model, config = sample.load_model(tiny_checkpoint)
    live_model, _ = sample.load_model(tiny_checkpoint, ema=False)
    for k, v in ema_model.state_dict().items():
        assert torch.equal(v, ckpt["ema"][k]) and torch.equal(live_model.state_dict()[k], ckpt["model"][k])
    assert config["prediction"] == "v" and not ema_model.training


def test_an_older_checkpoint_with_a_retired_unet_option(tiny_checkpoint, tmp_path, capsys):
    """A UNet option that main no longer has loads with a note while it changed no weights (it was
    recorded at its "off" value); once the checkpoint holds weights of the part it added, sampling
    is refused in one line that names the commit with its code."""
    from minidiff.training import runtime

    ckpt = T.load_checkpoint(tiny_checkpoint)
    ckpt["model_config"]["level_bias"] = 0  # as an older minidiff could record it
    runtime.save_checkpoint(tmp_path / "off.pt", ckpt)
    model, _ = sample.load_model(tmp_path / "off.pt")
    assert all(torch.equal(v, ckpt["ema"][k]) for k, v in model.state_dict().items())
    assert "level_bias=0" in capsys.readouterr().out
    ckpt["ema"]["level_bias"] = torch.zeros(50, 3)
    runtime.save_checkpoint(tmp_path / "on.pt", ckpt)
    with pytest.raises(SystemExit) as exit_info:
        sample.main([str(tmp_path / "on.pt"), "--png", ""])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "level_bias" in err and runtime.RETIRED_AT in err and err.count("\n") == 1


def test_sample_rejects_bad_classes(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sample.main([str(tiny_checkpoint), "--class", "10", "11", "--png", ""])
    assert exit_info.value.code == 2 and "out of range" in capsys.readouterr().err


def test_sample_cli_defaults_to_the_run_report_settings(tiny_checkpoint, tmp_path, capsys):
    """No sampler flags: the checkpoint's stored report settings (the builtin recipe: its sample_steps
    with DPM-Solver++(2M), guidance 2.5 at log-SNR >= -3 only, no rescale, no clipping), image for image; a flag
    overrides only itself; a checkpoint written before the settings were stored gets the same ones from
    its config, and one written before the recipe named a sampler gets DDIM, which the report used then
    (and one from before guidance_from, guidance at every step)."""
    ckpt = T.load_checkpoint(tiny_checkpoint)
    assert ckpt["sampling"] == dict(sampler="dpmpp_2m", steps=2, spacing="trailing", guidance=2.5, guidance_rescale=0.0,
                                   guidance_from=-3.0, clip_x0=False)
    model, config = sample.load_model(tiny_checkpoint)
    labels = torch.arange(6) % 10
    npz = tmp_path / "s.npz"
    sample.main([str(tiny_checkpoint), "--num", "6", "--png", "", "--npz", str(npz)])
    assert ("sampling with dpmpp_2m, 2 trailing steps, guidance 2.5, rescale 0, guided only at log-SNR >= -3 "
            "(the run's report") in capsys.readouterr().out
    expected = sample.generate(model, config, 6, labels=labels, seed=0, progress=False, **ckpt["sampling"])
    with np.load(npz) as f:
        assert np.array_equal(f["images"], expected.permute(0, 2, 3, 1).numpy())

    sample.main([str(tiny_checkpoint), "--num", "6", "--png", "", "--npz", str(npz), "--guidance", "1"])
    assert "sampling with dpmpp_2m, 2 trailing steps, guidance 1 (flags: --guidance;" in capsys.readouterr().out
    unguided = sample.generate(model, config, 6, labels=labels, seed=0, progress=False, sampler="dpmpp_2m", steps=2)
    with np.load(npz) as f:
        assert np.array_equal(f["images"], unguided.permute(0, 2, 3, 1).numpy())

    sample.main([str(tiny_checkpoint), "--num", "6", "--png", "", "--npz", str(npz), "--clip-x0"])
    assert "guidance 2.5, rescale 0, guided only at log-SNR >= -3, x0 clipped to [-1, 1] (flags: --clip-x0;" \
        in capsys.readouterr().out
    clipped = sample.generate(model, config, 6, labels=labels, seed=0, progress=False, **{**ckpt["sampling"], "clip_x0": True})
    with np.load(npz) as f:
        assert np.array_equal(f["images"], clipped.permute(0, 2, 3, 1).numpy())

    sample.main([str(tiny_checkpoint), "--num", "6", "--png", "", "--npz", str(npz), "--guidance-from=-inf"])
    assert "guidance 2.5, rescale 0 (flags: --guidance-from;" in capsys.readouterr().out
    everywhere = sample.generate(model, config, 6, labels=labels, seed=0, progress=False,
                                 **{**ckpt["sampling"], "guidance_from": -math.inf})
    with np.load(npz) as f:
        assert np.array_equal(f["images"], everywhere.permute(0, 2, 3, 1).numpy())

    old = {k: v for k, v in ckpt.items() if k != "sampling"}
    torch.save(old, tmp_path / "old.pt")
    assert sample.load_run(tmp_path / "old.pt")[2] == ckpt["sampling"]
    older = dict(old, config={k: v for k, v in ckpt["config"].items() if k != "sampler"})
    torch.save(older, tmp_path / "older.pt")
    assert sample.load_run(tmp_path / "older.pt")[2] == dict(ckpt["sampling"], sampler="ddim")
    oldest = dict(old, config={k: v for k, v in ckpt["config"].items() if k != "guidance_from"})
    torch.save(oldest, tmp_path / "oldest.pt")
    assert sample.load_run(tmp_path / "oldest.pt")[2] == dict(ckpt["sampling"], guidance_from=-math.inf)


def test_generate_guidance_from_is_the_interval_from_there_up(tiny_checkpoint):
    """guidance_from = g is guidance_interval = (g, inf): image for image; -inf is plain guidance."""
    model, config = sample.load_model(tiny_checkpoint)
    # two training steps leave the zero-initialised output layer near zero, so cond and uncond agree:
    # perturb every weight so that the class matters and guiding at fewer steps draws other images
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(0.2 * torch.randn(weight.shape, generator=gen))
    kw = dict(sampler="ddim", steps=4, guidance=3.0, labels=torch.arange(4) % 10, seed=1, progress=False)
    a = sample.generate(model, config, 4, guidance_from=-1.0, **kw)
    assert torch.equal(a, sample.generate(model, config, 4, guidance_interval=(-1.0, math.inf), **kw))
    everywhere = sample.generate(model, config, 4, guidance_from=-math.inf, **kw)
    assert torch.equal(everywhere, sample.generate(model, config, 4, **kw))
    assert not torch.equal(a, everywhere)  # guidance_from was not ignored
    with pytest.raises(ValueError, match="not both"):
        sample.generate(model, config, 4, guidance_from=-1.0, guidance_interval=(-2.0, 5.0), **kw)
