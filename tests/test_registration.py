"""``register``: sources aligned to the first before fusion -- recovery of known transforms across a
modality change, sizes, coverage, refusals, and every front end (library, command line, batch, web)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import dig2dig
from dig2dig.errors import RegistrationError
from dig2dig.registration import align, estimate, initial_matrix


def scene(h: int = 192, w: int = 256, seed: int = 0) -> np.ndarray:
    """Shapes of random grey levels over a shaded background: edges at every scale."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = (0.3 + 0.2 * xx + 0.1 * yy).astype(np.float32)
    for _ in range(40):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        v = float(rng.uniform(0, 1))
        if rng.random() < 0.5:
            cv2.circle(img, c, int(rng.integers(4, 30)), v, -1)
        else:
            cv2.rectangle(img, c, (c[0] + int(rng.integers(6, 50)), c[1] + int(rng.integers(6, 40))), v, -1)
    return cv2.GaussianBlur(img, (0, 0), 0.8)


def other_modality(img: np.ndarray) -> np.ndarray:
    """A non-monotonic intensity mapping (dark and bright objects both turn bright): no linear relation."""
    return np.clip(np.abs(img - 0.5) * 1.8 + 0.05, 0, 1).astype(np.float32)


def transform(kind: str, h: int, w: int) -> np.ndarray:
    ang, tx, ty = np.deg2rad(5.0), 12.0, -7.0
    a = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    if kind != "rigid":
        a = a @ np.array([[1.06, 0.03], [0, 0.95]])
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = c - a @ c + [tx, ty]
    if kind == "homography":
        p = np.eye(3)
        p[2, :2] = [0.08 / w, -0.06 / h]
        t = np.array([[1, 0, -c[0]], [0, 1, -c[1]], [0, 0, 1]])
        m = m @ np.linalg.inv(t) @ p @ t
        m /= m[2, 2]
    return m


def moved(img: np.ndarray, m: np.ndarray, shape=None) -> np.ndarray:
    """``img`` as a camera moved by ``m`` sees it: moved(m x) = img(x)."""
    h, w = shape or img.shape[:2]
    return np.clip(cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT), 0, 1)


def corner_error(a, b, h, w) -> float:
    c = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], float).T
    pa, pb = np.asarray(a) @ c, np.asarray(b) @ c
    return float(np.max(np.linalg.norm(pa[:2] / pa[2] - pb[:2] / pb[2], axis=0)))


@pytest.mark.parametrize("kind", ["rigid", "affine", "homography"])
def test_a_known_transform_is_recovered_across_a_modality_change(kind):
    ref = scene()
    h, w = ref.shape
    m = transform(kind, h, w)
    rec = estimate(ref, moved(other_modality(ref), m), kind, "b.png", "a.png")
    assert corner_error(rec.matrix, m, h, w) < 0.5, rec
    assert rec.similarity_after > rec.similarity_before + 0.1
    assert len(rec.iterations) == len(rec.levels) >= 2 and all(0 < n <= 100 for n in rec.iterations)
    assert rec.levels[-1] == [h, w] and 0.7 < rec.covered < 1.0


def test_a_smaller_source_starts_from_equal_fields_of_view_and_lands_on_the_reference_grid():
    ref = scene(240, 320, 3)
    h, w = ref.shape
    m = transform("affine", h, w)
    src = moved(other_modality(ref), m)
    small = cv2.resize(src, (192, 144), interpolation=cv2.INTER_AREA)  # 0.6 of the size
    init = initial_matrix((h, w), small.shape, "affine")
    assert np.allclose(init @ [(w - 1) / 2, (h - 1) / 2, 1], [(192 - 1) / 2, (144 - 1) / 2, 1])  # centres meet
    out = align([ref, small], ["a.png", "b.png"], "affine")
    assert out.images[1].shape == ref.shape
    # the true map to the small source: the full-size one followed by the 0.6 downscale (pixel centres kept)
    s = np.array([[192 / w, 0, (192 / w - 1) / 2], [0, 144 / h, (144 / h - 1) / 2], [0, 0, 1]])
    truth = s @ m
    assert corner_error(out.records[0].matrix, truth, h, w) < 0.6  # in small-source pixels
    summary = out.summary()
    assert summary["mode"] == "affine" and 0.6 < summary["valid_fraction"] < 1.0
    x0, y0, x1, y1 = summary["valid_box"]
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_uncovered_pixels_take_the_references_values_and_colour_sources_keep_their_channels():
    ref = scene(192, 256, 5)
    m = transform("rigid", 192, 256)
    src = np.repeat(moved(other_modality(ref), m)[..., None], 3, axis=2)
    out = align([ref, src], ["a", "b"], "rigid")
    img, valid = out.images[1], out.valid
    assert img.shape == (192, 256, 3) and img.dtype == np.float32 and valid is not None
    assert not valid.all() and np.allclose(img[~valid], ref[~valid][:, None])


def test_unrelated_sources_are_refused_with_the_fix():
    ref = scene(160, 200, 1)
    noise = np.random.default_rng(0).random((160, 200)).astype(np.float32)
    with pytest.raises(RegistrationError) as e:
        estimate(ref, noise, "affine", "noise.png", "scene.png")
    msg = str(e.value)
    assert "noise.png could not be registered to scene.png (affine)" in msg and "register='off'" in msg
    assert "--register rigid" in e.value.spelled["cli"]


def test_fuse_registers_reports_and_gives_the_same_bytes_twice():
    ref = scene(96, 128, 7)
    m = transform("affine", 96, 128)
    src = moved(other_modality(ref), m)
    a = dig2dig.fuse([ref, src], method="average", register="affine")
    b = dig2dig.fuse([ref, src], method="average", register="affine")
    assert a.image.shape == ref.shape and np.array_equal(a.image, b.image)
    reg = a.config["registration"]
    assert reg["mode"] == "affine" and len(reg["sources"]) == 1
    assert corner_error(reg["sources"][0]["matrix"], m, 96, 128) < 1.0  # a small image, a large move
    assert any("registered to" in n for n in a.config["notes"])
    plain = dig2dig.fuse([ref, src], method="average")
    assert plain.config["registration"] is None
    # registered: the fused image keeps the reference's edges where the unregistered one doubles them
    edges = cv2.Canny((ref * 255).astype(np.uint8), 30, 90) > 0
    err_reg = np.abs(a.image - (ref + moved(other_modality(ref), np.eye(3))) / 2)[edges].mean()
    err_off = np.abs(plain.image - (ref + moved(other_modality(ref), np.eye(3))) / 2)[edges].mean()
    assert err_reg < 0.5 * err_off


def test_the_request_checks_register_and_records_it_in_the_batch_key():
    from dig2dig.spec import FusionSpec

    with pytest.raises(ValueError, match="register='tilt' is not one of off, rigid, affine, homography"):
        FusionSpec(method="average", register="tilt").resolve()
    with pytest.raises(ValueError, match="leave resize off"):
        FusionSpec(method="average", register="rigid", resize=True).resolve()
    off = FusionSpec(method="average").resolve().key_fields()
    on = FusionSpec(method="average", register="affine").resolve().key_fields()
    assert "register" not in off and on["register"] == "affine"  # existing batch folders keep their keys


def test_command_line_and_batch(tmp_path):
    from dig2dig.cli import main
    from dig2dig.io import write_image

    ref = scene(192, 256, 11)
    m = transform("rigid", 192, 256)
    write_image(tmp_path / "a.png", ref, 8)
    small = cv2.resize(moved(other_modality(ref), m), (192, 144), interpolation=cv2.INTER_AREA)
    write_image(tmp_path / "b.png", small, 8)  # a lower resolution over the same field of view
    noise = np.random.default_rng(1).random((192, 256)).astype(np.float32)
    write_image(tmp_path / "n.png", noise, 8)
    assert (
        main(
            [
                "fuse",
                str(tmp_path / "a.png"),
                str(tmp_path / "b.png"),
                "-o",
                str(tmp_path / "x.png"),
                "--method",
                "average",
            ]
        )
        == 2
    )  # sizes differ: refused without --register
    rc = main(
        ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"), "--method",
         "average", "--register", "rigid", "--report", str(tmp_path / "r.json")]
    )  # fmt: skip
    assert rc == 0 and cv2.imread(str(tmp_path / "f.png"), cv2.IMREAD_UNCHANGED).shape == (192, 256)
    reg = json.loads((tmp_path / "r.json").read_text())["config"]["registration"]
    assert reg["sources"][0]["source"].endswith("b.png") and reg["valid_fraction"] < 1
    assert main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "n.png"), "-o", str(tmp_path / "g.png"),
                 "--method", "average", "--register", "affine"]) == 2  # fmt: skip
    assert not (tmp_path / "g.png").exists()
    # batch: the transform in the sidecar, and a key of its own
    (tmp_path / "in" / "p1").mkdir(parents=True)
    for n in ("a.png", "b.png"):
        (tmp_path / "in" / "p1" / n).write_bytes((tmp_path / n).read_bytes())
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "in"), "-o", str(out), "--method", "average", "--register", "rigid"]) == 0
    sidecars = [json.loads(p.read_text()) for p in out.rglob("*.json") if "registration" in p.read_text()]
    assert sidecars and sidecars[0]["registration"]["mode"] == "rigid" and sidecars[0]["config"]["register"] == "rigid"


def test_web_request_registers(tiny_gray_prior_path):
    pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'dig2dig[web]'")
    pytest.importorskip("multipart", reason="the web extra is not installed: pip install 'dig2dig[web]'")
    import time

    from fastapi.testclient import TestClient

    from dig2dig.web.server import create_app

    ref = scene(192, 256, 13)
    src = cv2.resize(
        moved(other_modality(ref), transform("affine", 192, 256)), (192, 144), interpolation=cv2.INTER_AREA
    )
    png = [cv2.imencode(".png", np.round(x * 255).astype(np.uint8))[1].tobytes() for x in (ref, src)]
    with TestClient(create_app(prior=str(tiny_gray_prior_path)), base_url="http://127.0.0.1:8000") as c:
        info = c.get("/api/info").json()
        assert info["register"] == ["off", "rigid", "affine", "homography"]
        files = [("files", ("a.png", png[0], "image/png")), ("files", ("b.png", png[1], "image/png"))]
        assert c.post("/api/jobs", files=files, data={"method": "average"}).status_code == 422  # sizes differ
        bad = c.post("/api/jobs", files=files, data={"method": "average", "register": "warp"})
        assert bad.status_code == 422 and "register='warp'" in bad.text
        r = c.post("/api/jobs", files=files, data={"method": "average", "register": "affine"})
        assert r.status_code == 201, r.text
        for _ in range(200):
            s = c.get(f"/api/jobs/{r.json()['id']}").json()
            if s["state"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert s["state"] == "done", s["error"]
        assert s["result"]["registration"]["mode"] == "affine" and (s["result"]["width"], s["result"]["height"]) == (
            256,
            192,
        )
        report = c.get(f"/api/jobs/{r.json()['id']}/report.json").json()
        assert report["config"]["registration"]["sources"][0]["similarity_after"] > 0.3


def test_a_move_beyond_the_bounds_is_refused_not_fused():
    ref = scene(192, 256, 17)
    h, w = ref.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 40.0, 1.0)  # 40°: beyond the 20° bound
    src = cv2.warpAffine(other_modality(ref), m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    with pytest.raises(RegistrationError, match="could not be registered"):
        dig2dig.fuse([ref, src], method="average", register="rigid")
