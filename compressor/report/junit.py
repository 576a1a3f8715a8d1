"""A JUnit XML verdict, so CI systems show the accuracy gate as a test case."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET


def write_junit(report: dict[str, Any] | None, path: Path, error: str | None = None) -> None:
    """One test case per artifact's gate check; a usage error becomes an <error> case."""
    suite = ET.Element("testsuite", name="compressor")
    cases = 0
    failures = errors = 0
    if report is None:
        case = ET.SubElement(suite, "testcase", classname="compressor", name="compress")
        ET.SubElement(case, "error", message=error or "run failed").text = error
        cases, errors = 1, 1
    else:
        gate = report["gate"]
        for art in report["artifacts"]:
            cases += 1
            name = f"{report['model']['name']}.{report['recipe']['name']}.{art['target']}"
            case = ET.SubElement(suite, "testcase", classname="compressor.gate", name=name)
            drop = report["baseline"]["accuracy"] - art["accuracy"]
            msg = (f"{gate['metric']} drop {drop:.3f} points (baseline {report['baseline']['accuracy']:.3f}, "
                   f"artifact {art['accuracy']:.3f}); max_drop {gate['max_drop']}")
            if gate["max_drop"] is not None and drop > gate["max_drop"] + 1e-9:
                failures += 1
                ET.SubElement(case, "failure", message=msg).text = msg
            else:
                ET.SubElement(case, "system-out").text = msg
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
