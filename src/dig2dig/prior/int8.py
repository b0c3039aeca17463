"""int8 inference of a prior on the CPU with ONNX Runtime (``precision="int8"``).

The network is exported to ONNX (batch, height and width left free), and its convolutions are
quantised statically: weights per output channel to 7-bit signed integers, the input of every
convolution to uint8 with a scale fixed by calibration.  Kept float32: the first convolution (the
pixels) and the last (ε), and everything that is not a convolution (GroupNorm, SiLU, the timestep
MLP, attention, the residual sums and the skip concatenations).  Measured on 16 held-out dev images
at eleven noise levels (mean relative squared error of ε against the float network;
``benchmarks/results/int8_error.md``):

* every op quantised, 8-bit weights: 11-20 % -- the timestep scale/shift and the residual stream span
  ranges no single uint8 scale covers across noise levels;
* convolutions only, 8-bit weights: 0.5 % (13 % at t = 20): without VNNI, x86 multiplies u8 × s8
  pairs into saturating int16 sums, and 255 × 127 × 2 overflows them;
* convolutions only, 7-bit weights (``reduce_range``): 0.07 %; and with the first and last
  convolutions float: **0.04 %** (2 % at t = 20, where ε is nearly nothing), at the same speed.

Calibration runs the float network on synthetic images -- 1/f noise with flat shapes of random
brightness, the statistics of natural luminance -- noised to eleven levels from t = 20 to 980, so
the scales cover every noise level the samplers visit and need no data beside the package.  The
result is a pure function of the weights, the recipe and the ONNX Runtime version: it is built once
and kept in the cache folder (``$DIG2DIG_CACHE``, else ``$XDG_CACHE_HOME/dig2dig``, else
``~/.cache/dig2dig``) under a name made of the three, written atomically, so runs in parallel or
after a kill never see half a model (a killed build's scratch folder is removed by the first
int8 run an hour later).  Integer arithmetic is exact, so the same model gives the same
ε for any thread count.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

RECIPE = "conv-qdq-u8s7-perchannel-minmax-io-float-v2"  # change when anything below changes the model
CALIBRATION_T = (20, 100, 200, 300, 400, 500, 600, 700, 800, 900, 980)
CALIBRATION_IMAGES = 8
CALIBRATION_SIZE = (128, 160)
_LOCK = threading.Lock()
_SESSIONS: dict[tuple[str, int], Any] = {}
_DIGESTS: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def _require(build: bool = False):
    """ONNX Runtime; with ``build``, also onnx, which the quantiser needs (1.5 s to import: only then)."""
    try:
        import onnxruntime

        if build:
            import onnx  # noqa: F401
    except ImportError as e:
        raise ValueError(
            f"precision int8 runs the prior with ONNX Runtime, which is not installed ({e.name}); "
            "install it with `pip install 'dig2dig[int8]'`, or use precision fp32"
        ) from None
    return onnxruntime


def cache_dir() -> Path:
    given = os.environ.get("DIG2DIG_CACHE")
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "dig2dig"


def synthetic_images(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` luminance images in [-1, 1]: 1/f noise of random strength with flat shapes on it."""
    g = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    f = np.hypot(fy, fx)
    f[0, 0] = 1.0
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        spectrum = (g.standard_normal((h, w)) + 1j * g.standard_normal((h, w))) / f ** g.uniform(1.0, 1.6)
        im = np.real(np.fft.ifft2(spectrum))
        im = (im - im.mean()) / (im.std() + 1e-8) * g.uniform(0.1, 0.5)
        for _ in range(int(g.integers(2, 8))):
            cy, cx, ry, rx = g.uniform(0, h), g.uniform(0, w), g.uniform(4, h / 2), g.uniform(4, w / 2)
            if g.random() < 0.5:
                shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            else:
                shape = (abs(yy - cy) < ry) & (abs(xx - cx) < rx)
            im[shape] = im[shape] * g.uniform(0.2, 1) + g.uniform(-1, 1)
        out.append(np.clip(im + g.uniform(-0.5, 0.5), -1, 1).astype(np.float32))
    return out


def calibration_batches(alphas_cumprod, channels: int) -> list[dict[str, np.ndarray]]:
    """The network inputs the scales are fitted on: every synthetic image at every calibration level."""
    images = synthetic_images(CALIBRATION_IMAGES, *CALIBRATION_SIZE)
    batches = []
    for t in CALIBRATION_T:
        a = float(alphas_cumprod[t])
        g = np.random.default_rng(t)
        for x0 in images:
            x0c = np.repeat(x0[None], channels, axis=0)
            noise = g.standard_normal(x0c.shape).astype(np.float32)
            xt = (np.sqrt(a) * x0c + np.sqrt(1 - a) * noise)[None].astype(np.float32)
            batches.append({"x": xt, "t": np.array([t], np.int64)})
    return batches


def weights_digest(den) -> str:
    """sha256 of the network's weights (its state dict, in order); hashed once per loaded network."""
    module = den.module
    if module not in _DIGESTS:
        h = hashlib.sha256()
        for k, v in module.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        _DIGESTS[module] = h.hexdigest()
    return _DIGESTS[module]


def model_path(den) -> Path:
    ort = _require()
    key = hashlib.sha256(f"{weights_digest(den)}|{RECIPE}|{ort.__version__}".encode()).hexdigest()[:24]
    return cache_dir() / "int8" / f"{key}.onnx"


def build(den, out: Path, *, all_ops: bool = False, reduce_range: bool = True, float_ends: bool = True) -> Path:
    """Export ``den``'s network, quantise its convolutions, write the model to ``out`` atomically.

    The keywords are the recipe's choices (its defaults); ``benchmarks/int8_error.py`` measures the others."""
    _require(build=True)
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, batches):
            self._it = iter(batches)

        def get_next(self):
            return next(self._it, None)

    net = den.module.eval()
    x = torch.zeros(1, den.channels, 2 * den.spatial_multiple, 2 * den.spatial_multiple)
    t = torch.tensor([500])
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dig2dig-int8-", dir=out.parent) as tmp:
        f32, pre, q8 = (str(Path(tmp) / name) for name in ("float.onnx", "pre.onnx", "int8.onnx"))
        with torch.no_grad(), _quiet():
            torch.onnx.export(
                net,
                (x, t),
                f32,
                dynamo=False,
                opset_version=17,
                input_names=["x", "t"],
                output_names=["eps"],
                dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "t": {0: "b"}, "eps": {0: "b", 2: "h", 3: "w"}},
            )
            quant_pre_process(f32, pre, skip_symbolic_shape=True)
            convs = [n.name for n in onnx.load(pre, load_external_data=False).graph.node if n.op_type == "Conv"]
            quantize_static(
                pre,
                q8,
                Reader(calibration_batches(den.alphas_cumprod, den.channels)),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=None if all_ops else ["Conv"],
                nodes_to_exclude=[convs[0], convs[-1]] if float_ends else [],  # the pixels in, ε out: float
                reduce_range=reduce_range,  # 7-bit weights: no int16 saturation in AVX2's u8×s8 products
            )
        os.replace(q8, out)
    return out


@contextmanager
def _quiet():
    """Silence the exporter's and the quantiser's warnings (they are about their own internals)."""
    import logging
    import warnings

    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)


def _sweep(folder: Path, older_than_s: float = 3600.0) -> None:
    """Remove the scratch folders of builds killed part way (a live build is never an hour old)."""
    import shutil
    import time

    for scratch in folder.glob("dig2dig-int8-*"):
        try:
            if time.time() - scratch.stat().st_mtime > older_than_s:
                shutil.rmtree(scratch, ignore_errors=True)
        except OSError:
            pass


def session(den, threads: int | None = None):
    """An ONNX Runtime session of ``den``'s int8 network (built and cached on first use)."""
    ort = _require()
    if den.module is None or den.device.type != "cpu":
        raise ValueError("precision int8 runs on the CPU (ONNX Runtime); on a GPU use fp16 or bf16")
    threads = threads or torch.get_num_threads()
    path = model_path(den)
    with _LOCK:
        key = (str(path), threads)
        if key not in _SESSIONS:
            _sweep(path.parent)
            if not path.is_file():
                build(den, path)
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            # idle runtime threads would otherwise spin through the guidance math between forwards
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            _SESSIONS[key] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return _SESSIONS[key]


def eps(sess, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The int8 network's output for a float32 CPU batch ``x`` at timesteps ``t``."""
    xin = x.detach().to("cpu", torch.float32).contiguous().numpy()
    out = sess.run(None, {"x": xin, "t": t.detach().to("cpu", torch.int64).numpy()})[0]
    return torch.from_numpy(out)
