"""``dig2dig serve``: one static page of our own and a small JSON job API (FastAPI).

The page (``static/``) talks to the same API scripts can use:

* ``GET /api/info`` -- methods with their options (from the option records), tasks, limits, the prior;
* ``GET /api/task?name=a.png&name=b.png`` -- the task the file names suggest;
* ``POST /api/jobs`` (multipart: one ``files`` field per source, ``method``, ``steps``, ``seed``,
  ``task``, optional ``options`` as a JSON object) -> ``{"id": ..., "position": ...}``;
* ``GET /api/jobs/{id}`` -> state (queued, running, done, failed, cancelled), progress (steps done,
  total, ETA), queue position, the one-line error, the result's size and files;
* ``GET /api/jobs/{id}/result.png``, ``/report.json``, ``/files/{name}`` (Dig2DIG weight maps per
  refresh and DIG curves, CCF's selection plot);
* ``DELETE /api/jobs/{id}`` cancels a queued or running job, or forgets a finished one.

Safety, for shared machines: the server binds to 127.0.0.1 unless told otherwise; uploads are
limited in size (HTTP 413) and pixels (422, read from the header before decoding); an upload's type
is decided by decoding it, never by its name, and names are used only as labels (task detection),
never as paths; job ids are random; sources are decoded in memory and results kept in memory, so
nothing is written to disk (figures are rendered in a temporary folder that is removed at once); the
prior is the server's, never a path from a request; one fusion runs at a time, the others wait in a
queue; a fusion that fails reports the same one-line error as the command line.
"""



import json
import queue
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATIC = Path(__file__).with_name("static")
MAX_UPLOAD_MB = 50.0  # per request
MAX_SOURCES = 8
KEEP_FINISHED = 32  # finished jobs kept for download; older ones are forgotten
NOT_FROM_REQUESTS = ("feature_extractor",)  # would import code named by the request


class JobCancelled(Exception):
    """Raised inside a running fusion when its job is cancelled."""


@dataclass
class WebJob:
    id: str
    method: str
    steps: Any
    seed: int
    task: str
    names: list[str]
    images: list  # decoded dig2dig.io.Image
    options: dict
    state: str = "queued"
    done: int = 0
    total: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: dict = field(default_factory=dict)  # file name -> (bytes, media type)
    info: dict = field(default_factory=dict)  # size, task, roles, refreshes ...
    cancel: threading.Event = field(default_factory=threading.Event)

    def status(self, position: int | None) -> dict:
        eta = None
        if self.state == "running" and self.done and self.total and self.started:
            eta = round((time.time() - self.started) / self.done * (self.total - self.done), 1)
        return {"id": self.id, "state": self.state, "method": self.method, "queue_position": position,
                "progress": {"done": self.done, "total": self.total, "eta_s": eta}, "error": self.error,
                "result": {**self.info, "files": sorted(self.result)} if self.state == "done" else None}


class JobQueue:
    """Jobs run one at a time by a worker thread; the API only submits, reads and cancels."""

    def __init__(self, prior, device: str | None = None, keep: int = KEEP_FINISHED):
        self.prior, self.device, self.keep = prior, device, keep
        self.jobs: OrderedDict[str, WebJob] = OrderedDict()
        self.pending: queue.Queue[str | None] = queue.Queue()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="dig2dig-fusion", daemon=True)
        self.thread.start()

    # --- the API's side ------------------------------------------------------------------------
    def submit(self, job: WebJob) -> int:
        with self.lock:
            self.jobs[job.id] = job
            self._forget_old()
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
                ahead += other.state in ("queued", "running")
            return ahead

    def cancel(self, job_id: str) -> WebJob | None:
        job = self.get(job_id)
        if job is None:
            return None
        if job.state in ("queued", "running"):
            job.cancel.set()
            if job.state == "queued":
                job.state, job.finished, job.images = "cancelled", time.time(), []
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
        finished = [j for j in self.jobs.values() if j.state in ("done", "failed", "cancelled")]
        for j in finished[: max(0, len(finished) - self.keep)]:
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

                job.state, job.error = "failed", describe(e)[1]
            finally:
                job.finished, job.images = time.time(), []

    def _fuse(self, job: WebJob) -> None:
        from ..api import fuse

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            if job.cancel.is_set():
                raise JobCancelled

        r = fuse(job.images, method=job.method, steps=job.steps, seed=job.seed, task=job.task, names=job.names,
                 prior=self.prior if r_needs_prior(job.method) else None, device=self.device,
                 record=job.method == "dig2dig", progress=progress, **job.options)
        job.result["result.png"] = (r.encode(".png"), "image/png")
        report = {"config": r.config, "timings": r.timings}
        job.result["report.json"] = (json.dumps(report, indent=2, default=str).encode(), "application/json")
        h, w = r.image.shape[:2]
        job.info = {"width": w, "height": h, "task": r.task, "task_reason": r.config["task_reason"],
                    "roles": r.config["roles"], "seed": r.seed}
        with tempfile.TemporaryDirectory(prefix="dig2dig-web-") as tmp:  # figures, then nothing on disk
            if r.method == "dig2dig" and r.guidance:
                from ..viz import save_dig

                save_dig(r, tmp, sources=[img.data for img in _role_order(job, r)])
                job.info["refreshes"] = [x["step"] for x in r.guidance["refreshes"] if "weights" in x]
            if r.method == "ccf" and r.guidance:
                from ..guidance.ccf import save_selection

                save_selection(r.guidance, tmp)
            for f in sorted(Path(tmp).glob("*.png")):
                job.result[f.name] = (f.read_bytes(), "image/png")


def r_needs_prior(method: str) -> bool:
    from ..methods import get_method

    return get_method(method).needs_prior


def _role_order(job: WebJob, r) -> list:
    by_name = dict(zip(job.names, job.images))
    return [by_name[n] for n in r.config["roles"].values() if n in by_name]


# --------------------------------------------------------------------------------------------
# the app


def create_app(prior=None, *, prior_spec=None, device: str | None = None, max_upload_mb: float = MAX_UPLOAD_MB,
               max_pixels: int | None = None, max_sources: int = MAX_SOURCES):
    """The FastAPI app; ``prior`` (a path, a Denoiser, or None for the embedded one) is loaded now."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    from .._version import __version__
    from ..errors import describe
    from ..io import MAX_PIXELS, image_from_bytes
    from ..methods import METHODS, get_method
    from ..options import PriorOptions
    from ..prior import resolve_prior
    from ..tasks import TASKS, resolve_task

    den = resolve_prior(prior, prior_spec=prior_spec, device=device)
    jobs = JobQueue(den, device)
    limit_bytes = int(max_upload_mb * 2**20)
    pixels = MAX_PIXELS if max_pixels is None else int(max_pixels)

    @asynccontextmanager
    async def lifespan(app):
        yield
        jobs.stop()  # cancels what runs, drops every job and its results

    app = FastAPI(title="dig2dig", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.jobs = jobs
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def fail(status: int, message: str):
        raise HTTPException(status_code=status, detail=message)

    @app.middleware("http")
    async def limit_size(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > limit_bytes:
            return JSONResponse({"detail": f"the upload is {int(length) / 2**20:.1f} MB, more than the server's limit "
                                           f"of {max_upload_mb:g} MB; send smaller images"}, status_code=413)
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info():
        def describe_options(record):
            return [{"name": i.name, "kind": i.kind, "default": i.default, "default_text": i.default_text(),
                     "choices": i.choices, "range": i.range_text(), "help": i.help,
                     "low": i.low, "high": i.high} for i in record.infos()]

        return {"version": __version__, "device": str(den.device),
                "prior": {"name": den.spec.name, "sha256": den.spec.sha256},
                "methods": [{"name": m.name, "description": m.description, "default_steps": m.default_steps,
                             "needs_prior": m.needs_prior, "min_sources": m.min_sources,
                             "max_sources": m.max_sources, "options": describe_options(m.options)}
                            for m in METHODS.values()],
                "prior_options": describe_options(PriorOptions), "tasks": ["auto", *TASKS],
                "not_from_requests": list(NOT_FROM_REQUESTS),
                "limits": {"max_upload_mb": max_upload_mb, "max_pixels": pixels, "max_sources": max_sources}}

    @app.get("/api/task")
    def task_guess(name: list[str] = Query(default=[])):
        def from_images():
            raise LookupError  # only the names are known here

        try:
            t = resolve_task("auto", from_images, list(name))
            return {"task": t.name, "reason": t.reason}
        except LookupError:
            return {"task": "auto", "reason": "decided from the images when fusing"}

    @app.post("/api/jobs", status_code=201)
    async def submit(request: Request):
        form = await request.form(max_files=max_sources + 1, max_fields=50)
        try:
            uploads = form.getlist("files")
            if len(uploads) > max_sources:
                fail(422, f"{len(uploads)} files: this server fuses at most {max_sources} sources")
            method = str(form.get("method") or "dig2dig")
            try:
                m = get_method(method)
                options = json.loads(str(form.get("options") or "{}"))
                if not isinstance(options, dict):
                    raise ValueError("options must be a JSON object of option names and values")
                refused = sorted(set(options) & set(NOT_FROM_REQUESTS))
                if refused:
                    raise ValueError(f"option(s) {refused} cannot be set from a web request (they import code on the "
                                     f"server); use the command line or Python")
                opts, _ = m.split(options)
                steps_text = str(form.get("steps") or "").strip()
                steps = (int(steps_text) if steps_text.isdigit() else steps_text) if steps_text else None
                if m.needs_prior:
                    m.grid(steps if steps is not None else m.default_steps, opts)
                elif steps is not None:
                    raise ValueError(f"method {m.name!r} is not a diffusion method and takes no steps")
                seed_text = str(form.get("seed") or "0").strip()
                seed = int(seed_text) if seed_text.lstrip("-").isdigit() else None
                if seed is None or not 0 <= seed < 2**63:
                    raise ValueError(f"seed {seed_text!r} must be an integer in [0, 2**63)")
                task = str(form.get("task") or "auto").lower()
                if task not in ("auto", *TASKS):
                    raise ValueError(f"unknown task {task!r}; use one of auto, {', '.join(TASKS)}")
                m.check_sources(len(uploads))
            except ValueError as e:
                fail(422, describe(e)[1])
            images, names, total = [], [], 0
            for k, up in enumerate(uploads):
                if not hasattr(up, "read"):
                    fail(422, "each 'files' field must be a file upload")
                data = await up.read(limit_bytes + 1)
                total += len(data)
                if total > limit_bytes:
                    fail(413, f"the upload is more than the server's limit of {max_upload_mb:g} MB; send smaller images")
                label = Path(str(up.filename or f"source{k + 1}")).name[:100] or f"source{k + 1}"  # a label only
                while label in names:  # labels name the roles in the report: keep them apart
                    label = f"{Path(label).stem}-{k + 1}{Path(label).suffix}"
                try:
                    images.append(image_from_bytes(data, label, pixels))
                except ValueError as e:
                    fail(422, describe(e)[1])
                names.append(label)
            sizes = {img.data.shape[:2] for img in images}
            if len(sizes) > 1:
                desc = ", ".join(f"{n} is {i.data.shape[1]}x{i.data.shape[0]}" for n, i in zip(names, images))
                fail(422, f"sources must be registered images of one size, but {desc}")
        finally:
            await form.close()
        job = WebJob(secrets.token_urlsafe(12), m.name, steps, seed, task, names, images, options,
                     total=len(m.grid(steps if steps is not None else m.default_steps, opts)) if m.needs_prior else 0)
        position = jobs.submit(job)
        return {"id": job.id, "position": position}

    def find(job_id: str) -> WebJob:
        job = jobs.get(job_id)
        if job is None:
            fail(404, f"no job {job_id!r} (unknown, or forgotten after it finished)")
        return job

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str):
        job = find(job_id)
        return job.status(jobs.position(job))

    def result_file(job_id: str, name: str):
        job = find(job_id)
        if job.state != "done":
            fail(409, f"job {job_id} is {job.state}; its files exist once it is done")
        if name not in job.result:
            fail(404, f"job {job_id} has no file {name!r}")
        data, media = job.result[name]
        return Response(data, media_type=media, headers={"Cache-Control": "no-store"})

    @app.get("/api/jobs/{job_id}/result.png")
    def result_png(job_id: str):
        return result_file(job_id, "result.png")

    @app.get("/api/jobs/{job_id}/report.json")
    def report_json(job_id: str):
        return result_file(job_id, "report.json")

    @app.get("/api/jobs/{job_id}/files/{name}")
    def job_file(job_id: str, name: str):
        return result_file(job_id, name)

    @app.delete("/api/jobs/{job_id}")
    def cancel(job_id: str):
        job = jobs.cancel(job_id)
        if job is None:
            fail(404, f"no job {job_id!r}")
        return {"id": job.id, "state": job.state}

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, **app_kw) -> None:
    """Run the server until Ctrl-C (``dig2dig serve``)."""
    import uvicorn

    uvicorn.run(create_app(**app_kw), host=host, port=port, log_level="warning")
