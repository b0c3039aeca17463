"""Same seeds, same bytes, through every front end: the fingerprint of every method and preset.

    python benchmarks/byte_identity.py --save F.json           # fingerprint this checkout
    python benchmarks/byte_identity.py --against F.json        # compare with an earlier one (exit 1 if any differs)
                                       [--steps 3] [--out benchmarks/results/byte_identity.md]

Fuses two dev pairs (MRI-CT 2004, MSRS 00001D, cropped to 96x128 so that every method runs in
seconds) with every method, and Dig2DIG with every preset, at ``--steps`` steps, seed 5, through
``dig2dig.fuse``, ``dig2dig.fuse_batch``, ``dig2dig batch`` (the command) and the web API (FastAPI's
test client), and records the sha256 of each PNG.  Within one checkout all four front ends must
agree; ``--against`` also compares with a fingerprint saved before a change (refactors keep bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PAIRS = {
    "mri_ct_2004": ("fusion/mif/mri_ct/2004", ("ct.png", "mri.png")),
    "msrs_00001D": ("fusion/vif/msrs/00001D", ("ir.png", "vis.png")),
}
RUNS = [
    ("dig2dig", {}),
    ("dig2dig", {"preset": "paper"}),
    ("dig2dig", {"preset": "soft"}),
    ("dig2dig", {"preset": "select"}),
    ("dig2dig", {"blend": "pixel"}),
    ("ddfm", {}),
    ("ccf", {}),
    ("average", {}),
    ("maxabs", {}),
    ("laplacian", {}),
    ("guided", {}),
    ("mertens", {}),
]
SEED = 5


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _label(method: str, options: dict) -> str:
    return method + "".join(f":{k}={v}" for k, v in options.items())


def crops(root: Path) -> dict[str, list[Path]]:
    """Each pair cropped to 96x128 (top left of the middle), written under ``root``."""
    out = {}
    for name, (rel, files) in PAIRS.items():
        d = root / "pairs" / name
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for f in files:
            img = cv2.imread(str(SHARED / "data" / rel / f), cv2.IMREAD_UNCHANGED)
            h, w = img.shape[:2]
            y, x = (h - 96) // 2, (w - 128) // 2
            cv2.imwrite(str(d / f), img[y : y + 96, x : x + 128])
            paths.append(d / f)
        out[name] = paths
    return out


def fingerprint(steps: int) -> dict[str, dict[str, str]]:
    import dig2dig

    root = Path(tempfile.mkdtemp(prefix="dig2dig-bytes-"))
    pairs = crops(root)
    seeds = {name: dig2dig.derive_seed(SEED, name) for name in pairs}
    table: dict[str, dict[str, str]] = {}
    for method, options in RUNS:
        from dig2dig.methods import get_method

        st = steps if get_method(method).needs_prior else None
        label = _label(method, options)
        row = table.setdefault(label, {})
        for name, srcs in pairs.items():  # fuse, alone
            r = dig2dig.fuse(srcs, method=method, steps=st, seed=seeds[name], **options)
            row[f"fuse/{name}"] = _sha(r.encode(".png"))
        rs = dig2dig.fuse_batch(list(pairs.values()), method=method, steps=st, seeds=list(seeds.values()), **options)
        for name, r in zip(pairs, rs):
            row[f"fuse_batch/{name}"] = _sha(r.encode(".png"))
        out = root / "batch" / label.replace(":", "_").replace("=", "-")
        out.parent.mkdir(exist_ok=True)
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        cmd = [
            sys.executable,
            "-m",
            "dig2dig",
            "batch",
            str(root / "pairs"),
            "-o",
            str(out),
            "--method",
            method,
            "--seed",
            str(SEED),
            "-q",
            *flags,
            *(["--steps", str(st)] if st else []),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
        for name in pairs:
            row[f"batch/{name}"] = _sha((out / f"{name}.png").read_bytes())
        row.update(_web(pairs, seeds, method, options, st))
    return table


def _web(pairs, seeds, method, options, steps) -> dict[str, str]:
    try:
        from fastapi.testclient import TestClient
    except ImportError:
        return {}
    import time

    from dig2dig.web.server import create_app

    global _CLIENT
    if "_CLIENT" not in globals():
        _CLIENT = TestClient(create_app(), base_url="http://127.0.0.1:8000").__enter__()
    c, row = _CLIENT, {}
    for name, srcs in pairs.items():
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in srcs]
        data = {"method": method, "seed": str(seeds[name]), "options": json.dumps(options)}
        if steps:
            data["steps"] = str(steps)
        r = c.post("/api/jobs", files=files, data=data)
        r.raise_for_status()
        job = r.json()["id"]
        while (s := c.get(f"/api/jobs/{job}").json())["state"] in ("queued", "running"):
            time.sleep(0.05)
        if s["state"] != "done":
            raise RuntimeError(f"web job {method} {options} on {name}: {s['error']}")
        row[f"web/{name}"] = _sha(c.get(f"/api/jobs/{job}/result.png").content)
    return row


def compare(now: dict, before: dict | None) -> tuple[str, bool]:
    ok = True
    lines = [
        "| run | front ends agree | " + ("same bytes as before |" if before else ""),
        "|---|---|" + ("---|" if before else ""),
    ]
    for label, row in now.items():
        by_pair: dict[str, set] = {}
        for k, v in row.items():
            by_pair.setdefault(k.split("/", 1)[1], set()).add(v)
        agree = all(len(v) == 1 for v in by_pair.values())
        same = before is not None and before.get(label) == row
        ok &= agree and (before is None or same)
        cells = [label, "yes" if agree else "**no**"] + (["yes" if same else "**no**"] if before else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--save", help="write the fingerprint here")
    ap.add_argument("--against", help="an earlier fingerprint to compare with")
    ap.add_argument("--out", help="write the comparison table (markdown) here")
    a = ap.parse_args(argv)
    now = fingerprint(a.steps)
    if a.save:
        Path(a.save).write_text(json.dumps(now, indent=1))
    before = json.loads(Path(a.against).read_text()) if a.against else None
    table, ok = compare(now, before)
    text = (
        f"# Same seeds, same bytes\n\nWritten by `python benchmarks/byte_identity.py --steps {a.steps}"
        f"{' --against ' + Path(a.against).name if a.against else ''}`: {len(RUNS)} runs x 2 pairs x 4 front "
        f"ends (fuse, fuse_batch, the batch command, the web API).\n\n{table}\n"
    )
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
