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


def available_bytes(device: torch.device | str) -> int | None:
    """Memory free for a run on ``device`` (None when it cannot be told)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type != "cpu":
        return None
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    cg = _cgroup_free()
    if cg is not None:
        avail = cg if avail is None else min(avail, cg)
    return avail


def total_bytes(device: torch.device | str) -> int | None:
    """The device's whole memory (a container's limit where one is set); None when it cannot be told.
    Unlike :func:`available_bytes` it does not move with other programs' use, so decisions made from
    it (``tile=auto``) give the same bytes on the same machine whatever else runs."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory)
    if dev.type != "cpu":
        return None
    total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = int(limit) if total is None else min(total, int(limit))
    except (OSError, ValueError):
        pass
    return total


def _cgroup_free() -> int | None:
    """What a cgroup (v2) memory limit leaves, for runs in containers."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((root / "memory.current").read_text().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def gigabytes(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


__all__ = ["PEAK_FACTOR", "activation_bytes_per_pixel", "available_bytes", "forward_bytes", "gigabytes", "total_bytes"]
