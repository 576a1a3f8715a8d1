import torch

from compressor.graph import capture
from exporters import get_exporter


def test_torch_program_round_trips_with_a_dynamic_batch(vit_tiny, tmp_path):
    g = capture(vit_tiny, torch.randn(2, 1, 28, 28))
    art = get_exporter("torch").export(g, tmp_path / "model.pt2", "fp32")
    run = art.runner(2)
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(torch.from_numpy(run(x.numpy())), g(x), rtol=1e-5, atol=1e-5)
    assert art.size_bytes > sum(p.numel() * 4 for p in vit_tiny.parameters())
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]  # no temp file left beside it


def test_a_pruning_recipe_end_to_end_ships_onnx_and_torch_artifacts(tmp_path):
    import compressor
    from compressor.recipe import recipe_from_dict
    from tests.conftest import ROOT

    recipe = recipe_from_dict({"name": "structured-short", "export": ["onnx", "torch"],
                               "benchmark": {"batch_sizes": [8], "runs": 3, "warmup": 1, "min_seconds": 0},
                               "passes": [{"pass": "prune.structured", "sparsity": 0.3},
                                          {"pass": "finetune.distill", "steps": 10}]})
    res = compressor.compress(ROOT / "vit_mnist.pt", recipe=recipe, out_dir=tmp_path / "out", calib_size=128)
    arts = {a["target"]: a for a in res.report["artifacts"]}
    assert {a["path"] for a in arts.values()} == {"model.onnx", "model.pt2"}
    assert arts["onnx"]["size_ratio_vs_baseline"] < 0.8  # heads and channels are gone from the file
    assert abs(arts["onnx"]["accuracy"] - arts["torch"]["accuracy"]) <= 0.2  # same graph, two runtimes
    assert arts["torch"]["accuracy"] > 95.0
    summary = res.report["passes"][0]["summary"]
    assert summary["params_after"] < 0.8 * summary["params_before"]
