"""benchmarks/sample_grids.py: each image lands in its cell at twice its size, NCHW and grey inputs
read as NHWC colour, and bad input is one line with exit status 2."""

import numpy as np
from scripts import load_script


def grids():
    return load_script("benchmarks/sample_grids.py")


def test_each_image_lands_in_its_cell_at_twice_its_size():
    images = np.arange(5 * 3 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3, 3)
    canvas = grids().panel(images, n=5, scale=2, gap=1)
    assert canvas.shape == (1 + 2 * 7, 1 + 3 * 7, 3)  # 5 images: 3 columns, 2 rows of 6 px + gap
    r, c = divmod(4, 3)
    cell = canvas[1 + r * 7:1 + r * 7 + 6, 1 + c * 7:1 + c * 7 + 6]
    assert np.array_equal(cell[::2, ::2], images[4]) and np.array_equal(cell[1::2, 1::2], images[4])
    assert (canvas[0] == 128).all()  # the grey frame


def test_layouts_and_bad_input(tmp_path, capsys):
    g = grids()
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "nchw.npz", images=x)
    np.savez(tmp_path / "grey.npz", images=x[:, :1].transpose(0, 2, 3, 1))
    assert np.array_equal(g.load(tmp_path / "nchw.npz"), x.transpose(0, 2, 3, 1))
    assert g.panel(g.load(tmp_path / "grey.npz"), 4).shape[-1] == 3
    out = tmp_path / "f.png"
    assert g.main([str(tmp_path / "nchw.npz"), str(tmp_path / "grey.npz"), "--out", str(out), "--n", "4"]) == 0
    assert out.stat().st_size > 0
    assert g.main([str(tmp_path / "nope.npz"), "--out", str(out)]) == 2
    assert g.main([str(tmp_path / "nchw.npz"), "--titles", "a", "b", "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err
