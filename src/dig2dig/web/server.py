"""``dig2dig serve``: one static page of our own and a small JSON job API (FastAPI).

The page (``static/``) talks to the same API scripts can use:

* ``GET /api/info`` -- methods with their options (from the option records), tasks, limits, the prior;
* ``GET /api/task?name=a.png&name=b.png`` -- the task the file names suggest;
* ``POST /api/jobs`` (multipart: one ``files`` field per source, ``method``, ``steps``, ``seed``,
  ``task``, ``resize``, optional ``options`` as a JSON object) -> ``{"id": ..., "position": ...}``;
* ``GET /api/jobs/{id}`` -> state (queued, running, done, failed, cancelled), progress (steps done,
  total, ETA), queue position, the one-line error, the result's size and files;
* ``GET /api/jobs/{id}/result.png``, ``/report.json``, ``/files/{name}`` (Dig2DIG weight maps per
  refresh and DIG curves, CCF's selection plot);
* ``DELETE /api/jobs/{id}`` cancels a queued or running job, or forgets a finished one.

What the server protects (README, "The web page", says the same for users):

* **Who can reach it.** It binds to 127.0.0.1 unless told otherwise, and binding beyond loopback needs a
  token (``--token``): API calls then carry it (``Authorization: Bearer`` or the cookie set by opening
  ``/?token=...``).  The ``Host`` header must name an address the server was started on (no DNS
  rebinding); a write (POST, DELETE) from another site is refused from its ``Origin`` /
  ``Sec-Fetch-Site`` headers, so a page the user visits cannot queue jobs; every answer carries a
  ``default-src 'self'`` content security policy and refuses framing and sniffing.
* **Memory.** A request is read up to ``--max-upload-mb`` and no further (chunked or not), in
  memory, never spooled to disk, and dropped (408) when it stalls or drags on; at most
  ``--max-queue`` jobs wait or run, holding at most ``--max-queued-mp`` megapixels of sources
  between them; beyond either the answer is 503 with ``Retry-After``. Queued sources are kept as the
  uploaded (compressed) bytes and decoded when their job starts; only PNG, JPEG, TIFF and BMP are
  decoded, and a request's pixels are read from their headers before anything is; one upload is
  decoded at a time, off the event loop, so status and info answer while it runs; finished results
  are kept for the last ``KEEP_FINISHED`` jobs and at most ``KEEP_RESULT_MB`` of files.
* **What a request can do.** Names are labels (task detection), never paths; job ids are random; the
  prior and every execution setting (precision, tiles, compilation) are the server's; options that
  import code are refused; one fusion runs at a time; a fusion that fails reports the same one-line
  error as the command line; figures are rendered in a temporary folder that is removed at once.

It does not protect against a user who holds the token (or, on loopback, any local user) sending
expensive jobs within those bounds, and it speaks plain HTTP: put it behind a TLS proxy to serve it
beyond one machine.
"""

import json
import logging
import queue
import re
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from ..seeds import SEED_LIMIT
from ..spec import FusionSpec

STATIC = Path(__file__).with_name("static")
MAX_UPLOAD_MB = 50.0  # per request
MAX_SOURCES = 8
MAX_QUEUE = 8  # jobs waiting or running
MAX_QUEUED_MP = 64.0  # megapixels of sources held by the jobs waiting or running
MAX_UPLOADS = 4  # requests being read or decoded at once
UPLOAD_IDLE_S = 10.0  # longest pause while a request's body arrives ...
UPLOAD_DEADLINE_S = 120.0  # ... and longest time to receive all of it (408 beyond either)
KEEP_FINISHED = 32  # finished jobs kept for download; older ones are forgotten ...
KEEP_RESULT_MB = 256.0  # ... and so are the oldest once their files pass this size
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "dig2dig_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

log = logging.getLogger("dig2dig.web")


def not_from_requests() -> tuple[str, ...]:
    """Options a request may not set: code imports, and every execution setting (the server's)."""
    from ..options import PriorOptions

    return ("feature_extractor", *(i.name for i in PriorOptions.infos()))


class JobCancelled(Exception):
    """Raised inside a running fusion when its job is cancelled."""


class Busy(Exception):
    """The queue is full (jobs or pixels): answered 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class WebJob:
    id: str
    spec: FusionSpec  # what the request asked for, the prior and device being the server's
    names: list[str]
    sources: list[bytes]  # the uploads as sent (compressed); decoded when the job starts
    pixels: int  # width x height summed over the sources
    state: str = "queued"
    done: int = 0
    total: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: dict = field(default_factory=dict)  # file name -> (bytes, media type)
    info: dict = field(default_factory=dict)  # size, task, roles, refreshes ...
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def eta(self) -> float | None:
        if self.state == "running" and self.done and self.total and self.started:
            return round((time.time() - self.started) / self.done * (self.total - self.done), 1)
        return None

    def status(self, position: int | None) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "method": self.spec.method,
            "queue_position": position,
            "progress": {"done": self.done, "total": self.total, "eta_s": self.eta()},
            "error": self.error,
            "result": {**self.info, "files": sorted(self.result)} if self.state == "done" else None,
        }


class JobQueue:
    """Jobs run one at a time by a worker thread; the API only admits, reads and cancels.

    Admission is bounded: at most ``max_queue`` jobs waiting or running, holding at most
    ``max_pixels`` source pixels between them (:class:`Busy` beyond either)."""

    def __init__(
        self,
        prior,
        device: str | None = None,
        *,
        max_queue: int = MAX_QUEUE,
        max_pixels: int = int(MAX_QUEUED_MP * 1e6),
        decode_pixels: int | None = None,
        keep: int = KEEP_FINISHED,
        keep_bytes: int = int(KEEP_RESULT_MB * 2**20),
    ):
        self.prior, self.device = prior, device
        self.max_queue, self.max_pixels, self.decode_pixels = max_queue, max_pixels, decode_pixels
        self.keep, self.keep_bytes = keep, keep_bytes
        self.jobs: OrderedDict[str, WebJob] = OrderedDict()
        self.pending: queue.Queue[str | None] = queue.Queue()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="dig2dig-fusion", daemon=True)
        self.thread.start()

    # --- the API's side ------------------------------------------------------------------------
    def retry_after(self) -> int:
        """Seconds until a place is likely to free up (the running job's ETA, else a few)."""
        with self.lock:
            etas = [j.eta() for j in self.jobs.values() if j.state == "running"]
        return int(min(600, max(2, *(e for e in etas if e is not None), 2) + 1)) if etas else 5

    def check_room(self, pixels: int = 0) -> None:
        """Raise :class:`Busy` if a job of ``pixels`` source pixels would not fit now."""
        with self.lock:
            active = [j for j in self.jobs.values() if j.active]
            held = sum(j.pixels for j in active)
        if len(active) >= self.max_queue:
            raise Busy(
                f"the server is busy: {len(active)} jobs are queued or running, its limit "
                f"(--max-queue {self.max_queue}); try again shortly",
                self.retry_after(),
            )
        if pixels and held + pixels > self.max_pixels:
            raise Busy(
                f"the server is busy: the queued jobs hold {held / 1e6:.3g} of its "
                f"{self.max_pixels / 1e6:g} megapixels (--max-queued-mp) and this one needs "
                f"{pixels / 1e6:.3g}; try again shortly",
                self.retry_after(),
            )

    def submit(self, job: WebJob) -> int | None:
        """Queue ``job``; its :meth:`position` (None if a worker has taken it up already), or Busy."""
        with self.lock:
            active = [j for j in self.jobs.values() if j.active]
            if len(active) >= self.max_queue or sum(j.pixels for j in active) + job.pixels > self.max_pixels:
                full = True
            else:
                full = False
                self.jobs[job.id] = job
                self._forget_old()
        if full:
            self.check_room(job.pixels)  # raises Busy with the reason
        self.pending.put(job.id)
        return self.position(job)

    def get(self, job_id: str) -> WebJob | None:
        with self.lock:
            return self.jobs.get(job_id)

    def position(self, job: WebJob) -> int | None:
        """Jobs ahead of this one (the running one included); None once it runs."""
        if job.state != "queued":
            return None
        with self.lock:
            ahead = 0
            for other in self.jobs.values():
                if other is job:
                    break
                ahead += other.active
            return ahead

    def cancel(self, job_id: str) -> WebJob | None:
        job = self.get(job_id)
        if job is None:
            return None
        if job.active:
            job.cancel.set()
            if job.state == "queued":
                job.state, job.finished, job.sources = "cancelled", time.time(), []
        else:
            with self.lock:
                self.jobs.pop(job_id, None)
        return job

    def stop(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel.set()
        self.pending.put(None)
        self.thread.join(timeout=30)
        with self.lock:
            self.jobs.clear()

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if not j.active]
        size = sum(len(data) for j in finished for data, _ in j.result.values())
        for k, j in enumerate(finished):
            if len(finished) - k <= self.keep and size <= self.keep_bytes:
                break
            size -= sum(len(data) for data, _ in j.result.values())
            self.jobs.pop(j.id, None)

    # --- the worker's side ---------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job_id = self.pending.get()
            if job_id is None:
                return
            job = self.get(job_id)
            if job is None or job.state != "queued":
                continue
            job.state, job.started = "running", time.time()
            try:
                self._fuse(job)
                job.state = "done"
            except JobCancelled:
                job.state = "cancelled"
            except BaseException as e:  # noqa: BLE001 -- a failed job reports, the server goes on
                from ..errors import describe

                job.state, job.error = "failed", describe(e, "web")[1]
            finally:
                job.finished, job.sources = time.time(), []
                with self.lock:
                    self._forget_old()

    def _fuse(self, job: WebJob) -> None:
        from ..api import run
        from ..io import image_from_bytes

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            if job.cancel.is_set():
                raise JobCancelled

        images = [
            image_from_bytes(data, name, self.decode_pixels, capture=False)
            for data, name in zip(job.sources, job.names)
        ]
        job.sources = []
        r = run(
            job.spec.resolve(),
            [images],
            seeds=[job.spec.seed],
            names=[job.names],
            record=job.spec.method == "dig2dig",
            progress=progress,
        )[0]
        job.result["result.png"] = (r.encode(".png"), "image/png")
        report = {"config": r.config, "timings": r.timings}
        job.result["report.json"] = (json.dumps(report, indent=2, default=str).encode(), "application/json")
        h, w = r.image.shape[:2]
        job.info = {
            "width": w,
            "height": h,
            "task": r.task,
            "task_reason": r.config["task_reason"],
            "roles": r.config["roles"],
            "seed": r.seed,
        }
        if r.config.get("registration"):  # what was moved, how much, and the region every source covers
            reg = r.config["registration"]
            job.info["registration"] = {
                "mode": reg["mode"],
                "valid_fraction": reg.get("valid_fraction"),
                "valid_box": reg.get("valid_box"),
                "sources": [
                    {k: x[k] for k in ("source", "matrix", "similarity_before", "similarity_after", "covered")}
                    for x in reg["sources"]
                ],
            }
        with tempfile.TemporaryDirectory(prefix="dig2dig-web-") as tmp:  # figures, then nothing on disk
            if r.method == "dig2dig" and r.guidance:
                from ..viz import save_dig

                by_name = dict(zip(job.names, images))
                save_dig(r, tmp, sources=[by_name[n].data for n in r.config["roles"].values() if n in by_name])
                job.info["refreshes"] = [x["step"] for x in r.guidance["refreshes"] if "weights" in x]
            if r.method == "ccf" and r.guidance:
                from ..guidance.ccf import save_selection

                save_selection(r.guidance, tmp)
            for f in sorted(Path(tmp).glob("*.png")):
                job.result[f.name] = (f.read_bytes(), "image/png")


# --------------------------------------------------------------------------------------------
# the guard: who may talk to the server, and the headers every answer carries


def _host_name(host_header: str) -> str:
    """The host of a ``Host`` header without its port: ``[::1]:8000`` -> ``::1``."""
    h = host_header.strip().lower()
    if h.startswith("[") and "]" in h:
        name, rest = h[1:].split("]", 1)
        return name if rest == "" or (rest[:1] == ":" and rest[1:].isdigit()) else h
    if h.count(":") == 1:
        name, port = h.split(":")
        return name if port.isdigit() else h
    return h


class Guard:
    """ASGI middleware run before every route.

    * ``Host`` must be one of ``hosts`` (None: any; the server was bound to every interface and a
      token is required instead) -- a DNS-rebinding page names its own host and is refused;
    * with a ``token``, every path but the static files needs it (``Authorization: Bearer`` or the
      cookie that opening ``/?token=...`` sets, HttpOnly and SameSite=Strict);
    * a write (anything but GET/HEAD/OPTIONS) must come from the page itself: a cross-site
      ``Origin`` or ``Sec-Fetch-Site`` is refused;
    * a declared ``Content-Length`` above the upload limit is refused before any of it is read;
    * every answer carries :data:`SECURITY_HEADERS`.
    """

    def __init__(self, app, *, hosts: AbstractSet[str] | None, token: str | None, limit_bytes: int, limit_text: str):
        self.app, self.hosts, self.token = app, hosts, token
        self.limit_bytes, self.limit_text = limit_bytes, limit_text

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers, MutableHeaders

        headers = Headers(scope=scope)
        refused = self._check(scope, headers)

        async def send_secured(message):
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    out[k] = v
            await send(message)

        if refused is not None:
            await refused(scope, receive, send_secured)
            return
        started = False

        async def send_tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_secured(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as e:  # noqa: BLE001 -- the one error boundary: one line in the log, none to the client
            from starlette.responses import JSONResponse

            from ..errors import describe

            log.error("dig2dig serve: %s %s failed: %s", scope.get("method"), scope.get("path"), describe(e)[1])
            if not started:
                await JSONResponse(
                    {"detail": "internal error; the server's log has the one-line reason"}, status_code=500
                )(scope, receive, send_secured)

    def _check(self, scope, headers):
        from urllib.parse import parse_qs

        from starlette.responses import JSONResponse, RedirectResponse

        def deny(status: int, message: str):
            return JSONResponse({"detail": message}, status_code=status)

        host = headers.get("host", "")
        if self.hosts is not None and _host_name(host) not in self.hosts:
            return deny(
                400,
                f"this server answers to {', '.join(sorted(self.hosts))}, not to the host "
                f"{host[:80]!r}; open it by one of those, or start it with --allow-host NAME",
            )
        path = scope.get("path", "")
        if self.token is not None and not path.startswith("/static/"):
            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
            if path == "/" and scope.get("method") == "GET" and given is not None and self._match(given):
                r = RedirectResponse("/", status_code=303)  # the token leaves the address bar
                r.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                return r
            auth = headers.get("authorization", "")
            cookie = _cookie(headers.get("cookie", ""), TOKEN_COOKIE)
            bearer = auth[7:] if auth.lower().startswith("bearer ") else None
            if not any(t is not None and self._match(t) for t in (bearer, cookie)):
                return deny(
                    401,
                    "this server needs its token: open the address dig2dig serve printed "
                    "(…/?token=...), or send 'Authorization: Bearer <token>'",
                )
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD", "OPTIONS"):
            site = headers.get("sec-fetch-site")
            origin = headers.get("origin")
            scheme = scope.get("scheme", "http")
            if site is not None and site not in ("same-origin", "none"):
                return deny(403, f"a {method} from another site ({site}) is refused; use the page this server serves")
            if origin is not None and origin.lower() != f"{scheme}://{host.lower()}":
                return deny(
                    403, f"a {method} from the origin {origin[:80]!r} is refused; use the page this server serves"
                )
            length = headers.get("content-length", "")
            if length.isdigit() and len(length) < 19 and int(length) > self.limit_bytes:
                return deny(
                    413,
                    f"the upload is {int(length) / 2**20:.1f} MB, more than the server's limit of "
                    f"{self.limit_text}; send smaller images",
                )
        return None

    def _match(self, given: str) -> bool:
        assert self.token is not None  # asked only when the server has a token
        return secrets.compare_digest(given.encode("utf-8", "replace"), self.token.encode())


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


def allowed_hosts(host: str, extra: tuple[str, ...] | list[str] = ()) -> set[str] | None:
    """The ``Host`` names a server bound to ``host`` answers to; None (any) for a wildcard bind."""
    h = _host_name(host) if host.startswith("[") else host.lower()
    if h in ("0.0.0.0", "::", ""):
        return {*(x.lower() for x in extra)} or None
    names = {h, *(x.lower() for x in extra)}
    if h in LOOPBACK or h.startswith("127."):
        names |= set(LOOPBACK)
    return names


def is_loopback(host: str) -> bool:
    h = _host_name(host) if host.startswith("[") else host.lower()
    return h in LOOPBACK or h.startswith("127.")


# --------------------------------------------------------------------------------------------
# reading a request


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


_DIGITS = re.compile(r"[0-9]{1,19}")


def _shown(text: str, n: int = 40) -> str:
    """A value as echoed in a message: quoted, and cut to ``n`` characters."""
    return repr(text if len(text) <= n else text[:n] + "…")


def _whole_number(name: str, text: str, high: int) -> int:
    if not _DIGITS.fullmatch(text) or int(text) >= high:
        raise ValueError(f"{name} {_shown(text)} must be a whole number from 0 to {high - 1}")
    return int(text)


def _steps(text: str):
    if not text:
        return None
    if _DIGITS.fullmatch(text):
        return int(text) if len(text) <= 6 else 10**6  # out of range: the grid says so
    if len(text) > 400 or not text.isascii():
        raise ValueError(
            f"steps {_shown(text)}: give a step count, 'uniform:N', 'power:N:P' or a list like '999,500,0'"
        )
    return text


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("", "0", "false", "off", "no"):
        return False
    if value in ("1", "true", "on", "yes"):
        return True
    raise ValueError(f"{name} {_shown(text)} must be true or false")


# --------------------------------------------------------------------------------------------
# the app


def create_app(
    prior=None,
    *,
    prior_spec=None,
    device: str | None = None,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_pixels: int | None = None,
    max_sources: int = MAX_SOURCES,
    max_queue: int = MAX_QUEUE,
    max_queued_mp: float = MAX_QUEUED_MP,
    max_uploads: int = MAX_UPLOADS,
    upload_idle_s: float = UPLOAD_IDLE_S,
    upload_deadline_s: float = UPLOAD_DEADLINE_S,
    hosts: set[str] | frozenset[str] | None = frozenset(LOOPBACK),
    token: str | None = None,
):
    """The FastAPI app; ``prior`` (a path, a Denoiser, or None for the embedded one) is loaded now.

    ``hosts``: the ``Host`` names answered (None: any); ``token``: needed by every API call when set."""
    import asyncio
    from contextlib import asynccontextmanager

    import numpy as np
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect

    from .._version import __version__
    from ..errors import describe
    from ..io import MAX_PIXELS, check_pixels, header_size, image_from_bytes
    from ..methods import METHODS, get_method
    from ..prior import resolve_prior
    from ..registration import MODES as REGISTER_MODES
    from ..tasks import TASKS, resolve_task

    den = resolve_prior(prior, prior_spec=prior_spec, device=device)
    pixels = MAX_PIXELS if max_pixels is None else int(max_pixels)
    budget = int(max_queued_mp * 1e6)
    jobs = JobQueue(den, device, max_queue=max_queue, max_pixels=budget, decode_pixels=pixels)
    limit_bytes = int(max_upload_mb * 2**20)
    limit_text = f"{max_upload_mb:g} MB"
    refused_options = not_from_requests()
    decoding = asyncio.Semaphore(1)  # one upload decoded at a time (its memory is bounded by one job's)
    uploads = {"now": 0}  # requests being read or decoded

    @asynccontextmanager
    async def lifespan(app):
        yield
        jobs.stop()  # cancels what runs, drops every job and its results

    app = FastAPI(
        title="dig2dig", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.jobs = jobs
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Guard, hosts=hosts, token=token, limit_bytes=limit_bytes, limit_text=limit_text)

    def answer(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def request_error(request, e: RequestError):
        # a body refused unread (413) or stalled (408): close the connection rather than drain the rest
        return answer(e.status, str(e), {"Connection": "close"} if e.status in (408, 413) else None)

    @app.exception_handler(Busy)
    async def busy(request, e: Busy):
        return answer(503, str(e), {"Retry-After": str(e.retry_after)})

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    def describe_options(record):
        return [
            {
                "name": i.name,
                "kind": i.kind,
                "default": i.default,
                "default_text": i.default_text(),
                "choices": i.choices,
                "range": i.range_text(),
                "help": i.help,
                "low": i.low,
                "high": i.high,
            }
            for i in record.infos()
            if i.name not in refused_options
        ]

    info_body = {
        "version": __version__,
        "device": str(den.device),
        "prior": {"name": den.spec.name, "sha256": den.spec.sha256},
        "methods": [
            {
                "name": m.name,
                "description": m.description,
                "default_steps": m.default_steps,
                "needs_prior": m.needs_prior,
                "min_sources": m.min_sources,
                "max_sources": m.max_sources,
                "options": describe_options(m.options),
            }
            for m in METHODS.values()
        ],
        "tasks": ["auto", *TASKS],
        "register": list(REGISTER_MODES),
        "not_from_requests": list(refused_options),
        "limits": {
            "max_upload_mb": max_upload_mb,
            "max_pixels": pixels,
            "max_sources": max_sources,
            "max_queue": max_queue,
            "max_queued_mp": max_queued_mp,
        },
    }

    @app.get("/api/info")
    async def info():
        return info_body

    @app.get("/api/task")
    async def task_guess(name: list[str] = Query(default=[])):
        def from_images():
            raise LookupError  # only the names are known here

        try:
            t = resolve_task("auto", from_images, [n[:200] for n in name[:max_sources]])
            return {"task": t.name, "reason": t.reason}
        except LookupError:
            return {"task": "auto", "reason": "decided from the images when fusing"}

    async def read_body(request: Request) -> bytes:
        """The whole body, in memory, refused (413) as soon as it passes the limit, and (408) when it
        stalls for ``upload_idle_s`` or takes longer than ``upload_deadline_s`` (a slot is not held forever)."""
        chunks, n = [], 0
        stream = request.stream().__aiter__()
        deadline = time.monotonic() + upload_deadline_s
        while True:
            wait = min(upload_idle_s, deadline - time.monotonic())
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(wait, 0.001))
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise RequestError(
                    408,
                    f"the upload stalled or took too long ({n / 2**20:.1f} MB received; the "
                    f"server waits {upload_idle_s:g} s between parts and {upload_deadline_s:g} s "
                    f"in all); send it again",
                ) from None
            n += len(chunk)
            if n > limit_bytes:
                raise RequestError(
                    413, f"the upload is more than the server's limit of {limit_text}; send smaller images"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def parse_form(request: Request, body: bytes):
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise RequestError(422, "send the sources as a multipart/form-data request with one 'files' field each")

        async def one_chunk():
            yield body

        parser = MultiPartParser(
            request.headers, one_chunk(), max_files=max_sources, max_fields=50, max_part_size=64 * 1024
        )
        parser.spool_max_size = len(body) + 1  # the parts stay in memory: nothing is written to disk
        try:
            return await parser.parse()
        except MultiPartException as e:
            if "Too many files" in str(e):
                raise RequestError(
                    422, f"more than {max_sources} files: this server fuses at most {max_sources} sources"
                ) from None
            raise RequestError(422, f"the form could not be read: {e}") from None

    def settings(form, count: int):
        """The request's fields, validated (ValueError with the message otherwise)."""

        def text(name: str, default: str) -> str:
            value = form.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a text field, not a file")
            return value or default

        m = get_method(text("method", "dig2dig")[:100])
        try:
            options = json.loads(text("options", "{}"))
        except json.JSONDecodeError as e:
            raise ValueError(
                f"options must be a JSON object of option names and values (not JSON: {e.msg} at character {e.pos})"
            ) from None
        except (ValueError, RecursionError):  # a number of thousands of digits, arrays nested thousands deep
            raise ValueError(
                "options must be a JSON object of option names and values (a value is too long or too deeply nested)"
            ) from None
        if not isinstance(options, dict):
            raise ValueError("options must be a JSON object of option names and values")
        refused = sorted(set(options) & set(refused_options))
        if refused:
            raise ValueError(
                f"option(s) {refused} cannot be set from a web request: the server decides how "
                f"the prior runs, and nothing imports code named by a request"
            )
        diffusion = m.needs_prior
        spec = FusionSpec(
            method=m.name,
            options=options,
            steps=_steps(text("steps", "").strip()),
            seed=_whole_number("seed", text("seed", "0").strip(), SEED_LIMIT),
            task=text("task", "auto")[:100],
            resize=_flag("resize", text("resize", "")),
            register=text("register", "off")[:20],
            prior=den if diffusion else None,
            device=device if diffusion else None,
            max_pixels=pixels,
        )
        resolved = spec.resolve()
        m.check_sources(count)
        return spec, len(resolved.grid)

    def decode_all(datas: list[bytes], names: list[str], any_size: bool) -> int:
        """Every source decodes and the sizes agree (the arrays are dropped: the job keeps the bytes);
        the pixels the job holds."""
        from ..geometry import check_same_size

        shapes = [image_from_bytes(d, n, pixels, capture=False).data.shape[:2] for d, n in zip(datas, names)]
        if not any_size:  # resized or registered sources may differ in size
            check_same_size([np.empty(s, np.uint8) for s in shapes], names)
        return sum(h * w for h, w in shapes)

    @app.post("/api/jobs", status_code=201)
    async def submit(request: Request):
        jobs.check_room()  # a full queue is refused before the body is read
        if uploads["now"] >= max_uploads:
            raise Busy(f"the server is busy reading {uploads['now']} other uploads; try again shortly", 2)
        uploads["now"] += 1
        try:
            try:
                body = await read_body(request)
            except ClientDisconnect:
                log.warning("dig2dig serve: a client hung up during its upload; nothing was queued")
                return Response(status_code=400)
            form = await parse_form(request, body)
            del body
            try:
                uploads_ = form.getlist("files")
                if not all(hasattr(u, "read") for u in uploads_):
                    raise RequestError(422, "each 'files' field must be a file upload")
                try:
                    spec, total = settings(form, len(uploads_))
                except ValueError as e:
                    raise RequestError(422, describe(e, "web")[1]) from None
                datas, names = [], []
                for k, up in enumerate(uploads_):
                    datas.append(await up.read())
                    label = Path(str(up.filename or f"source{k + 1}")).name[:100] or f"source{k + 1}"  # a label only
                    while label in names:  # labels name the roles in the report: keep them apart
                        label = f"{Path(label).stem}-{k + 1}{Path(label).suffix}"
                    names.append(label)
            finally:
                await form.close()
            sizes = [header_size(d) for d in datas]
            try:
                for s, n in zip(sizes, names):
                    if s is not None:
                        check_pixels(s, n, pixels)
            except ValueError as e:
                raise RequestError(422, describe(e, "web")[1]) from None
            need = sum(w * h for w, h in (s for s in sizes if s is not None))
            if need > budget:
                raise RequestError(
                    413,
                    f"the sources hold {need / 1e6:.3g} megapixels, more than this server "
                    f"queues at once ({max_queued_mp:g}, --max-queued-mp); send smaller images",
                )
            jobs.check_room(need)
            async with decoding:
                try:
                    need = await run_in_threadpool(decode_all, datas, names, spec.resize or spec.register != "off")
                except ValueError as e:
                    raise RequestError(422, describe(e, "web")[1]) from None
            if need > budget:  # a header Pillow could not read told too little
                raise RequestError(
                    413,
                    f"the sources hold {need / 1e6:.3g} megapixels, more than this server "
                    f"queues at once ({max_queued_mp:g}, --max-queued-mp); send smaller images",
                )
        finally:
            uploads["now"] -= 1
        job = WebJob(secrets.token_urlsafe(12), spec, names, datas, need, total=total)
        position = jobs.submit(job)  # Busy if the queue filled up meanwhile
        return {"id": job.id, "position": position}

    def find(job_id: str) -> WebJob:
        job = jobs.get(job_id)
        if job is None:
            raise RequestError(404, "no such job (unknown, or forgotten after it finished)")
        return job

    @app.get("/api/jobs/{job_id}")
    async def status(job_id: str):
        job = find(job_id)
        return job.status(jobs.position(job))

    def result_file(job_id: str, name: str):
        job = find(job_id)
        if job.state != "done":
            raise RequestError(409, f"the job is {job.state}; its files exist once it is done")
        if name not in job.result:
            raise RequestError(404, f"the job has no file {_shown(name)}")
        data, media = job.result[name]
        return Response(data, media_type=media, headers={"Cache-Control": "no-store"})

    @app.get("/api/jobs/{job_id}/result.png")
    async def result_png(job_id: str):
        return result_file(job_id, "result.png")

    @app.get("/api/jobs/{job_id}/report.json")
    async def report_json(job_id: str):
        return result_file(job_id, "report.json")

    @app.get("/api/jobs/{job_id}/files/{name}")
    async def job_file(job_id: str, name: str):
        return result_file(job_id, name)

    @app.delete("/api/jobs/{job_id}")
    async def cancel(job_id: str):
        job = jobs.cancel(job_id)
        if job is None:
            raise RequestError(404, "no such job (unknown, or forgotten after it finished)")
        return {"id": job.id, "state": job.state}

    return app


def serve(
    host: str = "127.0.0.1", port: int = 8000, *, allow_hosts: tuple[str, ...] = (), token: str | None = None, **app_kw
) -> None:
    """Run the server until Ctrl-C (``dig2dig serve``)."""
    import uvicorn

    app = create_app(hosts=allowed_hosts(host, allow_hosts), token=token, **app_kw)
    uvicorn.run(app, host=host, port=port, log_level="warning")
