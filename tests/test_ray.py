"""The Ray Data executor on a real Ray cluster: a head node joined by address, and a local cluster.

Both must give the same bytes as the local executor.  Skipped, with the reason, where Ray is not
installed (``pip install 'dig2dig[ray]'``) or cannot start.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dig2dig.batch import collect_items, read_log, run_batch
from dig2dig.spec import FusionSpec

from .test_batch import QUIET, files_of, make_dataset

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'dig2dig[ray]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(prior) -> FusionSpec:
    return FusionSpec(method="dig2dig", steps=2, seed=3, prior=str(prior))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("rayds") / "ds", n=4)


@pytest.fixture(scope="module")
def local_result(dataset, tiny_gray_prior_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("raylocal") / "out"
    run_batch(collect_items([dataset]), out, _config(tiny_gray_prior_path), threads=1, **QUIET)  # as a Ray actor
    return files_of(out)


def test_a_head_node_joined_by_address(dataset, tiny_gray_prior_path, local_result, tmp_path):
    """`ray start --head` on 127.0.0.1, then `dig2dig batch --executor ray --ray-address` from another process."""
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already connected in this process")
    import os
    import secrets

    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    # a cluster with token authentication, as Ray sets up by default: head and client share the token
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            if head.poll() is not None:
                pytest.skip(f"`ray start --head` exited: {head.stdout.read()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.skip("the Ray head node did not come up within 90 s")
        out = tmp_path / "out"
        cmd = [
            sys.executable,
            "-m",
            "dig2dig",
            "batch",
            str(dataset),
            "-o",
            str(out),
            "--executor",
            "ray",
            "--ray-address",
            address,
            "--prior",
            str(tiny_gray_prior_path),
            "--steps",
            "2",
            "--seed",
            "3",
        ]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
        assert files_of(out) == local_result
        start = next(r for r in read_log(out / "log.jsonl") if r["event"] == "start")
        assert start["executor"]["kind"] == "ray" and start["executor"]["address"] == address
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()


@pytest.fixture(scope="module")
def local_cluster():
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 -- any failure to start means: cannot test here
        pytest.skip(f"a local Ray cluster cannot start here: {e}")
    yield
    ray.shutdown()


def test_local_cluster_gives_the_bytes_of_the_local_executor(
    local_cluster, dataset, tiny_gray_prior_path, local_result, tmp_path
):
    s = run_batch(collect_items([dataset]), tmp_path / "out", _config(tiny_gray_prior_path), executor="ray", **QUIET)
    assert (s.done, s.failed) == (4, [])
    assert files_of(tmp_path / "out") == local_result
    # resumed on the other executor: nothing to do
    s = run_batch(
        collect_items([dataset]), tmp_path / "out", _config(tiny_gray_prior_path), executor="local", threads=1, **QUIET
    )
    assert (s.done, s.skipped) == (0, 4)


def test_per_item_errors_are_results_on_ray(local_cluster, dataset, tiny_gray_prior_path, tmp_path):
    bad = make_dataset(tmp_path / "bad", n=2)
    (bad / "p01" / "vis.png").write_bytes(b"garbage")
    s = run_batch(collect_items([bad]), tmp_path / "out", _config(tiny_gray_prior_path), executor="ray", **QUIET)
    assert s.done == 1 and [f["id"] for f in s.failed] == ["p01"] and "cannot decode" in s.failed[0]["error"]


def test_a_gpu_request_on_a_cpu_cluster_fails_fast(local_cluster):
    from dig2dig.batch.cluster import RayExecutor

    # the driver's own device check would stop a CUDA request first on this machine; ask the executor directly
    ex = RayExecutor(device="cuda")
    t0 = time.time()
    with pytest.raises(ValueError, match="the Ray cluster has none"):
        ex._pool()
    assert time.time() - t0 < 5
