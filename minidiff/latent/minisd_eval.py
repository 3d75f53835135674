"""What the miniature Stable Diffusion draws: background brightness against the captions' own.

    minidiff minisd compare --base runs/minisd --tuned runs/minisd-fixed --out runs/minisd-compare

Lin et al.'s Stable Diffusion could not draw "a solid black background": with a non-zero terminal
SNR and leading steps every sample starts from noise that says "medium brightness". Here the base
(eps, SD's schedule, leading steps) and its fine-tune (zero terminal SNR, v, trailing steps,
guidance rescale 0.7) draw the same prompts "a <colour> <shape> on a nearly black background"
and "... nearly white background" from the same starting noise, and the brightness of each
sample's background is set beside that of the training images with the same background words.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..training.data import BUILTIN_CLASSES, to_float
from .minisd_text import BACKGROUND_WORDS, caption

FRAME = 2  # pixels: the border that the shapes (radius <= 11 px, centre within 3 px) do not reach


def background_brightness(images: torch.Tensor) -> torch.Tensor:
    """Per image, the median over the outer FRAME pixels of the channel mean, in [-1, 1].
    images: float [-1, 1] [B, 3, H, W]. The median ignores a shape that grazes the border."""
    gray = images.float().mean(1)
    mask = torch.ones_like(gray[0], dtype=torch.bool)
    mask[FRAME:-FRAME, FRAME:-FRAME] = False
    return gray[:, mask].median(dim=1).values


def caption_brightness(images: torch.Tensor, captions: list[str]) -> dict:
    """For each background word, the background brightness of the training images whose caption
    has it: mean, 5th and 95th percentile and count. images: uint8 [N, 3, H, W]."""
    bg = background_brightness(to_float(images))
    table = {}
    for word in BACKGROUND_WORDS:
        rows = torch.tensor([f"on a {word} background" in c for c in captions])
        values = bg[rows]
        table[word] = {"mean": values.mean().item(), "p5": values.quantile(0.05).item(),
                       "p95": values.quantile(0.95).item(), "count": int(rows.sum())}
    return table


def reconstruction_figure(real: torch.Tensor, recon: torch.Tensor, path: Path) -> None:
    """Originals (top row) over their VAE reconstructions (bottom row), pixels shown 4 x 4."""
    from torchvision.utils import save_image

    grid = torch.nn.functional.interpolate(torch.cat([real, recon]).cpu(), scale_factor=4, mode="nearest")
    save_image((grid + 1) / 2, path, nrow=len(real), padding=4, pad_value=0.5)


def draw(folder: str | Path, prompts: list[str], *, steps: int, guidance: float, guidance_rescale: float,
         seed: int) -> torch.Tensor:
    """Images [-1, 1] for `prompts` at the model's own size, with the sampling settings its
    scheduler config records (latent.generate)."""
    from . import stable_diffusion as latent

    components = latent.load_components(folder)
    size = components.unet.config.sample_size * components.vae_factor
    return latent.generate(components, prompts, height=size, width=size, steps=steps, guidance=guidance,
                           guidance_rescale=guidance_rescale, seed=seed, progress=False)


@torch.no_grad()
def heldout_loss(folder: str | Path, images_dir: str | Path, *, prediction: str = "v", zero_snr: bool = True,
                 seed: int = 0) -> float:
    """The loss the fine-tune minimises (by default v on the zero-SNR schedule) on held-out
    captioned images, at timesteps and noise fixed by `seed`, for the UNet in `folder`."""
    from . import stable_diffusion as latent
    from .data import CaptionedImages
    from ..objectives import diffusion_loss

    components = latent.load_components(folder)
    data = CaptionedImages(images_dir, components.unet.config.sample_size * components.vae_factor)
    z = latent.encode_images(components, torch.stack([data[i]["pixels"] for i in range(len(data))]), "mean")
    c = latent.encode_prompts(components, data.captions)
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (len(z),), generator=g)
    noise = torch.randn(z.shape, generator=g)
    schedule = latent.base_schedule(components.scheduler_config, zero_snr)
    model = latent.LatentUNet(components.unet.eval())
    return diffusion_loss(model, z, schedule, prediction, y=c, t=t, noise=noise).item()


def prompts_for(word: str, repeats: int = 2) -> list[str]:
    """One prompt per built-in class with background `word`, each `repeats` times."""
    return [caption(label, 0.0).replace("mid grey", word) for label in range(len(BUILTIN_CLASSES))] * repeats


def compare(base: str | Path, tuned: str | Path, out: str | Path, *, steps: int = 50, guidance: float = 7.5,
            seed: int = 0, repeats: int = 2) -> dict:
    """Draw the black and white prompts from both models (same noise), measure each sample's
    background and write compare.png and compare.json to `out`. The base is sampled as Stable
    Diffusion was before the paper (its own eps / leading config, plain guidance); the fine-tune
    with all four fixes (its config's zero SNR, v and trailing, guidance rescale 0.7)."""
    from ..training.runtime import check_output_folder, require

    out = check_output_folder(out, "--out")
    report = Path(base) / "minisd.json"
    require(report.is_file(), f"--base {base} has no minisd.json: pass a folder written by "
            "`minidiff minisd build` (its report holds the captions' own brightness)")
    own = json.loads(report.read_text())["caption_background"]
    result, images = {"steps": steps, "guidance": guidance, "seed": seed, "captions": own}, {}
    for name, folder, phi in (("base", base, 0.0), ("fine-tuned", tuned, 0.7)):
        for word in ("nearly black", "nearly white"):
            x = draw(folder, prompts_for(word, repeats), steps=steps, guidance=guidance, guidance_rescale=phi,
                     seed=seed)
            bg = background_brightness(x)
            images[name, word] = x
            result[f"{name} / {word}"] = {"mean": bg.mean().item(), "min": bg.min().item(), "max": bg.max().item(),
                                          "captions_mean": own[word]["mean"], "guidance_rescale": phi}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    comparison_figure(images, result, out / "compare.png")
    print(f"{'model / prompt':34s} {'background mean':>16s} {'min':>7s} {'max':>7s} {'captions':>9s}")
    for key, row in result.items():
        if isinstance(row, dict) and "captions_mean" in row:
            print(f"{key:34s} {row['mean']:16.3f} {row['min']:7.3f} {row['max']:7.3f} {row['captions_mean']:9.3f}")
    print(f"wrote {out / 'compare.png'} and {out / 'compare.json'}")
    return result


def comparison_figure(images: dict, result: dict, path: Path) -> None:
    """One row per (model, prompt), each labelled with its measured background brightness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    rows = [("base", "nearly black"), ("fine-tuned", "nearly black"), ("base", "nearly white"),
            ("fine-tuned", "nearly white")]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.35 * len(rows) + 0.5))
    for ax, key in zip(axes, rows):
        x = images[key][:len(BUILTIN_CLASSES)]
        grid = make_grid((x.cpu() + 1) / 2, nrow=len(x), padding=1, pad_value=0.5)
        ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        row = result[f"{key[0]} / {key[1]}"]
        ax.set_title(f"{key[0]}, \"... on a {key[1]} background\": background {row['mean']:+.2f} "
                     f"(training captions {row['captions_mean']:+.2f})", fontsize=9)
        ax.axis("off")
    w = result["guidance"]
    guidance = f"guidance {w:g}, fine-tune's rescale phi 0.7" if w != 1 else "no guidance"
    fig.suptitle(f"miniature SD, {result['steps']} steps, {guidance}: base (eps, SD schedule, leading) vs fine-tune "
                 "(zero SNR, v, trailing); brightness in [-1, 1]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
