"""Batch runs: items, resume, configuration changes, locks, failures, shards, executors, kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import dig2dig
from dig2dig.batch import (
    Item,
    OutputFolder,
    collect_items,
    parse_shard,
    read_log,
    run_batch,
    select_shard,
)
from dig2dig.errors import RunError
from dig2dig.spec import FusionSpec

from .conftest import smooth_image

QUIET = dict(progress=False, log=lambda m: None)


def make_dataset(root: Path, n: int = 4, size=(32, 40), start: int = 0) -> Path:
    for k in range(start, start + n):
        d = root / f"p{k:02d}"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / "ir.png"), np.round(smooth_image(*size, seed=k) * 255).astype(np.uint8))
        vis = np.round(smooth_image(*size, seed=100 + k, color=True) * 255).astype(np.uint8)
        cv2.imwrite(str(d / "vis.png"), vis[..., ::-1])
    return root


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


# --------------------------------------------------------------------------------------------
# items


def test_items_from_a_folder_a_manifest_and_globs(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=3)
    (ds / "notes").mkdir()  # a folder without two images is not an item
    items = collect_items([ds])
    assert [it.id for it in items] == ["p00", "p01", "p02"] and len(items[0].sources) == 2

    csv_path = tmp_path / "m.csv"
    csv_path.write_text(
        f"id,ir,vis,seed,task\nb,{ds}/p01/ir.png,{ds}/p01/vis.png,7,vif\na,ds/p00/ir.png,ds/p00/vis.png,,\n"
    )
    a, b = collect_items([csv_path])
    assert (a.id, b.id) == ("a", "b") and b.seed == 7 and b.task == "vif" and a.seed is None
    assert a.sources[0] == str(tmp_path / "ds/p00/ir.png")  # relative to the manifest
    assert a.names == ("ir.png", "vis.png")  # the column names tell the roles

    jl = tmp_path / "m.jsonl"
    jl.write_text(
        json.dumps({"id": "x", "sources": [f"{ds}/p02/ir.png", f"{ds}/p02/vis.png"], "output": "sub/x.png"}) + "\n\n"
    )
    (x,) = collect_items([jl])
    assert x.output == "sub/x.png" and x.names is None

    (tmp_path / "flat" / "ir").mkdir(parents=True)
    (tmp_path / "flat" / "vis").mkdir()
    for stem in ("0001", "0002", "0003"):
        cv2.imwrite(str(tmp_path / "flat" / "ir" / f"{stem}.png"), np.zeros((16, 16), np.uint8))
    for stem in ("0001", "0002"):
        cv2.imwrite(str(tmp_path / "flat" / "vis" / f"{stem}.png"), np.zeros((16, 16), np.uint8))
    g = collect_items([f"{tmp_path}/flat/ir/*.png", f"{tmp_path}/flat/vis/*.png"])
    assert [it.id for it in g] == ["0001", "0002", "0003"] and g[0].sources[1].endswith("vis/0001.png")
    assert g[2].missing == (f"{tmp_path}/flat/vis/*.png",) and len(g[2].sources) == 1  # it fails, named


@pytest.mark.parametrize(
    "content,message",
    [
        ("id,ir,vis\na,x.png,y.png\na,x.png,y.png\n", "appears twice"),
        ("id,ir,vis\n../up,x.png,y.png\n", "cannot name a file"),
        ("name,ir,vis\na,x.png,y.png\n", "'id' column"),
        ("id,ir,vis\na,x.png,y.png,z.png\n", "more cells than the header"),
        ("id,ir,vis\n\n\n,,\nb,x.png,y.png,z.png\n", "m.csv:5: the row has more cells"),  # the file's line
        ("id,ir,vis,seed\na,x.png,y.png,seven\n", "not an integer"),
        ("id,ir,vis,output\na,x.png,y.png,/etc/passwd\n", "inside the output folder"),
    ],
)
def test_bad_manifests_are_refused_with_the_row(tmp_path, content, message):
    m = tmp_path / "m.csv"
    m.write_text(content)
    with pytest.raises(RunError, match=message.replace("(", r"\(").replace(")", r"\)")):
        collect_items([m])


def test_a_manifest_row_with_one_source_fails_alone_and_empty_rows_are_skipped(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=2)
    m = tmp_path / "m.csv"
    m.write_text(f"id,ir,vis\r\na,{ds}/p00/ir.png,{ds}/p00/vis.png\r\n,,\r\nb,{ds}/p01/ir.png,\r\n")
    items = collect_items([m])
    assert [it.id for it in items] == ["a", "b"]
    s = run_batch(items, tmp_path / "out", FusionSpec(method="average"), **QUIET)
    assert s.done == 1 and [f["id"] for f in s.failed] == ["b"] and "m.csv:4 lists 1 source(s)" in s.failed[0]["error"]


def test_bad_inputs(tmp_path):
    with pytest.raises(RunError, match="neither a folder nor a manifest"):
        collect_items([tmp_path / "missing"])
    with pytest.raises(RunError, match="does not exist"):
        collect_items([tmp_path / "missing.csv"])
    with pytest.raises(RunError, match="matches no image"):
        collect_items([f"{tmp_path}/a/*.png", f"{tmp_path}/b/*.png"])
    (tmp_path / "loose").mkdir()
    cv2.imwrite(str(tmp_path / "loose" / "a.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(RunError, match="glob patterns"):
        collect_items([tmp_path / "loose"])


def test_shards_from_flags_and_the_environment():
    assert parse_shard("1/4", {}) == (1, 4)
    assert parse_shard(None, {}) == (0, 1)
    assert parse_shard(None, {"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert parse_shard(
        None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "2"}
    ) == (3, 4)
    # --array=0-8:2: five tasks 0, 2, 4, 6, 8 are shards 0 … 4
    step = {
        "SLURM_ARRAY_TASK_COUNT": "5",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_MAX": "8",
        "SLURM_ARRAY_TASK_STEP": "2",
    }
    assert [parse_shard(None, {**step, "SLURM_ARRAY_TASK_ID": str(t)}) for t in (0, 2, 4, 6, 8)] == [
        (i, 5) for i in range(5)
    ]
    with pytest.raises(RunError, match="not evenly spaced"):  # --array=1,3,7
        parse_shard(
            None,
            {
                "SLURM_ARRAY_TASK_ID": "3",
                "SLURM_ARRAY_TASK_COUNT": "3",
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "7",
            },
        )
    for bad in ("4/4", "-1/2", "x", "1/0", "1"):
        with pytest.raises(RunError, match="I/N"):
            parse_shard(bad, {})
    items = [Item(f"i{k}", ("a", "b")) for k in (3, 0, 2, 1, 4)]
    parts = [[it.id for it in select_shard(items, i, 2)] for i in range(2)]
    assert parts == [["i0", "i2", "i4"], ["i1", "i3"]]


# --------------------------------------------------------------------------------------------
# the runner


def test_run_resume_and_a_changed_configuration(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=3)
    out = tmp_path / "out"
    items = collect_items([ds])
    s = run_batch(items, out, FusionSpec(method="average"), **QUIET)
    assert (s.done, s.skipped, s.failed, s.exit_code) == (3, 0, [], 0)
    side = json.loads((out / "p00.json").read_text())
    assert side["method"] == "average" and side["output"] == "p00.png" and len(side["key"]) == 64
    assert side["config"]["sources_sha256"] and side["dig2dig"] == dig2dig.__version__
    mtime = (out / "p00.png").stat().st_mtime_ns
    s = run_batch(items, out, FusionSpec(method="average"), **QUIET)
    assert (s.done, s.skipped) == (0, 3) and (out / "p00.png").stat().st_mtime_ns == mtime
    # other settings: refused before any work, naming what changed ...
    with pytest.raises(RunError, match=r"3 item\(s\) .* other settings .*method \"average\" -> \"guided\""):
        run_batch(items, out, FusionSpec(method="guided"), **QUIET)
    assert (out / "p00.png").stat().st_mtime_ns == mtime
    # ... unless asked to redo them
    s = run_batch(items, out, FusionSpec(method="guided"), overwrite=True, **QUIET)
    assert s.done == 3 and json.loads((out / "p00.json").read_text())["method"] == "guided"
    # a changed source is a changed configuration too
    cv2.imwrite(str(ds / "p01" / "ir.png"), np.zeros((32, 40), np.uint8))
    with pytest.raises(RunError, match="p01: source images"):
        run_batch(items, out, FusionSpec(method="guided"), **QUIET)
    events = [r["event"] for r in read_log(out / "log.jsonl")]
    assert events.count("start") == 3 and events.count("end") == 3 and events.count("item") == 6


def test_a_crash_at_each_stage_resumes(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=3)
    items = collect_items([ds])
    ref = tmp_path / "ref"
    run_batch(items, ref, FusionSpec(method="guided"), **QUIET)
    out = tmp_path / "out"
    run_batch(items, out, FusionSpec(method="guided"), **QUIET)
    (out / "p00.json").unlink()  # killed after the image, before the sidecar
    (out / "p01.png").unlink()  # sidecar without its image (deleted by hand)
    (out / "p02.png").write_bytes(b"half")  # cannot happen with atomic writes, but a rerun must not trust it ...
    (out / "p02.json").unlink()  # ... and without its sidecar it is redone
    stale = out / f".p02.png~{os.uname().nodename}~999999999~abcd.part"  # a killed writer's temporary file
    stale.write_bytes(b"partial")
    with open(out / "log.jsonl", "a") as f:
        f.write('{"event": "item", "id": "p0')  # a torn last line
    s = run_batch(items, out, FusionSpec(method="guided"), **QUIET)
    assert s.done == 3 and not stale.exists() and not list(out.rglob("*.part"))
    assert files_of(out) == files_of(ref)
    events = [r["event"] for r in read_log(out / "log.jsonl")]
    assert events[-1] == "end" and events.count("start") == 2  # the torn line did not swallow the rerun's start


def test_live_temporary_files_of_other_writers_are_left_alone(tmp_path):
    from dig2dig.io import remove_stale_temps

    mine = tmp_path / f".x.png~{os.uname().nodename}~{os.getpid()}~abcd.part"
    other_host = tmp_path / ".x.png~elsewhere~1~abcd.part"
    old_other_host = tmp_path / ".y.png~elsewhere~1~abcd.part"  # a cluster worker killed days ago
    for f in (mine, other_host, old_other_host):
        f.write_bytes(b"")
    os.utime(old_other_host, (time.time() - 3 * 86400,) * 2)
    assert remove_stale_temps(tmp_path) == [old_other_host] and mine.exists() and other_host.exists()


def test_one_run_per_folder_and_shards_side_by_side(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    first = OutputFolder(out)
    first.lock()
    try:
        with pytest.raises(RunError, match=f"in use by dig2dig run pid {os.getpid()}"):
            OutputFolder(out).lock()
        with pytest.raises(RunError, match="in use"):
            OutputFolder(out, (0, 2)).lock()
    finally:
        first.unlock()
    a, b = OutputFolder(out, (0, 2)), OutputFolder(out, (1, 2))
    a.lock()
    b.lock()  # two shards of one run work side by side ...
    try:
        with pytest.raises(RunError, match="in use"):
            OutputFolder(out, (0, 2)).lock()  # ... but not the same shard twice
        with pytest.raises(RunError, match="in use"):
            OutputFolder(out).lock()
    finally:
        a.unlock()
        b.unlock()
    OutputFolder(out).lock()  # released


def test_shards_of_another_split_are_refused_and_named(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    a = OutputFolder(out, (0, 2))
    a.lock()
    try:
        with pytest.raises(RunError, match=r"shard\(s\) 0/2 .* another number of shards"):
            OutputFolder(out, (0, 3)).lock()  # 0/3 and 0/2 share items
        with pytest.raises(RunError, match=r"in use by shard\(s\) 0/2 of another run"):
            OutputFolder(out).lock()
    finally:
        a.unlock()
    b = OutputFolder(out, (0, 3))
    b.lock()  # free again
    b.unlock()


def test_a_crashed_run_leaves_no_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import os, sys; from dig2dig.batch import OutputFolder; OutputFolder(sys.argv[1]).lock(); "
        "print('locked', flush=True); os.kill(os.getpid(), 9)"
    )
    p = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert "locked" in p.stdout and p.returncode == -signal.SIGKILL
    OutputFolder(out).lock()


def test_a_bad_item_is_logged_and_the_others_finish(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=3)
    (ds / "p01" / "vis.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    s = run_batch(collect_items([ds]), out, FusionSpec(method="average"), **QUIET)
    assert s.done == 2 and [f["id"] for f in s.failed] == ["p01"] and "cannot decode" in s.failed[0]["error"]
    assert s.exit_code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 1 and summary["failures"][0]["id"] == "p01"
    failed = [r for r in read_log(out / "log.jsonl") if r.get("status") == "failed"]
    assert [r["id"] for r in failed] == ["p01"]
    # fixed, the rerun does just that item
    make_dataset(tmp_path / "ds", n=1, start=1)
    s = run_batch(collect_items([ds]), out, FusionSpec(method="average"), **QUIET)
    assert (s.done, s.skipped, s.failed) == (1, 2, [])


@pytest.mark.parametrize(
    "config,message",
    [
        (FusionSpec(method="magic"), "unknown method"),
        (FusionSpec(options={"interval": 0}), "interval=0 is out of range"),
        (FusionSpec(device="cuda:7"), "--device cuda:7"),
        (FusionSpec(device="tpu"), "not a torch device"),
        (FusionSpec(prior="/no/such/prior"), "does not exist"),
        (FusionSpec(method="average", steps=5), "takes no steps"),
        (FusionSpec(steps="power:0"), "steps must be"),
        (FusionSpec(ext=".gif"), "output format"),
        (FusionSpec(ext=".jpg", bit_depth=16), "bit depth"),
    ],
)
def test_invalid_settings_are_refused_before_any_item(tmp_path, config, message):
    ds = make_dataset(tmp_path / "ds", n=1)
    out = tmp_path / "out"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_batch(collect_items([ds]), out, config, **QUIET)
    assert not out.exists()


def test_outputs_of_two_items_may_not_collide(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=2)
    m = tmp_path / "m.csv"
    m.write_text(
        f"id,ir,vis,output\na,{ds}/p00/ir.png,{ds}/p00/vis.png,same.png\nb,{ds}/p01/ir.png,{ds}/p01/vis.png,same.png\n"
    )
    with pytest.raises(RunError, match="both be written"):
        run_batch(collect_items([m]), tmp_path / "out", FusionSpec(method="average"), **QUIET)


def test_unwritable_output_folder(tmp_path, monkeypatch, capsys):
    """Refused before any work, as a resource problem (exit 3, like `fuse`), naming the folder."""
    import errno
    import tempfile

    from dig2dig.cli import main
    from dig2dig.errors import EXIT_RESOURCE

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    real = tempfile.mkstemp
    tried = []

    def denied(*a, dir=None, **k):  # what a folder without write permission answers, for root as well
        if dir is not None and Path(dir) == ro:
            tried.append(dir)
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*a, dir=dir, **k)

    if os.access(ro, os.W_OK):  # root writes anywhere: the refusal is injected
        monkeypatch.setattr(tempfile, "mkstemp", denied)
    ds = make_dataset(tmp_path / "ds", n=1)
    message = f"cannot write the output folder in '{ro}' (Permission denied); choose a folder you can write to"
    try:
        with pytest.raises(PermissionError, match=re.escape(message)):
            run_batch(collect_items([ds]), ro, FusionSpec(method="average"), **QUIET)
        assert main(["batch", str(ds), "-o", str(ro), "--method", "average", "-q"]) == EXIT_RESOURCE
        assert message in capsys.readouterr().err
        assert os.access(ro, os.W_OK) == bool(tried)
    finally:
        ro.chmod(0o700)
    assert list(ro.iterdir()) == []  # no image, sidecar, log or lock


# --------------------------------------------------------------------------------------------
# same bytes: alone, batched, sharded, resumed, other executors


def _diffusion(prior) -> FusionSpec:
    return FusionSpec(method="dig2dig", steps=3, seed=5, prior=str(prior), options={"interval": 2})


def test_an_item_gives_the_same_bytes_alone_and_in_a_batch(tmp_path, tiny_gray_prior_path):
    ds = make_dataset(tmp_path / "ds", n=3)
    out = tmp_path / "out"
    run_batch(collect_items([ds]), out, _diffusion(tiny_gray_prior_path), **QUIET)
    side = json.loads((out / "p01.json").read_text())
    assert side["seed"] == dig2dig.derive_seed(5, "p01")
    alone = dig2dig.fuse(
        [ds / "p01" / "ir.png", ds / "p01" / "vis.png"],
        steps=3,
        seed=side["seed"],
        prior=str(tiny_gray_prior_path),
        interval=2,
    )
    assert alone.save(tmp_path / "alone.png").read_bytes() == (out / "p01.png").read_bytes()


def test_shards_together_equal_the_whole_run(tmp_path, tiny_gray_prior_path):
    ds = make_dataset(tmp_path / "ds", n=5)
    items = collect_items([ds])
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    run_batch(items, whole, _diffusion(tiny_gray_prior_path), **QUIET)
    for i in range(3):
        s = run_batch(items, sharded, _diffusion(tiny_gray_prior_path), shard=(i, 3), **QUIET)
        assert s.total == len(select_shard(items, i, 3))
    assert files_of(sharded) == files_of(whole) and len(files_of(whole)) == 5
    assert sorted(p.name for p in sharded.glob("log*.jsonl")) == [f"log.shard-{i}-of-3.jsonl" for i in range(3)]


def test_worker_processes_give_the_same_bytes(tmp_path, tiny_gray_prior_path):
    ds = make_dataset(tmp_path / "ds", n=3)
    items = collect_items([ds])
    run_batch(items, tmp_path / "one", _diffusion(tiny_gray_prior_path), threads=1, **QUIET)
    s = run_batch(items, tmp_path / "two", _diffusion(tiny_gray_prior_path), workers=2, threads=1, **QUIET)
    assert s.done == 3 and files_of(tmp_path / "two") == files_of(tmp_path / "one")
    start = next(r for r in read_log(tmp_path / "two" / "log.jsonl") if r["event"] == "start")
    assert start["executor"]["workers"] == 2 and start["executor"]["threads"] == 1
    for run in ("one", "two"):  # the thread count is part of every item's configuration
        assert {
            json.loads((tmp_path / run / f"{it.id}.json").read_text())["config"]["compute"]["threads"] for it in items
        } == {1}


def test_kill_9_mid_run_then_rerun(tmp_path, tiny_gray_prior_path):
    ds = make_dataset(tmp_path / "ds", n=6)
    ref, out = tmp_path / "ref", tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "dig2dig",
        "batch",
        str(ds),
        "--prior",
        str(tiny_gray_prior_path),
        "--steps",
        "3",
        "--seed",
        "2",
        "-q",
    ]
    assert subprocess.run([*cmd, "-o", str(ref)], capture_output=True).returncode == 0
    proc = subprocess.Popen([*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill as soon as the first item is logged
        if any(r.get("status") == "done" for r in read_log(out / "log.jsonl")):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = [r["id"] for r in read_log(out / "log.jsonl") if r.get("status") == "done"]
    assert 1 <= len(done_before) < 6, "the run was not killed in the middle"
    again = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert files_of(out) == files_of(ref)
    assert not list(out.rglob("*.part"))
    assert f"{len(done_before)} already done" in again.stderr, again.stderr


def test_cli_batch_exit_codes_and_messages(tmp_path, capsys):
    from dig2dig.cli import main

    ds = make_dataset(tmp_path / "ds", n=2)
    assert main(["batch", str(ds), "-o", str(tmp_path / "o"), "--method", "average", "-q"]) == 0
    assert "2 fused" in capsys.readouterr().err
    (ds / "p00" / "ir.png").write_bytes(b"")
    assert main(["batch", str(ds), "-o", str(tmp_path / "o2"), "--method", "average", "-q"]) == 1
    assert "failed: p00" in capsys.readouterr().err
    assert main(["batch", str(ds), "-o", str(tmp_path / "o3"), "--method", "average", "--shard", "2/2"]) == 2
    assert "0 <= I < N" in capsys.readouterr().err
    assert main(["batch", str(ds), "-o", str(tmp_path / "o4"), "--interval", "0"]) == 2
    assert "interval=0" in capsys.readouterr().err and not (tmp_path / "o4").exists()


def test_a_damaged_output_is_redone_and_a_one_image_folder_fails_by_name(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=3)
    out = tmp_path / "out"
    run_batch(collect_items([ds]), out, FusionSpec(method="guided"), **QUIET)
    good = (out / "p01.png").read_bytes()
    (out / "p01.png").write_bytes(good[:50])  # damaged after the run (its sidecar still says done)
    (ds / "p02" / "vis.png").unlink()  # a pair folder that lost a source
    s = run_batch(collect_items([ds]), out, FusionSpec(method="guided"), **QUIET)
    assert s.done == 1 and (out / "p01.png").read_bytes() == good
    assert [f["id"] for f in s.failed] == ["p02"] and "a source is missing" in s.failed[0]["error"]
    assert s.exit_code == 1


def test_sigterm_stops_worker_processes_and_every_output_is_logged(tmp_path, tiny_gray_prior_path):
    ds = make_dataset(tmp_path / "ds", n=8)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "dig2dig",
        "batch",
        str(ds),
        "-o",
        str(out),
        "--prior",
        str(tiny_gray_prior_path),
        "--steps",
        "4",
        "--workers",
        "2",
        "--threads",
        "1",
        "-q",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not any(r.get("status") == "done" for r in read_log(out / "log.jsonl")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    time.sleep(2)  # a worker left running would write now
    logged = {r["id"] for r in read_log(out / "log.jsonl") if r.get("status") == "done"}
    on_disk = {p.stem for p in out.glob("p*.json")}
    assert logged and on_disk == logged  # nothing written that the log does not know of
    assert read_log(out / "log.jsonl")[-1]["interrupted"] is True


def test_what_task_detection_reads_is_part_of_the_key(tmp_path):
    """Renaming manifest columns (a/b -> ir/vis) changes the detected task, so it changes the key."""
    ds = make_dataset(tmp_path / "ds", n=1)
    out = tmp_path / "out"
    m = tmp_path / "m.csv"
    m.write_text(f"id,a,b\nx,{ds}/p00/vis.png,{ds}/p00/ir.png\n")
    run_batch(collect_items([m]), out, FusionSpec(method="average"), **QUIET)
    m.write_text(f"id,vis,ir\nx,{ds}/p00/vis.png,{ds}/p00/ir.png\n")
    with pytest.raises(RunError, match="task_hints"):
        run_batch(collect_items([m]), out, FusionSpec(method="average"), **QUIET)


def test_the_key_holds_the_prior_architecture_device_threads_and_version(tmp_path, tiny_gray_prior_path):
    ds = make_dataset(tmp_path / "ds", n=1)
    items = collect_items([ds])
    run_batch(items, tmp_path / "out", _diffusion(tiny_gray_prior_path), threads=1, **QUIET)
    cfg = json.loads((tmp_path / "out" / "p00.json").read_text())["config"]
    assert len(cfg["prior_spec_sha256"]) == 64 and cfg["dig2dig"] == dig2dig.__version__
    assert cfg["compute"] == {"device": "cpu", "threads": 1}
    # float sums depend on the CPU thread count: a resume with other threads is another configuration
    with pytest.raises(RunError, match="compute"):
        run_batch(items, tmp_path / "out", _diffusion(tiny_gray_prior_path), threads=2, **QUIET)


def test_damaged_sidecars_long_ids_and_items_named_summary(tmp_path):
    from dig2dig.batch import iter_sidecars

    root = tmp_path / "ds"
    make_dataset(root, n=2)
    long_id = "x" * 240
    (root / "p00").rename(root / long_id)
    (root / "p01").rename(root / "summary_cam")
    out = tmp_path / "out"
    s = run_batch(collect_items([root]), out, FusionSpec(method="average"), **QUIET)
    assert s.done == 2 and not s.failed
    assert sorted(r.id for r in iter_sidecars(out)) == ["summary_cam", long_id]
    (out / "summary_cam.json").write_text("[1, 2]")  # not a sidecar of ours: the item is redone
    (out / f"{long_id}.json").write_text('{"key": "x", "config": null}')  # another key, no config
    with pytest.raises(RunError, match="other settings"):
        run_batch(collect_items([root]), out, FusionSpec(method="average"), **QUIET)
    s = run_batch(collect_items([root]), out, FusionSpec(method="average"), overwrite=True, **QUIET)
    assert s.done == 2


def test_an_item_output_that_cannot_hold_16_bits_is_refused_before_work(tmp_path):
    ds = make_dataset(tmp_path / "ds", n=1)
    m = tmp_path / "m.csv"
    m.write_text(f"id,ir,vis,output\nx,{ds}/p00/ir.png,{ds}/p00/vis.png,x.jpg\n")
    with pytest.raises(RunError, match="cannot hold 16 bits"):
        run_batch(collect_items([m]), tmp_path / "out", FusionSpec(method="average", bit_depth=16), **QUIET)
    assert not (tmp_path / "out").exists()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_dead_worker_costs_only_its_item(tmp_path, tiny_gray_prior_path):
    """A worker process killed mid-item: a new pool takes over, that item is tried again, all finish."""
    import threading

    ds = make_dataset(tmp_path / "ds", n=6, size=(64, 64))
    out = tmp_path / "out"
    cfg = FusionSpec(method="dig2dig", steps=4, seed=5, prior=str(tiny_gray_prior_path))
    result = {}
    t = threading.Thread(
        target=lambda: result.update(s=run_batch(collect_items([ds]), out, cfg, workers=2, threads=1, **QUIET))
    )
    t.start()
    killed = None
    deadline = time.time() + 120
    while time.time() < deadline and t.is_alive() and killed is None:
        if any(r.get("status") == "done" for r in read_log(out / "log.jsonl")):
            workers = [c for c in _children(os.getpid()) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
            if workers:
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.005)
    t.join(300)
    assert killed is not None, "no worker was killed (the run ended first)"
    s = result["s"]
    assert (s.done, s.failed) == (6, []), s.failed
    ref = run_batch(collect_items([ds]), tmp_path / "ref", cfg, threads=1, **QUIET)
    assert ref.done == 6 and files_of(out) == files_of(tmp_path / "ref")


def test_an_executor_that_fails_as_a_whole_is_not_a_clean_run(tmp_path, monkeypatch):
    from dig2dig.batch import executors

    def broken(self, spec, jobs, on_step=None):
        yield {"id": jobs[0].id, "status": "done", "seconds": 0.0}
        raise RuntimeError("the cluster went away")

    monkeypatch.setattr(executors.LocalExecutor, "run", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="went away"):
        run_batch(collect_items([make_dataset(tmp_path / "ds", n=3)]), out, FusionSpec(method="average"), **QUIET)
    summary = json.loads((out / "summary.json").read_text())
    assert "went away" in summary["aborted"] and summary["done"] == 1
    assert read_log(out / "log.jsonl")[-1]["aborted"] == summary["aborted"]


def test_a_terminal_shows_the_running_items_steps(tmp_path, tiny_gray_prior_path, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    ds = make_dataset(tmp_path / "ds", n=1)
    s = run_batch(
        collect_items([ds]),
        tmp_path / "out",
        FusionSpec(method="dig2dig", steps=3, prior=str(tiny_gray_prior_path)),
        progress=True,
        log=lambda m: None,
    )
    assert s.done == 1
    assert "p00: step 1/3" in term.getvalue() and "p00: step 3/3" in term.getvalue()
