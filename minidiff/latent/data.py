"""Captioned images for the latent path, and their cache of latents and text embeddings.

A fine-tuning set is a folder of images with a caption each (a .txt beside the image, or a line of
metadata.jsonl). `CaptionedImages` reads it; `cache_latents` encodes every image and caption once
(VAE and text encoder), so that training runs the UNet alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..training.data import IMAGE_SUFFIXES, resize_center_crop, to_float
from ..training.runtime import UsageError
from .stable_diffusion import LatentComponents, _atomic_write_text, encode_images, encode_prompts


def _barrier(world_size: int) -> None:
    if world_size > 1:
        torch.distributed.barrier()


def readable_images(paths: list[Path], root: Path) -> list[Path]:
    """The paths that decode as images. Unreadable files (not an image, or truncated) are
    skipped with a warning that names them: a training set gathered from the web nearly always
    holds a few, and the run should use the rest. A folder where none decodes is refused."""
    from PIL import Image

    good, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.convert("RGB")  # decodes the whole file: a truncated one fails here
            good.append(path)
        except (OSError, SyntaxError, ValueError) as err:
            bad.append(f"{path.relative_to(root)} ({type(err).__name__})")
    shown = "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
    if bad and not good:
        raise UsageError(f"none of the {len(paths)} image files under {root} could be read ({shown}).")
    if bad:
        print(f"warning: skipped {len(bad)} of {len(paths)} files under {root} that are not readable images: {shown}")
    return good


def read_captions(root: Path, images: list[Path]) -> dict[Path, str]:
    """Captions from metadata.jsonl ({"file_name": ..., "text" or "caption": ...} per line) and
    from a .txt file beside each image (the .txt wins). Raises if any image has none."""
    captions = {}
    meta = root / "metadata.jsonl"
    if meta.is_file():
        for n, line in enumerate(meta.read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise UsageError(f"{meta}:{n} is not a line of JSON; each line must be "
                                     '{"file_name": ..., "text": ...}') from None
                text = row.get("text", row.get("caption"))
                if "file_name" not in row or text is None:
                    raise UsageError(f"{meta}:{n} needs a 'file_name' and a 'text' (or 'caption') field")
                captions[(root / row["file_name"]).resolve()] = str(text)
    for path in images:
        txt = path.with_suffix(".txt")
        if txt.is_file():
            captions[path.resolve()] = txt.read_text().strip()
    missing = [p for p in images if p.resolve() not in captions]
    if missing:
        shown = ", ".join(str(p.relative_to(root)) for p in missing[:5])
        raise UsageError(f"{len(missing)} of {len(images)} images under {root} have no caption ({shown}"
                         f"{', ...' if len(missing) > 5 else ''}). Put a caption in a .txt file beside each "
                         "image (cat.png -> cat.txt) or a line {\"file_name\": \"cat.png\", \"text\": \"...\"} "
                         "in metadata.jsonl.")
    return {p: captions[p.resolve()] for p in images}


class CaptionedImages(torch.utils.data.Dataset):
    """A folder of images with captions, each resized (shorter side) and centre-cropped to a square.

    Item i is {"index": i, "pixels": float [-1, 1] [3, R, R], "caption": str}. Images are read
    from disk per item, so the set can be larger than memory.
    """

    def __init__(self, root: str | Path, resolution: int):
        self.root, self.resolution = Path(root).expanduser(), resolution
        if not self.root.is_dir():
            raise UsageError(f"--data-dir {self.root} does not exist; pass a folder of captioned images")
        self.paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under --data-dir {self.root}")
        self.paths = readable_images(self.paths, self.root)
        self.captions = [c for c in read_captions(self.root, self.paths).values()]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            rgb = im.convert("RGB")
            pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
        pixels = resize_center_crop(pixels.permute(2, 0, 1)[None], self.resolution)[0]
        return {"index": i, "pixels": to_float(pixels), "caption": self.captions[i]}


# ------------------------------------------------------------------------------------ caching


class CachedLatents(torch.utils.data.Dataset):
    """Latents and text embeddings written by `cache_latents`: item i is
    {"index": i, "latents": [4, R/f, R/f], "text_emb": [L, D]}, both float32."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self.meta = json.loads((self.dir / "meta.json").read_text())

    def __len__(self) -> int:
        return self.meta["num_images"]

    def __getitem__(self, i: int) -> dict:
        item = torch.load(self.dir / f"{i:07d}.pt", weights_only=True)
        return {"index": i, **item}

    def empty_embedding(self) -> torch.Tensor:
        return torch.load(self.dir / "empty.pt", weights_only=True)


def cache_latents(components: LatentComponents, dataset: CaptionedImages, cache_dir: str | Path, *,
                  mode: str = "sample", seed: int = 0, batch_size: int = 8, rank: int = 0,
                  world_size: int = 1, progress: bool = True) -> CachedLatents:
    """Encode every image and caption once and write them to `cache_dir`, so that training
    skips both encoders. A finished cache (its meta.json matches) is reused as it is.

    With mode="sample" the VAE sample is drawn once per image, here, from `seed`: every epoch
    then sees the same draw. One file per image; meta.json is written last, so an
    interrupted cache is redone. Under torchrun each rank encodes its share.
    """
    cache_dir = Path(cache_dir)
    meta = {"num_images": len(dataset), "resolution": dataset.resolution, "mode": mode, "seed": seed,
            "checkpoint": str(components.folder.resolve()),
            "images": [str(p.relative_to(dataset.root)) for p in dataset.paths],
            "captions": dataset.captions}
    meta_path = cache_dir / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return CachedLatents(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    device = components.vae.device
    generator = torch.Generator(device).manual_seed(seed + rank)
    if rank == 0:
        torch.save(encode_prompts(components, [""])[0].cpu(), cache_dir / "empty.pt")
    mine = list(range(rank, len(dataset), world_size))
    for start in tqdm(range(0, len(mine), batch_size), desc="caching latents", disable=not progress):
        items = [dataset[i] for i in mine[start:start + batch_size]]
        pixels = torch.stack([it["pixels"] for it in items])
        latents = encode_images(components, pixels, mode, generator).cpu()
        text = encode_prompts(components, [it["caption"] for it in items]).cpu()
        for it, z, c in zip(items, latents, text):
            torch.save({"latents": z.clone(), "text_emb": c.clone()}, cache_dir / f"{it['index']:07d}.pt")
    _barrier(world_size)
    if rank == 0:
        _atomic_write_text(meta_path, json.dumps(meta))
    _barrier(world_size)
    return CachedLatents(cache_dir)
