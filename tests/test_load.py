import sys
from pathlib import Path

import pytest
import torch

from compressor import zoo
from compressor.errors import CompressorError
from compressor.graph import capture
from compressor.io import load_model
from compressor.io.pt2 import _allowed_target, _arithmetic

X = torch.randn(2, 1, 28, 28)


@pytest.fixture(scope="module")
def files(tmp_path_factory, vit_tiny):
    d = tmp_path_factory.mktemp("models")
    arch, cfg = zoo.preset_config("vit_mnist")
    cfg["depth"] = 2
    torch.save({"format": "compressor.checkpoint", "version": 1, "arch": arch, "config": cfg,
                "state_dict": vit_tiny.state_dict(), "preprocess": {"size": [28, 28], "channels": 1,
                                                                   "mean": [0.1], "std": [0.3]}},
               d / "ckpt.pt")
    torch.save(vit_tiny.state_dict(), d / "sd.pt")
    torch.save(vit_tiny, d / "pickled.pt")
    torch.jit.save(torch.jit.trace(vit_tiny, X), d / "ts.pt")
    torch.export.save(torch.export.export(vit_tiny, (X,)), d / "m.pt2")
    (d / "notes.pt").write_text("hello, not a model")
    (d / "notes2.pt").write_text("not a model either")
    torch.save({"epoch": 3}, d / "no_weights.pt")
    return d


def _check(loaded, ref):
    g = capture(loaded.module, X)
    torch.testing.assert_close(g(X), ref(X))


def test_checkpoint_carries_architecture_and_preprocess(files, vit_tiny):
    loaded = load_model(files / "ckpt.pt")
    assert loaded.kind == "checkpoint" and loaded.preprocess.mean == (0.1,)
    _check(loaded, vit_tiny)


def test_state_dict_needs_arch(files, vit_tiny):
    with pytest.raises(CompressorError, match=r"bare state_dict.*--arch"):
        load_model(files / "sd.pt")
    with pytest.raises(CompressorError, match="do not fit architecture"):
        load_model(files / "sd.pt", arch="vit_mnist")  # the preset has depth 4, the file 2
    with pytest.raises(CompressorError, match="unknown architecture"):
        load_model(files / "sd.pt", arch="vit_huge")


def test_pickle_refused_without_trust_then_loaded(files, vit_tiny):
    with pytest.raises(CompressorError, match="--trust-pickle"):
        load_model(files / "pickled.pt")
    _check(load_model(files / "pickled.pt", trust_pickle=True), vit_tiny)


def test_exported_program_loads_without_trust_and_torchscript_needs_it(files, vit_tiny):
    loaded = load_model(files / "m.pt2")
    assert loaded.kind == "exported_program"
    _check(loaded, vit_tiny)
    with pytest.raises(CompressorError, match=r"TorchScript is a program.*--trust-pickle"):
        load_model(files / "ts.pt")
    loaded = load_model(files / "ts.pt", trust_pickle=True)
    assert loaded.kind == "torchscript"
    _check(loaded, vit_tiny)


@pytest.mark.parametrize("name, message", [("notes.pt", "not a PyTorch model file"),
                                           ("notes2.pt", "not a PyTorch model file"),
                                           ("no_weights.pt", "does not hold a model"),
                                           ("missing.pt", "not found")])
def test_bad_files_are_named(files, name, message):
    with pytest.raises(CompressorError, match=message) as e:
        load_model(files / name)
    assert name in str(e.value)


NET_SOURCE = ("import torch\n\n\nclass MyNet(torch.nn.Module):\n    def __init__(self):\n"
              "        super().__init__()\n        self.fc = torch.nn.Linear(4, 2)\n\n"
              "    def forward(self, x):\n        return self.fc(x.flatten(1))\n")


def _pickle_with_class_from(folder: Path, target: Path) -> None:
    """What a user's training script does: torch.save(model) with the class from its own folder."""
    sys.path.insert(0, str(folder))
    try:
        import my_net

        torch.save(my_net.MyNet(), target)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("my_net", None)


def test_trusted_pickle_imports_its_class_from_the_model_folder_or_the_current_one(tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "my_net.py").write_text(NET_SOURCE)
    _pickle_with_class_from(project, project / "net.pt")
    path_before = list(sys.path)
    monkeypatch.chdir(elsewhere)  # compress runs from another folder: the model's folder provides the class
    assert load_model(project / "net.pt", trust_pickle=True).kind == "pickled_module"
    assert sys.path == path_before
    sys.modules.pop("my_net", None)
    (project / "net.pt").rename(elsewhere / "net.pt")
    monkeypatch.chdir(project)  # the model elsewhere, run from the script's folder: the current folder provides it
    assert load_model(elsewhere / "net.pt", trust_pickle=True).kind == "pickled_module"
    sys.modules.pop("my_net", None)
    monkeypatch.chdir(tmp_path)  # neither: the message says which module is missing and what to save instead
    with pytest.raises(CompressorError, match=r"my_net was not found.*torch\.export\.save \(\.pt2\)"):
        load_model(elsewhere / "net.pt", trust_pickle=True)


def test_a_pickle_of_a_class_defined_in_a_script_names_main_and_the_fix(tmp_path):
    main = sys.modules["__main__"]

    class ScriptNet(torch.nn.Linear):
        pass

    ScriptNet.__module__, ScriptNet.__qualname__ = "__main__", "ScriptNet"
    main.ScriptNet = ScriptNet
    try:
        torch.save(ScriptNet(2, 2), tmp_path / "script.pt")
    finally:
        del main.ScriptNet
    with pytest.raises(CompressorError, match=r"defined in the script that saved it \(__main__\).*\.pt2"):
        load_model(tmp_path / "script.pt", trust_pickle=True)


@pytest.mark.parametrize("expr, safe", [
    ("Symbol('s77', positive=True, integer=True)", True),
    ("Mul(Integer(197), Symbol('s0', integer=True))", True),
    ("Max(1, s0) + FloorDiv(s1, 2) * 2.5e3", True),
    ("__import__('os').system('id')", False),
    ("eval(chr(105) + chr(100))", False),  # builds a string without quotes
    ("s1.__class__", False),
    ("Symbol('s1')*'aaaa'", False),  # a quoted string only as a call argument
    ("Symbol('s1'')')", False),
    ("(lambda: 0)()", False),
    ("open(0)", False),
])
def test_shape_expressions_are_arithmetic_only(expr, safe):
    assert _arithmetic(expr) is safe


@pytest.mark.parametrize("target, allowed", [
    ("torch.ops.aten.conv2d.default", True), ("torch.ops.compressor.quantize.default", True),
    ("_operator.getitem", True), ("math.trunc", True), ("torch.sym_max", True),
    ("torch.ops.higher_order.cond", True), ("torch.ops.aten.from_file.default", False), ("torch.load", False),
    ("torch.hub.load", False), ("os.system", False), ("_operator.methodcaller", False),
    ("torch.ops.myns.evil.default", False), ("#custom_extension", False), ("torch.ops.higher_order.run_code", False),
])
def test_program_operators_come_from_an_allow_list(target, allowed):
    assert _allowed_target(target) is allowed


def test_a_checkpoint_whose_generated_data_set_is_missing_says_how_to_write_it(tmp_path, monkeypatch) -> None:
    import compressor

    ckpt = torch.load(Path(__file__).resolve().parent.parent / "vit_mnist.pt", weights_only=True)
    torch.save({**ckpt, "dataset": "digits_not_written"}, tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompressorError, match=r"is not under .*make_data.py --only digits_not_written"):
        compressor.compress(tmp_path / "model.pt", recipe="int8-ptq", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
