import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from compressor.cli import compare_app
from compressor.eval import paired_drop, wilson_interval
from compressor.report import judge, render_html, render_markdown, write_junit
from compressor.report.compare import compare_reports, load_report
from compressor.report.pareto import pareto_front, plot_pareto
from compressor.report.render import hints, verdict_kind


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10.0, 98.0), (6.0, 97.5), (7.0, 97.0), (6.0, 98.5), (3.0, 90.0)]
    # (6.0, 98.5) dominates (10, 98), (6, 97.5) and (7, 97); (3, 90) is fastest
    assert pareto_front(pts) == [3, 4]


def _lat(ms: float) -> dict:
    return {"batch": 8, "median": ms, "p90": ms * 1.2, "per_batch": {"8": {"median": ms, "p90": ms * 1.2}}}


def _entry(target: str, path: str, precision: str, acc: float | None, ms: float | None, size: int) -> dict:
    status = "ok" if acc is not None else "not_measured: needs macOS"
    return {"target": target, "path": path, "precision": precision, "status": status, "accuracy": acc,
            "accuracy_ci95": None if acc is None else [acc - 1.0, acc + 1.0], "sqnr_db_vs_float": None,
            "latency_ms": None if ms is None else _lat(ms), "size_bytes": size, "checks": {}}


def _report(drop: float, max_drop: float | None, gate_on: str = "point", coreml: bool = False) -> dict:
    base = _entry("onnx", "baseline.onnx", "fp32", 98.0, 2.0, 4 * 10**6)
    art = {**_entry("onnx", "model.onnx", "int8", 98.0 - drop, 1.0, 10**6), "baseline": "baseline.onnx",
           "sim_accuracy": 98.0 - drop, "sim_gap": 0.0, "drop": drop, "drop_ci95": [drop - 0.4, drop + 0.4],
           "speedup_vs_baseline": 2.0, "size_ratio_vs_baseline": 0.25}
    baselines, arts = {"onnx": base}, [art]
    if coreml:
        baselines["coreml"] = _entry("coreml", "baseline.mlpackage", "fp32", None, None, 4 * 10**6)
        arts.append({**_entry("coreml", "model.mlpackage", "int8", None, None, 10**6), "baseline": "baseline.mlpackage",
                     "sim_accuracy": 98.0 - drop, "sim_gap": None, "drop": None, "drop_ci95": None,
                     "speedup_vs_baseline": None, "size_ratio_vs_baseline": 0.25})
    gate = judge(arts, "top1", max_drop, gate_on)
    return {"schema_version": 2, "model": {"name": "m"}, "recipe": {"name": "r"}, "metric": "top1",
            "float_torch_accuracy": 98.0, "baseline": base, "baselines": baselines, "artifacts": arts,
            "accuracy_drop": gate["drop"], "gate": gate, "sensitivity": None,
            "benchmark": {"threads": 2, "warmup": 5, "runs": 30, "min_seconds": 2.0, "batch_sizes": [1, 8]},
            "passes": [], "data": {"calibration": {"count": 10, "source": "x", "sha256": "ab" * 32},
                                   "evaluation": {"count": 1000, "source": "y"}},
            "timings_s": {"total_s": 1.0}}


def test_gate_on_lower_bound_fails_only_significant_drops():
    assert judge(_report(0.7, 0.5)["artifacts"], "top1", 0.5, "point")["passed"] is False
    # drop 0.7 with interval [0.3, 1.1]: not significantly above 0.5
    assert judge(_report(0.7, 0.5)["artifacts"], "top1", 0.5, "lower-bound")["passed"] is True
    # drop 1.2 with interval [0.8, 1.6]: significant
    assert judge(_report(1.2, 0.5)["artifacts"], "top1", 0.5, "lower-bound")["passed"] is False


def test_unmeasured_target_is_not_judged_but_an_all_unmeasured_gate_fails():
    r = _report(0.1, 0.5, coreml=True)
    assert r["gate"]["passed"] is True and r["gate"]["targets"]["coreml"]["passed"] is None
    only_coreml = [a for a in r["artifacts"] if a["target"] == "coreml"]
    assert judge(only_coreml, "top1", 0.5, "point")["passed"] is False
    assert judge(only_coreml, "top1", None, "point")["passed"] is True


def test_paired_interval_is_narrower_than_independent_ones_and_covers_the_truth():
    rng = np.random.default_rng(0)
    base = rng.random(1000) < 0.97
    comp = base.copy()
    comp[np.flatnonzero(base)[:4]] = False  # four images lost, none gained: drop 0.4 points
    drop, lo, hi = paired_drop(base, comp)
    assert drop == pytest.approx(0.4) and lo < 0.4 < hi
    lo_a, hi_a = wilson_interval(int(base.sum()), 1000)
    assert hi - lo < (hi_a - lo_a) / 2  # pairing removes the shared per-image variance
    # no disagreements: a small but non-zero interval, not certainty
    d0, lo0, hi0 = paired_drop(base, base)
    assert d0 == 0 and lo0 < 0 < hi0 and hi0 < 0.3
    # coverage: the 95 % interval holds the true drop in about 95 % of simulated evaluations
    true_loss, true_gain, covered = 0.008, 0.003, 0
    for _ in range(400):
        u = rng.random(1000)
        b = np.ones(1000, bool)
        c = np.ones(1000, bool)
        c[u < true_loss] = False
        b[(u >= true_loss) & (u < true_loss + true_gain)] = False
        _, lo, hi = paired_drop(b, c)
        covered += lo <= 100 * (true_loss - true_gain) <= hi
    assert 0.9 <= covered / 400 <= 0.99
    with pytest.raises(ValueError, match="equal-length"):
        paired_drop(base, base[:10])


def test_junit_has_a_verdict_per_target(tmp_path):
    write_junit(_report(1.2, 0.5, coreml=True), tmp_path / "fail.xml")
    root = ET.parse(tmp_path / "fail.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("2", "1", "1")
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert "drop 1.200" in cases["m.r.onnx"].find("failure").get("message")
    assert "needs macOS" in cases["m.r.coreml"].find("skipped").get("message")
    write_junit(_report(0.1, 0.5), tmp_path / "ok.xml")
    assert ET.parse(tmp_path / "ok.xml").getroot().get("failures") == "0"
    write_junit(None, tmp_path / "err.xml", "recipe file not found: x.yaml")
    root = ET.parse(tmp_path / "err.xml").getroot()
    assert root.get("errors") == "1" and "x.yaml" in root.find("testcase/error").get("message")


def test_markdown_and_html_state_verdict_numbers_and_unmeasured_targets(tmp_path):
    r = _report(1.2, 0.5, coreml=True)
    md = render_markdown(r)
    assert "FAILED" in md and "1.20 points" in md and "| model.onnx | onnx | int8 | 96.80 [95.80, 97.80] |" in md
    assert "2.00x" in md and "not_measured: needs macOS" in md
    no_limit = render_markdown(_report(0.0, None))
    assert "no limit set" in no_limit and "PASSED" not in no_limit and "| passed |" not in no_limit
    assert "PASSED" in render_markdown(_report(0.0, 0.5))
    plot_pareto(r, tmp_path / "p.png")
    png = (tmp_path / "p.png").read_bytes()
    page = render_html(r, png)
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert "src='http" not in page and "href=" not in page  # self-contained: nothing fetched
    assert "96.80 [95.80, 97.80]" in page and "not_measured: needs macOS" in page


def test_a_large_significant_drop_or_a_failed_gate_suggests_sensitivity_and_failed_targets_are_named(tmp_path):
    def suggests(r: dict) -> bool:
        return any("--sensitivity" in h for h in hints(r))

    big = _report(2.5, None)  # 2.5 points, interval [2.1, 2.9]: beyond the hint's 2 points and beyond noise
    assert suggests(big) and "more than 2, beyond noise" in hints(big)[0] and verdict_kind(big) == "none"
    assert not suggests(_report(1.5, None))  # under 2 points, no limit: nothing to chase
    noisy = _report(2.5, None)
    noisy["artifacts"][0]["drop_ci95"] = [-0.5, 5.5]  # not significant: could be noise
    assert not suggests(noisy)
    over = _report(0.7, 0.5)  # a small drop, but over the limit: the gate failed
    assert suggests(over) and "over the gate's limit" in hints(over)[0] and verdict_kind(over) == "failed"
    assert not suggests(_report(0.3, 0.5))
    assert not hints({**big, "sensitivity": {"rows": []}})  # already run: nothing to suggest
    failed = _report(0.1, None, coreml=True)
    failed["artifacts"][1]["status"] = "failed: export of the model: RuntimeError: boom"
    assert hints(failed) == ["coreml: failed: export of the model: RuntimeError: boom"]
    assert verdict_kind(failed) == "none"
    write_junit({**failed, "gate": judge(failed["artifacts"], "top1", None, "point")}, tmp_path / "j.xml")
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert (root.get("errors"), root.get("skipped")) == ("1", "0")
    assert "boom" in root.find("testcase/error").get("message")


def test_cli_summary_says_no_limit_and_suggests_sensitivity_at_any_terminal_width(tmp_path, capsys, monkeypatch):
    from compressor.cli import _print_summary

    for columns in ("40", None):
        if columns is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", columns)
        _print_summary({**_report(2.5, None), "files": ["model.onnx", "report.json"]}, tmp_path)
        text = capsys.readouterr().out
        assert "no limit set (--max-drop): worst accuracy drop 2.50 points" in text and "PASSED" not in text
        assert "onnx drops 2.50 points (more than 2, beyond noise): run again with --sensitivity" in text, text
        assert f"wrote {tmp_path}/: model.onnx, report.json" in text


def test_compare_shows_changes_per_artifact(tmp_path, capsys):
    from typer.testing import CliRunner

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, rep in ((a, _report(0.2, 0.5)), (b, _report(1.2, 0.5, coreml=True))):
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps(rep))
    _, header, rows = compare_reports(load_report(a), load_report(b))
    by_key = {(row[0], row[1]): dict(zip(header, row, strict=True)) for row in rows}
    assert by_key[("onnx", "compressed")]["Δ points"] == "-1.00"
    assert by_key[("coreml", "compressed")]["accuracy A"] == "absent"
    assert by_key[("coreml", "compressed")]["accuracy B"] == "not measured"
    result = CliRunner().invoke(compare_app, [str(a), str(b), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["rows"][0]["target"] in ("coreml", "onnx")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps({"schema_version": 1}))
    bad = CliRunner().invoke(compare_app, [str(a), str(tmp_path / "old")])
    assert bad.exit_code == 2 and "schema 1" in bad.output
    missing = CliRunner().invoke(compare_app, [str(a), str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no report.json" in missing.output


def test_latency_rounds_extend_to_the_time_budget():
    from compressor.eval import measure
    from compressor.progress import Progress

    calls = {"a": 0, "b": 0}

    def runner(name):
        def run(x):
            calls[name] += 1
            return x
        return run

    lat = measure({"a": runner("a"), "b": runner("b")}, (1, 1, 2, 2), [1, 4], warmup=2, runs=5,
                  progress=Progress(), min_seconds=0.05, max_runs=400)
    assert set(lat) == {"a", "b"} and set(lat["a"]) == {1, 4}
    # trivially fast runners hit max_runs before the time budget; both are timed equally often
    assert lat["a"][1]["runs"] == lat["b"][1]["runs"] == 400 and calls["a"] == calls["b"] == 2 * (400 + 2)
    slow = measure({"a": runner("a")}, (1, 1, 2, 2), [1], warmup=0, runs=5, progress=Progress(), min_seconds=0)
    assert slow["a"][1]["runs"] == 5
