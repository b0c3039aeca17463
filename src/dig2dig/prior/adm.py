"""The ADM UNet of Dhariwal & Nichol ("Diffusion Models Beat GANs", 2021), state-dict compatible.

This is our own implementation of the architecture that openai/guided-diffusion's
``create_model`` builds, written so that a guided-diffusion checkpoint (for example
``256x256_diffusion_uncond.pt``, the prior DDFM, CCF and Dig2DIG use) loads *strictly*: every
parameter name and shape matches.  Only inference is supported (no gradient checkpointing, no
class conditioning, no fp16 weight conversion -- use ``.half()`` on the module instead).

Architecture knobs live in :class:`ADMConfig`; ``ADMConfig.from_guided_diffusion_flags`` accepts
the flag dictionary guided-diffusion and DDFM's yaml files use, and
``ADMConfig.infer_from_state_dict`` recovers everything the weights determine.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ADMConfig:
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6
    num_res_blocks: int = 2
    attention_ds: tuple[int, ...] = (8, 16, 32)  # downsample factors with self-attention
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_heads: int = 4
    num_head_channels: int = 64  # -1: use num_heads
    num_heads_upsample: int = -1  # -1: same as num_heads
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True

    def __post_init__(self):
        sizes = {k: getattr(self, k) for k in ("in_channels", "model_channels", "out_channels", "num_res_blocks")}
        if min(sizes.values()) < 1 or not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"ADM architecture needs positive sizes, got {sizes} and channel_mult {self.channel_mult}")
        if self.num_head_channels == -1 and self.num_heads < 1:
            raise ValueError(f"ADM architecture needs num_heads >= 1 or num_head_channels > 0, got {self.num_heads}")

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def spatial_multiple(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ADMConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ADM architecture keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        for k in ("attention_ds", "channel_mult"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**d)

    @classmethod
    def from_guided_diffusion_flags(cls, flags: dict) -> ADMConfig:
        """Resolve guided-diffusion ``create_model`` flags (as in DDFM's model yaml)."""
        image_size = int(flags.get("image_size", 256))
        mult = flags.get("channel_mult", "")
        if mult in ("", None):
            table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
            if image_size not in table:
                raise ValueError(f"no default channel_mult for image_size {image_size}; give channel_mult")
            mult = table[image_size]
        elif isinstance(mult, str):
            mult = tuple(float(m) for m in mult.split(","))
        mult = tuple(int(m) if float(m).is_integer() else m for m in mult)
        if any(not float(m).is_integer() for m in mult):
            raise ValueError(f"fractional channel_mult {mult} is not supported")
        att = flags.get("attention_resolutions", "16,8")
        att = [int(r) for r in str(att).split(",") if str(r).strip()] if isinstance(att, str) else list(att)
        learn_sigma = bool(flags.get("learn_sigma", False))
        if flags.get("class_cond", False):
            raise ValueError(
                "class-conditional ADM checkpoints are not supported (dig2dig needs an unconditional prior)"
            )
        return cls(
            in_channels=int(flags.get("in_channels", 3)),
            model_channels=int(flags.get("num_channels", 128)),
            out_channels=(6 if learn_sigma else 3) if "out_channels" not in flags else int(flags["out_channels"]),
            num_res_blocks=int(flags.get("num_res_blocks", 2)),
            attention_ds=tuple(sorted(image_size // r for r in att)),
            channel_mult=tuple(int(m) for m in mult),
            num_heads=int(flags.get("num_heads", 4)),
            num_head_channels=int(flags.get("num_head_channels", -1)),
            num_heads_upsample=int(flags.get("num_heads_upsample", -1)),
            use_scale_shift_norm=bool(flags.get("use_scale_shift_norm", True)),
            resblock_updown=bool(flags.get("resblock_updown", False)),
        )

    @classmethod
    def infer_from_state_dict(cls, sd: dict, **heads) -> ADMConfig:
        """Recover the architecture from parameter names and shapes.

        Output block ``j`` carries an upsampler exactly when ``j = (k + 1)(R + 1) - 1`` for the
        levels k below the top, so the first such block gives the number of ResBlocks per level
        R and their count gives the number of levels.  Attention head counts do not show in the
        weights: pass ``num_heads`` / ``num_head_channels`` (from a spec) or accept the defaults.
        """
        try:
            w_in, w_out = sd["input_blocks.0.0.weight"], sd["out.2.weight"]
        except KeyError as e:
            raise ValueError(f"not an ADM (guided-diffusion) UNet state dict: missing {e.args[0]!r}") from None
        mc, in_ch, out_ch = int(w_in.shape[0]), int(w_in.shape[1]), int(w_out.shape[0])
        up_keys = [k for k in sd if re.match(r"output_blocks\.\d+\.[12]\.(in_layers|conv)\.", k)]
        up_blocks = sorted({int(k.split(".")[1]) for k in up_keys})
        n_out = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("output_blocks."))
        nrb = up_blocks[0] if up_blocks else n_out - 1
        levels = len(up_blocks) + 1
        if levels * (nrb + 1) != n_out:
            raise ValueError(
                f"state dict has an irregular ADM layout ({n_out} output blocks, upsamplers at {up_blocks})"
            )
        mult, att = [], []
        for level in range(levels):
            first = 1 + level * (nrb + 1)
            w = sd.get(f"input_blocks.{first}.0.out_layers.3.weight")
            if w is None:
                raise ValueError(f"cannot infer channel_mult: no ResBlock at input_blocks.{first}")
            mult.append(int(w.shape[0]) // mc)
            if any(f"input_blocks.{first + r}.1.qkv.weight" in sd for r in range(nrb)):
                att.append(2**level)
        emb = sd.get("input_blocks.1.0.emb_layers.1.weight")
        return cls(
            in_channels=in_ch,
            model_channels=mc,
            out_channels=out_ch,
            num_res_blocks=nrb,
            attention_ds=tuple(att),
            channel_mult=tuple(mult),
            use_scale_shift_norm=emb is not None and int(emb.shape[0]) == 2 * mult[0] * mc,
            resblock_updown=any(".in_layers." in k for k in up_keys),
            **heads,
        )


# --------------------------------------------------------------------------------------------
# layers


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]`` with ``f_i = max_period^(-i/half)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(ch: int) -> GroupNorm32:
    return GroupNorm32(32, ch)


class Upsample(nn.Module):
    def __init__(self, ch: int, use_conv: bool, out_ch: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(ch, out_ch or ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, ch: int, use_conv: bool, out_ch: int | None = None):
        super().__init__()
        self.op = nn.Conv2d(ch, out_ch or ch, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, ch: int, emb_ch: int, out_ch: int, scale_shift: bool, up: bool = False, down: bool = False):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.updown = up or down
        self.h_upd: nn.Module
        self.x_upd: nn.Module
        if up:
            self.h_upd, self.x_upd = Upsample(ch, False), Upsample(ch, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(ch, False), Downsample(ch, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch))
        self.out_layers = nn.Sequential(
            _norm(out_ch), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_ch == ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with guided-diffusion's legacy head layout ([heads x (q,k,v) x ch])."""

    def __init__(self, ch: int, num_heads: int):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"{ch} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = _norm(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, hh * ww)
        qkv = self.qkv(self.norm(flat))  # (b, 3c, T)
        hc, n, T = c // self.num_heads, self.num_heads, hh * ww
        q, k, v = (
            z.reshape(b, n, hc, T).transpose(-1, -2).contiguous()
            for z in qkv.reshape(b * n, 3 * hc, T).split(hc, dim=1)
        )
        # contiguous 4-D (b, heads, T, hc) inputs select PyTorch's fused, memory-bounded attention kernels;
        # SDPA's default scale 1/sqrt(hc) equals the legacy (hc^-1/4)^2 applied to q and k.
        a = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, T)
        return (flat + self.proj_out(a)).reshape(b, c, hh, ww)


class TimestepSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


# --------------------------------------------------------------------------------------------
# the UNet


class ADMUNet(nn.Module):
    """guided-diffusion's ``UNetModel`` (unconditional), returning the raw output channels."""

    def __init__(self, cfg: ADMConfig):
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        emb_ch = 4 * mc
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads if cfg.num_head_channels == -1 else ch // cfg.num_head_channels)

        def res(ch: int, out: int, **kw) -> ResBlock:
            return ResBlock(ch, emb_ch, out, cfg.use_scale_shift_norm, **kw)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        ch = mc * cfg.channel_mult[0]
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = res(ch, ch, down=True) if cfg.resblock_updown else Downsample(ch, cfg.conv_resample)
                self.input_blocks.append(TimestepSequential(down))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential(res(ch, ch), attn(ch, cfg.num_heads), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(
            _norm(ch), nn.SiLU(), nn.Conv2d(mc * cfg.channel_mult[0], cfg.out_channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
