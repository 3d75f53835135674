"""Data: the built-in shapes, the image folder loader, CIFAR-10's missing-data error, batches."""

import pytest
import torch

from minidiff.training import data


@pytest.fixture(scope="module")
def shapes():
    return data.builtin_shapes(2000, seed=3)


def test_builtin_shapes_dtype_shape_and_classes(shapes):
    assert shapes.images.shape == (2000, 3, 32, 32) and shapes.images.dtype == torch.uint8
    assert shapes.num_classes == 10
    # Labels cycle through the classes: exactly 200 images each.
    assert torch.bincount(shapes.labels).tolist() == [200] * 10


def test_builtin_shapes_brightness_spans_black_to_white(shapes):
    """Mean brightness is uniform on [-0.9, 0.9]: every tenth of that range holds ~10% of images."""
    mean = data.to_float(shapes.images).mean((1, 2, 3))
    assert mean.min() < -0.85 and mean.max() > 0.85
    counts = torch.histc(mean, bins=9, min=-0.9, max=0.9)
    assert counts.min() > 0.6 * 2000 / 9, counts
    # Images are not flat: the shape differs from the background.
    assert data.to_float(shapes.images).std((1, 2, 3)).min() > 0.05


def test_builtin_shapes_deterministic_in_seed():
    a, b = data.builtin_shapes(50, seed=7), data.builtin_shapes(50, seed=7)
    c = data.builtin_shapes(50, seed=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_uint8_float_round_trip():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = data.to_float(levels)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(data.to_uint8(x), levels)


def test_image_folder_recursive_resize_and_classes(tmp_path):
    from PIL import Image

    # Two class folders, one nested deeper; images of different sizes and modes.
    (tmp_path / "cats" / "deep").mkdir(parents=True)
    (tmp_path / "dogs").mkdir()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "cats" / "a.png")
    Image.new("L", (20, 30), 0).save(tmp_path / "cats" / "deep" / "b.jpg")
    Image.new("RGB", (40, 40), (0, 0, 255)).save(tmp_path / "dogs" / "c.bmp")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    ds = data.image_folder(tmp_path, resolution=16, progress=False)
    assert ds.images.shape == (3, 3, 16, 16) and ds.classes == ("cats", "dogs")
    assert ds.labels.tolist() == [0, 0, 1]
    # A solid-colour image stays that colour after resize and crop.
    assert ds.images[0, :, 8, 8].tolist() == [255, 0, 0]
    assert ds.images[1].max() == 0
    assert ds.images[2, :, 8, 8].tolist() == [0, 0, 255]


def test_image_folder_flat_is_one_class(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "x.png")
    ds = data.image_folder(tmp_path, resolution=8, progress=False)
    assert ds.classes == ("images",) and ds.images[0, :, 0, 0].tolist() == [1, 2, 3]


def test_resize_center_crop_keeps_centre():
    img = torch.zeros(1, 3, 10, 30, dtype=torch.uint8)
    img[..., 10:20] = 200  # the middle third of a wide image
    out = data.resize_center_crop(img, 10)
    assert out.shape == (1, 3, 10, 10) and (out == 200).all()


def test_empty_or_missing_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path.resolve())):
        data.image_folder(tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.image_folder(tmp_path / "nope", progress=False)
    with pytest.raises(ValueError, match="--data-root"):
        data.load_dataset("folder")


def test_cifar10_missing_without_download_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py") as err:
        data.cifar10(tmp_path, download=False)
    assert str(tmp_path.resolve()) in str(err.value)


def test_batches_cover_each_epoch_once_and_resume_by_step(shapes):
    small = data.ImageSet(shapes.images[:40], torch.arange(40), shapes.classes, "t")
    batches = data.Batches(small, 8, seed=1, flip=False)
    seen = torch.cat([batches.batch(s)[1] for s in range(5)])  # 5 batches = one epoch
    assert sorted(seen.tolist()) == list(range(40))
    # The next epoch is a different order; any step can be asked again and gives the same batch.
    assert batches.batch(5)[1].tolist() != batches.batch(0)[1].tolist()
    fresh = data.Batches(small, 8, seed=1, flip=False)
    assert torch.equal(fresh.batch(3)[0], batches.batch(3)[0])


def test_batches_flip_is_horizontal_mirror(shapes):
    small = data.ImageSet(shapes.images[:64], torch.arange(64), shapes.classes, "t")
    plain = data.Batches(small, 64, seed=2, flip=False).batch(0)
    flipped = data.Batches(small, 64, seed=2, flip=True).batch(0)
    assert torch.equal(plain[1], flipped[1])
    same = (plain[0] == flipped[0]).flatten(1).all(1)
    mirrored = (plain[0].flip(-1) == flipped[0]).flatten(1).all(1)
    assert (same | mirrored).all() and 10 < mirrored.sum() < 54


def test_reference_sets_are_images_of_the_set_with_their_labels_and_a_function_of_the_step(shapes):
    """Batches.reference (the Stable Target Field's set): each row is an image of the set, as it
    is or mirrored, with that image's label; the same step gives the same set, another step another."""
    small = data.ImageSet(shapes.images[:64], torch.arange(64), shapes.classes, "t")
    batches = data.Batches(small, 8, seed=3)
    x, y = batches.reference(5, 100)
    assert x.shape == (100, *data.to_float(small.images[:1]).shape[1:])
    originals = data.to_float(small.images[y])
    as_is, mirrored = (x == originals).flatten(1).all(1), (x == originals.flip(-1)).flatten(1).all(1)
    assert (as_is | mirrored).all() and mirrored.any() and as_is.any()
    again = data.Batches(small, 8, seed=3).reference(5, 100)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert not torch.equal(batches.reference(6, 100)[1], y)


def test_batches_ranks_get_disjoint_slices(shapes):
    small = data.ImageSet(shapes.images[:48], torch.arange(48), shapes.classes, "t")
    r0 = data.Batches(small, 6, seed=0, rank=0, world_size=2).batch(2)[1]
    r1 = data.Batches(small, 6, seed=0, rank=1, world_size=2).batch(2)[1]
    assert set(r0.tolist()).isdisjoint(r1.tolist())


def _write_folder(root, n, size, colour):
    from PIL import Image

    for c in range(2):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            v = 20 * i + 100 * c
            im = Image.new("L", size, v) if not colour else Image.new("RGB", size, (v, 255 - v, 30))
            im.save(root / f"class{c}" / f"{i}.png")


def test_grayscale_folder_is_one_channel_and_colour_stays_three(tmp_path):
    _write_folder(tmp_path / "gray", 4, (28, 28), colour=False)
    _write_folder(tmp_path / "rgb", 4, (28, 28), colour=True)
    gray = data.image_folder(tmp_path / "gray", resolution=28, progress=False)
    rgb = data.image_folder(tmp_path / "rgb", resolution=28, progress=False)
    assert gray.channels == 1 and gray.images.shape == (8, 1, 28, 28)
    assert rgb.channels == 3
    assert data.folder_image_size(tmp_path / "gray") == (28, 28)


def test_a_grayscale_28px_folder_trains_at_its_own_size_and_samples_grayscale(tmp_path):
    """28 x 28 grayscale images train a one-channel model at 28 x 28 on the small preset (28 ->
    14 -> 7), instead of a 3-channel one at 32 x 32; the sample CLI follows the checkpoint."""
    from minidiff.training import sample, train as T

    _write_folder(tmp_path / "gray", 8, (28, 28), colour=False)
    cfg = T.TrainConfig(dataset="folder", data_root=str(tmp_path / "gray"), batch_size=4, max_steps=1,
                        sample_every=0, ckpt_every=0, num_samples=4, sample_steps=2, device="cpu", judge_samples=0,
                        out=str(tmp_path / "run"))
    assert cfg.resolved().resolution == 28
    result = T.train(cfg)
    assert result["model"].config["in_channels"] == 1 and result["model"].config["image_size"] == 28
    sample.main([str(tmp_path / "run" / "checkpoint.pt"), "--num", "2", "--steps", "2",
                 "--png", "", "--npz", str(tmp_path / "s.npz")])
    import numpy as np

    assert np.load(tmp_path / "s.npz")["images"].shape == (2, 28, 28, 1)
    # a size the preset cannot take, or mixed sizes, fall back to the preset's 32
    _write_folder(tmp_path / "odd", 2, (30, 30), colour=False)
    assert T.TrainConfig(dataset="folder", data_root=str(tmp_path / "odd")).resolved().resolution == 32


def test_write_image_folder_round_trips_through_image_folder(tmp_path):
    shapes = data.builtin_shapes(20, seed=3, resolution=16)
    data.write_image_folder(shapes, tmp_path / "rgb")
    back = data.image_folder(tmp_path / "rgb", resolution=16, progress=False)
    order = sorted(range(20), key=lambda i: (shapes.classes[shapes.labels[i]], i))  # folders sort by class name
    assert torch.equal(back.images, shapes.images[order])
    assert [back.classes[k] for k in back.labels] == [shapes.classes[shapes.labels[i]] for i in order]
    data.write_image_folder(shapes, tmp_path / "gray", gray=True)
    gray = data.image_folder(tmp_path / "gray", resolution=16, progress=False)
    luminance = (shapes.images.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert gray.channels == 1 and torch.equal(gray.images, luminance.round().to(torch.uint8)[order])
