"""Every bad input and fault: one line and a documented exit code, nothing written, sources untouched.

A table of command lines (input -> exit code and message fragment), property-based tests of the
image loader, the grid parser and the option validators, and fault injection: a full disk, a
permission denied, SIGTERM, and a kill at each write of a batch run followed by a resume.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dig2dig.cli import main
from dig2dig.errors import EXIT_INTERRUPTED, EXIT_RESOURCE

from .conftest import smooth_image


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w × h but carries four rows of data: decoding it fully would be the attack."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * (w + 1) * 4)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def env(tmp_path, tiny_gray_prior_path):
    def write(name, img):
        arr = np.round(img * 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / name), arr[..., ::-1] if arr.ndim == 3 else arr)
        return str(tmp_path / name)

    e = {
        "tmp": str(tmp_path),
        "prior": str(tiny_gray_prior_path),
        "out": str(tmp_path / "out.png"),
        "ir": write("ir.png", smooth_image(32, 40, 1)),
        "vis": write("vis.png", smooth_image(32, 40, 2, color=True)),
        "small": write("small.png", smooth_image(20, 30, 3)),
        "ir2": write("ir2.png", smooth_image(32, 40, 1)),
    }
    cv2.imwrite(str(tmp_path / "one.png"), np.zeros((1, 1), np.uint8))
    cv2.imwrite(str(tmp_path / "float.tif"), np.zeros((32, 40), np.float32))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = Path(e["ir"]).read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "huge.png").write_bytes(_png_header_only(30000, 30000))
    (tmp_path / "adir").mkdir()
    (tmp_path / "hdr.png").write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 40 +X 32\n" + bytes(32 * 40 * 4))
    (tmp_path / "noarch").mkdir()
    (tmp_path / "noarch" / "spec.json").write_text('{"channels": 1, "spatial_multiple": 8}')
    (tmp_path / "noarch" / "weights.safetensors").write_bytes(b"")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pt")
    ds = tmp_path / "ds" / "p0"
    ds.mkdir(parents=True)
    for k in ("ir", "vis"):
        (ds / f"{k}.png").write_bytes(Path(e[k]).read_bytes())
    e["ds"] = str(tmp_path / "ds")
    (tmp_path / "bad.csv").write_text("name,ir,vis\na,ir.png,vis.png\n")
    (tmp_path / "summary.csv").write_text(f"id,ir,vis\nsummary,{e['ir']},{e['vis']}\n")
    (tmp_path / "task.csv").write_text(f"id,ir,vis,task\na,{e['ir']},{e['vis']},xyz\n")
    (tmp_path / "webp.csv").write_text(f"id,ir,vis,output\na,{e['ir']},{e['vis']},a.webp\n")
    (tmp_path / "header.csv").write_text("id,ir,vis\n")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dig_curves.png").write_bytes(Path(e["vis"]).read_bytes())
    (tmp_path / "d").mkdir()
    return e


FUSE = ["fuse", "{ir}", "{vis}", "-o", "{out}", "-q", "--prior", "{prior}", "--steps", "2"]
AVG = ["fuse", "{ir}", "{vis}", "-o", "{out}", "-q", "--method", "average"]

CASES = [
    # sources
    ("missing source", ["fuse", "{ir}", "{tmp}/nope.png", "-o", "{out}", "--method", "average"], 2, "does not exist"),
    ("corrupt source", ["fuse", "{ir}", "{tmp}/corrupt.png", "-o", "{out}", "--method", "average"], 2, "cannot decode"),
    ("truncated source", ["fuse", "{ir}", "{tmp}/trunc.png", "-o", "{out}", "--method", "average"], 2, "cannot decode"),
    (
        "text as source",
        ["fuse", "{ir}", "{tmp}/notes.txt", "-o", "{out}", "--method", "average"],
        2,
        "unsupported file type",
    ),
    ("folder as source", ["fuse", "{ir}", "{tmp}/adir", "-o", "{out}", "--method", "average"], 2, "is a folder"),
    ("one pixel", ["fuse", "{ir}", "{tmp}/one.png", "-o", "{out}", "--method", "average"], 2, "too small"),
    (
        "float tiff",
        ["fuse", "{ir}", "{tmp}/float.tif", "-o", "{out}", "--method", "average"],
        2,
        "unsupported sample type",
    ),
    (
        "30000x30000 header",
        ["fuse", "{ir}", "{tmp}/huge.png", "-o", "{out}", "--method", "average"],
        2,
        "900 megapixels",
    ),
    ("pixel limit", [*AVG, "--max-pixels", "100"], 2, "1,280 pixels, more than the limit of 100"),
    ("pixel limit zero", [*AVG, "--max-pixels", "0"], 2, "must be at least 1"),
    (
        "sizes differ",
        ["fuse", "{ir}", "{small}", "-o", "{out}", "--method", "average"],
        2,
        "or pass --resize to resample",
    ),
    (
        "HDR named .png",
        ["fuse", "{ir}", "{tmp}/hdr.png", "-o", "{out}", "--method", "average"],
        2,
        "not a PNG, JPEG, TIFF or BMP",
    ),
    ("mistyped flag", [*AVG, "--stpes", "3"], 2, "unrecognized arguments: --stpes 3 (did you mean --steps?)"),
    (
        "prior spec without architecture",
        [*AVG[:-2], "--prior", "{tmp}/noarch"],
        2,
        "spec.json has no 'architecture' key",
    ),
    ("serve beyond loopback, no token", ["serve", "--host", "0.0.0.0"], 2, "pass --token auto"),
    ("serve short token", ["serve", "--token", "abc"], 2, "use at least 12"),
    ("one source", ["fuse", "{ir}", "-o", "{out}", "--method", "average"], 2, "2 or more sources, got 1"),
    (
        "ddfm with three",
        ["fuse", "{ir}", "{vis}", "{ir2}", "-o", "{out}", "--prior", "{prior}", "--method", "ddfm"],
        2,
        "exactly 2 sources",
    ),
    # outputs
    ("output is a source", ["fuse", "{ir}", "{vis}", "-o", "{ir}", "--method", "average"], 2, "would destroy"),
    ("output is a folder", ["fuse", "{ir}", "{vis}", "-o", "{tmp}/adir", "--method", "average"], 2, "is a folder"),
    (
        "output folder missing",
        ["fuse", "{ir}", "{vis}", "-o", "{tmp}/no/out.png", "--method", "average"],
        2,
        "does not exist",
    ),
    ("output extension", ["fuse", "{ir}", "{vis}", "-o", "{tmp}/out.xyz", "--method", "average"], 2, "extension"),
    (
        "16-bit jpeg",
        ["fuse", "{ir}", "{vis}", "-o", "{tmp}/o.jpg", "--method", "average", "--bit-depth", "16"],
        2,
        "--bit-depth 16",
    ),
    ("report is a folder", [*AVG, "--report", "{tmp}/adir"], 2, "is a folder"),
    ("report is a source", [*AVG, "--report", "{vis}"], 2, "would destroy"),
    ("save-dig is a file", [*FUSE, "--save-dig", "{ir}"], 2, "is a file"),
    ("save-dig with ddfm", [*FUSE, "--method", "ddfm", "--save-dig", "{tmp}/dig"], 2, "--save-dig needs"),
    ("dig-region form", [*FUSE, "--save-dig", "{tmp}/dig", "--dig-region", "a=1,2"], 2, "NAME=X0,Y0,X1,Y1"),
    # steps, seeds, options
    ("steps -1", [*FUSE[:-2], "--steps", "-1"], 2, "steps must be between 1 and 1000"),
    ("steps 0", [*FUSE[:-2], "--steps", "0"], 2, "steps must be between 1 and 1000"),
    ("steps power:x", [*FUSE[:-2], "--steps", "power:x"], 2, "bad steps 'power:x'"),
    ("steps repeated", [*FUSE[:-2], "--steps", "5,5"], 2, "repeated"),
    ("seed 2**70", [*FUSE, "--seed", str(2**70)], 2, "out of range"),
    ("seed -1", [*FUSE, "--seed", "-1"], 2, "out of range"),
    ("seed text", [*FUSE, "--seed", "x"], 2, "invalid int value"),
    ("unknown method", [*FUSE, "--method", "magic"], 2, "unknown method"),
    ("interval 0", [*FUSE, "--interval", "0"], 2, "interval=0 is out of range"),
    ("temperature nan", [*FUSE, "--temperature", "nan"], 2, "finite"),
    ("accelerate 1", [*FUSE, "--accelerate", "1"], 2, "accelerate=1.0 is out of range"),
    ("distance choice", [*FUSE, "--distance", "cos"], 2, "invalid choice"),
    ("option of another method", [*FUSE, "--mapping", "paper"], 2, "has no option"),
    ("unknown condition", [*FUSE, "--method", "ccf", "--conditions", "mse,nope"], 2, "unknown CCF condition"),
    ("feature needs extractor", [*FUSE, "--method", "ccf", "--conditions", "feature"], 2, "needs feature_extractor"),
    ("bad extractor", [*FUSE, "--method", "ccf", "--feature-extractor", "nomodule"], 2, "module:attr"),
    ("unknown task", [*FUSE, "--task", "fusion"], 2, "invalid choice"),
    # devices and priors
    ("no cuda", [*FUSE, "--device", "cuda"], 2, "use --device cpu"),
    ("device name", [*FUSE, "--device", "tpu"], 2, "not a torch device"),
    ("prior missing", [*FUSE[:-4], "--prior", "{tmp}/none.pt"], 2, "does not exist"),
    ("prior is text", [*FUSE[:-4], "--prior", "{tmp}/notes.txt"], 2, "cannot read"),
    ("wrong checkpoint", [*FUSE[:-4], "--prior", "{tmp}/wrong.pt"], 2, "not an ADM"),
    # batch
    ("batch input missing", ["batch", "{tmp}/none", "-o", "{tmp}/b"], 2, "neither a folder nor a manifest"),
    ("batch output is a file", ["batch", "{ds}", "-o", "{ir}", "--method", "average"], 2, "is a file"),
    ("batch shard", ["batch", "{ds}", "-o", "{tmp}/b", "--shard", "3/2"], 2, "0 <= I < N"),
    ("batch workers 0", ["batch", "{ds}", "-o", "{tmp}/b", "--workers", "0"], 2, "must be at least 1"),
    ("batch ray address", ["batch", "{ds}", "-o", "{tmp}/b", "--ray-address", "x"], 2, "--executor ray"),
    ("batch bad option", ["batch", "{ds}", "-o", "{tmp}/b", "--lamb", "-1", "--method", "ddfm"], 2, "lamb=-1"),
    ("batch manifest", ["batch", "{tmp}/bad.csv", "-o", "{tmp}/b"], 2, "'id' column"),
    ("batch format", ["batch", "{ds}", "-o", "{tmp}/b", "--format", "gif"], 2, "invalid choice"),
    ("ccf lr 0", [*FUSE, "--method", "ccf", "--lr", "0"], 2, "lr=0.0 is out of range"),
    ("batch -o the dataset", ["batch", "{ds}", "-o", "{ds}", "--method", "average"], 2, "inside the dataset"),
    ("batch -o a pair folder", ["batch", "{ds}", "-o", "{ds}/p0", "--method", "average"], 2, "inside the dataset"),
    (
        "batch run file name",
        ["batch", "{tmp}/summary.csv", "-o", "{tmp}/b", "--method", "average"],
        2,
        "keeps for its summary file",
    ),
    (
        "batch manifest task",
        ["batch", "{tmp}/task.csv", "-o", "{tmp}/b", "--method", "average"],
        2,
        "task.csv:2: unknown task 'xyz'; use one of auto",
    ),
    (
        "batch manifest output",
        ["batch", "{tmp}/webp.csv", "-o", "{tmp}/b", "--method", "average"],
        2,
        "needs one of the extensions",
    ),
    (
        "batch manifest empty",
        ["batch", "{tmp}/header.csv", "-o", "{tmp}/b", "--method", "average"],
        2,
        "lists no items",
    ),
    ("batch folder and glob", ["batch", "{ds}", "{tmp}/*.png", "-o", "{tmp}/b"], 2, "not a mix"),
    (
        "batch ray unreachable",
        ["batch", "{ds}", "-o", "{tmp}/b", "--executor", "ray", "--ray-address", "127.0.0.1:1"],
        2,
        "cannot reach the Ray cluster",
    ),
    ("fifo source", ["fuse", "{ir}", "{tmp}/fifo.png", "-o", "{out}", "--method", "average"], 2, "not a regular file"),
    ("report is the output", [*AVG, "--report", "{out}"], 2, "is the output image"),
    (
        "save-dig over a source",
        [
            "fuse",
            "{ir}",
            "{tmp}/dig_curves.png",
            "-o",
            "{out}",
            "--prior",
            "{prior}",
            "--steps",
            "2",
            "--save-dig",
            "{tmp}",
        ],
        2,
        "would write over the source",
    ),
    (
        "save-dig over the output",
        [
            "fuse",
            "{ir}",
            "{vis}",
            "-o",
            "{tmp}/d/dig_curves.png",
            "--prior",
            "{prior}",
            "--steps",
            "2",
            "--save-dig",
            "{tmp}/d",
        ],
        2,
        "would write over the output",
    ),
    (
        "dig-region twice",
        [*FUSE, "--save-dig", "{tmp}/dig", "--dig-region", "a=0,0,5,5", "--dig-region", "a=1,1,6,6"],
        2,
        "given twice",
    ),
    (
        "prior-config without prior",
        [*AVG[:-2], "--prior-config", "{tmp}/notes.txt"],
        2,
        "the embedded prior has its own spec",
    ),
    ("ccf lr 1e308", [*FUSE, "--method", "ccf", "--lr", "1e308"], 2, "lr=1e+308 is out of range"),
    ("smooth 1e9", [*FUSE, "--smooth", "1e9"], 2, "smooth=1000000000.0 is out of range"),
    ("extractor import", [*FUSE, "--method", "ccf", "--feature-extractor", "nomodule_xyz:x"], 2, "cannot import it"),
    (
        "extractor class",
        [*FUSE, "--method", "ccf", "--feature-extractor", "torch.nn:Linear"],
        2,
        "cannot be created without arguments",
    ),
    ("extractor fails", [*FUSE, "--method", "ccf", "--feature-extractor", "os:getcwd"], 2, "failed on a source"),
    # eval, bench, prior
    (
        "eval csv over a source",
        ["eval", "{tmp}/adir", "--sources", "{ds}", "--csv", "{ds}/p0/ir.png"],
        2,
        "would destroy",
    ),
    (
        "eval csv and md one file",
        ["eval", "{tmp}/adir", "--sources", "{ds}", "--csv", "{tmp}/r.csv", "--md", "{tmp}/r.csv"],
        2,
        "is the --csv file",
    ),
    (
        "bench twice a method",
        ["bench", "--datasets", "{ds}", "--methods", "average", "average", "--out", "{tmp}/bn"],
        2,
        "listed twice",
    ),
    (
        "bench out in dataset",
        ["bench", "--datasets", "{ds}", "--methods", "average", "--out", "{ds}/bn"],
        2,
        "inside the dataset",
    ),
    (
        "prior eval huge sigma",
        ["prior", "eval", "--images", "{tmp}/adir", "--sigma", "1e6"],
        2,
        "outside the noise levels",
    ),
    ("serve port", ["serve", "--port", "99999"], 2, "must be in [1, 65535]"),
    (
        "eval metric",
        ["eval", "{tmp}/adir", "--sources", "{ds}", "--csv", "{tmp}/r.csv", "--metrics", "NOPE"],
        2,
        "unknown metric 'NOPE'",
    ),
    (
        "bench peers missing",
        ["bench", "--datasets", "{ds}", "--peers", "{tmp}/none", "--out", "{tmp}/bn"],
        2,
        "not found",
    ),
    ("prior info text", ["prior", "info", "--prior", "{tmp}/notes.txt"], 2, "cannot read"),
    ("eval folder missing", ["eval", "{tmp}/none", "--sources", "{ds}", "--csv", "{tmp}/r.csv"], 2, "does not exist"),
    (
        "eval convention",
        ["eval", "{tmp}/adir", "--sources", "{ds}", "--csv", "{tmp}/r.csv", "--convention", "x"],
        2,
        "unknown metric convention",
    ),
    ("eval csv is a folder", ["eval", "{tmp}/adir", "--sources", "{ds}", "--csv", "{tmp}/adir"], 2, "is a folder"),
    (
        "bench limit",
        ["bench", "--datasets", "{ds}", "--methods", "average", "--out", "{tmp}/bn", "--limit", "0"],
        2,
        "must be at least 1",
    ),
    ("prior eval sigma", ["prior", "eval", "--images", "{tmp}/adir", "--sigma", "-5"], 2, "positive number"),
    ("prior eval images", ["prior", "eval", "--images", "{tmp}/none"], 2, "does not exist"),
    (
        "prior train config",
        ["prior", "train", "--config", "{tmp}/none.toml", "--out", "{tmp}/t"],
        2,
        "none.toml' does not exist",
    ),
    ("prior info cuda", ["prior", "info", "--device", "cuda"], 2, "use --device cpu"),
]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv,code,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(env, capsys, argv, code, fragment):
    tmp = Path(env["tmp"])
    before = _hashes(tmp)
    t0 = time.perf_counter()
    rc = main([a.format(**env) for a in argv])
    err = capsys.readouterr().err
    assert rc == code, err
    assert fragment in " ".join(err.split()), err
    assert "Traceback" not in err
    ours = [ln for ln in err.splitlines() if ln.startswith("dig2dig")]
    assert len(ours) == 1, err  # one line (argparse adds its usage above its own)
    after = _hashes(tmp)
    assert {k: v for k, v in after.items() if k in before} == before  # sources untouched
    assert set(after) == set(before)  # nothing written, nothing left behind
    assert time.perf_counter() - t0 < 30


def test_the_table_covers_enough_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------------------------
# faults


def test_disk_full_while_writing(env, capsys, monkeypatch):
    import dig2dig.io as io

    real = io.os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    assert main([a.format(**env) for a in AVG]) == EXIT_RESOURCE
    err = capsys.readouterr().err
    assert "out.png: no space left on the device" in err and "Traceback" not in err
    assert not Path(env["out"]).exists() and not list(Path(env["tmp"]).glob(".*.part"))


def test_permission_denied(env, capsys, monkeypatch):
    import tempfile

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert main([a.format(**env) for a in AVG]) == EXIT_RESOURCE
    err = capsys.readouterr().err
    assert "cannot write the output" in err and "choose a folder you can write to" in err


def test_out_of_memory_is_a_resource_error(env, capsys, monkeypatch):
    import dig2dig.baselines as b

    def boom(*a, **k):
        raise MemoryError

    monkeypatch.setitem(b.BASELINES, "average", boom)
    assert main([a.format(**env) for a in AVG]) == EXIT_RESOURCE
    assert "ran out of memory" in capsys.readouterr().err


def test_an_unexpected_error_points_to_its_trace(env, capsys, monkeypatch):
    import dig2dig.baselines as b

    def defect(*a, **k):
        raise TypeError("an internal defect")

    monkeypatch.setitem(b.BASELINES, "average", defect)
    assert main([a.format(**env) for a in AVG]) == 70
    err = capsys.readouterr().err
    assert "internal error: TypeError: an internal defect" in err and "Traceback" not in err
    trace = Path(err.split("the full trace is in ")[1].split()[0])
    assert "Traceback" in trace.read_text() and "an internal defect" in trace.read_text()
    trace.unlink()
    assert main([*(a.format(**env) for a in AVG), "--debug"]) == 70  # the trace inline instead
    assert "Traceback" in capsys.readouterr().err


def test_the_memory_estimate_refuses_an_image_too_big_for_the_machine(env, capsys, monkeypatch):
    import dig2dig.prior.memory as mem

    monkeypatch.setattr(mem, "available_bytes", lambda device: 10_000)
    assert main([a.format(**env) for a in FUSE]) == EXIT_RESOURCE
    err = capsys.readouterr().err
    assert "needs about" in err and "are free on cpu" in err and "--tile" in err and not Path(env["out"]).exists()


def _batch_cmd(ds: str, out: Path, prior: str) -> list[str]:
    return [sys.executable, "-m", "dig2dig", "batch", ds, "-o", str(out), "--prior", prior, "--steps", "2", "-q"]


def test_sigterm_is_handled_like_ctrl_c(tmp_path, tiny_gray_prior_path):
    from .test_batch import make_dataset

    ds = make_dataset(tmp_path / "ds", n=8)
    out = tmp_path / "out"
    proc = subprocess.Popen(_batch_cmd(str(ds), out, str(tiny_gray_prior_path)), stderr=subprocess.PIPE, text=True)
    from dig2dig.batch import read_log

    deadline = time.time() + 120
    while time.time() < deadline and not any(r.get("status") == "done" for r in read_log(out / "log.jsonl")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "interrupted" in err and "Traceback" not in err
    end = read_log(out / "log.jsonl")[-1]
    assert end["event"] == "end" and end["interrupted"] is True
    assert not list(out.rglob("*.part"))
    again = subprocess.run(_batch_cmd(str(ds), out, str(tiny_gray_prior_path)), capture_output=True, text=True)
    assert again.returncode == 0 and json.loads((out / "summary.json").read_text())["failed"] == 0
    assert len(list(out.glob("*.png"))) == 8


CRASHER = textwrap.dedent("""
    import os, sys
    import dig2dig.io as io
    import dig2dig.batch.folder as jobs
    limit, calls = int(os.environ["CRASH_AT"]), [0]

    def count():
        calls[0] += 1
        if calls[0] == limit:
            os._exit(9)  # like kill -9: no clean-up of any kind

    real_write, real_log = io.atomic_write_bytes, jobs.OutputFolder.append_log

    def write(path, data):
        count()
        return real_write(path, data)

    def log(self, record):
        count()
        return real_log(self, record)

    io.atomic_write_bytes = write
    jobs.OutputFolder.append_log = log
    from dig2dig.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_kill_at_each_write_of_a_batch_then_resume(tmp_path):
    """Crash at the k-th write (image, sidecar, log line, summary) for every k; the rerun ends identical."""
    from .test_batch import files_of, make_dataset

    ds = make_dataset(tmp_path / "ds", n=2)
    args = ["batch", str(ds), "--method", "guided", "-q"]
    ref = tmp_path / "ref"
    assert main([*args, "-o", str(ref)]) == 0
    script = tmp_path / "crash.py"
    script.write_text(CRASHER)
    k, crashed = 1, 0
    while True:
        out = tmp_path / f"out{k}"
        p = subprocess.run(
            [sys.executable, str(script), *args, "-o", str(out)],
            capture_output=True,
            text=True,
            env={**os.environ, "CRASH_AT": str(k)},
        )
        if p.returncode == 0:  # no k-th write: every crash point has been tried
            break
        assert p.returncode == 9, p.stderr
        crashed += 1
        assert main([*args, "-o", str(out)]) == 0  # the resume
        assert files_of(out) == files_of(ref)
        sides = {p.name: json.loads(p.read_text())["key"] for p in out.glob("p*.json")}
        assert sides == {p.name: json.loads(p.read_text())["key"] for p in ref.glob("p*.json")}
        assert not list(out.rglob("*.part"))
        k += 1
    assert crashed >= 6  # start log, 2 × (image, sidecar, log line), end log, summary


# --------------------------------------------------------------------------------------------
# properties (Hypothesis): loaders, grids and options either work or say why -- nothing else

hypothesis = pytest.importorskip("hypothesis", reason="property tests need hypothesis (pip install hypothesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp"]))
def test_the_loader_reads_or_refuses_any_bytes(tmp_path, data, suffix):
    from dig2dig.errors import ImageError
    from dig2dig.io import read_image

    f = tmp_path / f"x{suffix}"
    f.write_bytes(data)
    try:
        img = read_image(f)
    except ImageError as e:
        assert str(f.name) in str(e)
        return
    assert img.data.dtype == np.float32 and 0 <= img.data.min() and img.data.max() <= 1
    assert min(img.data.shape[:2]) >= 8


@PROPERTY
@given(
    shape=st.tuples(st.integers(1, 20), st.integers(1, 20)).flatmap(
        lambda hw: st.sampled_from([hw, (*hw, 1), (*hw, 3), (*hw, 4), (*hw, 2)])
    ),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_]),
    data=st.data(),
)
def test_in_memory_images_are_validated(shape, dtype, data):
    import warnings

    from dig2dig.errors import ImageError
    from dig2dig.io import to_float_image

    arr = data.draw(
        arrays(dtype, shape, elements=st.floats(-1, 2, width=32) if dtype in (np.float32, np.float64) else None)
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = to_float_image(arr)
    except ImageError:
        return
    assert out.dtype == np.float32 and out.ndim in (2, 3) and 0 <= out.min() and out.max() <= 1


@PROPERTY
@given(
    spec=st.one_of(
        st.text(max_size=20),
        st.integers(-5, 1200),
        st.lists(st.integers(-10, 1100), max_size=6),
        st.builds(lambda n, p: f"power:{n}:{p}", st.integers(-2, 1200), st.floats(-1, 5)),
        st.builds(lambda n: f"uniform:{n}", st.text(max_size=4)),
    )
)
def test_the_grid_parser_returns_a_grid_or_says_why(spec):
    from dig2dig.schedule import make_grid

    try:
        grid = make_grid(spec)
    except ValueError as e:
        assert str(e)
        return
    assert grid and all(0 <= t <= 999 for t in grid) and all(a > b for a, b in zip(grid, grid[1:]))


@PROPERTY
@given(data=st.data())
def test_option_validators_accept_only_what_they_document(data):
    from dig2dig.methods import METHODS

    m = data.draw(st.sampled_from([m for m in METHODS.values() if m.options.infos()]))
    info = data.draw(st.sampled_from(m.options.infos()))
    value = data.draw(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(10**6), 10**6),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=12),
            *(st.sampled_from(info.choices),) if info.choices else (),
        )
    )
    try:
        opts = m.configure({info.name: value})
    except ValueError as e:
        assert info.name in str(e)
        return
    v = opts.values()[info.name]
    if info.choices and v is not None:
        assert v in info.choices
    if info.kind in ("int", "float") and v is not None:
        assert np.isfinite(float(v))
        assert info.low is None or (v > info.low if info.low_open else v >= info.low)
        assert info.high is None or (v < info.high if info.high_open else v <= info.high)
