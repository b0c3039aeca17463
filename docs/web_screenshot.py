"""Take the screenshot of the web page in the README: `dig2dig serve` with the embedded prior, an MSRS
pair fused with Dig2DIG (its defaults) in Debian's Chromium, with the DIG weight maps shown.

    python docs/web_screenshot.py [--pair DIR] [--out docs/img/web_page.png] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _until(page, expression: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while not page.evaluate(expression):
        if time.time() > deadline:
            raise TimeoutError(f"not true within {seconds:g} s: {expression}")
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default=str(SHARED / "data/fusion/vif/msrs/00001D"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "img" / "web_page.png"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    import uvicorn
    from playwright.sync_api import sync_playwright

    from dig2dig.web.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    pair = Path(args.pair)
    sources = [str(p) for p in sorted(pair.iterdir()) if p.suffix.lower() in (".png", ".jpg")]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("select[name=method] option[value=average]", state="attached")
        page.set_input_files("input[type=file]", sources)
        page.wait_for_selector("#fuse:not([disabled])")
        page.click("button:has-text('Fuse')")
        for img in ("result", "weights"):  # the page's CSP forbids eval: poll, not wait_for_function
            _until(
                page,
                f"(() => {{ const i = document.getElementById('{img}'); return i.complete && i.naturalWidth > 0; }})()",
                600,
            )
        page.wait_for_timeout(500)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    server.should_exit = True
    from PIL import Image

    img = Image.open(args.out)
    img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=192)  # a small file for the repo
    img.save(args.out, optimize=True)
    print(f"{args.out}: {img.size[0]}x{img.size[1]}, {Path(args.out).stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
