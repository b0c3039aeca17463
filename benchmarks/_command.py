"""The command that made a results file, as the file's header names it."""

from __future__ import annotations

import shlex


def command_line(script: str, argv: list[str], drop: tuple[str, ...] = ("--out", "--json")) -> str:
    """``python benchmarks/<script> <argv>`` as typed, without the options in ``drop`` (where the outputs go)."""
    keep, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in drop:
            skip = True
        elif not a.startswith(tuple(f"{d}=" for d in drop)):
            keep.append(a)
    return " ".join([f"python benchmarks/{script}", *map(shlex.quote, keep)])
