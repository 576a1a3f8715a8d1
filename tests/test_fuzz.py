"""Property-based fuzzing (hypothesis): corrupted model files, recipe values and command-line values.

Whatever the bytes or values, the outcome is a loaded model / a valid recipe, or a
`CompressorError` (exit 2) that names the problem: never another exception (a traceback, exit 1)
and never code from the file running.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
from crafted import QUICK, checkpoint, previous_run, run_cli, snapshot, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.api import OVERRIDES, _with_arguments
from compressor.cli import _ints, _preprocess
from compressor.errors import CompressorError
from compressor.io import load_model
from compressor.recipe import recipe_from_dict
from exporters import EXPORTERS

# 40 fixed examples per property in the default run (deterministic); FUZZ_EXAMPLES=500 is a longer random hunt
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 40)), deadline=None,
                derandomize="FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
# whole CLI runs cost more (each loads a model): fewer fixed examples by default
CLI_FUZZ = settings(FUZZ, max_examples=int(os.environ.get("FUZZ_EXAMPLES", 15)))


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("originals")
    checkpoint(d / "tiny.pt")
    ep = torch.export.export(tiny_model(), (torch.zeros(2, 1, 28, 28),))
    torch.export.save(ep, d / "tiny.pt2")
    return {suffix: (d / f"tiny{suffix}").read_bytes() for suffix in (".pt", ".pt2")}


@st.composite
def corrupted(draw, data: bytes) -> bytes:
    """Truncated, bytes overwritten, or bytes inserted: what a bad download or disk does."""
    kind = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    at = draw(st.integers(0, len(data) - 1))
    chunk = draw(st.binary(min_size=1, max_size=64))
    return data[:at] + chunk + data[at + (len(chunk) if kind == "overwrite" else 0):]


def _load_or_refuse(path: Path) -> None:
    try:
        load_model(path)
    except CompressorError as e:
        assert path.name in str(e) or "architecture" in str(e) or "weight" in str(e), str(e)


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
@FUZZ
@given(data=st.data())
def test_a_corrupted_model_file_loads_or_is_refused_by_name(originals, tmp_path, suffix, data):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(data.draw(corrupted(originals[suffix])))
    _load_or_refuse(path)


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
@CLI_FUZZ
@given(data=st.data())
def test_a_corrupted_model_through_the_cli_is_exit_2_and_leaves_the_folder_as_it_was(originals, tmp_path, suffix,
                                                                                   data):
    """The whole command: refused by name, or (a byte that did not matter) loaded and then stopped by
    the missing data; either way exit 2, no traceback, no warning, the previous run untouched."""
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    model, out = case / f"model{suffix}", case / "out"
    model.write_bytes(data.draw(corrupted(originals[suffix])))
    previous_run(out)
    before = snapshot(out)
    missing = str(case / "no_data")
    result = run_cli([str(model), "--calib", missing, "--eval", missing, "-o", str(out), "-q"])
    assert result.exit_code == 2 and "Traceback" not in result.output and not result.warnings, result.output
    assert model.name in result.output or "no_data" in result.output or "architecture" in result.output, result.output
    assert snapshot(out) == before


@CLI_FUZZ
@given(max_drop=st.text(alphabet="0123456789.-+einfa", max_size=6), sizes=st.text(alphabet="0123456789,-x", max_size=6))
def test_flag_text_through_the_cli_is_exit_2_naming_the_flag_or_stops_at_the_data(originals, tmp_path, max_drop,
                                                                                  sizes):
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    (case / "tiny.pt").write_bytes(originals[".pt"])
    out = case / "out"
    previous_run(out)
    before = snapshot(out)
    missing = str(case / "no_data")
    result = run_cli([str(case / "tiny.pt"), "--max-drop", max_drop, "--batch-sizes", sizes,
                      "--calib", missing, "--eval", missing, "-o", str(out), "-q"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output and not result.warnings, result.output
    assert any(named in text for named in ("--max-drop", "--batch-sizes", "max-drop", "batch-sizes", "no_data")), text
    assert snapshot(out) == before


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**6), st.text(max_size=4),
                    st.none(), st.booleans())
targets = st.lists(st.one_of(st.sampled_from(sorted(EXPORTERS)), st.text(max_size=6)), max_size=4)


@FUZZ
@given(max_drop=numbers, gate_on=st.one_of(st.sampled_from(["point", "lower-bound"]), st.text(max_size=8)),
       batch_sizes=st.one_of(st.lists(st.integers(-2, 64), max_size=4), numbers), threads=numbers,
       max_images=numbers, export=st.one_of(targets, numbers), optional=targets,
       schema=st.one_of(st.just(1), st.integers(-3, 200)))
def test_recipe_values_validate_or_name_the_key(max_drop, gate_on, batch_sizes, threads, max_images, export,
                                                optional, schema):
    data = {"schema_version": schema, "name": "fuzz", "passes": [{"pass": "reparam.fold_bn"}], "export": export,
            "optional_export": optional, "gate": {"max_drop": max_drop, "gate_on": gate_on},
            "benchmark": {"batch_sizes": batch_sizes, "threads": threads},
            "calibration": {"max_images": max_images}}
    try:
        rec = recipe_from_dict(data, source="fuzz.yaml")
    except CompressorError as e:
        assert str(e).startswith("fuzz.yaml: invalid recipe:"), str(e)
        return
    assert rec.gate.max_drop is None or (math.isfinite(rec.gate.max_drop) and rec.gate.max_drop >= 0)
    assert rec.benchmark.batch_sizes and min(rec.benchmark.batch_sizes) >= 1 and rec.benchmark.threads >= 1
    assert rec.export and set(rec.optional_export) <= set(rec.export) <= set(EXPORTERS)
    assert recipe_from_dict(rec.to_yaml_dict()) == rec  # what a run writes loads back as the same recipe


@FUZZ
@given(values=st.fixed_dictionaries({}, optional={k: numbers for k in OVERRIDES}))
def test_command_line_values_validate_or_name_the_flag(values):
    from compressor.recipe import load_recipe

    try:
        _with_arguments(load_recipe("fold-bn"), **values)
    except CompressorError as e:
        assert any(flag in str(e) for _, flag in OVERRIDES.values()), str(e)


flag_text = st.one_of(st.text(alphabet="0123456789,.x-+enaimgt ", max_size=12), st.text(max_size=8))


@FUZZ
@given(size=st.one_of(st.none(), flag_text), channels=st.one_of(st.none(), st.integers(-2, 5)),
       mean=st.one_of(st.none(), flag_text), std=st.one_of(st.none(), flag_text), sizes=flag_text)
def test_preprocessing_and_integer_flags_parse_or_name_the_flag(size, channels, mean, std, sizes):
    try:
        spec = _preprocess(size, channels, mean, std)
        assert all(math.isfinite(v) for v in (*spec.mean, *spec.std)) and all(s > 0 for s in spec.std)
    except CompressorError as e:
        assert any(flag in str(e) for flag in ("--size", "--channels", "--mean", "--std")), str(e)
    try:
        assert all(isinstance(v, int) for v in _ints(sizes, "--batch-sizes"))
    except CompressorError as e:
        assert "--batch-sizes" in str(e)


def test_quick_recipe_of_the_fault_suites_is_valid():
    import yaml

    assert recipe_from_dict(yaml.safe_load(QUICK)).benchmark.min_seconds == 0
