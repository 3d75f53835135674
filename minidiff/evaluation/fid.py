"""Frechet Inception Distance (Heusel et al. 2017), the number DDPM reports for CIFAR-10 (3.17).

    FID = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

where (mu, S) are the mean and covariance of Inception-v3 pool features (2048 numbers per image)
of the generated and of the real images. Three things decide whether an FID is comparable to a
paper's, and this file fixes all three:

- the features: pytorch-fid's InceptionV3 with the weights ported from the TensorFlow FID code
  (pt_inception-2015-12-05), the network every CIFAR-10 FID in the papers used
  (`pip install minidiff[fid]`; the weights download on first use);
- the images: uint8 [N, H, W, 3] arrays, the same quantisation as saved image files; float images
  are refused, because skipping the rounding to 256 levels changes the score;
- the sample count: 50,000 generated images by default (FID is biased upwards at small N), and
  the real statistics from all 50,000 CIFAR-10 training images, computed once and cached.

The Frechet distance itself takes float64 statistics and computes tr((S_1 S_2)^(1/2)) from the
eigenvalues of the symmetric matrix S_1^(1/2) S_2 S_1^(1/2), which has the same (real, non-negative)
eigenvalues as S_1 S_2: no complex square root, so no imaginary parts to throw away.
`frechet_distance` and `statistics` are also the maths of minidiff.evaluation.metrics, which applies them to
the features of a small classifier trained on the data itself (no download, seconds on a CPU).

    minidiff sample CKPT --num 50000 --npz samples.npz --png ""
    minidiff fid samples.npz --dataset cifar10
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

Extractor = Callable[[torch.Tensor], torch.Tensor]  # float [B, 3, H, W] in [0, 1] -> [B, D]


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson and Landau 1982).

    tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(S1^(1/2) S2 S1^(1/2))): the two products are similar
    matrices, and the second is symmetric positive semi-definite, so its eigenvalues are real and
    >= 0 up to rounding (clamped at 0). All in float64.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"statistics do not match: means {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
                         f"covariances {tuple(s1.shape)}, {tuple(s2.shape)}")
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eig = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0)
    trace_sqrt = eig.sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * trace_sqrt)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clamped at 0)."""
    eig, vec = torch.linalg.eigh((s + s.T) / 2)
    return (vec * eig.clamp_min(0).sqrt()) @ vec.T


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, rows are samples) of features [N, D], in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


# -------------------------------------------------------------------------------- images


def check_uint8_images(images) -> np.ndarray:
    """Images as the uint8 [N, H, W, 3] array that FID is defined on, or a clear error."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"FID needs uint8 images (0..255), got {images.dtype}: quantise first "
                         "(minidiff.training.data.to_uint8), as saving to PNG would.")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] (channels last), got {images.shape}")
    return images


def uint8_to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [0, 1], the input pytorch-fid's network takes."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def features(images, extractor: Extractor, *, batch_size: int = 200, device="cpu",
             progress: bool = True) -> np.ndarray:
    """Features [N, D] (float64) of uint8 images [N, H, W, 3], in batches."""
    from tqdm.auto import tqdm

    images = check_uint8_images(images)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="FID features", unit="batch", disable=not progress):
        x = uint8_to_unit(images[start:start + batch_size]).to(device)
        out.append(extractor(x).reshape(len(x), -1).double().cpu())
    return torch.cat(out).numpy()


def load_images(path: str | Path) -> np.ndarray:
    """uint8 images from an .npz written by minidiff.training.sample (key `images`, or `arr_0`)."""
    with np.load(path) as f:
        key = "images" if "images" in f else "arr_0"
        return check_uint8_images(f[key])


# ------------------------------------------------------------------------------ the network


def inception_extractor(device="cpu") -> Extractor:
    """pytorch-fid's InceptionV3 pool3 features (2048-d) with the FID weights
    (pt_inception-2015-12-05, downloaded by pytorch-fid on first use). It resizes inputs to
    299x299 and maps [0, 1] to [-1, 1] itself."""
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError as err:
        raise ImportError("FID needs the pytorch-fid package: pip install 'minidiff[fid]' "
                          "(or pip install pytorch-fid)") from err
    try:
        net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
    except OSError as err:  # urllib's URLError is an OSError
        raise RuntimeError(
            "could not fetch the FID Inception weights (pt_inception-2015-12-05-6726825d.pth), which "
            "pytorch-fid downloads from GitHub on first use. On an offline machine copy that file "
            f"into {torch.hub.get_dir()}/checkpoints/ and run again.") from err
    return lambda x: net(x)[0].flatten(1)


# ------------------------------------------------------------------- real-data statistics


def cached_statistics(cache: str | Path, load: Callable[[], np.ndarray], extractor: Extractor,
                      source: str = "", **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from `cache` (.npz) if it exists; otherwise computed from load() and saved.

    Real-data statistics take minutes to compute and never change, so they are computed once.
    `source` names the data they describe; a cache written for other data is refused rather
    than silently compared against.
    """
    cache = Path(cache)
    if cache.exists():
        with np.load(cache) as f:
            stored = str(f["source"]) if "source" in f else ""
            if stored != source:
                raise ValueError(f"{cache} holds statistics of {stored or 'unnamed data'!r}, not {source!r}; "
                                 "delete it or pass another --stats file")
            return f["mu"], f["sigma"]
    images = load()
    mu, sigma = statistics(features(images, extractor, **kwargs))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, num=len(images), source=np.array(source))
    tmp.replace(cache)
    return mu, sigma


def dataset_images(dataset: str, data_root: str | None, resolution: int) -> np.ndarray:
    """All training images of a minidiff dataset as uint8 [N, H, W, 3]."""
    from ..training.data import load_dataset

    data = load_dataset(dataset, data_root=data_root, resolution=resolution)
    return data.images.permute(0, 2, 3, 1).numpy()


def fid(samples, real_stats: tuple[np.ndarray, np.ndarray], extractor: Extractor, **kwargs) -> float:
    """FID of uint8 sample images [N, H, W, 3] against real (mu, sigma)."""
    return frechet_distance(*statistics(features(samples, extractor, **kwargs)), *real_stats)


def parse_args(argv=None) -> argparse.Namespace:
    from ..training.cli import HelpFormatter, add_common_flags

    p = argparse.ArgumentParser(prog="minidiff fid", description="FID of generated images "
                                "(an .npz from minidiff sample) against a dataset's training images.",
                                formatter_class=HelpFormatter)
    p.add_argument("samples", help=".npz with uint8 `images` [N, H, W, 3]")
    p.add_argument("--dataset", choices=("cifar10", "builtin", "folder"), default="cifar10")
    p.add_argument("--data-root", help="where the dataset lives (as for train_cifar.py)")
    p.add_argument("--num", type=int, default=50_000, help="samples to use (FID is biased at small N)")
    p.add_argument("--stats", help="cache of the real statistics (default: data/fid_stats_<dataset>_<res>.npz)")
    p.add_argument("--batch-size", type=int, default=200)
    add_common_flags(p, seed=False)  # --device
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Every flag in range before a network loads: one line naming the flag, exit 2."""
    from ..training.cli import resolve_device
    from ..training.runtime import check_output_folder, require

    require(Path(args.samples).is_file(), f"no sample file at {args.samples}: pass the .npz that "
                                           "`minidiff sample CKPT --npz FILE` wrote")
    require(args.num >= 2 and args.batch_size >= 1, "--num must be at least 2 and --batch-size at least 1")
    require(args.dataset != "folder" or args.data_root, "--dataset folder needs --data-root DIR")
    if args.stats:
        require(not Path(args.stats).is_dir(), f"--stats {args.stats} is a folder; give a file name")
        require(Path(args.stats).resolve() != Path(args.samples).resolve(),
                f"--stats {args.stats} is the sample file itself; the real statistics would overwrite it")
        check_output_folder(Path(args.stats).parent, "--stats")
    args.device = str(resolve_device(args.device))


def run(args: argparse.Namespace) -> float:
    from ..training.runtime import UsageError

    check_args(args)
    try:
        samples = load_images(args.samples)
    except (ValueError, KeyError, OSError) as err:
        raise UsageError(f"{args.samples} holds no uint8 images from minidiff sample ({err})") from None
    if len(samples) < args.num:
        raise UsageError(f"{args.samples} holds {len(samples)} images, fewer than --num {args.num}; "
                         f"draw more, or pass --num {len(samples)} (FID at small N reads high).")
    samples = samples[:args.num]
    resolution = samples.shape[1]
    root = str(Path(args.data_root).resolve()) if args.data_root else ""
    source = f"{args.dataset}:{root}:{resolution}"
    # one cache per dataset, folder and resolution
    tag = "" if args.dataset == "cifar10" else "_" + hashlib.sha1(source.encode()).hexdigest()[:8]
    cache = args.stats or f"data/fid_stats_{args.dataset}_{resolution}{tag}.npz"
    try:
        extractor = inception_extractor(args.device)
    except (ImportError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    try:
        real = cached_statistics(cache, lambda: dataset_images(args.dataset, args.data_root, resolution),
                                 extractor, source=source, batch_size=args.batch_size, device=args.device)
    except ValueError as err:  # a cache written for other data
        raise UsageError(str(err)) from None
    score = fid(samples, real, extractor, batch_size=args.batch_size, device=args.device)
    print(f"FID {score:.3f}  ({len(samples)} samples vs {args.dataset} training-set statistics in {cache})")
    return score


def main(argv=None) -> None:
    from ..training.runtime import run_command

    run_command(run, parse_args(argv))
