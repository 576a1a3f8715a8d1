import pytest
import torch

from compressor import zoo
from compressor.errors import CompressorError
from compressor.graph import capture
from compressor.io import load_model

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
