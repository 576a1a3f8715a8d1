"""Reports and the accuracy gate."""

from compressor.report.junit import write_junit
from compressor.report.render import render_html, render_markdown
from compressor.report.report import REPORT_SCHEMA_VERSION, build_report, judge, write_report

__all__ = ["REPORT_SCHEMA_VERSION", "build_report", "judge", "render_html", "render_markdown", "write_junit",
           "write_report"]
