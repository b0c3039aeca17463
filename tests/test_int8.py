"""precision="int8": the prior's convolutions quantised and run by ONNX Runtime on the CPU."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

import dig2dig
from dig2dig.prior.execution import ExecutedDenoiser

from .conftest import smooth_image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache folder for the module: the tiny prior's int8 model is built once."""
    from dig2dig.prior import int8

    folder = tmp_path_factory.mktemp("int8") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIG2DIG_CACHE", str(folder))
        int8._SESSIONS.clear()
        yield folder
    int8._SESSIONS.clear()


def test_int8_forward_is_close_to_fp32_built_once_and_cached(tiny_gray_prior, cache):
    from dig2dig.prior import int8

    x = torch.randn(2, 1, 32, 48, generator=torch.Generator().manual_seed(0))
    ref = tiny_gray_prior.eps(x, 400)
    run = ExecutedDenoiser(tiny_gray_prior, precision="int8")
    out = run.eps(x, 400)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    rel = float(((out - ref) ** 2).mean() / (ref**2).mean())
    assert 0 < rel < 0.05, rel  # quantised (not the float network), and close to it (random weights)
    models = list((cache / "int8").glob("*.onnx"))
    assert models == [int8.model_path(tiny_gray_prior)]
    assert not [p for p in (cache / "int8").iterdir() if p.is_dir()]  # no scratch folder left behind
    stamp = models[0].stat().st_mtime_ns
    int8._SESSIONS.clear()  # a new process: the cached model is read, not built again
    again = ExecutedDenoiser(tiny_gray_prior, precision="int8").eps(x, 400)
    assert torch.equal(again, out) and models[0].stat().st_mtime_ns == stamp
    assert run.describe()["precision"] == "int8"


def test_int8_gives_the_same_bytes_for_any_thread_count(tiny_gray_prior, cache):
    from dig2dig.prior import int8

    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([250])
    outs = [int8.eps(int8.session(tiny_gray_prior, threads=n), x, t) for n in (1, 2)]
    assert torch.equal(*outs)


def test_int8_fusion_records_its_precision_and_is_deterministic(tiny_gray_prior_path, cache):
    pair = [smooth_image(40, 56, 1), smooth_image(40, 56, 2)]
    kw = dict(steps=3, prior=str(tiny_gray_prior_path), seed=3)
    a = dig2dig.fuse(pair, precision="int8", **kw)
    b = dig2dig.fuse(pair, precision="int8", **kw)
    f = dig2dig.fuse(pair, **kw)
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, f.image)
    assert np.abs(a.image - f.image).mean() < 0.05
    assert a.config["prior_run"]["precision"] == "int8" and f.config["prior_run"]["precision"] == "fp32"
    from dig2dig.spec import FusionSpec

    keys = [
        FusionSpec(prior=str(tiny_gray_prior_path), options=o).resolve().key_fields()
        for o in ({"precision": "int8"}, {})
    ]
    assert keys[0]["prior_options"]["precision"] == "int8" and keys[0] != keys[1]  # a batch key tells them apart


def test_int8_refusals_name_the_fix(tiny_gray_prior, cache, monkeypatch):
    with pytest.raises(ValueError, match="precision=int8 and compile=True"):
        dig2dig.fuse([smooth_image(16, 16, 1), smooth_image(16, 16, 2)], steps=1, precision="int8", compile=True)
    real = builtins.__import__

    def no_runtime(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_runtime)
    with pytest.raises(ValueError, match=r"ONNX Runtime, which is not installed .*dig2dig\[int8\].*fp32"):
        ExecutedDenoiser(tiny_gray_prior, precision="int8")


def test_int8_from_the_command_line(tmp_path, cache, tiny_gray_prior_path):
    import cv2

    from dig2dig.cli import main

    a, b, out = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "f.png"
    cv2.imwrite(str(a), (smooth_image(40, 48, 1) * 255).astype(np.uint8))
    cv2.imwrite(str(b), (smooth_image(40, 48, 2) * 255).astype(np.uint8))
    args = [str(a), str(b), "-o", str(out), "--steps", "2", "--prior", str(tiny_gray_prior_path), "-q"]
    assert main(["fuse", *args, "--precision", "int8"]) == 0 and out.is_file()
    assert main(["fuse", *args, "--precision", "int4"]) == 2


def test_a_killed_build_leaves_no_scratch_for_long(tiny_gray_prior, cache):
    import os
    import time

    from dig2dig.prior import int8

    folder = int8.model_path(tiny_gray_prior).parent
    stale, live = folder / "dig2dig-int8-killed", folder / "dig2dig-int8-running"
    for d in (stale, live):
        d.mkdir(parents=True, exist_ok=True)
        (d / "float.onnx").write_bytes(b"part")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    int8._SESSIONS.clear()
    int8.session(tiny_gray_prior)
    assert not stale.exists() and live.exists()  # a build in another process may still be writing there
