"""The sample-quality instrument (minidiff.evaluation.metrics): a set scores 0 against itself, damage ranks in
order, the classifier recognises real images, the cache is reused for the same data and refused for
other data, and the CLI's bad-input path is one line and exit status 2."""

import os
import shutil

import numpy as np
import pytest
import torch

from minidiff.training import data, sample
from minidiff.evaluation import metrics as M

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RES, NUM, NUM_REF = 16, 2000, 1000  # a small built-in set: the classifier trains in seconds


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("metrics-cache")


@pytest.fixture(scope="module")
def judge(cache_dir):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield M.Judge.for_dataset("builtin", resolution=RES, num=NUM, num_reference=NUM_REF,
                                  cache_dir=cache_dir, progress=False)
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- the measures


def test_a_set_against_itself_scores_zero(judge):
    held, labels = judge.real.held
    s = judge.score(held, labels)
    assert abs(s["frechet"]) < 1e-6 and s["brightness_w1"] == 0.0
    assert s["accuracy"] == pytest.approx(judge.accuracy)  # the same images the cache's accuracy came from
    assert s["notes"] == []


def test_wasserstein1_matches_an_independent_implementation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.uniform(-1, 2, size=170)
    assert M.wasserstein1(a, a + 0.25) == pytest.approx(0.25, abs=1e-12)  # a shift moves every quantile by 0.25
    stats = pytest.importorskip("scipy.stats")
    assert M.wasserstein1(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-12)


def test_degraded_sets_rank_in_the_order_of_their_damage(judge):
    x, y = judge.real.other
    real = judge.score(x, y)
    blurred = [judge.score(M.blur(x, sigma), y) for sigma in (0.5, 1.0, 2.0)]
    squeezed = [judge.score(M.squeeze_brightness(x, a), y) for a in (0.25, 0.5, 1.0)]
    noise = judge.score(M.uniform_noise(x, seed=0), y)

    fd = lambda scores: [s["frechet"] for s in scores]
    assert fd([real, *blurred, noise]) == sorted(fd([real, *blurred, noise]))
    assert fd([real, *squeezed, noise]) == sorted(fd([real, *squeezed, noise]))
    assert real["frechet"] < 0.5 * min(blurred[1]["frechet"], squeezed[1]["frechet"])  # the calibration rows' damage

    w1 = lambda scores: [s["brightness_w1"] for s in scores]
    assert w1([real, *squeezed]) == sorted(w1([real, *squeezed])) and noise["brightness_w1"] > squeezed[1]["brightness_w1"]
    # Squeezing every image's mean halfway to the centre halves the spread of brightness: W1 is
    # then about half of what squeezing all the way (a constant brightness) costs.
    assert squeezed[1]["brightness_w1"] == pytest.approx(0.5 * squeezed[2]["brightness_w1"], rel=0.15)
    # A blur keeps each image's mean, so it leaves the brightness W1 where real images put it.
    assert all(abs(b["brightness_w1"] - real["brightness_w1"]) < 0.005 for b in blurred)


def test_classifier_recognises_held_out_real_images(judge):
    assert judge.accuracy >= 0.95
    calibration = judge.calibration()
    assert calibration["real"]["accuracy"] >= 0.95 and calibration["noise"]["accuracy"] < 0.3  # chance is 0.1
    assert set(calibration) == set(M.CALIBRATIONS)


def test_image_formats_give_the_same_score(judge):
    x, y = judge.real.other
    nchw = judge.score(x[:300], y[:300])
    nhwc = judge.score(x[:300].permute(0, 2, 3, 1).numpy(), y[:300].numpy())
    floats = judge.score(data.to_float(x[:300]), y[:300])
    for other in (nhwc, floats):
        assert other["frechet"] == nchw["frechet"] and other["accuracy"] == nchw["accuracy"]
    unconditional = judge.score(x[:300], np.full(300, -1))  # what the sample CLI writes without classes
    assert unconditional["accuracy"] is None and unconditional["frechet"] == nchw["frechet"]
    bigger = judge.score(data.builtin_shapes(300, seed=5, resolution=2 * RES).images)
    assert any("resized from 32x32" in n for n in bigger["notes"])
    gray = judge.score(x[:300].float().mean(1, keepdim=True).round().to(torch.uint8))
    assert any("repeated to three channels" in n for n in gray["notes"])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        judge.score(x.float())  # 0..255 floats are not the library's convention
    with pytest.raises(ValueError, match="out of range"):
        judge.score(x[:10], np.full(10, 10))


# ---------------------------------------------------------------------------------- cache


def test_cache_is_reused_for_the_same_data_and_refused_for_other_data(judge, cache_dir):
    path = judge.cache_file
    assert path.parent == cache_dir and path.exists()
    stamp = os.stat(path).st_mtime_ns
    again = M.Judge.for_dataset("builtin", resolution=RES, num=NUM, num_reference=NUM_REF,
                                cache_dir=cache_dir, progress=False)
    assert not again.trained and again.cache_file == path and os.stat(path).st_mtime_ns == stamp
    for k, v in judge.net.state_dict().items():
        assert torch.equal(v, again.net.state_dict()[k])
    # Other data (one image fewer to train on) has another fingerprint, so another file; a file
    # holding this data's classifier put in its place is refused rather than used.
    other = M.builtin_data(num=NUM - 1, num_reference=NUM_REF, resolution=RES)
    assert other.fingerprint != judge.real.fingerprint
    assert M.cache_path(other, cache_dir) != path
    shutil.copy(path, M.cache_path(other, cache_dir))
    with pytest.raises(ValueError, match="other data"):
        M.Judge(other, cache_dir=cache_dir, progress=False)


# ------------------------------------------------------------------------------------ CLI


def test_cli_prints_the_table_for_a_sample_npz(judge, cache_dir, tmp_path, capsys):
    x, y = judge.real.other
    sample.save_npz(x[:400], y[:400], tmp_path / "s.npz")  # exactly what minidiff sample writes
    M.main([str(tmp_path / "s.npz"), "--num-images", str(NUM), "--num-reference", str(NUM_REF),
            "--cache-dir", str(cache_dir)])
    out = capsys.readouterr().out
    expected = judge.score(x[:400], y[:400])
    assert "from cache" in out
    frechet_row = next(line for line in out.splitlines() if line.startswith("Frechet"))
    assert frechet_row.split()[3] == f"{expected['frechet']:.4g}"  # the samples' column
    accuracy_row = next(line for line in out.splitlines() if line.startswith("class accuracy"))
    assert accuracy_row.split()[2] == f"{100 * expected['accuracy']:.1f}%"


def test_real_spread_draws_are_disjoint_and_pool_to_the_whole_set(judge, cache_dir, capsys):
    images = judge.real.other[0]
    draws = judge.real_spread(NUM_REF // 4)
    assert len(draws) == 4 and all(d["num"] == NUM_REF // 4 for d in draws)
    # each draw is the next quarter of the calibration images, in order
    second = images[NUM_REF // 4:NUM_REF // 2]
    assert draws[1]["brightness_w1"] == M.wasserstein1(M.brightness(second), judge.reference_brightness)
    # equal disjoint draws that cover the set: their shares average to the whole set's
    black, white = M.background_shares(images)
    assert np.mean([d["black_backgrounds"] for d in draws]) == pytest.approx(black)
    assert np.mean([d["white_backgrounds"] for d in draws]) == pytest.approx(white)
    # W1 is the integral of |F - G| and the whole set's CDF is the mean of the quarters': the
    # quarters' mean W1 is at least the whole set's (smaller draws carry more noise)
    whole = judge.real_spread(NUM_REF)[0]["brightness_w1"]
    assert np.mean([d["brightness_w1"] for d in draws]) > whole
    M.main(["--real-spread", str(NUM_REF // 4), "--resolution", str(RES), "--num-images", str(NUM),
            "--num-reference", str(NUM_REF), "--cache-dir", str(cache_dir)])
    rows = capsys.readouterr().out.splitlines()
    mean_row = next(line for line in rows if line.split()[0] == "mean")
    assert mean_row.split()[1] == f"{np.mean([d['brightness_w1'] for d in draws]):.3f}"


def _bad_inputs(tmp_path):
    np.savez(tmp_path / "no_images.npz", labels=np.zeros(4))
    np.savez(tmp_path / "bad_shape.npz", images=np.zeros((4, 5, 5, 5), np.uint8))
    good = tmp_path / "good.npz"
    sample.save_npz(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), None, good)
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.png").write_bytes(b"")
    return {"missing": [str(tmp_path / "nothing.npz")],
            "no images": [str(tmp_path / "no_images.npz")],
            "wrong shape": [str(tmp_path / "bad_shape.npz")],
            "folder without classes": [str(good), "--dataset", "folder", "--data-root", str(loose)],
            "folder without --data-root": [str(good), "--dataset", "folder"],
            "neither samples nor --real-spread": [],
            "samples and --real-spread": [str(good), "--real-spread", "10"],
            "--real-spread 0": ["--real-spread", "0"],
            "--real-spread above the reference": ["--real-spread", "6000"],
            "--figure without samples": ["--real-spread", "10", "--figure", str(tmp_path / "f.png")]}


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    for name, argv in _bad_inputs(tmp_path).items():
        with pytest.raises(SystemExit) as exit_:
            M.main(argv + ["--cache-dir", str(tmp_path / "cache")])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2, name
        assert err.startswith("error:") and len(err.splitlines()) == 1, (name, err)
    assert not (tmp_path / "cache").exists()  # refused before any training


def test_background_is_the_median_of_the_four_corners():
    """Background = median over the four 3x3 corner squares of the channel-mean brightness; a
    shape in the middle does not move it, a corner square of another value is outvoted 3 to 1."""
    x = torch.full((3, 3, 16, 16), 40, dtype=torch.uint8)            # background 40/255 = 0.157
    x[1] = 230                                                        # 0.902: near white
    x[2] = 10                                                         # 0.039: near black
    x[:, :, 5:11, 5:11] = 128                                         # a grey shape in the middle
    x[2, :, :3, :3] = 255                                             # one white corner, outvoted
    assert M.background(x) == pytest.approx([40 / 255, 230 / 255, 10 / 255])
    assert M.background_shares(x) == pytest.approx((1 / 3, 1 / 3))


def test_background_shares_of_real_and_squeezed_images(judge):
    """The built-in set has backgrounds from nearly black to nearly white: both extremes hold over
    a tenth of the real images; squeezing brightness halfway to the mean leaves none of either."""
    s = judge.calibration()
    assert s["real"]["black_backgrounds"] > 0.1 and s["real"]["white_backgrounds"] > 0.1
    assert s["squeezed"]["black_backgrounds"] == 0.0 and s["squeezed"]["white_backgrounds"] == 0.0
    assert "near-white backgrounds" in M.format_table(judge.score(*judge.real.held), s)


def test_saturation_and_mean_colour_agree_with_colorsys():
    """Saturation is HSV's (max - min) / max per pixel, averaged over the image: pure red 1, any grey 0,
    black 0 (max = 0), and random pixels agree with Python's colorsys pixel by pixel."""
    import colorsys

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 5, 5), generator=g, dtype=torch.uint8)
    x[0] = torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None]  # pure red
    x[1] = 77                                                           # grey
    x[2, :, :2] = 0                                                     # some black pixels
    want = [np.mean([colorsys.rgb_to_hsv(*(x[i, :, r, c].double() / 255).tolist())[1]
                     for r in range(5) for c in range(5)]) for i in range(4)]
    assert M.saturation(x) == pytest.approx(want, abs=1e-12)
    assert M.saturation(x)[:2] == pytest.approx([1.0, 0.0])
    assert M.mean_colour(x)[0] == pytest.approx([1.0, 0.0, 0.0])
    assert M.mean_colour(x)[3] == pytest.approx((x[3].double().mean((1, 2)) / 255).numpy())


def test_the_report_shows_saturation_and_mean_colour_beside_the_datas(judge):
    """For colour images the table has the samples' saturation and mean colour, with the data's in
    the real column; a washed-out copy of the real images scores a lower saturation; grey images
    have no such rows."""
    held, labels = judge.real.held
    real = judge.calibration()["real"]
    assert real["saturation"] == pytest.approx(M.saturation(judge.real.other[0]).mean())
    grey = held.float().mean(1, keepdim=True)
    washed = (0.5 * held.float() + 0.5 * grey).round().to(torch.uint8)  # halfway to grey
    s = judge.score(washed, labels)
    assert s["saturation"] < 0.7 * judge.score(held, labels)["saturation"]
    table = M.format_table(s, judge.calibration(s["num"]))
    row = next(line for line in table.splitlines() if line.startswith("saturation"))
    assert row.split()[3] == f"{s['saturation']:.4g}" and f"{real['saturation']:.4g}" in table
    assert "mean colour (R/G/B)" in table
    no_colour = {**s, "saturation": None, "mean_colour": None}
    cal = {k: {**v, "saturation": None, "mean_colour": None} for k, v in judge.calibration(s["num"]).items()}
    assert "saturation" not in M.format_table(no_colour, cal)
