"""dig2dig's compact luminance prior: a small, fully convolutional ε-prediction UNet.

Design (sized for a 2-core CPU: one forward at 640×480 in about a second):

* one input channel (luminance in [-1, 1]); the image is first folded 2×2 into four half-resolution
  channels (pixel unshuffle, as FFDNet does), so every layer works at H/2 or below, and unfolded at
  the end -- the cheapest way to keep full-resolution detail at a quarter of the cost;
* a UNet over ``len(mults)`` levels (H/2, H/4, …): ResBlocks with GroupNorm and a timestep
  scale/shift (the timestep is the only conditioning -- no positional embedding, so any H×W that
  is a multiple of :attr:`CompactConfig.spatial_multiple` works);
* self-attention only at the coarsest level, where a 640×480 image has ~1200 tokens and global
  context is cheap;
* the output is ε (the DDPM noise) at the given original timestep on the linear schedule, so the
  prior plugs into the sampler unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .adm import timestep_embedding


@dataclass(frozen=True)
class CompactConfig:
    in_channels: int = 1
    base: int = 64
    mults: tuple[int, ...] = (1, 2, 3, 4)
    blocks: tuple[int, ...] = (1, 1, 2, 2)  # ResBlocks per level on each side
    attention: bool = True  # self-attention in the middle block (coarsest level)
    head_channels: int = 64
    fold: int = 2  # pixel-unshuffle factor
    groups: int = 16

    @property
    def spatial_multiple(self) -> int:
        return self.fold * 2 ** (len(self.mults) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CompactConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown compact-prior architecture keys {sorted(unknown)}")
        d = dict(d)
        for k in ("mults", "blocks"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        cfg = cls(**d)
        if len(cfg.mults) != len(cfg.blocks):
            raise ValueError(f"mults {cfg.mults} and blocks {cfg.blocks} must have one entry per level")
        return cfg


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[..., None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class _Attn(nn.Module):
    def __init__(self, ch: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = nn.GroupNorm(min(groups, ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        q, k, v = (z.transpose(-1, -2).contiguous() for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(a)


class CompactUNet(nn.Module):
    """ε-prediction UNet on luminance; ``forward(x, t)`` with x (B, C, H, W), t (B,) int."""

    def __init__(self, cfg: CompactConfig):
        super().__init__()
        self.cfg = cfg
        chans = [cfg.base * m for m in cfg.mults]
        emb = 4 * cfg.base
        fold_ch = cfg.in_channels * cfg.fold**2
        self.time = nn.Sequential(nn.Linear(cfg.base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(fold_ch, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, (c, n) in enumerate(zip(chans, cfg.blocks)):
            self.down_blocks.append(nn.ModuleList([_Res(c, c, emb, cfg.groups) for _ in range(n)]))
            if i + 1 < len(chans):
                self.downs.append(nn.Conv2d(c, chans[i + 1], 3, stride=2, padding=1))
        c_mid = chans[-1]
        self.mid1 = _Res(c_mid, c_mid, emb, cfg.groups)
        self.mid_attn = _Attn(c_mid, cfg.head_channels, cfg.groups) if cfg.attention else None
        self.mid2 = _Res(c_mid, c_mid, emb, cfg.groups)
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(chans))):
            c, n = chans[i], cfg.blocks[i]
            if i + 1 < len(chans):
                self.ups.append(nn.Conv2d(chans[i + 1], c, 3, padding=1))
            self.up_blocks.append(nn.ModuleList([_Res(2 * c, c, emb, cfg.groups)]
                                                + [_Res(c, c, emb, cfg.groups) for _ in range(n - 1)]))
        self.out_norm = nn.GroupNorm(min(cfg.groups, chans[0]), chans[0])
        self.out = nn.Conv2d(chans[0], fold_ch, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.cfg.base).to(x.dtype))
        h = self.inp(F.pixel_unshuffle(x, self.cfg.fold))
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for blk in blocks:
                h = blk(h, emb)
            skips.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h, emb)
        for j, blocks in enumerate(self.up_blocks):
            if j > 0:
                h = self.ups[j - 1](F.interpolate(h, scale_factor=2, mode="nearest"))
            h = torch.cat([h, skips.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb)
        return F.pixel_shuffle(self.out(F.silu(self.out_norm(h))), self.cfg.fold)
