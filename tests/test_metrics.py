"""dig2dig.metrics: the specification's test vectors, unit behaviour, registry, conventions, errors, LPIPS."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import cv2
import numpy as np
import pytest

import dig2dig.metrics as M
from dig2dig.metrics import get_metric, list_metrics, score

from .conftest import SHARED, need

# ------------------------------------------------------------------------------------------------
# the specification's 64x64 test vectors (metrics_spec.md section 6), built with integer arithmetic


def _noise(seed: int) -> np.ndarray:
    i, j = np.mgrid[0:64, 0:64].astype(np.int64)
    return (((i * 7919 + j * 104729 + seed) * 2654435761) % 2**32) // 2**24


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    ramp = (np.arange(64) * 255 * 2 + 63) // 126  # floor(j*255/63 + 0.5), exact in integers
    a = np.tile(ramp, (64, 1)).astype(np.int64)
    b = a.T.copy()
    f_avg = (a + b + 1) // 2
    n3 = _noise(999) % 21 - 10
    a3 = (3 * a + _noise(12345)) // 4
    b3 = (3 * b + _noise(54321)) // 4
    return {
        "ramps64": (a, b, f_avg),
        "ramps64_noisyF": (a, b, np.clip(f_avg + n3, 0, 255)),
        "textured64": (a3, b3, np.clip((a3 + b3 + 1) // 2 + n3, 0, 255)),
    }


def _f32(fn):
    return lambda f, a, b: fn(f.astype(np.float32), a.astype(np.float32), b.astype(np.float32))


VECTOR_FUNCS = {
    "CDD.EN": lambda f, a, b: M.entropy(f),
    "CDD.SD": lambda f, a, b: M.standard_deviation(f),
    "CDD.SF": lambda f, a, b: M.spatial_frequency(f),
    "CDD.AG": lambda f, a, b: M.average_gradient(f),
    "CDD.MI_nats(sum)": M.mi_nats,
    "CDD.MSE(0-255,mean)": M.mse,
    "CDD.CC(mean)": M.correlation_coefficient,
    "CDD.PSNR(maxF)": M.psnr,
    "CDD.SCD": M.scd,
    "CDD.VIFF(sum)": M.vif,
    "CDD.Qabf": M.qabf,
    "CDD.SSIM(sum,dr=2,float32)": _f32(M.ssim_cdd),
    "CDD.SSIM(sum,dr=2,float64)": M.ssim_cdd,
    "CDD.SSIM(sum,dr=255,float64)": partial(M.ssim_cdd, data_range=255),
    "Nabf(Kumar)": M.nabf,
    "Nabf1(Petrovic)": M.nabf1,
    "Labf(Petrovic)": M.labf,
    "Qabf(Petrovic-weighted,Kumar code)": M.qabf_petrovic,
    "TANG.EN": lambda f, a, b: M.entropy(f),
    "TANG.MI_bits(sum)": M.mi_bits,
    "TANG.MSE(0-1,mean)": M.mse_unit,
    "TANG.PSNR": M.psnr_tang,
    "TANG.SF": lambda f, a, b: M.spatial_frequency(f),
    "TANG.AG": lambda f, a, b: M.average_gradient_matlab(f),
    "TANG.VIF(sum)": partial(M.vif, nan_to_one=False),
    "TANG.SSIM(mean,matlab ssim DR=1)": M.ssim_tang,
    "TANG.MS_SSIM(=MEF-MS-SSIM,3 lv)": lambda f, a, b: M.mef_ssim(f, [a, b]),
    "VIFB.EN": lambda f, a, b: M.entropy(f, rounding="floor"),
    "VIFB.CE": M.cross_entropy,
    "VIFB.MI_nats(norm,sum)": M.mi_vifb,
    "VIFB.PSNR": M.psnr_vifb,
    "VIFB.RMSE": M.rmse_vifb,
    "VIFB.SD": lambda f, a, b: M.standard_deviation(f),
    "VIFB.SF": lambda f, a, b: M.spatial_frequency_vifb(f),
    "VIFB.AG": lambda f, a, b: M.average_gradient_matlab(f),
    "VIFB.EI(replicate)": lambda f, a, b: M.edge_intensity(f),
    "EI(reflect101/cv2 default)": lambda f, a, b: M.edge_intensity(f, border="reflect101"),
    "EI(scipy reflect)": lambda f, a, b: M.edge_intensity(f),
    "VIFB.SSIM(sum,Wang11)": M.ssim_vifb,
    "VIFB.Qcb": M.qcb,
    "VIFB.Qcv": M.qcv,
    "MEFB.NMI": M.nmi,
    "MEFB.Qncie": M.qncie,
    "MEFB.TE": M.tsallis_te,
    "MEFB.Qc(A,B order)": M.qc,
    "MEFB.Qc(B,A order)": lambda f, a, b: M.qc(f, b, a),
    "MEFB.Qy": M.qy,
    "MEFB.Qw(sw=3,=Qe)": M.qe,
    "Qw(sw=2)": M.qw,
    "Q_piella(sw=1)": M.q_piella,
    "MEFB.VIF(Han)": M.viff,
    "MEFB.MEF_SSIM(3 lv)": lambda f, a, b: M.mef_ssim(f, [a, b]),
    "FMI(none,w=3)": M.fmi,
    "FMI(dct,w=3)": partial(M.fmi, feature="dct"),
}


def _vectors() -> dict:
    return json.loads(need(SHARED / "metrics_test_vectors.json").read_text())


def _vector_params():
    path = SHARED / "metrics_test_vectors.json"
    if not path.exists():
        return [pytest.param("missing", "missing", marks=pytest.mark.skip(reason=f"{path} not found"))]
    data = json.loads(path.read_text())
    return [(case, key) for case, vals in data.items() for key in vals if not key.startswith("_")]


@pytest.fixture(scope="module")
def cases():
    return _cases()


def test_vector_images_match_checksums(cases):
    for name, ck in ((n, v["_checksum"]) for n, v in _vectors().items()):
        a, b, f = cases[name]
        assert (int(a.sum()), int(b.sum()), int(f.sum())) == (ck["sum(A)"], ck["sum(B)"], ck["sum(F)"])
        assert f[0, :4].tolist() == ck["F[0,:4]"] and f[63, 60:].tolist() == ck["F[63,60:]"]
        assert a[5, :6].tolist() == ck["A[5,:6]"] and b[:6, 5].tolist() == ck["B[:6,5]"]


def test_every_vector_key_is_covered():
    keys = {k for vals in _vectors().values() for k in vals if not k.startswith("_")}
    assert keys <= set(VECTOR_FUNCS), sorted(keys - set(VECTOR_FUNCS))


@pytest.mark.parametrize("case,key", _vector_params())
def test_spec_vector(cases, case, key):
    expected = _vectors()[case][key]
    a, b, f = (x.astype(np.float64) for x in cases[case])
    got = VECTOR_FUNCS[key](f, a, b)
    # metrics_spec.md section 6.3
    if key == "Nabf(Kumar)" and case == "textured64":
        assert abs(got - expected) <= 1e-9
    elif "SSIM" in key and "dr=2" in key:
        assert got == pytest.approx(expected, rel=1e-5)
    else:
        assert abs(got - expected) <= 1e-6 * max(1.0, abs(expected)), (got, expected)


# ------------------------------------------------------------------------------------------------
# FMI: the vectorised version against a direct window-by-window port


def _fmi_reference(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """A plain, loop-per-window transcription of fast-FMI (feature 'none', w = 3)."""

    def norm(x):
        lo, hi = x.min(), x.max()
        return np.ones_like(x) if hi == lo else (x - lo) / (hi - lo)

    def plog(p):
        return sum(-q * np.log2(abs(q)) for q in p.ravel() if q != 0)

    def pair(xs, fs):
        xs, fs = norm(xs), norm(fs)
        xp, fp = xs.T.ravel() / xs.sum(), fs.T.ravel() / fs.sum()
        xc, fc = np.cumsum(xp), np.cumsum(fp)
        xt, ft = xp - xp.mean(), fp - fp.mean()
        c = 0.0 if np.sum(xt * ft) == 0 else np.sum(xt * ft) / np.sqrt(np.sum(xt * xt) * np.sum(ft * ft))
        i = np.arange(1, 10)
        xsd = np.sqrt(np.sum(i * i * xp) - np.sum(i * xp) ** 2)
        fsd = np.sqrt(np.sum(i * i * fp) - np.sum(i * fp) ** 2)
        if c >= 0:
            bound = np.minimum.outer(fc, xc)
            w = 0.0 if (c == 0 or xsd == 0 or fsd == 0) else c / ((bound - np.outer(fc, xc)).sum() / (fsd * xsd))
        else:
            bound = np.maximum(np.add.outer(fc, xc) - 1, 0)
            w = 0.0 if (xsd == 0 or fsd == 0) else c / ((bound - np.outer(fc, xc)).sum() / (fsd * xsd))
        padded = np.zeros((10, 10))
        padded[1:, 1:] = bound
        cells = padded[1:, 1:] - padded[:-1, 1:] - padded[1:, :-1] + padded[:-1, :-1]
        jpdf = w * cells + (1 - w) * np.outer(fp, xp)
        hx, hf = plog(xp), plog(fp)
        mi = hx + hf - plog(jpdf)
        return 0.0 if mi == 0 else 2 * mi / (hx + hf), fs

    vals = []
    for r in range(1, f.shape[0] - 1):
        for c in range(1, f.shape[1] - 1):
            win = (slice(r - 1, r + 2), slice(c - 1, c + 2))
            aw, bw, fw = a[win], b[win], f[win]
            if np.array_equal(aw, fw):
                va, fseen = 1.0, fw
            else:
                va, fseen = pair(aw, fw)
            vb = 1.0 if np.array_equal(bw, fseen) else pair(bw, fw)[0]
            vals.append((va + vb) / 2)
    return float(np.mean(vals))


def test_fmi_matches_window_by_window_reference():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 6, (14, 15)).astype(float) * 40
    b = np.clip(a + rng.integers(-60, 60, a.shape), 0, 255)
    f = np.clip((a + b) / 2 + rng.integers(-30, 30, a.shape), 0, 255).round()
    f[:4, :4] = a[:4, :4]  # windows identical to A exercise the short cut
    a[10:, :5] = 7.0  # constant windows
    assert M.fmi(f, a, b) == pytest.approx(_fmi_reference(a, b, f), rel=1e-12, abs=1e-14)


# ------------------------------------------------------------------------------------------------
# unit behaviour


@pytest.fixture(scope="module")
def natural():
    """A smooth-plus-texture 96x96 gray image (0..255 integers), and two distortions of it."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    base = 128 + 90 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 8, (96, 96))
    img = np.clip(base, 0, 255).round()
    a = np.clip(img + rng.normal(0, 15, img.shape), 0, 255).round()
    b = np.clip(cv2.GaussianBlur(img, (7, 7), 2), 0, 255).round()
    return img, a, b


def test_identical_images_give_the_extremes(natural):
    x = natural[0]
    assert M.ssim_vifb(x, x, x) == pytest.approx(2.0)
    assert M.ssim_cdd(x, x, x) == pytest.approx(2.0)
    assert M.ssim_tang(x, x, x) == pytest.approx(1.0)
    assert M.correlation_coefficient(x, x, x) == pytest.approx(1.0)
    assert M.mse(x, x, x) == 0.0 and M.rmse_vifb(x, x, x) == 0.0
    assert M.cross_entropy(x, x, x) == 0.0
    assert M.nabf(x, x, x) == 0.0 and M.nabf1(x, x, x) == 0.0
    assert M.qcv(x, x, x) == 0.0
    assert M.qcb(x, x, x) == pytest.approx(1.0)
    assert M.vif(x, x, x) == pytest.approx(2.0)
    assert M.viff(x, x, x) == pytest.approx(1.0)
    for fn in (M.qc, M.qy, M.qw, M.qe, M.q_piella, M.fmi):
        assert fn(x, x, x) == pytest.approx(1.0), fn.__name__
    assert M.nmi(x, x, x) == pytest.approx(2.0)
    assert M.mi_vifb(x, x, x) == pytest.approx(2 * np.log(2) * M.entropy(x))  # 2 H(F), in nats
    assert M.mef_ssim(x, [x, x]) == pytest.approx(1.0, abs=1e-3)
    assert M.qabf(x, x, x) > 0.97  # the original's g_A == g_F quirk keeps it just below 1
    with np.errstate(divide="ignore"):
        assert M.psnr(x, x, x) == np.inf


def test_better_fusion_scores_better(natural):
    img, a, b = natural
    good, bad = np.floor((a + b) / 2), 255 - img
    for name in ("SSIM", "CC", "Qabf", "VIF", "MI", "Qcb"):
        spec = get_metric(name)
        assert spec.func(good, a, b) > spec.func(bad, a, b), name
    for name in ("MSE", "Qcv", "CE"):
        spec = get_metric(name)
        assert spec.func(good, a, b) < spec.func(bad, a, b), name


def test_ssim_min_is_the_source_kept_least(natural):
    img, a, b = natural
    for f in (a, b, np.floor((a + b) / 2)):
        both = sorted([M.ssim_skimage(f, a, data_range=2.0), M.ssim_skimage(f, b, data_range=2.0)])
        assert get_metric("SSIM_min").func(f, a, b) == pytest.approx(both[0])
    # copying one source keeps all of it and the least of the other: high SSIM sum, low SSIM_min
    avg = np.floor((a + b) / 2)
    assert M.ssim_min_cdd(a, a, b) < M.ssim_min_cdd(avg, a, b)
    u8 = [x.astype(np.uint8) for x in (a, b)]
    assert M.score(u8[0], u8, "cddfuse", ["SSIM_min"])["SSIM_min"] == pytest.approx(M.ssim_min_cdd(a, a, b), abs=1e-5)


def test_ms_ssim_wang(natural):
    rng = np.random.default_rng(1)
    x = np.clip(cv2.resize(natural[0], (192, 192)) + rng.normal(0, 3, (192, 192)), 0, 255)
    y = np.clip(x + rng.normal(0, 20, x.shape), 0, 255)
    assert M.ms_ssim_pair(x, x) == pytest.approx(1.0)
    assert 0 < M.ms_ssim_pair(x, y) < 1
    with pytest.raises(ValueError, match="176"):
        M.ms_ssim_pair(natural[0], natural[0])


def test_mi_conventions_agree_on_uint8(natural):
    img, a, b = natural
    assert M.mi_bits(img, a, b) == pytest.approx(M.mi_nats(img, a, b) / np.log(2))
    assert M.mi_vifb(img, a, b) == pytest.approx(M.mi_nats(img, a, b))


def test_petrovic_kumar_outputs_consistent(natural):
    img, a, b = natural
    r = M.petrovic_kumar(img, a, b)
    assert r.nabf == M.nabf(img, a, b) and r.labf == M.labf(img, a, b)
    assert 0 <= r.nabf <= r.nabf1 + 1e-15
    assert 0 <= r.qabf <= 1 and 0 <= r.labf <= 1


# ------------------------------------------------------------------------------------------------
# registry and conventions

LOWER_IS_BETTER = {"MSE", "RMSE", "CE", "Nabf", "Nabf1", "Labf", "Qcv", "LPIPS"}


def test_registry_directions_follow_the_spec():
    for (name, variant), spec in M.REGISTRY.items():
        assert spec.higher_is_better is (name not in LOWER_IS_BETTER), (name, variant)
        assert spec.units and spec.reference and (spec.func.__doc__ or isinstance(spec.func, partial)), (name, variant)


def test_registry_names_cover_the_brief():
    wanted = (
        "EN SD SF AG EI MI NMI CE SCD CC MSE RMSE PSNR SSIM MS_SSIM MEF_SSIM VIF VIFF Qabf Nabf Nabf1 Labf "
        "Qcb Qcv Qc Qy Qw Qe FMI Qncie TE LPIPS"
    )
    assert set(wanted.split()) <= set(M.metric_names())
    assert M.variants("SSIM")[0] == "cdd"
    assert get_metric("FMI", "dct").variant == "dct"
    with pytest.raises(ValueError, match="valid names"):
        get_metric("QABF")
    with pytest.raises(ValueError, match="choose one of"):
        get_metric("MI", "bits")


def test_convention_listing_and_table():
    assert M.list_conventions() == ["cddfuse", "vifb", "mefb"]
    vifb = list_metrics("vifb")
    assert [m.label for m in vifb] == [
        "Cross_entropy",
        "Entropy",
        "Mutinf",
        "Psnr",
        "Avg_gradient",
        "Edge_intensity",
        "Qabf",
        "Variance",
        "Spatial_frequency",
        "Rmse",
        "Ssim",
        "Qcb",
        "Qcv",
    ]
    assert {m.name: m.higher_is_better for m in vifb}["Qcv"] is False
    mefb = {m.name: m for m in list_metrics("mefb")}
    assert mefb["Qe"].label == "Qw" and mefb["VIFF"].label == "VIF" and not mefb["FMI"].default
    table = M.describe("cddfuse")
    assert "| SSIM | SSIM | \u2191 |" in table and "| MSE | MSE | \u2193 |" in table


def _rgb_pair(h=72, w=80, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 80 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    ir = np.clip(base + rng.normal(0, 10, (h, w)), 0, 255).astype(np.uint8)
    vis = np.clip(base[..., None] * np.array([0.9, 1.0, 0.8]) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    fused = np.clip(0.5 * ir[..., None] + 0.5 * vis + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    return fused, ir, vis


@pytest.mark.parametrize("convention", ["cddfuse", "vifb", "mefb"])
def test_score_returns_the_convention_defaults(convention):
    fused, ir, vis = _rgb_pair()
    out = score(fused, [ir, vis], convention=convention)
    assert list(out) == [m.name for m in list_metrics(convention) if m.default]
    assert all(np.isfinite(v) for v in out.values())


def test_cddfuse_uses_opencv_luminance_of_rgb_input():
    fused, ir, vis = _rgb_pair()
    bgr = [cv2.cvtColor(x, cv2.COLOR_RGB2BGR) for x in (fused, vis)]
    gray = [np.round(cv2.cvtColor(x.astype(np.float32), cv2.COLOR_BGR2GRAY)) for x in bgr]
    out = score(fused, [ir, vis], convention="cddfuse", metrics=["SSIM", "MI", "EN"])
    f, v, i = gray[0], gray[1], ir.astype(np.float32)
    assert out["SSIM"] == M.ssim_cdd(f, i, v)
    assert out["MI"] == pytest.approx(M.mi_nats(f, i, v))
    assert out["EN"] == pytest.approx(M.entropy(f))


def test_vifb_colour_handling():
    fused, ir, vis = _rgb_pair()
    f, v, i = fused.astype(float), vis.astype(float), ir.astype(float)
    out = score(fused, [ir, vis], convention="vifb", metrics=["SSIM", "SF", "EN"])
    per_channel = np.mean([M.ssim_vifb(f[..., k], i, v[..., k]) for k in range(3)])
    assert out["SSIM"] == pytest.approx(per_channel)
    assert out["SF"] == pytest.approx(M.spatial_frequency_vifb(np.hstack([f[..., k] for k in range(3)])))
    assert out["EN"] == pytest.approx(np.mean([M.entropy(f[..., k]) for k in range(3)]))


def test_mefb_uses_first_channel_for_gray_sources():
    fused, ir, vis = _rgb_pair()
    vgray = cv2.cvtColor(vis, cv2.COLOR_RGB2GRAY)
    out = score(fused, [ir, vgray], convention="mefb", metrics=["Qy", "EN"])
    f0 = fused[..., 0].astype(float)
    assert out["Qy"] == pytest.approx(M.qy(f0, ir.astype(float), vgray.astype(float)))
    assert out["EN"] == pytest.approx(M.entropy(f0))


def test_uint16_input_is_reduced_to_8_bits():
    fused, ir, vis = _rgb_pair()
    out8 = score(fused, [ir, vis], convention="vifb", metrics=["EN", "SSIM"])
    f16, ir16, vis16 = (x.astype(np.uint16) * 257 for x in (fused, ir, vis))
    out16 = score(f16, [ir16, vis16], convention="vifb", metrics=["EN", "SSIM"])
    assert out8 == out16


# ------------------------------------------------------------------------------------------------
# errors


def test_score_input_errors():
    fused, ir, vis = _rgb_pair()
    with pytest.raises(ValueError, match="uint8 or uint16"):
        score(fused.astype(np.float32), [ir, vis])
    with pytest.raises(ValueError, match=r"fused image is (\d+)x(\d+) but source 1 is \1x(?!\2)\d+ \(width x height\)"):
        score(fused, [ir[:-1], vis])
    with pytest.raises(ValueError, match="at least 2 source"):
        score(fused, [ir], metrics=["SSIM"])
    with pytest.raises(ValueError, match="list of images"):
        score(fused, ir)
    with pytest.raises(ValueError, match="alpha"):
        score(np.dstack([fused, fused[..., :1]]), [ir, vis])
    with pytest.raises(ValueError, match="unknown metric 'QABF'.*defines"):
        score(fused, [ir, vis], metrics=["QABF"])
    with pytest.raises(ValueError, match="not part of the 'vifb' convention"):
        score(fused, [ir, vis], convention="vifb", metrics=["Nabf"])
    with pytest.raises(ValueError, match="unknown convention"):
        score(fused, [ir, vis], convention="tang")
    # no-reference metrics need no sources
    assert set(score(fused, [], metrics=["EN", "SD"])) == {"EN", "SD"}


def test_function_input_errors(natural):
    img, a, b = natural
    with pytest.raises(ValueError, match=r"A is \d+x\d+ but the fused image is \d+x\d+ \(width x height\)"):
        M.qabf(img, a[:, :-1], b)
    with pytest.raises(ValueError, match="2-D plane"):
        M.entropy(np.dstack([img] * 3))
    with pytest.raises(ValueError, match="dtype"):
        M.mse(img.astype(bool), a, b)
    with pytest.raises(ValueError, match="NaN"):
        M.mse(np.full_like(img, np.nan), a, b)
    with pytest.raises(ValueError, match="integers in 0..255"):
        M.cross_entropy(img + 0.5, a, b)
    with pytest.raises(ValueError, match="'edge'"):
        M.fmi(img, a, b, feature="edge")
    with pytest.raises(ValueError, match="at least 41"):
        M.vif(img[:30, :30], a[:30, :30], b[:30, :30])
    with pytest.raises(ValueError, match="at least 2 sources"):
        M.mef_ssim(img, [a])


def test_import_does_not_load_torch():
    code = "import sys, dig2dig.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------------
# LPIPS with random weights (the real AlexNet weights cannot be downloaded here)


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    import torch

    from dig2dig.metrics._lpips_net import LPIPSAlex

    torch.manual_seed(0)
    net = LPIPSAlex()
    with torch.no_grad():
        for lin in net.lins:  # the released heads are non-negative
            lin.weight.abs_()
    sd = net.state_dict()
    trunk = {k.replace("net.features.", "features."): v for k, v in sd.items() if k.startswith("net.")}
    trunk["classifier.1.weight"] = torch.zeros(3, 3)  # torchvision extras are ignored
    heads = {f"lin{k}.model.1.weight": net.lins[k].weight.detach().clone() for k in range(5)}
    d = tmp_path_factory.mktemp("lpips")
    torch.save(trunk, d / "alexnet.pth")
    torch.save(heads, d / "alex.pth")
    combined = {
        f"net.slice{1 + [0, 3, 6, 8, 10].index(int(k.split('.')[1]))}.{k.split('.', 1)[1]}": v
        for k, v in trunk.items()
        if k.startswith("features.")
    }
    combined.update(heads)
    torch.save(combined, d / "lpips_full.pth")
    return d


def test_lpips_behaviour(lpips_files, natural):
    w = [lpips_files / "alexnet.pth", lpips_files / "alex.pth"]
    img = natural[0]
    rng = np.random.default_rng(0)
    assert M.lpips_distance(img, img, weights=w) == pytest.approx(0.0, abs=1e-7)
    noisy = [np.clip(img + rng.normal(0, s, img.shape), 0, 255) for s in (4, 16, 64)]
    d = [M.lpips_distance(img, x, weights=w) for x in noisy]
    assert 0 < d[0] < d[1] < d[2]
    assert M.lpips_distance(noisy[1], img, weights=w) == pytest.approx(d[1], rel=1e-5)
    # one combined lpips-style file gives the same network
    assert M.lpips_distance(img, noisy[1], weights=lpips_files / "lpips_full.pth") == pytest.approx(d[1], rel=1e-6)


def test_lpips_weights_from_env_and_score(lpips_files, monkeypatch):
    import os

    fused, ir, vis = _rgb_pair(64, 64)
    monkeypatch.setenv(M.lpips.ENV_VAR, os.pathsep.join(str(lpips_files / n) for n in ("alexnet.pth", "alex.pth")))
    out = score(fused, [ir, vis], convention="cddfuse", metrics=["LPIPS", "SSIM"])
    assert out["LPIPS"] > 0


def test_lpips_missing_or_wrong_weights(lpips_files, monkeypatch, tmp_path):
    import torch

    monkeypatch.delenv(M.lpips.ENV_VAR, raising=False)
    x = np.zeros((64, 64))
    with pytest.raises(ValueError, match="DIG2DIG_LPIPS_WEIGHTS"):
        M.lpips_distance(x, x)
    with pytest.raises(ValueError, match="lack 5 tensors"):
        M.lpips_distance(x, x, weights=lpips_files / "alexnet.pth")
    with pytest.raises(ValueError, match="does not exist"):
        M.lpips_distance(x, x, weights=tmp_path / "nope.pth")
    bad = torch.load(lpips_files / "alex.pth")
    bad["lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="shape"):
        M.lpips_distance(x, x, weights=[lpips_files / "alexnet.pth", tmp_path / "bad.pth"])


def test_eval_cli_takes_lpips_weights(lpips_files, monkeypatch, tmp_path):
    import csv
    import os

    import cv2

    from dig2dig.cli import main

    monkeypatch.setenv(M.lpips.ENV_VAR, "unset-by-the-test")  # restored afterwards; the flag must win
    fused, ir, vis = _rgb_pair(64, 64)
    (tmp_path / "ds" / "p0").mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    cv2.imwrite(str(tmp_path / "ds" / "p0" / "ir.png"), ir[..., ::-1])
    cv2.imwrite(str(tmp_path / "ds" / "p0" / "vis.png"), vis[..., ::-1])
    cv2.imwrite(str(tmp_path / "mine" / "p0.png"), fused[..., ::-1])
    weights = os.pathsep.join(str(lpips_files / n) for n in ("alexnet.pth", "alex.pth"))
    assert (
        main(
            [
                "eval",
                str(tmp_path / "mine"),
                "--sources",
                str(tmp_path / "ds"),
                "--metrics",
                "LPIPS,SSIM",
                "--lpips-weights",
                weights,
                "--csv",
                str(tmp_path / "r.csv"),
                "-q",
            ]
        )
        == 0
    )
    rows = {r["metric"]: float(r["value"]) for r in csv.DictReader(open(tmp_path / "r.csv"))}
    assert set(rows) == {"LPIPS", "SSIM"} and rows["LPIPS"] > 0


def test_every_registered_metric_is_reachable_from_a_convention():
    from dig2dig.metrics import REGISTRY, list_conventions, list_metrics

    reachable = {(m.spec.name, m.spec.variant) for c in list_conventions() for m in list_metrics(c)}
    names = {m[0] for m in reachable}
    assert {name for name, _ in REGISTRY} <= names  # every metric, in at least one of its variants
    fused, ir, vis = _rgb_pair(176, 184)  # MS-SSIM's five scales need 176 pixels
    extras = [m.name for m in list_metrics("cddfuse") if not m.default and m.name != "LPIPS"]
    out = score(fused, [ir, vis], convention="cddfuse", metrics=extras)
    assert set(out) == set(extras) and all(np.isfinite(v) for v in out.values())
