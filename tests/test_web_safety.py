"""`dig2dig serve` left running: memory bounds, a streamed upload limit, an event loop kept free, who
may talk to the server, what a request may set, and a bounded load test of the real command."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'dig2dig[web]'")
pytest.importorskip("multipart", reason="the web extra is not installed: pip install 'dig2dig[web]'")
from fastapi.testclient import TestClient  # noqa: E402

from dig2dig.web.server import SECURITY_HEADERS, create_app  # noqa: E402

from .conftest import REPO, smooth_image  # noqa: E402
from .test_web import LOCAL, _files, _png, _wait  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    return _png(smooth_image(48, 64, 1)), _png(smooth_image(48, 64, 2))


@pytest.fixture(scope="module")
def client(tiny_gray_prior_path):
    with TestClient(
        create_app(prior=str(tiny_gray_prior_path), max_upload_mb=1.0, max_pixels=1_000_000), base_url=LOCAL
    ) as c:
        yield c


@contextmanager
def live(app):
    """``app`` served by uvicorn on a free loopback port, in a thread; yields the port."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _rss_mb() -> float:
    import resource  # noqa: F401 -- Linux: current (not peak) resident memory from /proc

    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status here")


def _busy(c, pair, steps: int = 1000) -> str:
    """A long job that keeps the worker busy (cancelled by the caller)."""
    r = c.post(
        "/api/jobs", files=_files(("a.png", pair[0]), ("b.png", pair[1])), data={"method": "ddfm", "steps": str(steps)}
    )
    assert r.status_code == 201, r.text
    _wait(c, r.json()["id"], states=("running",))
    return r.json()["id"]


# --------------------------------------------------------------------------------------------
# requests that must get a clear, short answer -- and the server answering after each


EVIL = {"Origin": "http://evil.example"}


def _radiance(w: int, h: int) -> bytes:
    """A run-length-encoded Radiance HDR image of w x h: kilobytes that OpenCV decodes to w*h*12 bytes."""
    row = b"\x02\x02" + bytes([w >> 8, w & 255]) + (b"\xff\x80" * (w // 127) + bytes([128 + w % 127, 128])) * 4
    return f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {h} +X {w}\n".encode() + row * h


@pytest.mark.parametrize(
    "method,path,kw,code,says,never",
    [
        ("get", "/api/info", {"headers": {"Host": "evil.example"}}, 400, "not to the host", ""),
        ("get", "/api/info", {"headers": {"Host": "rebind.attacker.example:8000"}}, 400, "--allow-host", ""),
        ("post", "/api/jobs", {"headers": EVIL}, 403, "from the origin", ""),
        ("post", "/api/jobs", {"headers": {"Sec-Fetch-Site": "cross-site"}}, 403, "another site", ""),
        ("delete", "/api/jobs/x", {"headers": EVIL}, 403, "refused", ""),
        ("get", "/api/jobs/" + "x" * 60_000, {}, 404, "no such job", "xxxxxxxxxx"),
        ("delete", "/api/jobs/" + "y" * 5000, {}, 404, "no such job", "yyyyyyyyyy"),
        ("post", "/api/jobs", {"data": {"steps": "\u00b2"}}, 422, "steps", "invalid literal"),
        ("post", "/api/jobs", {"data": {"seed": "9" * 5000}}, 422, "must be a whole number", "Exceeds"),
        ("post", "/api/jobs", {"data": {"steps": "1" * 5000}}, 422, "give a step count", "Exceeds"),
        (
            "post",
            "/api/jobs",
            {"data": {"options": '{"interval": 1' + "0" * 5000 + "}"}},
            422,
            "JSON object",
            "Exceeds",
        ),
        ("post", "/api/jobs", {"files9": True}, 422, "at most 8 sources", "Maximum number of files"),
        (
            "post",
            "/api/jobs",
            {"raw": b"seed=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            422,
            "multipart/form-data",
            "",
        ),
        (
            "post",
            "/api/jobs",
            {"data": {"task": "t" * 3000}},
            422,
            "unknown task",
            "tttttttttttttttttttttttttttttttttttttttttttt",
        ),
        ("post", "/api/jobs", {"data": {"options": "[" * 3000}}, 422, "too deeply nested", ""),
        (
            "post",
            "/api/jobs",
            {"extra_files": [("method", ("m.txt", b"dig2dig", "text/plain"))]},
            422,
            "method must be a text field",
            "UploadFile",
        ),
        ("post", "/api/jobs", {"hdr": True}, 422, "not a PNG, JPEG, TIFF or BMP", ""),
        ("get", "/api/info", {"headers": {"Host": "[::1]evil.example"}}, 400, "not to the host", ""),
        ("get", "/api/info", {"headers": {"Host": "127.0.0.1:80@evil.example"}}, 400, "not to the host", ""),
    ],
)
def test_each_bad_request_gets_a_short_clear_answer(client, pair, method, path, kw, code, says, never):
    kw = dict(kw)
    if kw.pop("files9", False):
        kw["files"] = _files(*[(f"s{k}.png", pair[k % 2]) for k in range(9)])
    elif kw.pop("hdr", False):  # OpenCV decodes Radiance HDR, Pillow cannot read its header: never decoded
        kw["files"] = _files(("ir.png", pair[0]), ("vis.png", _radiance(3000, 3000)))
    elif method == "post" and "raw" not in kw:
        kw["files"] = _files(("ir.png", pair[0]), ("vis.png", pair[1])) + kw.pop("extra_files", [])
    if "raw" in kw:
        kw["content"] = kw.pop("raw")
    r = getattr(client, method)(path, **kw)
    assert r.status_code == code, r.text
    detail = r.json()["detail"]
    assert says in detail and len(detail) < 400, detail
    assert not never or never not in detail
    for k, v in SECURITY_HEADERS.items():
        assert r.headers[k] == v
    assert client.get("/api/info").status_code == 200  # still answering


def test_every_answer_carries_the_security_headers(client):
    for path in ("/", "/static/app.js", "/api/info", "/api/task?name=a.png", "/nope"):
        r = client.get(path)
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_a_write_from_the_page_itself_is_accepted(client, pair):
    r = client.post(
        "/api/jobs",
        files=_files(("ir.png", pair[0]), ("vis.png", pair[1])),
        data={"method": "average"},
        headers={"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"},
    )
    assert r.status_code == 201, r.text
    assert _wait(client, r.json()["id"])["state"] == "done"


def test_a_token_guards_everything_but_the_static_files(tiny_gray_prior_path):
    token = "a-long-enough-token-123"
    with TestClient(create_app(prior=str(tiny_gray_prior_path), token=token), base_url=LOCAL) as c:
        assert c.get("/api/info").status_code == 401 and "token" in c.get("/api/info").json()["detail"]
        assert c.get("/").status_code == 401
        assert c.get("/api/info", headers={"Authorization": "Bearer wrong-token-wrong"}).status_code == 401
        assert c.get("/api/info", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/?token=nope", follow_redirects=False).status_code == 401
        r = c.get(f"/?token={token}", follow_redirects=False)  # the address the command prints
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/api/info").status_code == 200 and c.get("/").status_code == 200  # the cookie now


def test_hosts_answered_follow_the_bind_address():
    from dig2dig.web.server import allowed_hosts, is_loopback

    assert allowed_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts("192.168.1.5", ["fusion.lab"]) == {"192.168.1.5", "fusion.lab"}
    assert allowed_hosts("0.0.0.0") is None  # every interface: the token is what protects it
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")


# --------------------------------------------------------------------------------------------
# memory


def test_the_queue_is_bounded_in_jobs_with_retry_after(tiny_gray_prior_path, pair):
    app = create_app(prior=str(tiny_gray_prior_path), max_queue=2)
    with TestClient(app, base_url=LOCAL) as c:
        running = _busy(c, pair)
        queued = c.post("/api/jobs", files=_files(("a.png", pair[0]), ("b.png", pair[1])), data={"method": "average"})
        assert queued.status_code == 201
        job = app.state.jobs.get(queued.json()["id"])
        assert [type(s) for s in job.sources] == [bytes, bytes] and job.sources == list(pair)  # compact: as sent
        full = c.post("/api/jobs", files=_files(("a.png", pair[0]), ("b.png", pair[1])), data={"method": "average"})
        assert full.status_code == 503 and "--max-queue 2" in full.json()["detail"]
        assert 1 <= int(full.headers["retry-after"]) <= 600
        c.delete(f"/api/jobs/{running}")
        assert _wait(c, queued.json()["id"])["state"] == "done"
        assert (
            c.post(
                "/api/jobs", files=_files(("a.png", pair[0]), ("b.png", pair[1])), data={"method": "average"}
            ).status_code
            == 201
        )  # room again


def test_the_queue_is_bounded_in_pixels(tiny_gray_prior_path, pair):
    app = create_app(prior=str(tiny_gray_prior_path), max_queued_mp=0.01)  # 10 000 pixels; a pair holds 6144
    with TestClient(app, base_url=LOCAL) as c:
        running = _busy(c, pair)
        r = c.post("/api/jobs", files=_files(("a.png", pair[0]), ("b.png", pair[1])), data={"method": "average"})
        assert r.status_code == 503 and "--max-queued-mp" in r.json()["detail"] and "retry-after" in r.headers
        big = _png(smooth_image(100, 100, 3))
        r = c.post("/api/jobs", files=_files(("a.png", big), ("b.png", big)), data={"method": "average"})
        assert r.status_code == 413 and "0.02 megapixels" in r.json()["detail"]  # never fits: not a 503
        c.delete(f"/api/jobs/{running}")


def test_a_queued_job_holds_its_upload_not_its_pixels(tiny_gray_prior_path, pair):
    """Two 6000x6000 sources (36 MP each: 288 MB as float32) wait in the queue as their ~100 KB PNGs."""
    big = _png(np.zeros((6000, 6000)))
    app = create_app(prior=str(tiny_gray_prior_path), max_queued_mp=100)
    with TestClient(app, base_url=LOCAL) as c:
        running = _busy(c, pair)
        before = _rss_mb()
        r = c.post("/api/jobs", files=_files(("a.png", big), ("b.png", big)), data={"method": "average"})
        assert r.status_code == 201, r.text
        grew = _rss_mb() - before
        assert sum(map(len, app.state.jobs.get(r.json()["id"]).sources)) == 2 * len(big)
        assert grew < 120, f"RSS grew by {grew:.0f} MB while the job waits"
        c.delete(f"/api/jobs/{r.json()['id']}")
        c.delete(f"/api/jobs/{running}")


def test_sources_beyond_the_pixel_budget_are_refused_from_their_headers(client):
    """The issue's two 10000x10000 PNGs (200 MP): 413 before anything is decoded, in well under a second."""
    huge = _png(np.zeros((10000, 10000), np.uint8))
    with TestClient(create_app(max_upload_mb=4.0), base_url=LOCAL) as c:  # default pixel budget, embedded prior
        t = time.perf_counter()
        r = c.post("/api/jobs", files=_files(("a.png", huge), ("b.png", huge)), data={"method": "average"})
        assert r.status_code == 413 and "--max-queued-mp" in r.json()["detail"]
        assert time.perf_counter() - t < 1.0


def test_nothing_of_an_upload_is_spooled_to_disk(tiny_gray_prior_path, monkeypatch):
    import tempfile

    rolled = []
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", lambda self: rolled.append(self))
    rng = np.random.default_rng(0)
    noisy = [_png((rng.random((800, 800, 3)) * 255).astype(np.uint8)) for _ in range(2)]  # ~2 MB each
    assert min(map(len, noisy)) > 1.5 * 2**20
    with TestClient(create_app(prior=str(tiny_gray_prior_path), max_upload_mb=8.0), base_url=LOCAL) as c:
        r = c.post("/api/jobs", files=_files(("a.png", noisy[0]), ("b.png", noisy[1])), data={"method": "average"})
        assert r.status_code == 201, r.text
        assert _wait(c, r.json()["id"])["state"] == "done"
    assert rolled == []


# --------------------------------------------------------------------------------------------
# a real server: streamed limits, the event loop, clients that hang up


def test_a_chunked_upload_is_refused_at_the_limit_without_reading_it_all(tiny_gray_prior_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from serve_load import chunked_post

    app = create_app(prior=str(tiny_gray_prior_path), max_upload_mb=1.0)
    with live(app) as port:
        status, sent = chunked_post(port, offer_mb=200)
        assert status == 413
        assert sent < 40 * 2**20, f"{sent / 2**20:.0f} MB of a 200 MB body were accepted before the answer"
        with socket.create_connection(("127.0.0.1", port)):
            pass  # still listening


def test_decoding_an_upload_does_not_hold_up_other_requests(tiny_gray_prior_path, pair, monkeypatch):
    import http.client

    import dig2dig.io

    slow = dig2dig.io.image_from_bytes

    def slow_decode(*a, **k):
        time.sleep(1.5)  # a large image's decode
        return slow(*a, **k)

    monkeypatch.setattr(dig2dig.io, "image_from_bytes", slow_decode)
    app = create_app(prior=str(tiny_gray_prior_path))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from serve_load import _multipart, request

    with live(app) as port:
        body, ctype = _multipart([("a.png", pair[0]), ("b.png", pair[1])], {"method": "average"})
        answer = {}
        t = threading.Thread(
            target=lambda: answer.update(r=request(port, "POST", "/api/jobs", body, {"Content-Type": ctype}))
        )
        t.start()
        time.sleep(0.3)
        latencies = []
        while t.is_alive() and len(latencies) < 20:
            t0 = time.perf_counter()
            status = request(port, "GET", "/api/info", timeout=10)[0]
            latencies.append(time.perf_counter() - t0)
            assert status == 200
            time.sleep(0.1)
        t.join()
        assert answer["r"][0] == 201
        assert len(latencies) >= 3 and max(latencies) < 0.5, latencies
    del http


def test_a_client_that_hangs_up_mid_upload_costs_one_log_line(tiny_gray_prior_path, caplog):
    import logging

    app = create_app(prior=str(tiny_gray_prior_path))
    caplog.set_level(logging.WARNING)
    with live(app) as port:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 500000\r\n"
                f"Content-Type: multipart/form-data; boundary=x\r\n\r\n".encode()
                + b"\0" * 10_000
            )
            time.sleep(0.3)
        time.sleep(0.5)
        sys.path.insert(0, str(REPO / "benchmarks"))
        from serve_load import request

        assert request(port, "GET", "/api/info")[0] == 200
    said = [r for r in caplog.records if "hung up" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


# --------------------------------------------------------------------------------------------
# the load test, the real command


def test_the_server_under_a_bounded_load(tiny_gray_prior_path, tmp_path):
    """benchmarks/serve_load.py against ``dig2dig serve``: 100 requests from 8 clients in 30 s."""
    out = tmp_path / "load.json"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "serve_load.py"),
            "--prior",
            str(tiny_gray_prior_path),
            "--out",
            "",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    res = json.loads(out.read_text())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert res["requests"] == 100 and "500" not in res["codes"] and "-1" not in res["codes"]
    assert all(res["checks"].values()) and res["info_max_s"] < 1.0
    assert res["by_kind"]["average"].get("201") and set(res["by_kind"]["cross-site-write"]) == {"403"}
    assert not any("Traceback" in line for line in res["log_lines"])


def test_finished_results_are_bounded_in_bytes_too():
    from dig2dig.spec import FusionSpec
    from dig2dig.web.server import JobQueue, WebJob

    jobs = JobQueue(None, keep=32, keep_bytes=100)
    try:
        for k in range(4):
            job = WebJob(f"j{k}", FusionSpec(method="average"), [], [], 0, state="done")
            job.result["result.png"] = (b"x" * 60, "image/png")
            with jobs.lock:
                jobs.jobs[job.id] = job
                jobs._forget_old()
        assert list(jobs.jobs) == ["j3"]  # 60 bytes kept of 240; older results forgotten
    finally:
        jobs.stop()


def test_the_page_can_ask_for_resize(client, pair):
    small = _png(smooth_image(24, 32, 3))
    r = client.post("/api/jobs", files=_files(("ir.png", pair[0]), ("vis.png", small)), data={"method": "average"})
    assert r.status_code == 422 and "tick 'Resize every source" in r.json()["detail"]
    assert "resize=True" not in r.json()["detail"]
    r = client.post(
        "/api/jobs", files=_files(("ir.png", pair[0]), ("vis.png", small)), data={"method": "average", "resize": "true"}
    )
    assert r.status_code == 201, r.text
    s = _wait(client, r.json()["id"])
    assert s["state"] == "done" and (s["result"]["width"], s["result"]["height"]) == (64, 48)


def test_an_unexpected_error_is_one_log_line_and_a_500_with_the_headers(tiny_gray_prior_path, caplog):
    import logging

    app = create_app(prior=str(tiny_gray_prior_path))
    caplog.set_level(logging.WARNING)
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as c:

        def broken(job_id):
            raise RuntimeError("a defect")

        app.state.jobs.get = broken
        r = c.get("/api/jobs/abc")
        assert r.status_code == 500 and "internal error" in r.json()["detail"] and "defect" not in r.text
        for k, v in SECURITY_HEADERS.items():
            assert r.headers[k] == v
    said = [rec for rec in caplog.records if "a defect" in rec.getMessage()]
    assert len(said) == 1 and not [rec for rec in caplog.records if rec.exc_info]


def test_a_stalled_upload_is_dropped_and_frees_its_slot(tiny_gray_prior_path, pair):
    app = create_app(prior=str(tiny_gray_prior_path), max_uploads=1, upload_idle_s=0.5)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from serve_load import _multipart, request

    with live(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 1000\r\n"
                f"Content-Type: multipart/form-data; boundary=B\r\n\r\n--B\r\n".encode()
            )
            answer = b""  # nothing more is sent; the server answers and closes the connection
            while part := s.recv(4096):
                answer += part
            assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer
        body, ctype = _multipart([("a.png", pair[0]), ("b.png", pair[1])], {"method": "average"})
        assert request(port, "POST", "/api/jobs", body, {"Content-Type": ctype})[0] == 201  # the slot is free


def test_decodes_in_several_threads_leave_stderr_where_it_was():
    import os

    from dig2dig.io import image_from_bytes

    before = os.readlink("/proc/self/fd/2") if Path("/proc/self/fd/2").exists() else None
    noisy = _png((np.random.default_rng(0).random((600, 600)) * 255).astype(np.uint8))
    threads = [threading.Thread(target=lambda: [image_from_bytes(noisy, "x.png") for _ in range(5)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if before is not None:
        assert os.readlink("/proc/self/fd/2") == before
