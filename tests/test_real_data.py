"""Real data by name (Fashion-MNIST and MNIST from their idx files), labels from a folder's layout,
and `--set` for any setting of a run. The idx files are written here, in the format's own terms."""

import gzip
import struct

import numpy as np
import pytest
import torch

from minidiff.training import data, train as T
from minidiff.training.config import parse_settings
from minidiff.training.runtime import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_idx(path, array: np.ndarray, gz: bool = True) -> None:
    """LeCun's idx format: 0, 0, type 0x08 (ubyte), ndim, then each dimension as a big-endian int32."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


def fake_mnist(root, n=48, gz=True, prefix="train"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    suffix = ".gz" if gz else ""
    write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    images, labels = fake_mnist(tmp_path, gz=gz)
    got = data.idx_dataset("fashion-mnist", tmp_path, download=False)
    assert got.images.shape == (48, 1, 28, 28) and got.images.dtype == torch.uint8
    assert torch.equal(got.images[:, 0], torch.from_numpy(images))
    assert got.labels.tolist() == labels.tolist()
    assert got.classes[0] == "t-shirt" and got.classes[9] == "ankle-boot" and got.num_classes == 10
    assert data.idx_dataset("mnist", tmp_path, download=False).classes == tuple("0123456789")


def test_idx_files_where_torchvision_keeps_them(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images, _ = fake_mnist(raw)
    got = data.load_dataset("fashion-mnist", data_root=tmp_path, resolution=28, download=False)
    assert torch.equal(got.images[:, 0], torch.from_numpy(images))


def test_idx_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="four idx files"):
        data.idx_dataset("mnist", tmp_path, download=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 12)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 4)
    with pytest.raises(ValueError, match="not an idx file"):
        data.idx_dataset("mnist", tmp_path, download=False)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)), gz=False)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        data.idx_dataset("mnist", tmp_path, download=False)


def test_fashion_mnist_trains_class_conditional_at_28px_in_one_channel(tmp_path):
    fake_mnist(tmp_path)
    cfg = T.parse_args(["--dataset", "fashion-mnist", "--data-root", str(tmp_path), "--no-download",
                        "--set", "unet.base_channels=8", "--set", "unet.norm_groups=4", "--max-steps", "2",
                        "--batch-size", "8", "--judge-samples", "0", "--sample-every", "0", "--ckpt-every", "0",
                        "--num-samples", "4", "--sample-steps", "2", "--device", "cpu", "--out", str(tmp_path / "run")])
    resolved = cfg.resolved()
    assert (resolved.class_cond, resolved.resolution, resolved.preset) == (True, 28, "small")
    result = T.train(cfg)
    ckpt = T.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["channels"] == 1 and ckpt["model_config"]["num_classes"] == 10
    assert ckpt["model_config"]["base_channels"] == 8 and ckpt["config"]["unet"]["base_channels"] == 8
    assert result["model"].config["image_size"] == 28


def test_a_folder_with_class_subfolders_is_class_conditional_and_a_flat_one_is_not(tmp_path):
    shapes = data.builtin_shapes(20, resolution=16)
    labelled = data.write_image_folder(shapes, tmp_path / "labelled")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, p in enumerate(sorted(labelled.rglob("*.png"))):
        (flat / f"{i}.png").write_bytes(p.read_bytes())
    base = ["--dataset", "folder", "--out", str(tmp_path / "run")]
    assert T.parse_args(base + ["--data-root", str(labelled)]).resolved().class_cond is True
    assert T.parse_args(base + ["--data-root", str(labelled), "--no-class-cond"]).resolved().class_cond is False
    assert T.parse_args(base + ["--data-root", str(flat)]).resolved().class_cond is False
    assert data.folder_classes(labelled) == tuple(sorted(shapes.classes)) and data.folder_classes(flat) is None
    assert data.image_folder(labelled, resolution=16, progress=False).classes == data.folder_classes(labelled)


def test_set_reads_literals_words_and_unet_keys():
    got = parse_settings(["lr=2e-3", "lr_decay=cosine", "unet.base_channels=64", "unet.channel_mults=[1, 2]",
                          "ema-share=0", "class_cond=False", "guidance_from=None"])
    assert got == {"lr": 0.002, "lr_decay": "cosine", "unet": {"base_channels": 64, "channel_mults": (1, 2)},
                   "ema_share": 0.0, "class_cond": False, "guidance_from": None}
    assert isinstance(got["ema_share"], float)
    for bad, said in [("nonsense=1", "not a TrainConfig field"), ("unet.width=3", "no setting 'width'"), ("lr", "NAME=VALUE"),
                      ("class_cond=yes", "True or False"), ("unet.channel_mults=[1, 2", "not a Python literal")]:
        with pytest.raises(UsageError, match=said):
            parse_settings([bad])


def test_set_on_the_command_line_overrides_the_recipe_and_a_flag():
    cfg = T.parse_args(["--lr", "1e-3", "--set", "lr=5e-4", "--set", "unet.base_channels=48"]).resolved()
    assert cfg.lr == 5e-4 and cfg.unet == {"base_channels": 48}
    assert T.build_model(cfg, num_classes=10).config["base_channels"] == 48


def test_a_bad_set_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as err:
        T.parse_args(["--set", "unet.width=3"])
    assert err.value.code == 2 and "no setting 'width'" in capsys.readouterr().err


def test_folders_train_unflipped_and_the_built_in_set_and_cifar10_flipped(tmp_path):
    """A folder is learnt as it is (Fashion-MNIST's shoes all face left); DDPM's sets keep its flips."""
    assert T.parse_args(["--dataset", "folder", "--data-root", str(tmp_path)]).resolved().flip is False
    assert T.parse_args(["--dataset", "fashion-mnist"]).resolved().flip is False
    assert T.parse_args(["--dataset", "folder", "--data-root", str(tmp_path), "--flip"]).resolved().flip is True
    assert T.parse_args([]).resolved().flip is True and T.parse_args(["--dataset", "cifar10"]).resolved().flip is True


def test_without_flips_every_batch_and_reference_is_the_images_as_they_are():
    shapes = data.builtin_shapes(40, resolution=16)
    asymmetric = torch.arange(16, dtype=torch.uint8).expand(40, 3, 16, 16).contiguous()  # brightness grows to the right
    shapes.images = asymmetric
    for flip, expect_mirrored in ((False, False), (True, True)):
        batches = data.Batches(shapes, 40, seed=0, flip=flip)
        seen = torch.cat([batches.batch(s)[0] for s in range(4)] + [batches.reference(s, 40)[0] for s in range(4)])
        mirrored = seen[:, 0, 0, 0] > seen[:, 0, 0, -1]
        assert bool(mirrored.any()) == expect_mirrored


def test_the_folder_recipe_carries_the_real_images_study():
    """docs/recipe_history.md, "the folder recipe": the main job's lessons, no flips, DPM-Solver++ at 25
    steps, guidance 1.5 above log-SNR -3 when the folder has labels."""
    cfg = T.parse_args(["--dataset", "fashion-mnist"]).resolved()
    assert (cfg.preset, cfg.batch_size, cfg.lr, cfg.lr_decay, cfg.adam_beta2, cfg.ema_share) == \
        ("small", 64, 1e-3, "wsd", 0.99, 0.05)
    assert (cfg.weighting, cfg.stf_reference, cfg.timesteps_low_snr, cfg.flip) == ("level_mean", 512, 0.08, False)
    assert (cfg.sampler, cfg.sample_steps, cfg.guidance, cfg.guidance_from, cfg.guidance_rescale) == \
        ("dpmpp_2m", 25, 1.5, -3.0, 0.0)
