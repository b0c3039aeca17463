"""`dig2dig serve`: the JSON job API (FastAPI's test client) and the page in a real browser (Playwright
driving Debian's Chromium).  Skipped, with the reason, where the web extra or the browser is missing."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'dig2dig[web]'")
pytest.importorskip("multipart", reason="the web extra is not installed: pip install 'dig2dig[web]'")
from fastapi.testclient import TestClient  # noqa: E402

from dig2dig.web.server import create_app  # noqa: E402

from .conftest import DATA, smooth_image  # noqa: E402

LOCAL = "http://127.0.0.1:8000"  # the Host the server answers to by default


def _png(img: np.ndarray) -> bytes:
    arr = np.round(img * 255).astype(np.uint8)
    return cv2.imencode(".png", arr[..., ::-1] if arr.ndim == 3 else arr)[1].tobytes()


@pytest.fixture(scope="module")
def pair():
    return _png(smooth_image(48, 64, 1)), _png(smooth_image(48, 64, 2, color=True))


@pytest.fixture(scope="module")
def client(tiny_gray_prior_path):
    with TestClient(
        create_app(prior=str(tiny_gray_prior_path), max_upload_mb=1.0, max_pixels=1_000_000), base_url=LOCAL
    ) as c:
        yield c


def _files(*items):
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def _wait(client, job_id, states=("done", "failed", "cancelled"), timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        s = client.get(f"/api/jobs/{job_id}").json()
        if s["state"] in states:
            return s
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {s['state']}")


def test_info_lists_methods_with_their_options_and_the_limits(client):
    info = client.get("/api/info").json()
    names = [m["name"] for m in info["methods"]]
    assert names[:3] == ["dig2dig", "ccf", "ddfm"] and "average" in names
    dig = {o["name"]: o for o in info["methods"][0]["options"]}
    from dig2dig.options import DIGOptions

    assert (
        dig["interval"]["default"] == DIGOptions().interval
        and dig["temperature"]["default"] == DIGOptions().temperature
    )
    assert "paper" in str(dig["preset"]) and dig["blend"]["default"] == "pyramid"  # earlier rules one option away
    assert info["limits"]["max_upload_mb"] == 1.0 and "feature_extractor" in info["not_from_requests"]
    assert {"compile", "precision", "tile"} <= set(info["not_from_requests"]) and "prior_options" not in info
    assert client.get("/api/task", params=[("name", "ir.png"), ("name", "vis.png")]).json()["task"] == "vif"
    assert client.get("/api/task", params=[("name", "x.png"), ("name", "y.png")]).json()["task"] == "auto"
    page = client.get("/")
    assert page.status_code == 200 and 'input type="file"' in page.text and 'id="result"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN, no external fonts


def test_a_job_from_upload_to_download(client, pair, tiny_gray_prior_path, tmp_path):
    r = client.post(
        "/api/jobs",
        files=_files(("ir.png", pair[0]), ("vis.png", pair[1])),
        data={"method": "dig2dig", "steps": "6", "seed": "3", "options": '{"interval": 2}'},
    )
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    assert len(job) >= 16
    s = _wait(client, job)
    assert s["state"] == "done" and s["progress"] == {"done": 6, "total": 6, "eta_s": None}
    res = s["result"]
    assert (res["width"], res["height"], res["task"]) == (64, 48, "vif") and res["refreshes"] == [2, 4]
    assert {"result.png", "report.json", "dig_curves.png", "weights_step002.png"} <= set(res["files"])
    png = client.get(f"/api/jobs/{job}/result.png")
    assert png.headers["content-type"] == "image/png"
    report = client.get(f"/api/jobs/{job}/report.json").json()
    assert report["config"]["seed"] == 3 and report["config"]["options"]["interval"] == 2
    assert client.get(f"/api/jobs/{job}/files/weights_step004.png").status_code == 200
    for name in ("nope.png", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "..%2Fresult.png"):  # names, never paths
        assert client.get(f"/api/jobs/{job}/files/{name}").status_code == 404
    # the same bytes as the command line with the same settings
    for name, data in (("ir.png", pair[0]), ("vis.png", pair[1])):
        (tmp_path / name).write_bytes(data)
    from dig2dig.cli import main

    assert (
        main(
            [
                "fuse",
                str(tmp_path / "ir.png"),
                str(tmp_path / "vis.png"),
                "-o",
                str(tmp_path / "cli.png"),
                "--steps",
                "6",
                "--seed",
                "3",
                "--interval",
                "2",
                "--prior",
                str(tiny_gray_prior_path),
                "-q",
            ]
        )
        == 0
    )
    assert png.content == (tmp_path / "cli.png").read_bytes()
    # forgotten on request
    assert client.delete(f"/api/jobs/{job}").json()["state"] == "done"
    assert client.get(f"/api/jobs/{job}").status_code == 404


@pytest.mark.parametrize(
    "files,data,code,message",
    [
        ([("ir.png", "a")], {}, 422, "fuses 2 or more sources, got 1"),
        ([("ir.png", "a"), ("vis.png", "b")], {"method": "magic"}, 422, "unknown method"),
        ([("ir.png", "a"), ("vis.png", "b")], {"options": '{"interval": 0}'}, 422, "interval=0 is out of range"),
        ([("ir.png", "a"), ("vis.png", "b")], {"options": "[1]"}, 422, "JSON object"),
        (
            [("ir.png", "a"), ("vis.png", "b")],
            {"options": '{"feature_extractor": "os:system"}'},
            422,
            "cannot be set from a web request",
        ),
        ([("ir.png", "a"), ("vis.png", "b")], {"steps": "0"}, 422, "steps must be between 1 and 1000"),
        ([("ir.png", "a"), ("vis.png", "b")], {"seed": "-4"}, 422, "seed"),
        (
            [("ir.png", "a"), ("vis.png", "b")],
            {"options": '{"compile": true}'},
            422,
            "cannot be set from a web request",
        ),
        ([("ir.png", "a"), ("vis.png", "b")], {"options": '{"precision": "fp16"}'}, 422, "the server decides"),
        ([("ir.png", "a"), ("vis.png", "b")], {"resize": "maybe"}, 422, "resize 'maybe' must be true or false"),
        ([("ir.png", "a"), ("vis.png", "b")], {"task": "fusion"}, 422, "unknown task"),
        ([("ir.png", "a"), ("vis.png", "b"), ("x.png", "a")], {"method": "ddfm"}, 422, "exactly 2 sources"),
        ([("ir.png", "a"), ("notes.png", "text")], {}, 422, "notes.png: cannot decode"),
        ([("ir.png", "a"), ("small.png", "small")], {}, 422, "small.png is 30x20"),
        ([("ir.png", "a"), ("huge.png", "huge")], {}, 422, "more than the limit of 1"),
        ([("ir.png", "a"), ("vis.png", "big")], {}, 413, "more than the server's limit of 1 MB"),
    ],
)
def test_bad_requests_get_a_clear_status_and_message(client, pair, files, data, code, message):
    blobs = {
        "a": pair[0],
        "b": pair[1],
        "text": b"not an image",
        "small": _png(smooth_image(20, 30, 3)),
        "huge": _png(np.zeros((1100, 1000))),
        "big": np.random.default_rng(0).bytes(1_200_000),
    }
    r = client.post("/api/jobs", files=_files(*((n, blobs[k]) for n, k in files)), data=data)
    assert r.status_code == code, r.text
    assert message in r.json()["detail"]


def test_the_type_is_decided_by_decoding_not_by_the_name(client, pair):
    r = client.post("/api/jobs", files=_files(("ir.jpg", pair[0]), ("vis.bmp", pair[1])), data={"method": "average"})
    assert r.status_code == 201
    assert _wait(client, r.json()["id"])["state"] == "done"


def test_unknown_and_unfinished_jobs(client, pair):
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.delete("/api/jobs/nope").status_code == 404
    r = client.post("/api/jobs", files=_files(("ir.png", pair[0]), ("vis.png", pair[1])), data={"steps": "40"})
    job = r.json()["id"]
    assert client.get(f"/api/jobs/{job}/result.png").status_code == 409
    client.delete(f"/api/jobs/{job}")
    _wait(client, job)


def test_jobs_queue_one_at_a_time_and_cancel(client, pair):
    def post(steps):
        return client.post(
            "/api/jobs",
            files=_files(("ir.png", pair[0]), ("vis.png", pair[1])),
            data={"steps": str(steps), "method": "ddfm"},
        ).json()

    first, second, third = post(200), post(3), post(3)
    assert second["position"] >= 1 and third["position"] > second["position"]
    _wait(client, first["id"], states=("running",))
    assert client.get(f"/api/jobs/{third['id']}").json()["queue_position"] == 2
    assert client.delete(f"/api/jobs/{third['id']}").json()["state"] == "cancelled"  # queued: never runs
    client.delete(f"/api/jobs/{first['id']}")  # running: stops at its next step
    s = _wait(client, first["id"])
    assert s["state"] == "cancelled" and s["progress"]["done"] < 200
    assert _wait(client, second["id"])["state"] == "done"
    assert client.get(f"/api/jobs/{third['id']}").json()["state"] == "cancelled"


def test_a_failed_fusion_reports_the_command_lines_one_line_error(client, pair, monkeypatch):
    import dig2dig.api

    def broken(*a, **k):
        raise MemoryError

    monkeypatch.setattr(dig2dig.api, "run", broken)
    r = client.post("/api/jobs", files=_files(("ir.png", pair[0]), ("vis.png", pair[1])))
    s = _wait(client, r.json()["id"])
    from dig2dig.errors import describe

    assert s["state"] == "failed" and s["error"] == describe(MemoryError())[1]


def test_nothing_is_left_on_disk_and_stopping_forgets_everything(tiny_gray_prior_path, pair):
    before = set(Path(tempfile.gettempdir()).glob("dig2dig-web-*"))
    app = create_app(prior=str(tiny_gray_prior_path))
    with TestClient(app, base_url=LOCAL) as c:
        r = c.post("/api/jobs", files=_files(("ir.png", pair[0]), ("vis.png", pair[1])), data={"steps": "4"})
        _wait(c, r.json()["id"])
        c.post("/api/jobs", files=_files(("ir.png", pair[0]), ("vis.png", pair[1])), data={"steps": "500"})
    assert app.state.jobs.jobs == {} and not app.state.jobs.thread.is_alive()
    assert set(Path(tempfile.gettempdir()).glob("dig2dig-web-*")) == before


# --------------------------------------------------------------------------------------------
# a real browser


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); the browser test needs it")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    return path


@pytest.fixture(scope="module")
def live_server(tiny_gray_prior_path):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(prior=str(tiny_gray_prior_path)), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_the_page_in_a_real_browser(live_server, tiny_gray_prior_path, tmp_path):
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    pair_dir = DATA / "fusion" / "mif" / "mri_ct"
    if pair_dir.is_dir():
        src = sorted(p for p in pair_dir.iterdir() if p.is_dir())[0]
        sources = [src / "ct.png", src / "mri.png"]
    else:  # no shared data: tiny synthetic sources
        sources = [tmp_path / "ct.png", tmp_path / "mri.png"]
        for p, k in zip(sources, (1, 2)):
            p.write_bytes(_png(smooth_image(48, 64, k)))
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"Chromium at {exe} does not start here: {e}")
        page = browser.new_page(accept_downloads=True)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(live_server)
        console = []
        page.on("console", lambda m: console.append(m.text))
        # the page runs under its content security policy (no eval), so wait with selectors, not JS strings
        page.wait_for_selector("select[name=method] option[value=average]", state="attached")
        page.set_input_files("input[type=file]", [str(p) for p in sources])
        page.select_option("select[name=method]", "dig2dig")
        page.fill("input[name=steps]", "2")
        page.wait_for_selector("#fuse:not([disabled])")
        assert page.inner_text("#task-guess").startswith("guessed mif")
        page.click("button:has-text('Fuse')")
        deadline = time.time() + 120
        while not page.evaluate(
            "(() => { const r = document.getElementById('result'); return r.complete && r.naturalWidth > 0; })()"
        ):
            assert time.time() < deadline, "no result within 120 s"
            time.sleep(0.1)
        w, h = page.evaluate(
            "[document.getElementById('result').naturalWidth, document.getElementById('result').naturalHeight]"
        )
        src_h, src_w = cv2.imread(str(sources[0]), cv2.IMREAD_UNCHANGED).shape[:2]
        assert (w, h) == (src_w, src_h)
        assert "Done" in page.inner_text("#progress")
        with page.expect_download() as dl:
            page.click("a#download")
        downloaded = Path(dl.value.path()).read_bytes()
        browser.close()
    assert not errors, errors
    assert not [m for m in console if "Content Security Policy" in m], console
    from dig2dig.cli import main

    out = tmp_path / "cli.png"
    assert (
        main(["fuse", *map(str, sources), "-o", str(out), "--steps", "2", "--prior", str(tiny_gray_prior_path), "-q"])
        == 0
    )
    assert downloaded == out.read_bytes()
