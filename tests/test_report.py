import xml.etree.ElementTree as ET

from compressor.report import render_markdown, write_junit
from compressor.report.pareto import pareto_front


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10.0, 98.0), (6.0, 97.5), (7.0, 97.0), (6.0, 98.5), (3.0, 90.0)]
    # (6.0, 98.5) dominates (10, 98), (6, 97.5) and (7, 97); (3, 90) is fastest
    assert pareto_front(pts) == [3, 4]


def _report(drop: float, max_drop: float | None) -> dict:
    lat = {"batch": 8, "median": 2.0, "p90": 2.5, "per_batch": {"8": {"median": 2.0, "p90": 2.5, "mean": 2.1}}}
    art = {"target": "onnx", "path": "model.onnx", "precision": "int8", "accuracy": 98.0 - drop,
           "sim_accuracy": 98.0 - drop, "sim_gap": 0.0, "latency_ms": {**lat, "median": 1.0}, "size_bytes": 10**6,
           "speedup_vs_baseline": 2.0, "status": "ok"}
    return {"model": {"name": "m"}, "recipe": {"name": "r"}, "metric": "top1",
            "baseline": {"path": "baseline.onnx", "precision": "fp32", "accuracy": 98.0, "float_torch_accuracy": 98.0,
                         "latency_ms": lat, "size_bytes": 4 * 10**6},
            "artifacts": [art], "accuracy_drop": drop,
            "gate": {"metric": "top1", "max_drop": max_drop, "passed": max_drop is None or drop <= max_drop},
            "benchmark": {"threads": 2, "warmup": 5, "runs": 30, "min_seconds": 2.0}, "passes": [],
            "data": {"calibration": {"count": 10, "source": "x", "sha256": "ab" * 32},
                     "evaluation": {"count": 5, "source": "y"}},
            "timings_s": {"total_s": 1.0}}


def test_junit_marks_gate_failures_and_errors(tmp_path):
    write_junit(_report(1.2, 0.5), tmp_path / "fail.xml")
    root = ET.parse(tmp_path / "fail.xml").getroot()
    assert root.get("failures") == "1" and "drop 1.200" in root.find("testcase/failure").get("message")
    write_junit(_report(0.1, 0.5), tmp_path / "ok.xml")
    assert ET.parse(tmp_path / "ok.xml").getroot().get("failures") == "0"
    write_junit(None, tmp_path / "err.xml", "recipe file not found: x.yaml")
    root = ET.parse(tmp_path / "err.xml").getroot()
    assert root.get("errors") == "1" and "x.yaml" in root.find("testcase/error").get("message")


def test_markdown_states_verdict_and_numbers():
    md = render_markdown(_report(1.2, 0.5))
    assert "FAILED" in md and "1.20 points" in md and "| model.onnx | int8 | 96.80 |" in md and "2.00x" in md
    assert "PASSED" in render_markdown(_report(0.0, None))


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
