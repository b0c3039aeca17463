"""dig2dig eval / bench: tidy CSV, Markdown, plots, manifest, resumability."""

import csv
import json

import cv2
import numpy as np
import pytest

from dig2dig.bench import aggregate, list_pairs, run_bench, summary_markdown
from dig2dig.cli import main
from dig2dig.spec import FusionSpec

from .conftest import smooth_image


def _dataset(root, n=3, size=(40, 56)):
    for k in range(n):
        d = root / f"p{k}"
        d.mkdir(parents=True)
        ir = np.round(smooth_image(*size, seed=k) * 255).astype(np.uint8)
        vis = np.round(smooth_image(*size, seed=10 + k, color=True) * 255).astype(np.uint8)
        cv2.imwrite(str(d / "ir.png"), ir)
        cv2.imwrite(str(d / "vis.png"), vis[..., ::-1])
    return root


def test_list_pairs_orders_sources_by_role(tmp_path):
    pairs = list_pairs(_dataset(tmp_path / "ds"))
    assert [p.pair_id for p in pairs] == ["p0", "p1", "p2"]
    assert all(p.sources[0].name == "ir.png" and p.task == "vif" for p in pairs)


def test_eval_cli_writes_tidy_csv_and_markdown(tmp_path, capsys):
    ds = _dataset(tmp_path / "ds")
    fused = tmp_path / "mine"
    fused.mkdir()
    for k in range(2):  # one pair has no fused image: reported, not fatal
        a = cv2.imread(str(ds / f"p{k}" / "ir.png"))
        cv2.imwrite(str(fused / f"p{k}.png"), a)
    args = [
        "eval",
        str(fused),
        "--sources",
        str(ds),
        "--convention",
        "cddfuse",
        "--metrics",
        "EN,SSIM,MSE",
        "--csv",
        str(tmp_path / "r.csv"),
        "--md",
        str(tmp_path / "r.md"),
    ]
    assert main([*args, "-q"]) == 1  # a subset is not scored silently, not even with -q
    assert "no fused image for 1 pair(s): p2" in capsys.readouterr().err
    rc = main([*args, "--allow-missing"])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert set(rows[0]) == {"dataset", "pair", "method", "metric", "value"}
    assert len(rows) == 2 * 3 and {r["metric"] for r in rows} == {"EN", "SSIM", "MSE"}
    md = (tmp_path / "r.md").read_text()
    assert "EN ↑" in md and "MSE ↓" in md and "mine" in md
    # a fused image of the wrong size: that pair's error names the file and the sizes; the others are scored
    cv2.imwrite(str(fused / "p2.png"), np.zeros((20, 30), np.uint8))
    assert main([*args, "--allow-missing"]) == 1
    err = capsys.readouterr().err
    assert f"{fused / 'p2.png'}" in err and "30x20" in err and "56x40" in err
    assert len(list(csv.DictReader(open(tmp_path / "r.csv")))) == 2 * 3


def test_summary_bolds_the_best_in_the_metric_direction():
    rows = [
        {"dataset": "d", "pair": "a", "method": m, "metric": k, "value": v}
        for m, k, v in (("x", "MSE", 1.0), ("y", "MSE", 2.0), ("x", "EN", 1.0), ("y", "EN", 2.0))
    ]
    md = summary_markdown(rows)
    assert "| x | **1 ± 0** | 1 ± 0 |" in md and "| y | 2 ± 0 | **2 ± 0** |" in md
    agg = aggregate(rows)
    assert agg[("d", "y", "EN")] == (2.0, 0.0, 1)


def test_bench_runs_resumes_and_writes_everything(tmp_path):
    ds = _dataset(tmp_path / "ds")
    peer = tmp_path / "peerA"
    peer.mkdir()
    for k in range(3):
        cv2.imwrite(str(peer / f"p{k}.jpg"), cv2.imread(str(ds / f"p{k}" / "vis.png")))
    out = tmp_path / "bench"
    written = run_bench(
        [ds],
        ["average", "guided"],
        out,
        peers=[peer],
        convention="cddfuse",
        metrics=["EN", "SSIM", "Qabf"],
        progress=False,
        log=lambda m: None,
    )
    rows = list(csv.DictReader(open(written["csv"])))
    assert {r["method"] for r in rows} == {"average", "guided", "peerA"}
    assert len(rows) == 2 * 3 * (3 + 1) + 3 * 3  # our methods also get a time_s row; peers do not
    assert {r["metric"] for r in rows if r["method"] == "guided"} == {"EN", "SSIM", "Qabf", "time_s"}
    assert all((out / "fused" / "ds" / m / f"p{k}.png").is_file() for m in ("average", "guided") for k in range(3))
    man = json.loads(written["manifest"].read_text())
    assert man["versions"]["dig2dig"] and man["items"] and not man["errors"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in written["plots"])
    # a second run finds everything done and does not duplicate rows
    mtime = (out / "fused" / "ds" / "guided" / "p0.png").stat().st_mtime
    written2 = run_bench(
        [ds],
        ["average", "guided"],
        out,
        peers=[peer],
        convention="cddfuse",
        metrics=["EN", "SSIM", "Qabf"],
        progress=False,
        log=lambda m: None,
    )
    assert len(list(csv.DictReader(open(written2["csv"])))) == len(rows)
    assert (out / "fused" / "ds" / "guided" / "p0.png").stat().st_mtime == mtime


def test_method_specs_carry_options_and_steps(tmp_path):
    from dig2dig.bench import parse_method

    assert parse_method("dig2dig:steps=15,distance=l1,temperature=0.5,record=false") == (
        "dig2dig:steps=15,distance=l1,temperature=0.5,record=false",
        "dig2dig",
        {"steps": 15, "distance": "l1", "temperature": 0.5, "record": False},
    )
    ds = _dataset(tmp_path / "ds", n=1)
    written = run_bench(
        [ds],
        ["laplacian:levels=2"],
        tmp_path / "b",
        convention="cddfuse",
        metrics=["EN"],
        progress=False,
        plots=False,
        log=lambda m: None,
    )
    assert (tmp_path / "b" / "fused" / "ds" / "laplacian_levels_2" / "p0.png").is_file()
    assert {r["method"] for r in csv.DictReader(open(written["csv"]))} == {"laplacian:levels=2"}


@pytest.mark.parametrize("task", ["auto", "vif", "mif"])  # a named task decodes the sources to order the roles
def test_bench_survives_a_bad_pair(tmp_path, task):
    ds = _dataset(tmp_path / "ds")
    (ds / "p1" / "vis.png").write_bytes(b"broken")
    written = run_bench(
        [ds],
        ["average"],
        tmp_path / "b",
        convention="cddfuse",
        metrics=["EN"],
        progress=False,
        plots=False,
        log=lambda m: None,
        spec=FusionSpec(task=task),
    )
    man = json.loads(written["manifest"].read_text())
    assert len(man["errors"]) == 1 and "p1" in man["errors"][0]["item"]
    assert len(list(csv.DictReader(open(written["csv"])))) == 2 * 2  # EN and time_s for the two good pairs


def test_steps_apply_to_the_diffusion_methods_of_a_run(tmp_path, tiny_gray_prior_path):
    ds = _dataset(tmp_path / "ds", n=1)
    written = run_bench(
        [ds],
        ["dig2dig", "average", "guided", "ddfm:steps=3,lamb=0.25"],  # a spec's own steps win over the run's
        tmp_path / "b",
        spec=FusionSpec(steps=2, prior=str(tiny_gray_prior_path)),
        convention="cddfuse",
        metrics=["EN"],
        progress=False,
        plots=False,
        log=lambda m: None,
    )
    man = json.loads(written["manifest"].read_text())
    assert not man["errors"] and {r["method"] for r in csv.DictReader(open(written["csv"]))} == {
        "dig2dig",
        "average",
        "guided",
        "ddfm:steps=3,lamb=0.25",
    }
    side = json.loads(next((tmp_path / "b" / "fused" / "ds" / "dig2dig").glob("p0*.json")).read_text())
    assert side["steps"] == 2
    side = json.loads(next((tmp_path / "b" / "fused" / "ds" / "ddfm_steps_3_lamb_0.25").glob("p0*.json")).read_text())
    assert side["steps"] == 3 and side["options"]["lamb"] == 0.25


def test_bench_never_reuses_results_made_with_other_settings(tmp_path):
    import pytest

    from dig2dig.errors import RunError

    ds = _dataset(tmp_path / "ds", n=2)
    out = tmp_path / "b"
    kw = dict(convention="cddfuse", metrics=["EN", "SF"], progress=False, plots=False, log=lambda m: None)
    first = run_bench([ds], ["laplacian"], out, **kw)
    en = {r["pair"]: r["value"] for r in csv.DictReader(open(first["csv"])) if r["metric"] == "EN"}
    with pytest.raises(RunError, match="other settings"):
        run_bench([ds], ["laplacian"], out, spec=FusionSpec(options={"levels": 1}), **kw)
    again = run_bench([ds], ["laplacian"], out, spec=FusionSpec(options={"levels": 1}), overwrite=True, **kw)
    en1 = {r["pair"]: r["value"] for r in csv.DictReader(open(again["csv"])) if r["metric"] == "EN"}
    assert en1 != en  # rescored from the new images, not reused


def test_bench_refuses_bad_settings_before_any_work(tmp_path, capsys):
    ds = _dataset(tmp_path / "ds", n=1)
    base = ["bench", "--datasets", str(ds), "--metrics", "EN", "--no-plots"]
    for extra, msg in (
        (["--methods", "magic"], "unknown method"),
        (["--methods", "dig2dig:interval=0"], "interval=0"),
        (["--methods", "average", "--limit", "0"], "must be at least 1"),
        (["--methods", "average", "--limit", "-1"], "must be at least 1"),
        (["--methods", "average", "--peers", str(tmp_path / "nope")], "not found"),
        (["--methods", "average", "--metrics", "NOPE"], "unknown metric"),
        (["--methods", "dig2dig", "--device", "cuda:3"], "--device cuda:3"),
    ):
        out = tmp_path / f"o{len(extra)}{abs(hash(msg)) % 1000}"
        assert main([*base, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert msg in err, err
        assert not out.exists()
