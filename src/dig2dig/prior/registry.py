"""Network constructors by spec ``format``: the one place a spec's architecture becomes a module."""

from __future__ import annotations

import torch


def build_network(fmt: str, architecture: dict) -> torch.nn.Module:
    if fmt == "adm":
        from .adm import ADMConfig, ADMUNet

        return ADMUNet(ADMConfig.from_dict(architecture))
    if fmt == "dig2dig":
        from .compact import CompactConfig, CompactUNet

        return CompactUNet(CompactConfig.from_dict(architecture))
    raise ValueError(f"unknown prior format {fmt!r}; known: 'adm', 'dig2dig'")
