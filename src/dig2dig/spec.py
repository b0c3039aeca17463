"""The fusion request: what a user asks for (:class:`FusionSpec`), validated once (:class:`ResolvedSpec`).

Every front end builds one: :func:`dig2dig.fuse` and :func:`dig2dig.fuse_batch` from their
keyword arguments, the command line from its flags, the batch runner and its workers, ``bench``
per method, and the web server per request.  :meth:`FusionSpec.resolve` is the one place where the
method, its options, the steps, the seed, the task, the output format and the prior are checked,
and the timestep grid is built and the prior loaded; what each item adds (its sources, seed, task,
names) is checked where the item is read.  A batch item's key is the hash of
:meth:`ResolvedSpec.key_fields` plus the item's own fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .io import SIXTEEN_BIT_SUFFIXES, WRITE_SUFFIXES
from .registration import check_mode
from .seeds import check_seed


@dataclass(frozen=True)
class FusionSpec:
    """What the user asked for; nothing here is checked until :meth:`resolve`."""

    method: str = "dig2dig"
    options: Mapping[str, Any] = field(default_factory=dict)  # the method's and the prior's, by name
    steps: Any = None  # None: the method's default; an int, "power:N:P", or a list of timesteps
    seed: int = 0
    task: str = "auto"
    prior: Any = None  # a path, a loaded Denoiser, or None for the embedded prior
    prior_spec: str | None = None  # a spec file for a bare checkpoint
    device: str | None = None
    resize: bool = False  # resample every source to the first one's size
    register: str = "off"  # align every source to the first: off, rigid, affine or homography
    max_pixels: int | None = None  # None: dig2dig.io.MAX_PIXELS
    ext: str = ".png"  # output format of a batch run
    bit_depth: int | None = None  # None: 16 if a source is 16-bit and the format allows, else 8

    def resolve(self, prior_device: str | None = "run") -> ResolvedSpec:
        """Validate everything before any work and load the prior (once; that checks it too).

        ``prior_device``: where the prior is loaded -- "run" for the spec's device; "cpu" when only
        checking it on a machine that drives a cluster whose devices it may not have."""
        from .methods import get_method
        from .tasks import check_task

        m = get_method(self.method)
        opts, popts = m.split(dict(self.options))
        task = check_task(self.task)
        check_seed(self.seed)
        if not isinstance(self.resize, bool):
            raise ValueError(f"resize={self.resize!r} must be True or False")
        check_mode(self.register)
        if self.resize and self.register != "off":
            raise ValueError(
                f"resize and register={self.register!r} both change the sources' geometry: registration "
                "handles sources of other sizes itself, so leave resize off"
            )
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or int(self.max_pixels) < 1):
            raise ValueError(f"max_pixels must be at least 1, got {self.max_pixels}")
        ext = (self.ext if self.ext.startswith(".") else f".{self.ext}").lower()
        if ext not in WRITE_SUFFIXES:
            raise ValueError(f"output format {self.ext!r} is not one of {', '.join(WRITE_SUFFIXES)}")
        if self.bit_depth not in (None, 8, 16) or (self.bit_depth == 16 and ext not in SIXTEEN_BIT_SUFFIXES):
            raise ValueError(f"bit depth {self.bit_depth} is not possible for {ext} output (16 needs .png or .tif)")
        den, prior = None, None
        if m.needs_prior:
            grid = m.grid(self.steps if self.steps is not None else m.default_steps, opts)
            from .prior import resolve_prior

            den = resolve_prior(
                self.prior, prior_spec=self.prior_spec, device=self.device if prior_device == "run" else prior_device
            )
            prior = describe_prior(den)
            if popts.precision == "int8":
                from .prior import int8

                int8.session(den)  # the runtime and the device checked, the model built once, before any work
        else:
            if self.steps is not None:
                raise ValueError(f"method {m.name!r} is not a diffusion method and takes no steps")
            grid = []
        return ResolvedSpec(self, m, opts, popts, list(grid), task, ext, prior, den)

    def describe(self) -> dict:
        """The request as given, JSON-able (the prior as its path or name)."""
        prior = self.prior if self.prior is None or isinstance(self.prior, str) else getattr(self.prior, "spec", None)
        return {
            "method": self.method,
            "options": dict(self.options),
            "steps": self.steps,
            "seed": self.seed,
            "task": self.task,
            "prior": getattr(prior, "name", prior),
            "device": self.device,
            "resize": self.resize,
            "register": self.register,
            "format": self.ext,
            "bit_depth": self.bit_depth,
        }


@dataclass(frozen=True)
class ResolvedSpec:
    """A :class:`FusionSpec` validated: the method record, its options, the grid, the prior."""

    spec: FusionSpec
    method: Any  # dig2dig.methods.Method
    opts: Any  # the method's Options record, defaults filled in
    popts: Any  # PriorOptions
    grid: list[int]  # empty for classical methods
    task: str  # "auto" or a task name
    ext: str  # lower-case output suffix
    prior: dict | None  # name, sha256, source, spec_sha256; None for classical methods
    den: Any = field(default=None, compare=False, repr=False)  # the loaded Denoiser
    compute: Mapping[str, Any] = field(default_factory=dict)  # device type and CPU threads of a batch run

    @property
    def options(self) -> dict:
        return self.opts.to_dict()

    @property
    def prior_options(self) -> dict:
        return self.popts.to_dict() if self.method.needs_prior else {}

    def key_fields(self) -> dict:
        """What, besides an item's own fields, decides its output bytes (hashed into a batch key)."""
        from ._version import __version__

        out = {
            "method": self.method.name,
            "options": self.options,
            "prior_options": self.prior_options,
            "grid": self.grid,
            "prior_sha256": self.prior["sha256"] if self.prior else None,
            "prior_spec_sha256": self.prior.get("spec_sha256") if self.prior else None,
            "resize": self.spec.resize,
            "bit_depth": self.spec.bit_depth,
            "dig2dig": __version__,
        }
        if self.spec.register != "off":  # only then: folders made before registration existed keep their keys
            out["register"] = self.spec.register
        if self.prior:  # classical methods run the same NumPy/OpenCV code on any machine
            out["compute"] = dict(self.compute)
        return out

    def describe(self) -> dict:
        s = self.spec
        return {
            "method": self.method.name,
            "options": self.options,
            "prior_options": self.prior_options,
            "steps": s.steps,
            "grid": self.grid,
            "seed": s.seed,
            "task": self.task,
            "prior": self.prior,
            "device": s.device,
            "resize": s.resize,
            "register": s.register,
            "format": self.ext,
            "bit_depth": s.bit_depth,
        }


def describe_prior(den) -> dict:
    """The prior as recorded in a batch key: its weights' and its architecture's hashes."""
    what = {k: v for k, v in den.spec.to_dict().items() if k not in ("name", "source", "sha256", "extra")}
    return {
        "name": den.spec.name,
        "sha256": den.spec.sha256,
        "source": den.spec.source,
        "spec_sha256": hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest(),
    }
