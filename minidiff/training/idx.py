"""The idx files of MNIST (LeCun et al.) and Fashion-MNIST (Xiao et al. 2017): how they are laid out
and where they are found. `minidiff.training.data.idx_dataset` turns them into the trainer's ImageSet."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The 28x28 grayscale sets stored as the four idx files of LeCun et al. (MNIST) and Xiao et al. 2017
# (Fashion-MNIST); the class names are those of the sets' papers.
IDX_CLASSES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle-boot"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """One idx file (the format of MNIST and Fashion-MNIST; gzipped or not) as a numpy array.

    The header is two zero bytes, a type code (0x08: unsigned bytes) and the number of dimensions,
    then one big-endian int32 per dimension; the data follow, row-major.
    """
    import gzip

    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (its header is {raw[:4].hex() or 'empty'})")
    dims = np.frombuffer(raw, ">i4", count=raw[3], offset=4)
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3])
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: its header promises {int(np.prod(dims))} bytes, it holds {data.size}")
    return data.reshape(tuple(int(d) for d in dims))


def idx_file(root: Path, stem: str) -> Path | None:
    """root/stem, gzipped or not, also where torchvision keeps it (root/raw, root/FashionMNIST/raw, ...)."""
    folders = (root, root / "raw", root / "FashionMNIST" / "raw", root / "MNIST" / "raw")
    names = (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz")
    found = [folder / name for folder in folders for name in names if (folder / name).is_file()]
    return found[0] if found else None
