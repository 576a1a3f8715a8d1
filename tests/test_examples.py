"""The CI examples users copy must keep working as the CLI changes."""

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from compressor.cli import app
from exporters import EXPORTERS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "ci"


def _strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _compress_commands() -> list[str]:
    """Every `compress MODEL ...` command line in the example workflows, whitespace-normalised."""
    found = []
    for path in sorted(EXAMPLES.glob("*.yml")):
        for text in _strings(yaml.safe_load(path.read_text())):
            found += [" ".join(line.split()) for line in text.replace("\n--", " --").split("\n")
                      if line.strip().startswith("compress ")]
    return found


def test_example_workflows_use_real_flags_and_targets():
    cmds = _compress_commands()
    assert len(cmds) == 2
    help_text = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    for cmd in cmds:
        flags = set(re.findall(r"(?<!\S)(--[a-z-]+|-o)(?=\s|=|$)", cmd))
        assert {"--max-drop", "--gate-on", "--junit", "--export"} <= flags
        for flag in flags:
            assert flag in help_text, f"{flag} from the CI example is not a compress option"
        targets = re.search(r"--export (\S+)", cmd).group(1).split(",")
        assert set(targets) <= set(EXPORTERS), targets
        assert re.search(r"--gate-on (point|lower-bound)", cmd)
