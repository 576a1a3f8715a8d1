import pytest

from compressor.errors import CompressorError
from compressor.recipe import list_recipes, load_recipe


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_bundled_recipe_loads_with_defaults():
    r = load_recipe("int8-ptq")
    assert [p.name for p in r.passes] == ["reparam.fold_bn", "quant.int8_ptq"] and r.export == ["onnx"]
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
