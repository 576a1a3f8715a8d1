"""A JUnit XML verdict, so CI systems show the accuracy gate as one test case per target."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET


def write_junit(report: dict[str, Any] | None, path: Path, error: str | None = None) -> None:
    """One test case per target's gate check: failure when its drop is over the limit, skipped when
    its artifact cannot run on this machine (CI shows why), error when the target failed to export
    or run, or the run itself failed."""
    suite = ET.Element("testsuite", name="compressor")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if report is None:
        case = ET.SubElement(suite, "testcase", classname="compressor", name="compress")
        ET.SubElement(case, "error", message=error or "run failed").text = error
        counts.update(tests=1, errors=1)
    else:
        gate = report["gate"]
        for target, verdict in gate["targets"].items():
            counts["tests"] += 1
            name = f"{report['model']['name']}.{report['recipe']['name']}.{target}"
            case = ET.SubElement(suite, "testcase", classname="compressor.gate", name=name)
            if verdict["passed"] is None:
                failed = verdict["status"].startswith("failed")
                counts["errors" if failed else "skipped"] += 1
                ET.SubElement(case, "error" if failed else "skipped", message=verdict["status"])
                continue
            lo, hi = verdict["drop_ci95"]
            msg = (f"{gate['metric']} drop {verdict['drop']:.3f} points (95% interval {lo:.3f} to {hi:.3f}); "
                   f"max_drop {gate['max_drop']} on the {gate['gate_on']}")
            if verdict["passed"]:
                ET.SubElement(case, "system-out").text = msg
            else:
                counts["failures"] += 1
                ET.SubElement(case, "failure", message=msg).text = msg
        if not gate["targets"] or (gate["drop"] is None and not gate["passed"]):
            counts["tests"] += 1
            counts["failures"] += 1
            case = ET.SubElement(suite, "testcase", classname="compressor.gate", name="measured")
            msg = "no artifact could be measured on this machine, so the accuracy limit could not be checked"
            ET.SubElement(case, "failure", message=msg).text = msg
    for key, value in counts.items():
        suite.set(key, str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
