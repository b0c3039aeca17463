"""The command line: help without torch, a real fuse, and every documented error path."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dig2dig.cli import main

from .conftest import DATA, need, smooth_image


def _write(path, img):
    arr = np.round(img * 255).astype(np.uint8)
    cv2.imwrite(str(path), arr[..., ::-1] if arr.ndim == 3 else arr)
    return path


@pytest.fixture
def pair(tmp_path):
    return (
        _write(tmp_path / "ir.png", smooth_image(37, 53, 1)),
        _write(tmp_path / "vis.png", smooth_image(37, 53, 2, color=True)),
    )


def test_help_does_not_import_torch():
    code = (
        "import sys; from dig2dig.cli import build_parser; import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: build_parser().parse_args(['--help'])\n"
        "    except SystemExit: pass\n"
        "assert 'torch' not in sys.modules and 'cv2' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run(
        [sys.executable, "-m", "dig2dig", "fuse", "--help"], capture_output=True, text=True, check=True
    )
    assert "--prior" in out.stdout and "--steps" in out.stdout


def test_fuse_writes_an_image_of_the_input_size(pair, tmp_path, tiny_rgb_prior_path, capsys):
    out = tmp_path / "fused.png"
    rc = main(
        [
            "fuse",
            *map(str, pair),
            "-o",
            str(out),
            "--steps",
            "3",
            "--seed",
            "1",
            "--prior",
            str(tiny_rgb_prior_path),
            "--report",
            str(tmp_path / "r.json"),
        ]
    )
    assert rc == 0
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert img.shape == (37, 53, 3)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["config"]["task"] == "vif" and rep["config"]["steps"] == 3 and rep["config"]["seed"] == 1
    assert "vif" in capsys.readouterr().err


def test_fuse_real_msrs_pair(tmp_path, tiny_gray_prior_path):
    d = need(DATA / "fusion" / "vif" / "msrs" / "00001D")
    out = tmp_path / "msrs.png"
    assert (
        main(
            [
                "fuse",
                str(d / "ir.png"),
                str(d / "vis.png"),
                "-o",
                str(out),
                "--steps",
                "2",
                "-q",
                "--prior",
                str(tiny_gray_prior_path),
            ]
        )
        == 0
    )
    assert cv2.imread(str(out)).shape == (480, 640, 3)


def _fails(args, tmp_path, capsys, message):
    out = tmp_path / "out.png"
    rc = main(["fuse", *args, "-o", str(out), "--steps", "2", "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err, err
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_missing_file(pair, tmp_path, capsys, tiny_rgb_prior_path):
    _fails(
        [str(pair[0]), str(tmp_path / "nope.png"), "--prior", str(tiny_rgb_prior_path)],
        tmp_path,
        capsys,
        "does not exist",
    )


def test_corrupt_file(pair, tmp_path, capsys, tiny_rgb_prior_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _fails([str(pair[0]), str(bad), "--prior", str(tiny_rgb_prior_path)], tmp_path, capsys, "cannot decode")


def test_size_mismatch_names_both_sizes(pair, tmp_path, capsys, tiny_rgb_prior_path):
    small = _write(tmp_path / "small.png", smooth_image(20, 30, 3))
    _fails([str(pair[0]), str(small), "--prior", str(tiny_rgb_prior_path)], tmp_path, capsys, "53x37")
    _fails([str(pair[0]), str(small), "--prior", str(tiny_rgb_prior_path)], tmp_path, capsys, "--resize")


def test_one_pixel_image(pair, tmp_path, capsys, tiny_rgb_prior_path):
    tiny = tmp_path / "one.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1), np.uint8))
    _fails([str(pair[0]), str(tiny), "--prior", str(tiny_rgb_prior_path)], tmp_path, capsys, "too small")


def test_unsupported_mode(pair, tmp_path, capsys, tiny_rgb_prior_path):
    f = tmp_path / "float.tif"
    cv2.imwrite(str(f), np.zeros((37, 53), np.float32))
    _fails([str(pair[0]), str(f), "--prior", str(tiny_rgb_prior_path)], tmp_path, capsys, "unsupported sample type")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    _fails([str(pair[0]), str(txt), "--prior", str(tiny_rgb_prior_path)], tmp_path, capsys, "unsupported file type")


def test_wrong_checkpoint(pair, tmp_path, capsys):
    import torch

    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    _fails([*map(str, pair), "--prior", str(wrong)], tmp_path, capsys, "not an ADM")


def test_missing_prior_says_prior_is_required(pair, tmp_path, capsys, monkeypatch):
    import dig2dig.prior.embedded as emb

    monkeypatch.setattr(emb, "EMBEDDED_DIR", tmp_path / "no-weights")
    _fails([*map(str, pair)], tmp_path, capsys, "--prior")


def test_bad_output_extension_fails_before_work(pair, tmp_path, capsys, tiny_rgb_prior_path):
    rc = main(["fuse", *map(str, pair), "-o", str(tmp_path / "out.xyz"), "--prior", str(tiny_rgb_prior_path)])
    assert rc == 2 and "extension" in capsys.readouterr().err
    rc = main(
        [
            "fuse",
            *map(str, pair),
            "-o",
            str(tmp_path / "out.jpg"),
            "--bit-depth",
            "16",
            "--prior",
            str(tiny_rgb_prior_path),
        ]
    )
    assert rc == 2 and "--bit-depth 16 needs a .png or .tif" in capsys.readouterr().err
    assert not (tmp_path / "out.jpg").exists()


def test_unknown_method_and_option_errors(pair, tmp_path, capsys, tiny_rgb_prior_path):
    _fails(
        [*map(str, pair), "--method", "magic", "--prior", str(tiny_rgb_prior_path)], tmp_path, capsys, "unknown method"
    )
    _fails(
        [
            *map(
                str,
                pair,
            ),
            str(pair[0]),
            "--method",
            "ddfm",
            "--prior",
            str(tiny_rgb_prior_path),
        ],
        tmp_path,
        capsys,
        "exactly 2 sources",
    )
    _fails(
        [*map(str, pair), "--mapping", "paper", "--prior", str(tiny_rgb_prior_path)], tmp_path, capsys, "has no option"
    )


def test_prior_info_prints_the_spec(tiny_rgb_prior_path, capsys):
    assert main(["prior", "info", "--prior", str(tiny_rgb_prior_path)]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["format"] == "adm" and len(spec["sha256"]) == 64 and spec["parameters"] > 0


def test_prior_info_of_the_embedded_prior(capsys):
    from dig2dig.prior import embedded_available

    if not embedded_available():
        pytest.skip("no embedded prior installed")
    assert main(["prior", "info"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["format"] == "dig2dig" and spec["prediction"] == "eps" and spec["data_range"] == [-1.0, 1.0]
    assert spec["stored"]["dtype"] == "float16" and spec["stored"]["megabytes"] <= 30
    assert spec["schedule"] == {"kind": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_timesteps": 1000}
    for key in ("trained_steps", "check_psnr", "training_folders"):
        assert key in spec["extra"]


@pytest.mark.parametrize("weights", ["dig", "equal"])
def test_save_dig_writes_weight_maps_curves_and_numbers(pair, tmp_path, tiny_gray_prior_path, weights):
    out, dig = tmp_path / "fused.png", tmp_path / "dig"
    assert (
        main(
            [
                "fuse",
                *map(str, pair),
                "-o",
                str(out),
                "--steps",
                "6",
                "--interval",
                "2",
                "--window",
                "forward",
                "--weights",
                weights,
                "--prior",
                str(tiny_gray_prior_path),
                "-q",
                "--save-dig",
                str(dig),
                "--dig-region",
                "left=0,0,20,37",
            ]
        )
        == 0
    )
    summary = json.loads((dig / "dig.json").read_text())
    assert (dig / "dig_curves.png").is_file()
    # one point per reverse step, starting at zero gain; panels: whole image + the chosen region
    assert summary["curve_steps"] == list(range(6)) and set(summary["curves"]) == {"whole image", "left"}
    for curve in summary["curves"]["whole image"].values():
        assert curve["mean"][0] == 0 and len(curve["mean"]) == 6
    maps = sorted(dig.glob("weights_step*.png"))
    if weights == "dig":
        assert [p.name for p in maps] == ["weights_step000.png", "weights_step002.png", "weights_step004.png"]
        panel = cv2.imread(str(maps[0]), cv2.IMREAD_UNCHANGED)
        assert panel.shape == (37, 2 * 53 + 4)  # one panel per source, 4-pixel gap
    else:
        assert maps == []  # equal weights: nothing to map, but the gains are still plotted


def test_dig_region_errors(pair, tmp_path, capsys, tiny_gray_prior_path):
    for region, msg in (("left=0,0,20", "NAME=X0,Y0,X1,Y1"), ("left=0,0,99,37", "x1 <= 53")):
        _fails(
            [
                *map(str, pair),
                "--prior",
                str(tiny_gray_prior_path),
                "--save-dig",
                str(tmp_path / "d"),
                "--dig-region",
                region,
            ],
            tmp_path,
            capsys,
            msg,
        )
    _fails(
        [*map(str, pair), "--prior", str(tiny_gray_prior_path), "--dig-region", "a=0,0,1,1"],
        tmp_path,
        capsys,
        "needs --save-dig",
    )


def test_fuse_tile_reaches_the_prior_and_the_report(pair, tmp_path, tiny_gray_prior_path):
    def fuse(name, *flags):
        out, report = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
        args = ["fuse", *map(str, pair), "-o", str(out), "--method", "ddfm", "--steps", "2", "-q"]
        assert main([*args, "--prior", str(tiny_gray_prior_path), "--report", str(report), *flags]) == 0
        return cv2.imread(str(out), cv2.IMREAD_UNCHANGED), json.loads(report.read_text())["config"]["prior_run"]

    whole, run = fuse("whole", "--tile", "off")
    assert run["tile"] is None
    tiled, run = fuse("tiled", "--tile", "16")
    assert (run["tile"], run["tile_overlap"]) == (16, 4)  # the overlap defaults to a quarter of the tile
    assert tiled.shape == whole.shape == (37, 53, 3) and not np.array_equal(tiled, whole)  # tiles were run
    _, run = fuse("overlap", "--tile", "24", "--tile-overlap", "6", "--tile-batch", "2")
    assert (run["tile"], run["tile_overlap"], run["tile_batch"]) == (24, 6, 2)


def test_fuse_refuses_a_bad_tile(pair, tmp_path, capsys, tiny_gray_prior_path):
    for tile, message in (("4", "8 to 65536"), ("big", "use auto, off or a tile size")):
        _fails([*map(str, pair), "--prior", str(tiny_gray_prior_path), "--tile", tile], tmp_path, capsys, message)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_passes_its_limits_to_the_server(monkeypatch, capsys, tiny_gray_prior_path):
    pytest.importorskip("fastapi")
    import dig2dig.web.server as web

    calls = []
    monkeypatch.setattr(web, "serve", lambda **kw: calls.append(kw))
    port = str(_free_port())
    args = ["serve", "--port", port, "--prior", str(tiny_gray_prior_path)]
    assert main([*args, "--max-upload-mb", "2.5", "--max-pixels", "123456"]) == 0
    assert main(args) == 0
    limits, defaults = calls
    assert (limits["max_upload_mb"], limits["max_pixels"]) == (2.5, 123456)
    assert (defaults["max_upload_mb"], defaults["max_pixels"]) == (web.MAX_UPLOAD_MB, None)
    assert (
        limits["port"] == int(port) and limits["host"] == "127.0.0.1" and limits["prior"] == str(tiny_gray_prior_path)
    )
    assert f"http://127.0.0.1:{port}/" in capsys.readouterr().err
    for flag, value in (("--max-upload-mb", "0"), ("--max-upload-mb", "lots"), ("--max-pixels", "-5")):
        assert main([*args, flag, value]) == 2
        assert f"argument {flag}" in capsys.readouterr().err
    assert len(calls) == 2  # a refused limit starts no server
