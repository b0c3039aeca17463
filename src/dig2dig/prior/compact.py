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

Folding predicts each of the 2×2 pixel phases from its own output channel; phase-to-phase
differences in those predictions show in samples as a faint 2-pixel grid.  Two optional
full-resolution layers remove it: ``stem`` (a 3×3 convolution at full resolution whose features are
folded beside the raw pixels) and ``head`` (a small 3×3 refinement at full resolution that sees the
input, the unfolded ε and the unfolded last features, and adds a correction to ε).  Both are
zero-initialised where they join the network, so :meth:`CompactUNet.load_grown` can warm-start a
larger configuration (more ResBlocks, a stem, a head) from a smaller one's weights with exactly the
same output at the start.
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
    stem: int = 0  # channels of a full-resolution 3×3 convolution folded beside the pixels (0: none)
    head: int = 0  # hidden channels of the full-resolution refinement of ε (0: none)

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
        bad = {k: getattr(cfg, k) for k in ("base", "head_channels", "fold", "groups") if getattr(cfg, k) < 1}
        bad.update({k: getattr(cfg, k) for k in ("stem", "head") if getattr(cfg, k) < 0})
        if bad or min(cfg.mults) < 1 or min(cfg.blocks) < 1:
            raise ValueError(f"compact-prior architecture needs positive sizes (stem/head >= 0), got {cfg.to_dict()}")
        return cfg


def _zero_init(conv: nn.Conv2d) -> None:
    """Weights and bias to zero (a branch that starts out adding nothing)."""
    assert conv.bias is not None  # every convolution here has a bias
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        _zero_init(self.conv2)

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
        _zero_init(self.proj)

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
        self.stem = nn.Conv2d(cfg.in_channels, cfg.stem, 3, padding=1) if cfg.stem else None
        self.inp = nn.Conv2d(fold_ch + cfg.stem * cfg.fold**2, chans[0], 3, padding=1)
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
            self.up_blocks.append(
                nn.ModuleList([_Res(2 * c, c, emb, cfg.groups)] + [_Res(c, c, emb, cfg.groups) for _ in range(n - 1)])
            )
        self.out_norm = nn.GroupNorm(min(cfg.groups, chans[0]), chans[0])
        self.out = nn.Conv2d(chans[0], fold_ch, 3, padding=1)
        _zero_init(self.out)
        self.head_in: nn.Conv2d | None
        self.head_out: nn.Conv2d | None
        if cfg.head:
            feats = chans[0] // cfg.fold**2
            self.head_in = nn.Conv2d(2 * cfg.in_channels + feats, cfg.head, 3, padding=1)
            self.head_out = nn.Conv2d(cfg.head, cfg.in_channels, 3, padding=1)
            _zero_init(self.head_out)
        else:
            self.head_in = self.head_out = None

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        fold = self.cfg.fold
        emb = self.time(timestep_embedding(t, self.cfg.base).to(x.dtype))
        u = F.pixel_unshuffle(x, fold)
        if self.stem is not None:
            u = torch.cat([u, F.pixel_unshuffle(F.silu(self.stem(x)), fold)], dim=1)
        h = self.inp(u)
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            assert isinstance(blocks, nn.ModuleList)
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
            assert isinstance(blocks, nn.ModuleList)
            for blk in blocks:
                h = blk(h, emb)
        h = F.silu(self.out_norm(h))
        eps = F.pixel_shuffle(self.out(h), fold)
        if self.head_in is None or self.head_out is None:  # set together: both or neither
            return eps
        feats = F.pixel_shuffle(h[:, : (h.shape[1] // fold**2) * fold**2], fold)
        return eps + self.head_out(F.silu(self.head_in(torch.cat([x, eps, feats], dim=1))))

    def load_grown(self, state: dict[str, torch.Tensor]) -> None:
        """Load the weights of a smaller configuration (fewer ResBlocks, no stem or head).

        Every tensor of ``state`` must exist here; tensors that exist only here keep their
        initialisation (new ResBlocks, the head's output and the stem's columns of the input
        convolution start at zero, so the grown network computes exactly what the smaller one did).
        The input convolution takes the old weights for the raw-pixel channels and zeros for the stem's.
        """
        own = self.state_dict()
        extra = sorted(set(state) - set(own))
        if extra:
            raise ValueError(
                f"cannot grow from these weights: {len(extra)} tensor(s) have no place here, e.g. {extra[:4]}"
            )
        grown = {}
        for k, v in own.items():
            if k not in state:
                grown[k] = v
                continue
            old = state[k].to(v.dtype)
            if old.shape == v.shape:
                grown[k] = old
            elif k == "inp.weight" and old.shape[0] == v.shape[0] and old.shape[2:] == v.shape[2:]:
                w = torch.zeros_like(v)
                w[:, : old.shape[1]] = old
                grown[k] = w
            else:
                raise ValueError(
                    f"cannot grow {k}: {tuple(old.shape)} -> {tuple(v.shape)}; only depth, the stem "
                    f"and the head may change"
                )
        self.load_state_dict(grown)
