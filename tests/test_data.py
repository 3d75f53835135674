"""Data: the built-in shapes, the image folder loader, CIFAR-10's missing-data error, batches."""

import pytest
import torch

from minidiff import data


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


def test_batches_ranks_get_disjoint_slices(shapes):
    small = data.ImageSet(shapes.images[:48], torch.arange(48), shapes.classes, "t")
    r0 = data.Batches(small, 6, seed=0, rank=0, world_size=2).batch(2)[1]
    r1 = data.Batches(small, 6, seed=0, rank=1, world_size=2).batch(2)[1]
    assert set(r0.tolist()).isdisjoint(r1.tolist())
