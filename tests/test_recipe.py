import pytest
import yaml

from compressor.api import _with_arguments
from compressor.errors import CompressorError
from compressor.passes import PassRecord
from compressor.recipe import list_recipes, load_recipe
from compressor.report.report import resolved_recipe


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_bundled_recipe_loads_with_defaults():
    r = load_recipe("int8-ptq")
    assert [p.name for p in r.passes] == ["reparam.fold_bn", "quant.int8_ptq", "quant.bias_correction"]
    assert r.export == ["onnx"]
    d = r.to_yaml_dict()
    assert d["passes"][1]["reduce_range"] == "auto" and d["passes"][1]["percentile"] == 99.99
    assert "int8-ptq" in list_recipes()


def test_every_bundled_recipe_validates():
    assert {"int8-ptq", "fold-bn", "2of4", "2of4-int8"} <= set(list_recipes())
    for name in list_recipes():
        assert load_recipe(name).passes


def test_unknown_recipe_lists_bundled():
    with pytest.raises(CompressorError, match=r"unknown recipe 'nope'.*int8-ptq"):
        load_recipe("nope")


def test_unknown_pass_names_known_passes(tmp_path):
    p = _write(tmp_path, "name: x\npasses:\n  - pass: quant.magic\n")
    with pytest.raises(CompressorError, match=r"r.yaml \(line 3\).*unknown pass 'quant.magic'.*quant.int8_ptq"):
        load_recipe(p)


def test_unknown_pass_key_gives_line_and_allowed(tmp_path):
    p = _write(tmp_path, "name: x\npasses:\n  - pass: quant.int8_ptq\n    w_bitz: 4\n")
    with pytest.raises(CompressorError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "passes.0.w_bitz (line 4): unknown key" in msg and "activation_observer" in msg


def test_wrong_type_and_bad_choice(tmp_path):
    p = _write(tmp_path, "name: x\npasses:\n  - pass: quant.int8_ptq\n    activation_observer: kl\n"
                         "    percentile: lots\n")
    with pytest.raises(CompressorError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "activation_observer (line 4)" in msg and "'minmax', 'percentile' or 'mse'" in msg
    assert "percentile (line 5)" in msg and "valid number" in msg


def test_gate_metric_is_a_known_choice(tmp_path):
    with pytest.raises(CompressorError, match=r"gate.metric \(line 5\).*'top1' or 'agreement'"):
        load_recipe(_write(tmp_path, "name: x\npasses:\n  - pass: quant.int8_ptq\ngate:\n  metric: top5\n"))


def test_unknown_top_level_key_and_bad_yaml(tmp_path):
    with pytest.raises(CompressorError, match=r"exports \(line 4\): unknown key; allowed: .*export"):
        load_recipe(_write(tmp_path, "name: x\npasses:\n  - pass: quant.int8_ptq\nexports: [onnx]\n"))
    with pytest.raises(CompressorError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "name: [x\n"))
    with pytest.raises(CompressorError, match="passes"):
        load_recipe(_write(tmp_path, "name: x\npasses: []\n"))


def test_export_options_are_validated_against_the_target(tmp_path):
    base = "name: x\npasses:\n  - pass: reparam.fold_bn\n"
    bad_target = tmp_path / "t.yaml"
    bad_target.write_text(base + "export_options:\n  tflite: {}\n")
    with pytest.raises(CompressorError, match=r"unknown export target 'tflite'.*coreml"):
        load_recipe(bad_target)
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text(base + "export_options:\n  coreml: {minimum_deployment_target: iOS17, palette: 4}\n")
    with pytest.raises(CompressorError, match=r"palette.*unknown key"):
        load_recipe(bad_key)
    good = tmp_path / "g.yaml"
    good.write_text(base + "export: [tvm]\nexport_options:\n  tvm: {batch: 4}\n")
    rec = load_recipe(good)
    from exporters import get_exporter

    assert get_exporter("tvm", **rec.export_options["tvm"]).options.batch == 4
    with pytest.raises(CompressorError, match="export options for tvm: batch"):
        get_exporter("tvm", batch=0)


@pytest.mark.parametrize("name", sorted(list_recipes()))
def test_resolved_recipe_records_what_ran_and_loads_again(tmp_path, name):
    """The recipe.yaml a run writes, for every bundled recipe with command-line overrides: it loads
    with the same validation and describes exactly the run (overrides, resolved pass parameters)."""
    rec = _with_arguments(load_recipe(name), max_drop=0.5, gate_on="lower-bound", calib_size=64, batch_sizes=[8],
                          threads=1, export=["onnx", "torch"], optional_export=["torch"])
    ran = [PassRecord(e.name, e.build().params.model_dump(mode="json")) for e in rec.passes]
    data = {"calibration": {"source": "x", "count": 64, "available": 500, "sha256": "ab" * 32}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(resolved_recipe(rec, ran, data), sort_keys=False))
    again = load_recipe(tmp_path / "recipe.yaml")
    assert again.gate.max_drop == 0.5 and again.gate.gate_on == "lower-bound" and again.calibration.max_images == 64
    assert again.benchmark.batch_sizes == [8] and again.export == ["onnx", "torch"]
    assert again.optional_export == ["torch"]
    assert [e.build().params for e in again.passes] == [e.build().params for e in rec.passes]
    assert again.model_dump(exclude={"resolved", "passes"}) == rec.model_dump(exclude={"resolved", "passes"})
    assert again.resolved["calibration"]["sha256"] == "ab" * 32


def test_schema_version_is_checked(tmp_path):
    with pytest.raises(CompressorError, match=r"schema_version.*reads recipe schema_version 1.*newer compressor"):
        load_recipe(_write(tmp_path, "schema_version: 99\nname: x\npasses:\n  - pass: reparam.fold_bn\n"))


def test_command_line_values_are_validated_like_recipe_values():
    rec = load_recipe("int8-ptq")
    for given, message in (({"max_drop": float("nan")}, "--max-drop nan: Input should be a finite number"),
                           ({"max_drop": -5.0}, "--max-drop -5.0: Input should be greater than or equal to 0"),
                           ({"batch_sizes": [0]}, "--batch-sizes [0]: batch sizes must be >= 1"),
                           ({"export": ["onnx", "nope"]}, "--export ['onnx', 'nope']: unknown export target 'nope'"),
                           ({"optional_export": ["tvm"]}, "--optional-export ['tvm']: tvm is not among")):
        with pytest.raises(CompressorError) as e:
            _with_arguments(rec, **given)
        assert message in str(e.value)


def test_with_pass_param_reaches_only_the_passes_that_take_it() -> None:
    """2of4-int8's pruning guards on agreement; its BatchNorm fold and int8 PTQ do not, and must not
    receive a key their parameters would reject."""
    rec = load_recipe("2of4-int8").with_pass_param("min_agreement", None)
    guarded = {e.name: e.params.get("min_agreement", "absent") for e in rec.passes}
    assert guarded == {"prune.nm": None, "reparam.fold_bn": "absent", "quant.int8_ptq": "absent"}
    assert rec.passes[0].build().params.min_agreement is None  # still valid parameters
    assert load_recipe("2of4-int8").passes[0].build().params.min_agreement == 95.0  # the original is untouched


def test_layer_rules_are_validated_with_the_file_and_line(tmp_path):
    text = ("name: mixed\npasses:\n  - pass: quant.int8_ptq\n    layers:\n      - {op: linear, weight_bits: 4}\n"
            "      - {match: head, bits: 4}\n")
    with pytest.raises(CompressorError) as e:
        load_recipe(_write(tmp_path, text))
    msg = str(e.value)
    assert "r.yaml" in msg and "passes.0.layers.1.bits (line 6): unknown key; allowed: match, op, quantize, " \
                                "weight_bits" in msg
    good = load_recipe(_write(tmp_path, text.replace("{match: head, bits: 4}", "{match: head, quantize: false}")))
    rules = good.to_yaml_dict()["passes"][0]["layers"]
    assert rules[0]["op"] == "linear" and rules[1] == {"op": None, "match": "head", "quantize": False,
                                                      "weight_bits": None}
