"""Seeds: the one check of a user's seed, and the per-item seed derived from a run's seed."""

from __future__ import annotations

import hashlib

SEED_LIMIT = 2**63  # seeds are integers in [0, 2**63)


def check_seed(seed) -> int:
    """A seed as an int in [0, 2**63), or a ValueError that says so."""
    import numpy as np

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed {seed!r} must be an integer in [0, 2**63)")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"seed {seed} is out of range; use an integer in [0, 2**63)")
    return int(seed)


def derive_seed(seed: int, item_id: str | int) -> int:
    """A stable per-item seed from (run seed, item id): same pair -> same noise, however it is run."""
    digest = hashlib.sha256(f"{int(seed)}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
