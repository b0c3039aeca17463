"""How much memory a prior's forward needs, and how much the device has.

A UNet forward in inference keeps only a few activations alive at once: the block being computed
and the skip connections.  Its peak therefore scales with the largest single activation, which
:func:`activation_bytes_per_pixel` measures once per prior by a forward with hooks on a small
input.  Measured peaks (``ru_maxrss`` growth of one forward, fp32, batch 1) give the factor
:data:`PEAK_FACTOR` between the two:

=====================  ========================  ==========================  ======
prior                  largest activation        measured peak growth         ratio
=====================  ========================  ==========================  ======
embedded compact (v1)  96 B / pixel              340 B / pixel (1 → 4 MP)     3.5
ADM-256 architecture   2048 B / pixel            10.0 KB / pixel (65k → 262k) 4.9
=====================  ========================  ==========================  ======

so ``5 ×`` the largest activation is a slightly generous estimate for both families.
"""

from __future__ import annotations

from pathlib import Path

import torch

PEAK_FACTOR = 5.0


def activation_bytes_per_pixel(den) -> float:
    """Bytes per input pixel (batch 1) of the prior's largest single activation; measured once and kept."""
    cached = getattr(den, "_activation_bpp", None)
    if cached is not None:
        return cached
    module = den.module
    if module is None:  # a bare callable: assume a wide full-resolution network
        return 4.0 * 512
    side = max(64, 4 * den.spatial_multiple)
    largest = [0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            den.eps(torch.zeros(1, den.channels, side, side, device=den.device), 500)
    finally:
        for h in handles:
            h.remove()
    bpp = largest[0] / (side * side)
    den._activation_bpp = bpp
    return bpp


def forward_bytes(den, batch: int, height: int, width: int) -> int:
    """Estimated peak memory of one forward of ``batch`` images of height × width, weights included."""
    weights = sum(p.numel() * p.element_size() for p in den.module.parameters()) if den.module is not None else 0
    return int(weights + PEAK_FACTOR * activation_bytes_per_pixel(den) * batch * height * width)


def _meminfo(field: str) -> int | None:
    """A /proc/meminfo field in bytes (None off Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup(name: str) -> int | None:
    """A cgroup (v2) memory file as bytes: ``memory.max`` (None when unlimited) or ``memory.current``."""
    try:
        text = (Path("/sys/fs/cgroup") / name).read_text().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _at_most(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def available_bytes(device: torch.device | str) -> int | None:
    """Memory free for a run on ``device`` (None when it cannot be told); in a container, at most
    what its memory limit leaves."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type != "cpu":
        return None
    limit, used = _cgroup("memory.max"), _cgroup("memory.current")
    return _at_most(_meminfo("MemAvailable"), None if limit is None or used is None else max(limit - used, 0))


def total_bytes(device: torch.device | str) -> int | None:
    """The device's whole memory (a container's limit where one is set); None when it cannot be told.
    Unlike :func:`available_bytes` it does not move with other programs' use, so decisions made from
    it (``tile=auto``) give the same bytes on the same machine whatever else runs."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory)
    if dev.type != "cpu":
        return None
    return _at_most(_meminfo("MemTotal"), _cgroup("memory.max"))


def gigabytes(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


__all__ = ["PEAK_FACTOR", "activation_bytes_per_pixel", "available_bytes", "forward_bytes", "gigabytes", "total_bytes"]
