"""Is ``dig2dig serve`` safe to leave running?  A bounded load test against 127.0.0.1.

    python benchmarks/serve_load.py [--requests 100] [--clients 8] [--seconds 30] [--prior DIR]
                                    [--rss-bound-mb 1500] [--out benchmarks/results/serve_load.md] [--json F]

Starts the real command (``python -m dig2dig serve`` on a free loopback port, ``--max-queue 4``) and
sends ``--requests`` requests from ``--clients`` threads within ``--seconds``, good and bad mixed:
small fusions (``average``, and ``dig2dig`` at 2 steps), a corrupt upload, bad fields, a cross-site
write, a foreign ``Host``, an unknown job, too many files, a declared body over the limit and a
chunked one, and large sources (two 4000x4000 images, 32 MP) that the queue takes while it has room for them.
Meanwhile one thread asks ``/api/info`` every 0.2 s and another samples the server's resident memory.

Checked (the exit status is 1 if any fails): every answer is 2xx, 4xx or 503 (none 500, none lost),
``/api/info`` always answers within 1 s, and the server's RSS stays under ``--rss-bound-mb``.  The
table goes to ``--out``; ``--json`` also writes the raw numbers (the tests read them).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from _command import command_line


def _png(arr: np.ndarray) -> bytes:
    return cv2.imencode(".png", arr)[1].tobytes()


def _multipart(files: list[tuple[str, bytes]], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "dig2digload" + os.urandom(8).hex()
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Server:
    """``dig2dig serve`` in a subprocess on a free loopback port."""

    def __init__(self, extra: list[str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "dig2dig", "serve", "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start within 120 s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60.0
) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def chunked_post(port: int, offer_mb: float, chunk: int = 1 << 16) -> tuple[int, int]:
    """POST a chunked body of ``offer_mb`` MB, stopping as soon as the server answers; (status, bytes sent)."""
    import select

    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    sent = 0
    try:
        s.sendall(
            f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary=x\r\n\r\n".encode()
        )
        block = f"{chunk:x}\r\n".encode() + b"\0" * chunk + b"\r\n"
        while sent < offer_mb * 2**20:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(block)
            except OSError:  # the server closed the connection after answering
                break
            sent += chunk
        s.settimeout(30)
        head = b""
        while b"\r\n" not in head:
            part = s.recv(4096)
            if not part:
                break
            head += part
        status = int(head.split()[1]) if head.startswith(b"HTTP/") else 0
        return status, sent
    finally:
        s.close()


def run(
    requests: int = 100, clients: int = 8, seconds: float = 30.0, prior: str | None = None, rss_bound_mb: float = 1500.0
) -> dict:
    rng = np.random.default_rng(0)
    small = [_png((rng.random((48, 64)) * 255).astype(np.uint8)) for _ in range(2)]
    big = _png(np.zeros((4000, 4000), np.uint8))
    extra = ["--max-queue", "4", "--max-upload-mb", "8"] + (["--prior", prior] if prior else [])
    server = Server(extra)
    port = server.port

    def post(files, fields, headers=None):
        body, ctype = _multipart(files, fields)
        return request(port, "POST", "/api/jobs", body, {"Content-Type": ctype, **(headers or {})})

    pair = [("ir.png", small[0]), ("vis.png", small[1])]
    kinds = {
        "average": lambda: post(pair, {"method": "average"}),
        "dig2dig-2-steps": lambda: post(pair, {"method": "dig2dig", "steps": "2"}),
        "corrupt-upload": lambda: post([("ir.png", small[0]), ("vis.png", b"\x89PNG broken")], {}),
        "bad-steps": lambda: post(pair, {"steps": "\u00b2"}),
        "huge-seed": lambda: post(pair, {"seed": "9" * 5000}),
        "execution-option": lambda: post(pair, {"options": '{"compile": true}'}),
        "cross-site-write": lambda: post(pair, {}, {"Origin": "http://evil.example"}),
        "foreign-host": lambda: request(port, "GET", "/api/info", headers={"Host": "evil.example"}),
        "unknown-job": lambda: request(port, "GET", "/api/jobs/" + "x" * 2000),
        "too-many-files": lambda: post(pair * 5, {}),
        "declared-too-big": lambda: request(
            port,
            "POST",
            "/api/jobs",
            b"x" * 64,
            {"Content-Length": str(64 * 2**20), "Content-Type": "multipart/form-data"},
        ),
        "chunked-too-big": lambda: (chunked_post(port, 64)[0], {}, b""),
        "large-sources": lambda: post([("a.png", big), ("b.png", big)], {"method": "average"}),
    }
    plan = [name for name in kinds for _ in range(max(1, requests // len(kinds)))]
    plan += random.Random(0).choices(list(kinds), k=requests - len(plan))
    random.Random(1).shuffle(plan)
    results: list[tuple[str, int, float]] = []
    info_latency: list[float] = []
    rss: list[float] = []
    lock = threading.Lock()
    done = threading.Event()
    t0 = time.time()

    def watch():
        while not done.is_set():
            t = time.perf_counter()
            try:
                code = request(port, "GET", "/api/info", timeout=10)[0]
            except OSError:
                code = 0
            info_latency.append(time.perf_counter() - t if code == 200 else float("inf"))
            rss.append(server.rss_mb())
            time.sleep(0.2)

    def client(k: int):
        for i, name in enumerate(plan[k::clients]):
            at = t0 + seconds * (i * clients + k) / max(1, len(plan))  # spread over the window
            time.sleep(max(0.0, at - time.time()))
            t = time.perf_counter()
            try:
                status = kinds[name]()[0]
            except OSError as e:
                status = -1
                print(f"{name}: {e}", file=sys.stderr)
            with lock:
                results.append((name, status, time.perf_counter() - t))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent_s = time.time() - t0
    done.set()
    watcher.join()
    log = server.stop()
    by_kind: dict[str, Counter] = {}
    for name, status, _ in results:
        by_kind.setdefault(name, Counter())[status] += 1
    codes = Counter(status for _, status, _ in results)
    ok = all(200 <= c < 300 or 400 <= c < 500 or c == 503 for c in codes)
    return {
        "requests": len(results),
        "clients": clients,
        "window_s": seconds,
        "sent_in_s": round(sent_s, 1),
        "codes": {str(k): v for k, v in sorted(codes.items())},
        "by_kind": {k: {str(c): n for c, n in sorted(v.items())} for k, v in sorted(by_kind.items())},
        "info_max_s": round(max(info_latency), 3),
        "info_median_s": round(float(np.median(info_latency)), 4),
        "info_polls": len(info_latency),
        "rss_max_mb": round(max(rss), 1),
        "rss_start_mb": round(rss[0], 1),
        "rss_bound_mb": rss_bound_mb,
        "log_lines": [line for line in log.splitlines() if line.strip()][:20],
        "checks": {
            "no 500 and none lost": ok,
            "info within 1 s": max(info_latency) < 1.0,
            "rss under the bound": max(rss) < rss_bound_mb,
        },
    }


def table(r: dict) -> str:
    lines = [
        "# `dig2dig serve` under a bounded load",
        "",
        f"Written by `{r['command']}`.  "
        f"{r['requests']} requests from {r['clients']} clients within {r['window_s']:g} s (sent in "
        f"{r['sent_in_s']} s) against 127.0.0.1; server started with `--max-queue 4 --max-upload-mb 8`.",
        "",
        "| request | answers |",
        "|---|---|",
        *(f"| {k} | {', '.join(f'{c}×{n}' for c, n in v.items())} |" for k, v in r["by_kind"].items()),
        "",
        "| measure | value |",
        "|---|---|",
        f"| status codes | {', '.join(f'{c}: {n}' for c, n in r['codes'].items())} |",
        f"| `/api/info` latency, median / max ({r['info_polls']} polls) | {r['info_median_s']} s / "
        f"{r['info_max_s']} s |",
        f"| server RSS, at start / max | {r['rss_start_mb']} MB / {r['rss_max_mb']} MB (bound "
        f"{r['rss_bound_mb']:g} MB) |",
        *(f"| check: {k} | {'yes' if v else '**no**'} |" for k, v in r["checks"].items()),
        "",
        "Server log (stderr), first lines:",
        "",
        "```",
        *r["log_lines"],
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--prior", help="prior folder (default: the embedded prior)")
    ap.add_argument("--rss-bound-mb", type=float, default=1500.0)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "serve_load.md"))
    ap.add_argument("--json", help="also write the raw numbers here")
    a = ap.parse_args(argv)
    r = run(a.requests, a.clients, a.seconds, a.prior, a.rss_bound_mb)
    r["command"] = command_line("serve_load.py", sys.argv[1:] if argv is None else list(argv))
    text = table(r)
    if a.out:
        Path(a.out).write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    print(text)
    return 0 if all(r["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
