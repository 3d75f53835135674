"""`minidiff sample CKPT --init/--strength/--mask`: editing images from the command line."""

import numpy as np
import pytest
from PIL import Image

from minidiff.training import sample
from minidiff.training import train as T

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


def draw(ckpt, tmp_path, *flags):
    npz = tmp_path / "s.npz"
    sample.main([str(ckpt), "--num", "4", "--steps", "4", "--png", "", "--npz", str(npz), "--seed", "3", *flags])
    with np.load(npz) as f:
        return f["images"]


def images(tmp_path):
    g = np.random.default_rng(0)
    dark = write_png(tmp_path / "dark.png", g.integers(0, 60, (16, 16, 3)))
    bright = write_png(tmp_path / "bright.png", g.integers(200, 256, (16, 16, 3)))
    return dark, bright


def test_full_strength_on_a_zero_snr_checkpoint_ignores_the_input(tiny_checkpoint, tmp_path):
    dark, bright = images(tmp_path)
    assert T.load_checkpoint(tiny_checkpoint)["config"]["zero_snr"]
    a = draw(tiny_checkpoint, tmp_path, "--init", dark, "--strength", "1.0")
    b = draw(tiny_checkpoint, tmp_path, "--init", bright, "--strength", "1.0")
    assert np.array_equal(a, b)
    assert np.array_equal(a, draw(tiny_checkpoint, tmp_path))  # and it is what sampling draws
    # a weaker edit keeps some of each input: the dark input's edit is darker
    a6 = draw(tiny_checkpoint, tmp_path, "--init", dark, "--strength", "0.3")
    b6 = draw(tiny_checkpoint, tmp_path, "--init", bright, "--strength", "0.3")
    assert a6.mean() + 50 < b6.mean()


def test_mask_keeps_the_black_pixels_of_the_input(tiny_checkpoint, tmp_path):
    dark, _ = images(tmp_path)
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    out = draw(tiny_checkpoint, tmp_path, "--init", dark, "--mask", write_png(tmp_path / "m.png", m),
               "--resample", "1")
    keep = m == 0
    src = np.asarray(Image.open(dark))
    assert np.array_equal(out[:, keep], np.broadcast_to(src[keep], out[:, keep].shape))
    # an RGB mask whose channels agree is the same mask
    rgb = write_png(tmp_path / "m3.png", np.stack([m] * 3, -1))
    assert np.array_equal(draw(tiny_checkpoint, tmp_path, "--init", dark, "--mask", rgb, "--resample", "1"), out)


@pytest.mark.parametrize("make, words", [
    (lambda d, p: ["--init", write_png(p / "big.png", np.zeros((32, 32, 3)))], "is 32x32 pixels; this model draws 16x16"),
    (lambda d, p: ["--init", write_png(p / "grey.png", np.zeros((16, 16)))], "has 1 channel(s); this model's images have 3"),
    (lambda d, p: ["--init", d, "--mask", write_png(p / "soft.png", np.full((16, 16), 128))], "is not binary"),
    (lambda d, p: ["--init", d, "--strength", "0"], "--strength must lie in (0, 1]"),
    (lambda d, p: ["--init", d, "--strength", "1.5"], "--strength must lie in (0, 1]"),
    (lambda d, p: ["--strength", "0.5"], "give it with --init IMAGE"),
    (lambda d, p: ["--init", str(p / "missing.png")], "no such file"),
    (lambda d, p: ["--init", d, "--resample", "2"], "give a --mask too"),
    (lambda d, p: ["--threshold", "1.5"], "--threshold is a percentile"),
])
def test_bad_edits_exit_2_with_one_line(tiny_checkpoint, tmp_path, capsys, make, words):
    dark, _ = images(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        sample.main([str(tiny_checkpoint), "--num", "2", "--png", "", *make(dark, tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err


def test_threshold_flag_reaches_the_sampler(tiny_checkpoint, tmp_path, monkeypatch):
    seen = {}
    real = sample.sample

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sample, "sample", spy)
    draw(tiny_checkpoint, tmp_path, "--threshold", "0.995")
    assert seen["threshold"] == 0.995 and not seen["clip_x0"]
    assert "init" not in seen  # no editing asked for: the sampler's plain path
