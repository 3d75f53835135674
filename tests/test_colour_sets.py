"""benchmarks/colour_sets.py and colour_fcd.py on tiny fake icon and stamp trees (no Debian package needed)."""

import numpy as np
import pytest
import torch
from PIL import Image
from scripts import load_script

fcd = load_script("benchmarks/colour_fcd.py")
cs = fcd.colour_sets  # the module the scorer itself uses, so that patching its roots reaches both


def png(path, colour, size=(32, 32), mode="RGBA"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


@pytest.fixture
def icons(tmp_path, monkeypatch):
    oxy, gno = tmp_path / "oxygen" / "base" / "32x32", tmp_path / "gnome" / "32x32"
    png(oxy / "actions" / "a.png", (255, 0, 0, 255))
    (oxy / "actions" / "b.png").symlink_to("a.png")             # same file, another name
    (oxy / "status").mkdir()
    (oxy / "status" / "c.png").symlink_to("../actions/a.png")   # same file, another context
    png(oxy / "animations" / "spin.png", (0, 0, 0, 255), size=(32, 480))
    png(gno / "actions" / "a.png", (255, 0, 0, 255))            # other file, same pixels
    png(gno / "apps" / "d.png", (0, 0, 255, 128), size=(22, 22))
    monkeypatch.setattr(cs, "ICON_ROOTS", {"oxygen": oxy, "gnome": gno})
    return tmp_path


@pytest.fixture
def stamps(tmp_path, monkeypatch):
    root = tmp_path / "stamps"
    png(root / "animals" / "birds" / "owl.png", (120, 80, 40, 255), size=(300, 100))
    (root / "animals" / "birds" / "owl.svg").write_text("<svg/>")  # never drawn: the PNG wins
    png(root / "animals" / "birds" / "owl_mirror.png", (40, 80, 120, 255), size=(300, 100))
    png(root / "animals" / "cat_mirror.png", (10, 10, 10, 255))     # no cat.png: kept
    png(root / "medical" / "syringe.png", (200, 200, 255), mode="RGB")
    monkeypatch.setattr(cs, "STAMP_ROOT", root)
    return root


def test_half_transparent_red_over_white():
    x = cs.to_square_rgb(Image.new("RGBA", (1, 1), (255, 0, 0, 128)), size=1)
    assert x.tolist() == [[[255, 127, 127]]]  # 255 * 128/255 + 255 * 127/255 = 255; 0 + 127 = 127
    assert cs.to_square_rgb(Image.new("LA", (1, 1), (0, 0)), size=1).tolist() == [[[255, 255, 255]]]


def test_aspect_kept_and_padded_with_white():
    x = cs.to_square_rgb(Image.new("RGB", (64, 32), (200, 0, 0)))  # 2:1 -> 32x16, centred
    assert x.shape == (32, 32, 3)
    assert (x[8:24] == [200, 0, 0]).all() and (x[:8] == 255).all() and (x[24:] == 255).all()
    tall = cs.to_square_rgb(Image.new("RGB", (10, 40), (0, 0, 0)))  # 1:4 -> 8x32
    assert (tall[:, 12:20] == 0).all() and (tall[:, :12] == 255).all() and (tall[:, 20:] == 255).all()


def test_icons_deduplicated_by_file_and_by_pixels(icons):
    srcs = cs.icon_sources()
    assert [(s.category, s.name) for s in srcs] == [("actions", "gnome-a"), ("actions", "oxygen-a"), ("apps", "gnome-d")]
    images, labels, classes, kept = cs.build("icons")
    assert [s.name for s in kept] == ["gnome-a", "gnome-d"]  # oxygen-a has gnome-a's pixels
    assert classes == ("actions", "apps") and labels.tolist() == [0, 1]
    assert images[1, 16, 16].tolist() == [127, 127, 255]    # 22x22 half-transparent blue, fitted to 32x32


def test_stamps_png_over_svg_mirrors_and_merges(stamps):
    assert [(s.category, s.name, s.path.suffix) for s in cs.stamp_sources()] == [
        ("animals", "birds-owl", ".png"), ("animals", "cat_mirror", ".png"), ("household", "medical-syringe", ".png")]


def test_labelled_and_flat_layouts(stamps, tmp_path):
    assert cs.export("stamps", tmp_path / "lab") == {"animals": 2, "household": 1}
    assert sorted(str(p.relative_to(tmp_path / "lab")) for p in (tmp_path / "lab").rglob("*.png")) == [
        "animals/birds-owl.png", "animals/cat_mirror.png", "household/medical-syringe.png"]
    cs.export("stamps", tmp_path / "flat", flat=True)
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == [
        "animals-birds-owl.png", "animals-cat_mirror.png", "household-medical-syringe.png"]
    assert Image.open(tmp_path / "flat" / "animals-birds-owl.png").mode == "RGB"
    assert (tmp_path / "lab" / "animals" / "birds-owl.png").read_bytes() == (tmp_path / "flat" / "animals-birds-owl.png").read_bytes()
    with pytest.raises(cs.MissingData, match="not an empty folder"):
        cs.export("stamps", tmp_path / "flat")


def test_missing_package_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cs, "STAMP_ROOT", tmp_path / "nowhere")
    assert cs.main(["export", "stamps", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install tuxpaint-stamps-default" in err and "Traceback" not in err


def test_identical_samples_score_zero():
    torch.manual_seed(0)
    net = fcd.Net(3).eval()
    images = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    r = fcd.Reference(net, images, 3).score(images)
    assert abs(r["fcd"]) < 1e-6 and r["class_kl"] == 0 and r["brightness_w1"] == 0
    assert r["saturation"] == r["saturation_data"] and r["colour_mean"] == r["colour_mean_data"]
    assert fcd.Reference(net, images, 3).score(fcd.box_blur(images))["fcd"] > 100 * max(abs(r["fcd"]), 1e-9)


def test_saturation_grey_red_black():
    grey, red, black = (np.full((1, 4, 4, 3), v, np.uint8) for v in (128, 0, 0))
    red[..., 0] = 255
    assert fcd.saturation(grey).tolist() == [0.0] and fcd.saturation(red).tolist() == [1.0]
    assert fcd.saturation(black).tolist() == [0.0]
    some = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    assert np.allclose(fcd.saturation(fcd.squeeze_saturation(some)), 0.8 * fcd.saturation(some), atol=0.01)


def test_reads_both_npz_layouts_and_png_folders(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "nhwc.npz", images=images, labels=np.full(5, -1))  # as minidiff sample writes
    np.savez(tmp_path / "nchw.npz", images.transpose(0, 3, 1, 2))
    assert (fcd.read_samples(tmp_path / "nhwc.npz") == images).all()
    assert (fcd.read_samples(tmp_path / "nchw.npz") == images).all()
    for i, x in enumerate(images):
        Image.fromarray(x).save(png(tmp_path / "pngs" / "sub" / f"{i}.png", 0))
    assert (fcd.read_samples(tmp_path / "pngs") == images).all()
    np.savez(tmp_path / "big.npz", images=np.zeros((2, 64, 64, 3), np.uint8))
    assert fcd.read_samples(tmp_path / "big.npz").shape == (2, 32, 32, 3)
    np.savez(tmp_path / "float.npz", images=images.astype(np.float32))
    with pytest.raises(fcd.UsageError, match="uint8"):
        fcd.read_samples(tmp_path / "float.npz")


def test_split_holds_out_a_fifth_of_each_category():
    labels = np.repeat([0, 1, 2], [10, 50, 5])
    train, held = fcd.split(labels)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(65))
    assert np.bincount(labels[held]).tolist() == [2, 10, 1]


@pytest.mark.parametrize("name", ["icons", "stamps"])
def test_committed_scorers_are_small_and_load(name):
    assert fcd.net_path(name).stat().st_size < 2_000_000
    net, saved = fcd.load_net(name)
    assert len(saved["classes"]) == {"icons": 9, "stamps": 12}[name] and 0 < saved["held_out_accuracy"] <= 1
    assert net.features(torch.zeros(2, 3, 32, 32)).shape == (2, 128)
