"""Two small colour image sets from Debian packages, written as folders a user would train on.

    python benchmarks/colour_sets.py export icons DIR [--flat]     oxygen + gnome 32x32 icons
    python benchmarks/colour_sets.py export stamps DIR [--flat]    Tux Paint's stamps
    python benchmarks/colour_sets.py grid SET OUT.png [--n 64]     a grid of the set, for the eye

Every image becomes a 32x32 RGB PNG: transparency composited on plain white, a non-square image
scaled so its long side is 32 pixels (aspect kept) and centred on white. DIR gets one sub-folder
per category (`minidiff train --dataset folder --data-root DIR` learns the labels), or all files
in DIR itself with --flat (names then start with the category). Same packages, same files, byte for
byte: sources are read in sorted order and names come from the source paths.

icons   apt-get install oxygen-icon-theme gnome-icon-theme
        /usr/share/icons/oxygen/base/32x32/CONTEXT/*.png and /usr/share/icons/gnome/32x32/CONTEXT/*.png,
        category = the context (actions, apps, ...). "animations" is left out: its files are
        spinner strips (32x480, 256x128), not icons. A symlink counts once, under the context of the
        file it resolves to when that file is in the same theme's 32x32 tree (oxygen's mimetypes
        links to 16x16 and 64x64 files count under the link's own context).
stamps  apt-get install tuxpaint-stamps-default (and librsvg2-bin, whose rsvg-convert draws the SVGs)
        /usr/share/tuxpaint/stamps/CATEGORY/**.png and **.svg, category = the top-level folder.
        A stamp with both a PNG and an SVG counts once, as the PNG (no renderer in the loop); a
        `NAME_mirror` stamp, Tux Paint's hand-drawn mirror image of NAME, is left out where NAME is
        there. Four small folders are merged (MERGE below): naturalforces (explosion, fire,
        lightning) into symbols, medical (thermometers, syringe, ...) into household, military
        (mostly vehicles) into vehicles, sports into hobbies.

Both sets then drop exact duplicates: an image whose 32x32 pixels equal an earlier one's (in sorted
order: category, then name) is left out.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = 32
ICON_ROOTS = {"oxygen": Path("/usr/share/icons/oxygen/base/32x32"), "gnome": Path("/usr/share/icons/gnome/32x32")}
ICON_PACKAGES = {"oxygen": "oxygen-icon-theme", "gnome": "gnome-icon-theme"}
ICON_SKIP = ("animations",)
STAMP_ROOT = Path("/usr/share/tuxpaint/stamps")
STAMP_PACKAGE = "tuxpaint-stamps-default"
MERGE = {"naturalforces": "symbols", "medical": "household", "military": "vehicles", "sports": "hobbies"}
SVG_RENDER = 128  # pixels: SVGs are drawn this large (aspect kept), then shrunk like any PNG
SETS = ("icons", "stamps")


class MissingData(Exception):
    """A package the set needs is not installed; the message says what to install."""


@dataclass(frozen=True)
class Source:
    category: str
    name: str   # unique within the category: becomes the file name
    path: Path  # a .png or .svg file


# ---------------------------------------------------------------------------------- pixels


def to_square_rgb(im, size: int = SIZE) -> np.ndarray:
    """uint8 [size, size, 3] from a PIL image of any mode: composited on white, then scaled so its long
    side is `size` (aspect kept) and centred on white. White = 255: out = a * colour + (1 - a) * 255."""
    from PIL import Image

    rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
    alpha = rgba[..., 3:] / 255
    rgb = np.round(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    flat = Image.fromarray(rgb, "RGB")
    w, h = flat.size
    if (w, h) != (size, size):
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        flat = flat.resize((nw, nh), Image.LANCZOS)
        square = Image.new("RGB", (size, size), (255, 255, 255))
        square.paste(flat, ((size - nw) // 2, (size - nh) // 2))
        flat = square
    return np.asarray(flat, dtype=np.uint8).copy()


def render_svg(path: Path, size: int = SVG_RENDER):
    """A PIL image of an SVG drawn by rsvg-convert inside a size x size box, aspect kept."""
    from PIL import Image

    if shutil.which("rsvg-convert") is None:
        raise MissingData("rsvg-convert not found (it draws the stamps' SVGs): apt-get install librsvg2-bin")
    png = subprocess.run(["rsvg-convert", "-w", str(size), "-h", str(size), "-a", str(path)],
                         capture_output=True, check=True).stdout
    return Image.open(io.BytesIO(png))


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    if path.suffix.lower() == ".svg":
        return to_square_rgb(render_svg(path))
    with Image.open(path) as im:
        return to_square_rgb(im)


# --------------------------------------------------------------------------------- sources


def icon_sources(roots: dict[str, Path] | None = None) -> list[Source]:
    """Every distinct icon file, once: a symlink to a file of the same tree is the file itself."""
    roots = ICON_ROOTS if roots is None else roots
    for theme, root in roots.items():
        if not root.is_dir():
            raise MissingData(f"{theme} icons not found at {root}: apt-get install "
                              + " ".join(ICON_PACKAGES.get(t, t) for t in roots))
    out, seen = [], set()
    for theme, root in sorted(roots.items()):
        real_root = root.resolve()
        files = sorted(p for p in root.glob("*/*.png") if p.parent.name not in ICON_SKIP)
        # Real files first, so that a link's target keeps its own context.
        for p in sorted(files, key=lambda p: p.is_symlink()):
            target = p.resolve()
            if target in seen or not target.is_file():
                continue
            seen.add(target)
            inside = target.parent.parent == real_root and target.parent.name not in ICON_SKIP
            context, stem = (target.parent.name, target.stem) if inside else (p.parent.name, p.stem)
            out.append(Source(context, f"{theme}-{stem}", target))
    return sorted(out, key=lambda s: (s.category, s.name))


def stamp_sources(root: Path | None = None) -> list[Source]:
    """One file a stamp (the PNG where there are both), NAME_mirror left out where NAME is there."""
    root = STAMP_ROOT if root is None else root
    if not root.is_dir():
        raise MissingData(f"Tux Paint stamps not found at {root}: apt-get install {STAMP_PACKAGE}")
    stems: dict[Path, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in (".png", ".svg") and p.is_file() and len(p.relative_to(root).parts) > 1:
            stem = p.relative_to(root).with_suffix("")
            if stem not in stems or p.suffix.lower() == ".png":
                stems[stem] = p
    out = []
    for stem, p in stems.items():
        if stem.name.endswith("_mirror") and stem.with_name(stem.name[: -len("_mirror")]) in stems:
            continue
        top = stem.parts[0]
        name = "-".join(stem.parts[1:]) if top not in MERGE else "-".join(stem.parts)
        out.append(Source(MERGE.get(top, top), name, p))
    return sorted(out, key=lambda s: (s.category, s.name))


def sources(name: str) -> list[Source]:
    if name == "icons":
        return icon_sources()
    if name == "stamps":
        return stamp_sources()
    raise MissingData(f"unknown set {name!r}: choose one of {', '.join(SETS)}")


def build(name: str, srcs: list[Source] | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], list[Source]]:
    """(images uint8 [N, 32, 32, 3], labels int64 [N], classes, sources) of a set, exact pixel
    duplicates left out (the first in sorted order stays)."""
    srcs = sources(name) if srcs is None else srcs
    images, kept, seen = [], [], set()
    for s in srcs:
        x = load_image(s.path)
        digest = hashlib.sha1(x.tobytes()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        images.append(x)
        kept.append(s)
    classes = tuple(sorted({s.category for s in kept}))
    labels = np.array([classes.index(s.category) for s in kept], dtype=np.int64)
    return np.stack(images) if images else np.zeros((0, SIZE, SIZE, 3), np.uint8), labels, classes, kept


# ---------------------------------------------------------------------------------- output


def export(name: str, out: Path, *, flat: bool = False, srcs: list[Source] | None = None) -> dict[str, int]:
    """Write the set under `out` (which must be new or empty); returns the count of each category."""
    from PIL import Image

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MissingData(f"{out} exists and is not an empty folder: give a new folder")
    images, labels, classes, kept = build(name, srcs)
    for x, s in zip(images, kept):
        path = out / f"{s.category}-{s.name}.png" if flat else out / s.category / f"{s.name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(path)
    return {c: int((labels == i).sum()) for i, c in enumerate(classes)}


def grid(images: np.ndarray, cols: int = 8, gap: int = 2, scale: int = 2) -> np.ndarray:
    """uint8 [H, W, 3]: images in rows of `cols` on a grey ground (white images stay visible)."""
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), 160, np.uint8)
    for i, x in enumerate(images):
        r, c = divmod(i, cols)
        canvas[gap + r * (h + gap): gap + r * (h + gap) + h, gap + c * (w + gap): gap + c * (w + gap) + w] = x
    return canvas.repeat(scale, 0).repeat(scale, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="colour_sets.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a set as 32x32 RGB PNGs, one sub-folder per category")
    e.add_argument("set", choices=SETS)
    e.add_argument("dir", type=Path)
    e.add_argument("--flat", action="store_true", help="every file in DIR itself, no labels")
    g = sub.add_parser("grid", help="a grid of --n images drawn at random (seed 0) from the set")
    g.add_argument("set", choices=SETS)
    g.add_argument("out", type=Path)
    g.add_argument("--n", type=int, default=64)
    args = p.parse_args(argv)
    try:
        if args.command == "export":
            counts = export(args.set, args.dir, flat=args.flat)
            for c, k in counts.items():
                print(f"{c:12s} {k:5d}")
            print(f"{'total':12s} {sum(counts.values()):5d}  -> {args.dir}{' (flat)' if args.flat else ''}")
        else:
            from PIL import Image

            images, _, _, _ = build(args.set)
            pick = np.sort(np.random.default_rng(0).choice(len(images), min(args.n, len(images)), replace=False))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid(images[pick])).save(args.out)
            print(f"{len(pick)} of {len(images)} {args.set} -> {args.out}")
    except MissingData as err:
        print(f"colour_sets.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
