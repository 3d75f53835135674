"""The DDPM UNet (Ho, Jain, Abbeel 2020, Appendix B), written out in one file.

Reading order is data order:

    timestep_embedding  sinusoidal features of the integer timestep t ("Transformer sinusoidal
                        position embedding", DDPM App. B)
    ResBlock            GroupNorm -> SiLU -> conv, + embedding, GroupNorm -> SiLU -> dropout -> conv,
                        plus a (1x1) skip; the last conv starts at zero so the block starts as identity
    AttnBlock           self-attention over the H*W positions (DDPM uses it at 16x16), through
                        torch.nn.functional.scaled_dot_product_attention
    Downsample/Upsample stride-2 conv / nearest x2 followed by a conv
    UNet                conv_in, a down path that stores every activation, a middle (res, attn, res),
                        an up path that concatenates them back, norm -> SiLU -> a zero-initialised conv

Class conditioning (optional) adds nn.Embedding(num_classes + 1, dim)(y) to the timestep embedding;
index `num_classes` is the "null" class that classifier-free guidance trains with label dropout and
samples with (Ho and Salimans 2022). `y=None` means the null class for every sample.

`UNet.from_preset("ddpm-cifar10")` is DDPM's CIFAR-10 network: 35,746,307 parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# Each preset is the full keyword config of UNet; `UNet.from_preset(name, **overrides)` builds one.
PRESETS: dict[str, dict] = {
    # DDPM CIFAR-10 (Ho et al. 2020, App. B): 35.7M parameters.
    "ddpm-cifar10": dict(
        in_channels=3, out_channels=3, image_size=32, base_channels=128,
        channel_mults=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
        dropout=0.1, num_heads=1, num_classes=None, norm_groups=32,
    ),
    # For minutes of CPU training (267,891 parameters): chosen by measurement among wider, deeper
    # and attention variants, which all reached a higher loss in equal CPU time (docs/unet.md).
    # The folder recipe's network for images the patch stem cannot take, such as Fashion-MNIST's 28x28.
    "small": dict(
        in_channels=3, out_channels=3, image_size=32, base_channels=16,
        channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
        dropout=0.0, num_heads=1, num_classes=None, norm_groups=8,
    ),
    # The built-in recipe's network, and the folder recipe's for ten CPU-minutes (1,068,844 parameters
    # unconditional): `small` twice as wide behind a 2x2 space-to-depth stem, so its levels run at 16,
    # 8 and 4 pixels. On a 2-core CPU a training step costs about half of `small`'s at batch 32 (wider
    # convolutions on fewer positions run nearer the matmul peak), and it learns more per step
    # (docs/recipe_history.md).
    "small-patch2": dict(
        in_channels=3, out_channels=3, image_size=32, base_channels=32,
        channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
        dropout=0.0, num_heads=1, num_classes=None, norm_groups=8, patch_size=2,
    ),
    # The folder recipe's network when the budget buys it (training/budget.py: an hour of a 2-core
    # CPU, or a GPU): small-patch2 half as wide again, 2.4M parameters at twice the cost a step.
    "medium-patch2": dict(
        in_channels=3, out_channels=3, image_size=32, base_channels=48,
        channel_mults=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
        dropout=0.0, num_heads=1, num_classes=None, norm_groups=8, patch_size=2,
    ),
    # For tests: 11,767 parameters, yet every kind of block (two-head attention at 8x8) is present.
    "tiny": dict(
        in_channels=3, out_channels=3, image_size=16, base_channels=4,
        channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
        dropout=0.0, num_heads=2, num_classes=None, norm_groups=2,
    ),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, [B] -> [B, dim] (DDPM App. B, as in the Transformer).

    Frequencies run geometrically from 1 to 1/max_period; the first half of the features are sines,
    the second half cosines (the layout of DDPM's `get_timestep_embedding`).
    """
    if dim % 2 != 0 or dim < 4:
        raise ValueError(f"timestep embedding dim must be even and >= 4, got {dim}")
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, then cast back.

    Under bf16/fp16 the mean and variance over a group lose precision; improved-diffusion and
    DDPM's own TPU code keep the statistics in float32. In float32 the casts are no-ops.
    eps is DDPM's 1e-6 (TensorFlow's group_norm default), not PyTorch's 1e-5.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-6):
        super().__init__(num_groups, num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter to zero: the layer's output starts at 0 (DDPM's init_scale=0)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """DDPM residual block: h = conv(SiLU(GN(x))) + W emb; h = conv(drop(SiLU(GN(h)))); out = skip(x) + h."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = GroupNorm32(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = GroupNorm32(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        # Zero init: the block starts as the identity (its skip), which keeps a deep net stable.
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        # DDPM's "nin_shortcut": a 1x1 conv when the channel count changes.
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        # emb arrives already passed through SiLU (once, in UNet.forward, not once per block).
        h = h + self.emb_proj(emb)[:, :, None, None].to(h.dtype)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Self-attention over spatial positions with a residual connection (DDPM App. B, 16x16).

    q, k, v come from one 1x1 conv; the heads split the channels; the output projection starts at
    zero so the block starts as the identity.
    """

    def __init__(self, ch: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_module(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the 3C channels of the 1x1 conv are (q, k, v) x heads x channels per head; positions flatten to a sequence
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (qkv heads c) h w -> qkv b heads (h w) c",
                            qkv=3, heads=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        out = rearrange(out, "b heads (h w) c -> b (heads c) h w", h=x.shape[2])
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv (DDPM's resamp_with_conv=True)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour copy, then a 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The blocks at one resolution: ResBlocks, each followed by attention where asked."""

    def __init__(self, res_blocks: list[ResBlock], attn: list[nn.Module]):
        super().__init__()
        self.res = nn.ModuleList(res_blocks)
        self.attn = nn.ModuleList(attn)


class UNet(nn.Module):
    """DDPM's UNet: predicts an image-shaped output from a noisy image x, timestep t and label y.

    Keyword config (all stored in `self.config`, a plain dict that rebuilds the model):
        in_channels, out_channels   image channels in and out
        image_size                  side of the training images; attention levels are found from it
        base_channels               channels at the first level (DDPM: 128)
        channel_mults               channels per level = base_channels * mult; one level per entry,
                                    each but the last followed by a 2x downsampling
        num_res_blocks              ResBlocks per level on the way down (the way up has one more)
        attn_resolutions            spatial sides (e.g. (16,)) at which self-attention follows each ResBlock
        dropout                     inside every ResBlock (DDPM CIFAR-10: 0.1)
        num_heads                   attention heads (DDPM: 1)
        num_classes                 None for unconditional; else labels 0..num_classes-1, plus the
                                    null label num_classes for classifier-free guidance
        norm_groups                 GroupNorm groups (DDPM: 32); every channel count must divide by it
        patch_size                  1: the network sees pixels (DDPM). p > 1: a space-to-depth stem;
                                    each p x p patch becomes one position with p*p*in_channels
                                    channels (pixel_unshuffle), the levels run at image_size / p, and
                                    the output is folded back (pixel_shuffle). On a CPU a convolution
                                    over fewer, wider positions runs nearer the matmul peak.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        image_size: int = 32,
        base_channels: int = 128,
        channel_mults: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        num_heads: int = 1,
        num_classes: int | None = None,
        norm_groups: int = 32,
        patch_size: int = 1,
    ):
        super().__init__()
        channel_mults, attn_resolutions = tuple(channel_mults), tuple(attn_resolutions)
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, image_size=image_size,
            base_channels=base_channels, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions, dropout=dropout, num_heads=num_heads,
            num_classes=num_classes, norm_groups=norm_groups, patch_size=patch_size,
        )
        _check_config(**self.config)
        ch, groups, emb_dim = base_channels, norm_groups, 4 * base_channels
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.downsample_factor = patch_size * 2 ** (len(channel_mults) - 1)

        # Timestep MLP: sinusoid(ch) -> 4ch -> SiLU -> 4ch (DDPM App. B).
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        self.conv_in = nn.Conv2d(in_channels * patch_size ** 2, ch, 3, padding=1)

        def attn_or_none(res: int) -> nn.Module:
            return AttnBlock(cur, num_heads, groups) if res in attn_resolutions else nn.Identity()

        # Down path. skip_chs records the channels of every activation the up path will concatenate.
        self.down, self.downsamples = nn.ModuleList(), nn.ModuleList()
        cur, res, skip_chs = ch, image_size // patch_size, [ch]
        for i, mult in enumerate(channel_mults):
            blocks, attn = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(cur, ch * mult, emb_dim, dropout, groups))
                cur = ch * mult
                attn.append(attn_or_none(res))
                skip_chs.append(cur)
            self.down.append(Level(blocks, attn))
            if i != len(channel_mults) - 1:
                self.downsamples.append(Downsample(cur))
                skip_chs.append(cur)
                res //= 2

        # Middle: ResBlock, attention (always, as in DDPM), ResBlock.
        self.mid1 = ResBlock(cur, cur, emb_dim, dropout, groups)
        self.mid_attn = AttnBlock(cur, num_heads, groups)
        self.mid2 = ResBlock(cur, cur, emb_dim, dropout, groups)

        # Up path: one more ResBlock per level than on the way down, each eating one skip.
        self.up, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            blocks, attn = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(cur + skip_chs.pop(), ch * mult, emb_dim, dropout, groups))
                cur = ch * mult
                attn.append(attn_or_none(res))
            self.up.append(Level(blocks, attn))
            if i != 0:
                self.upsamples.append(Upsample(cur))
                res *= 2

        self.norm_out = GroupNorm32(groups, cur)
        # Zero init: the untrained model outputs exactly 0 (the mean of every target).
        self.conv_out = zero_module(nn.Conv2d(cur, out_channels * patch_size ** 2, 3, padding=1))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UNet":
        """Build a named preset from PRESETS, with any config key overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown UNet preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, t: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The per-sample conditioning vector: time MLP (+ class embedding), then SiLU."""
        t = torch.as_tensor(t, device=self.conv_in.weight.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must hold one timestep per sample, shape ({batch},), got {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t, self.config["base_channels"]))
        if self.class_emb is not None:
            if y is None:  # unconditional: the null class, as classifier-free guidance trains it
                y = torch.full((batch,), self.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.class_emb(y)
        elif y is not None:
            raise ValueError("labels y were given but this UNet has num_classes=None; "
                             "build it with num_classes=K to condition on classes")
        return F.silu(emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, in_channels, H, W], t [B] integer timesteps, y [B] labels or None -> [B, out_channels, H, W]."""
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"x must be [B, {self.config['in_channels']}, H, W], got {tuple(x.shape)}")
        if x.shape[2] % self.downsample_factor or x.shape[3] % self.downsample_factor:
            raise ValueError(f"H and W must be divisible by {self.downsample_factor} "
                             f"(patch_size * 2 ** (len(channel_mults) - 1)), got {tuple(x.shape[2:])}")
        emb = self.embed(t, y, x.shape[0])

        h = self.conv_in(F.pixel_unshuffle(x, self.patch_size) if self.patch_size > 1 else x)
        skips = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.res, level.attn):
                h = attn(block(h, emb))
                skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
                skips.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)

        for i, level in enumerate(self.up):
            for block, attn in zip(level.res, level.attn):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            if i < len(self.upsamples):
                h = self.upsamples[i](h)

        out = self.conv_out(F.silu(self.norm_out(h)))
        out = F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out
        return out


def _check_config(*, in_channels, out_channels, image_size, base_channels, channel_mults,
                  num_res_blocks, attn_resolutions, dropout, num_heads, num_classes, norm_groups, patch_size=1):
    """Refuse configs that would fail deep inside forward, saying what was wrong and what to do."""
    if not (isinstance(patch_size, int) and patch_size >= 1) or image_size % patch_size:
        raise ValueError(f"patch_size must be a positive integer that divides image_size {image_size}, "
                         f"got {patch_size!r}")
    image_size //= patch_size  # the side the levels work at
    if not channel_mults or min(channel_mults) < 1:
        raise ValueError(f"channel_mults must be a non-empty tuple of positive ints, got {channel_mults}")
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
    factor = 2 ** (len(channel_mults) - 1)
    if image_size % factor:
        raise ValueError(f"image_size {image_size} is not divisible by {factor}: {len(channel_mults)} "
                         f"levels halve the image {len(channel_mults) - 1} times; change image_size "
                         "or use fewer channel_mults")
    resolutions = [image_size // 2 ** i for i in range(len(channel_mults))]
    missing = [r for r in attn_resolutions if r not in resolutions]
    if missing:
        raise ValueError(f"attn_resolutions {missing} never occur: with image_size {image_size} and "
                         f"{len(channel_mults)} levels the resolutions are {resolutions}")
    for c in sorted({base_channels * m for m in channel_mults}):
        if c % norm_groups:
            raise ValueError(f"{c} channels are not divisible by norm_groups={norm_groups} (GroupNorm); "
                             "choose base_channels a multiple of norm_groups, or change norm_groups")
        if c % num_heads:
            raise ValueError(f"{c} channels are not divisible by num_heads={num_heads}")
    if base_channels % 2 or base_channels < 4:
        raise ValueError(f"base_channels must be even and >= 4 (sinusoidal embedding), got {base_channels}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be None or >= 1, got {num_classes}")
