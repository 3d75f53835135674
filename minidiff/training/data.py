"""Image data for pixel-space training: CIFAR-10, (Fashion-)MNIST, a folder of images, and a built-in set.

Every dataset is loaded once into an `ImageSet`: all images as one uint8 tensor [N, 3, H, W] and
their integer labels. Conversion to floats in [-1, 1] (the library's convention) happens per batch,
in `to_float`, so a 50k-image set costs 150 MB as uint8 and can live on the GPU whole. `nchw` and
`as_uint8_images` accept the other layouts a user may hold (channels last, grayscale, floats).

`Batches` then serves training batches: a fresh random order each epoch and a random horizontal
flip per image (DDPM, Sec. 4: "random horizontal flips"), both a pure function of (seed, step), so a
run resumed at step s sees exactly the batches it would have seen, with no loader state to save.

The built-in set is drawn in code (no download, minidiff/training/shapes.py): ten classes of simple
shapes, each its own shape and colour, on a background whose brightness is uniform from nearly
black to nearly white. It is the dataset on which Lin et al.'s brightness effect (a non-zero
terminal SNR pulls every sample towards medium brightness) shows after minutes of CPU training.
Fashion-MNIST and MNIST are read from their idx files (minidiff/training/idx.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .idx import IDX_CLASSES, idx_file, read_idx  # noqa: F401 (read_idx re-exported)
from .runtime import StepOrder, UsageError, mix_seed
from .shapes import BUILTIN_CLASSES, BUILTIN_COLOURS, draw_shapes  # noqa: F401 (BUILTIN_COLOURS re-exported)

DATASETS = ("builtin", "cifar10", "fashion-mnist", "mnist", "folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass
class ImageSet:
    """A whole dataset in memory: uint8 images [N, C, H, W] (C = 3, or 1 for grayscale), int64
    labels [N], class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        """3 for colour, 1 for a grayscale set (a model trained on it draws grayscale images)."""
        return self.images.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]


# --------------------------------------------------------------------------------------- pixels


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the library's image convention)."""
    return images.float().mul_(2.0 / 255.0).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped and rounded to the nearest level."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def resize_center_crop(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize so the shorter side is `resolution` (antialiased), then crop the centre square.

    images: uint8 or float [N, 3, H, W]. Returns the same dtype, [N, 3, resolution, resolution].
    """
    h, w = images.shape[-2:]
    if (h, w) == (resolution, resolution):
        return images
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    out = F.interpolate(images.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    out = out[..., top:top + resolution, left:left + resolution]
    return out.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else out


def nchw(images) -> torch.Tensor:
    """Images as a tensor [N, C, H, W], C = 1 or 3, of uint8 or float in [-1, 1]; else a clear error.

    Accepted layouts: [N, C, H, W], [N, H, W, C] (the sample CLI's npz) and [N, H, W] (grayscale).
    """
    x = torch.as_tensor(np.asarray(images))
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 2:
        raise ValueError(f"images must be [N >= 2, C, H, W] or [N, H, W, C] with C = 1 or 3, "
                         f"got shape {tuple(np.shape(images))}")
    if x.dtype.is_floating_point:
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.01 or hi > 1.01:
            raise ValueError(f"float images must lie in [-1, 1], these span [{lo:.3g}, {hi:.3g}]; "
                             "pass uint8 (0..255) or rescale")
    elif x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 or float in [-1, 1], got {x.dtype}")
    return x


def as_uint8_images(images, *, channels: int, resolution: int) -> tuple[torch.Tensor, list[str]]:
    """Any accepted image array (see `nchw`) -> uint8 [N, channels, resolution, resolution], and
    notes on what was converted.

    Floats are quantised to 256 levels, as saving a sample would. One channel is repeated to three
    and three are averaged to one to match the classifier; another size is resized (bilinear,
    antialiased) to the classifier's resolution.
    """
    x = nchw(images)
    if x.dtype.is_floating_point:
        x = to_uint8(x)
    notes = []
    if x.shape[1] != channels:
        notes.append(f"{x.shape[1]}-channel images {'averaged to one channel' if channels == 1 else 'repeated to three channels'} "
                     "to match the classifier")
        x = x.float().mean(1, keepdim=True).round().to(torch.uint8) if channels == 1 else x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (resolution, resolution):
        notes.append(f"images resized from {x.shape[-2]}x{x.shape[-1]} to the classifier's "
                     f"{resolution}x{resolution}: the figures then also judge the resizing")
        x = F.interpolate(x.float(), size=(resolution, resolution), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return x.contiguous(), notes


# ------------------------------------------------------------------------------ built-in shapes


def builtin_shapes(num: int = 20_000, *, seed: int = 0, resolution: int = 32,
                   chunk: int = 5_000, progress: bool = False) -> ImageSet:
    """The built-in dataset: `num` images of ten shape classes, deterministic in `seed`.

    Labels cycle through the ten classes in a seeded random order, so every class has num/10
    images. Mean image brightness is spread almost uniformly over [-0.9, 0.9].
    """
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(num) % len(BUILTIN_CLASSES))[torch.randperm(num, generator=generator)]
    images = torch.empty(num, 3, resolution, resolution, dtype=torch.uint8)
    starts = range(0, num, chunk)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="drawing built-in shapes", unit="chunk")
    for start in starts:
        stop = min(start + chunk, num)
        images[start:stop] = to_uint8(draw_shapes(labels[start:stop], resolution, generator))
    return ImageSet(images, labels, BUILTIN_CLASSES, "builtin")


# ----------------------------------------------------------------------------------- CIFAR-10


def cifar10(root: str | Path = "data", *, train: bool = True, download: bool = True,
            resolution: int = 32) -> ImageSet:
    """CIFAR-10 through torchvision (50k training images, 10 classes), as one uint8 tensor."""
    import torchvision

    root = Path(root).expanduser()
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    except RuntimeError as err:
        if download:
            raise
        raise FileNotFoundError(
            f"CIFAR-10 not found under {root.resolve()} (looked for {root.resolve() / 'cifar-10-batches-py'}). "
            "Point --data-root at the folder that holds 'cifar-10-batches-py', "
            "or allow the download (drop --no-download)."
        ) from err
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return ImageSet(resize_center_crop(images, resolution), labels, tuple(ds.classes), "cifar10")


# ------------------------------------------------------------------------ MNIST, Fashion-MNIST


def idx_dataset(name: str, root: str | Path | None = "data", *, train: bool = True, download: bool = True,
                resolution: int = 28) -> ImageSet:
    """MNIST or Fashion-MNIST: the four standard idx files in `root` (or its raw/ folder, as
    torchvision keeps them), else torchvision's download into `root` when `download` allows.

    On Debian, `apt-get install dataset-fashion-mnist` puts Fashion-MNIST's files in
    /usr/share/datasets/fashion-mnist, which is then the root to pass.
    """
    root = Path(root or "data").expanduser()
    split = "train" if train else "t10k"
    images_path = idx_file(root, f"{split}-images-idx3-ubyte")
    labels_path = idx_file(root, f"{split}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        fetched = None
        if download:
            import torchvision

            kind = torchvision.datasets.FashionMNIST if name == "fashion-mnist" else torchvision.datasets.MNIST
            try:
                fetched = kind(str(root), train=train, download=True)
            except Exception as err:  # noqa: BLE001 (no network, a proxy, a full disk: say what to do)
                raise FileNotFoundError(
                    f"{name}: the idx files are not in {root.resolve()} and the download failed ({err}). Put "
                    f"{split}-images-idx3-ubyte(.gz) and {split}-labels-idx1-ubyte(.gz) there, or point --data-root "
                    "at the folder that holds them (Debian: apt-get install dataset-fashion-mnist, then "
                    "--data-root /usr/share/datasets/fashion-mnist).") from None
        if fetched is None:
            raise FileNotFoundError(
                f"{name}: no {split}-images-idx3-ubyte(.gz) and {split}-labels-idx1-ubyte(.gz) under {root.resolve()}; "
                "point --data-root at the folder that holds the four idx files, or allow the download (drop --no-download).")
        images, labels = fetched.data.numpy(), fetched.targets.numpy()
    else:
        images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise ValueError(f"{name}: images {images.shape} and labels {labels.shape} do not match "
                         "(expected [N, 28, 28] and [N])")
    pixels = torch.from_numpy(images.copy())[:, None]  # one channel: the model draws grayscale
    labels = torch.from_numpy(labels.astype(np.int64))
    return ImageSet(resize_center_crop(pixels, resolution), labels, IDX_CLASSES[name], name)


# -------------------------------------------------------------------------------- image folder


def image_folder(root: str | Path, *, resolution: int = 32, progress: bool = True) -> ImageSet:
    """Every image under `root` (searched recursively), resized and centre-cropped to a square.

    Classes are the names of the top-level subfolders when every image sits in one; otherwise the
    set has a single class. Images are loaded once into memory. A file that does not decode (not
    an image, or truncated) is skipped and named: a large folder gathered from the web nearly
    always holds a few, and the run should use the rest. A folder where none decodes is refused.
    """
    from PIL import Image

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root.resolve()} does not exist; pass --data-root DIR "
                                "with a folder of images (png, jpg, ...).")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images found under {root.resolve()} (searched recursively for "
                                f"{', '.join(IMAGE_SUFFIXES)}); put images there or pass another --data-root.")
    items = paths
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(paths, desc=f"loading {root}", unit="img")
    loaded, bad = {}, []
    for path in items:
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")  # decodes the whole file: a truncated one fails here
        except (OSError, SyntaxError, ValueError) as err:
            bad.append((path, err))
            continue
        pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(1, rgb.height, rgb.width, 3)
        loaded[path] = resize_center_crop(pixels.permute(0, 3, 1, 2), resolution)[0]
    if bad:
        shown = "; ".join(f"{p.relative_to(root)} ({type(e).__name__})" for p, e in bad[:5])
        if not loaded:
            raise FileNotFoundError(f"none of the {len(paths)} files under {root.resolve()} could be read as an "
                                    f"image ({shown}{'; ...' if len(bad) > 5 else ''}).")
        print(f"warning: skipped {len(bad)} of {len(paths)} files under {root} that are not readable images: "
              f"{shown}{'; ...' if len(bad) > 5 else ''}")
    paths = list(loaded)
    tops = [p.relative_to(root).parts for p in paths]
    if all(len(parts) > 1 for parts in tops):
        classes = tuple(sorted({parts[0] for parts in tops}))
        labels = torch.tensor([classes.index(parts[0]) for parts in tops], dtype=torch.int64)
    else:
        classes, labels = ("images",), torch.zeros(len(paths), dtype=torch.int64)
    images = torch.stack(list(loaded.values()))
    if grayscale(images):  # kept as one channel: the model then draws grayscale, never a tint
        images = images[:, :1].contiguous()
    return ImageSet(images, labels, classes, root.name or "folder")


def write_image_folder(data: ImageSet, root: str | Path, *, gray: bool = False) -> Path:
    """Save an ImageSet as PNGs in one sub-folder per class (root/CLASS/00001.png), the layout
    `image_folder` reads with labels; gray=True keeps the luminance only (ITU-R 601 weights).
    The built-in shapes written this way are a folder to try `--dataset folder` on, no download."""
    from PIL import Image

    root = Path(root)
    images = data.images
    if gray and images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    for name in data.classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, data.labels.tolist())):
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(root / data.classes[label] / f"{i:05d}.png")
    return root


def grayscale(images: torch.Tensor) -> bool:
    """True when every pixel of every image has R == G == B (a grayscale set, however it was saved)."""
    return images.shape[1] == 3 and bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())


def folder_classes(root: str | Path) -> tuple[str, ...] | None:
    """The class names of a folder with one sub-folder per class (at least two, and no image at its
    top level), else None. Looks at the top level only, so it costs milliseconds."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    entries = list(root.iterdir())
    if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return None
    classes = tuple(sorted(p.name for p in entries if p.is_dir() and not p.name.startswith(".")))
    return classes if len(classes) >= 2 else None


def folder_image_size(root: str | Path, limit: int = 2_000) -> tuple[int, int] | None:
    """(H, W) when the first `limit` images under `root` all share one size, else None. Reads only
    the headers, so it costs milliseconds; the trainer keeps such a folder at its own size when
    the UNet can take it (28 x 28 halves to 14 and 7), instead of resizing it to the preset's."""
    from PIL import Image

    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    sizes = set()
    paths = (p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for i, path in enumerate(paths):
        if i == limit:
            break
        try:
            with Image.open(path) as im:
                sizes.add((im.height, im.width))
        except (OSError, SyntaxError, ValueError):
            continue  # image_folder names it when it loads the folder
        if len(sizes) > 1:
            return None
    return sizes.pop() if len(sizes) == 1 else None


def load_dataset(name: str, *, data_root: str | Path | None = None, resolution: int = 32,
                 download: bool = True, seed: int = 0, num: int = 20_000) -> ImageSet:
    """Load a dataset by name: "builtin" (num images from seed), "cifar10", "fashion-mnist", "mnist" or "folder"."""
    if name == "builtin":
        return builtin_shapes(num, seed=seed, resolution=resolution)
    if name == "cifar10":
        return cifar10(data_root or "data", download=download, resolution=resolution)
    if name in IDX_CLASSES:
        return idx_dataset(name, data_root or "data", download=download, resolution=resolution)
    if name == "folder":
        if data_root is None:
            raise UsageError("--dataset folder needs --data-root DIR (a folder of images).")
        return image_folder(data_root, resolution=resolution)
    raise UsageError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")


# ------------------------------------------------------------------------------------ batches


class Batches:
    """Random training batches from an ImageSet held as one tensor (on `device` when it fits).

    The batch at step s is a pure function of (seed, s): epoch e = floor(s * B / N) uses the
    permutation drawn from seed and e; flips come from a generator seeded by (seed, s). Resuming at
    step s therefore needs only s. With several processes (DDP), each global batch of
    B * world_size images is cut into world_size disjoint slices, one per rank.
    """

    def __init__(self, data: ImageSet, batch_size: int, *, seed: int = 0, device="cpu",
                 flip: bool = True, rank: int = 0, world_size: int = 1, max_device_bytes: float = 0.5):
        self.batch_size, self.seed, self.flip = batch_size, seed, flip
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.labels = data.labels
        self.images = data.images
        # Hold the whole set on the accelerator when it takes under half its memory: then a batch
        # is one index op and the loader can never be the bottleneck.
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if data.images.numel() < max_device_bytes * free:
                self.images, self.labels = data.images.to(self.device), data.labels.to(self.device)
        self.order = StepOrder(len(data), batch_size, seed=seed, rank=rank, world_size=world_size)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images float [-1, 1] [B, C, H, W], labels [B]) on the device, for training step `step`."""
        index = self.order.indices(step).to(self.images.device)
        x = to_float(self.images[index].to(self.device, non_blocking=True))
        y = self.labels[index].to(self.device)
        if self.flip:
            g = torch.Generator().manual_seed(mix_seed(self.seed, step, self.rank))
            flip = (torch.rand(self.batch_size, generator=g) < 0.5).to(self.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, y

    def reference(self, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`size` images drawn with replacement (and flipped at random, as batches are) for the
        Stable Target Field's reference set at step `step` (training/loss.py stable_target): a pure
        function of (seed, step, rank), like the batch."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, step, self.rank, 1))
        index = torch.randint(0, len(self.labels), (size,), generator=g)
        flip = torch.rand(size, generator=g) < 0.5
        x = to_float(self.images[index.to(self.images.device)].to(self.device, non_blocking=True))
        if self.flip:
            x = torch.where(flip.to(self.device)[:, None, None, None], x.flip(-1), x)
        return x, self.labels[index.to(self.labels.device)].to(self.device)

    def __iter__(self):
        step = 0
        while True:
            yield self.batch(step)
            step += 1
