import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.graph import capture
from compressor.kernels import BLOCK_SPARSE_LINEAR, BlockSparseWeight, block_sparse_linear, kernel_available
from compressor.kernels import block_sparse as bs
from compressor.passes import PassContext
from compressor.passes.sparse.kernels import SparseKernels


def _block_sparse(n: int, k: int, block: tuple[int, int], sparsity: float, seed: int = 0) -> torch.Tensor:
    """Random (n, k) weight with a `sparsity` fraction of its (ragged-edged) blocks zeroed."""
    g = torch.Generator().manual_seed(seed)
    bh, bw = block
    keep = torch.rand(-(-n // bh), -(-k // bw), generator=g) >= sparsity
    mask = keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:n, :k]
    return torch.randn(n, k, generator=g) * mask


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) if b.numel() else 0.0


def test_kernel_builds_here():
    ok, why = kernel_available()
    assert ok, why


@pytest.mark.parametrize(("m", "k", "n", "block", "sparsity"), [
    (197, 384, 1536, (16, 16), 0.75),   # a ViT-S fc1 at batch 1
    (64, 256, 96, (32, 32), 0.5),
    (37, 50, 70, (16, 16), 0.5),         # ragged: K and N not multiples of the block, M not of the tile
    (5, 33, 24, (8, 8), 0.6),
    (100, 64, 48, (32, 16), 0.0),        # dense: every block kept
    (100, 64, 48, (16, 32), 1.0),        # all zero: output is the bias
    (0, 64, 48, (16, 16), 0.5),          # no tokens
])
@pytest.mark.parametrize("with_bias", [True, False])
def test_kernel_equals_dense_linear(m, k, n, block, sparsity, with_bias):
    w = _block_sparse(n, k, block, sparsity)
    x = torch.randn(m, k)
    bias = torch.randn(n) if with_bias else None
    packed = BlockSparseWeight.from_dense(w, block)
    assert torch.equal(packed.to_dense(), w)
    assert packed.block_sparsity == pytest.approx(float(sparsity), abs=0.35)  # ragged grids are small
    assert _rel_err(block_sparse_linear(x, packed, bias), F.linear(x, w, bias)) < 1e-5


def test_leading_dims_and_exact_block_counts():
    w = _block_sparse(128, 96, (32, 32), 0.5, seed=3)
    packed = BlockSparseWeight.from_dense(w, (32, 32))
    kept = int((w.reshape(4, 32, 3, 32).abs().sum((1, 3)) > 0).sum())
    assert packed.values.shape == (kept, 32, 32) and packed.block_sparsity == pytest.approx(1 - kept / 12)
    x, bias = torch.randn(2, 3, 17, 96), torch.randn(128)
    y = block_sparse_linear(x, packed, bias)
    assert y.shape == (2, 3, 17, 128) and _rel_err(y, F.linear(x, w, bias)) < 1e-5


def test_inputs_the_kernel_does_not_take_run_dense():
    w = _block_sparse(48, 32, (16, 16), 0.5)
    x = torch.randn(3, 32, dtype=torch.float64)
    y = block_sparse_linear(x, BlockSparseWeight.from_dense(w, (16, 16)))
    assert y.dtype == torch.float64 and _rel_err(y, F.linear(x, w.double())) < 1e-6


def test_block_heights_the_kernel_cannot_tile_are_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        BlockSparseWeight.from_dense(torch.randn(12, 12), (4, 4))


def test_malformed_block_index_is_refused_not_read_out_of_bounds():
    packed = BlockSparseWeight.from_dense(_block_sparse(64, 64, (16, 16), 0.5), (16, 16))
    x = torch.randn(4, 64)
    bad_col = packed.col_idx.clone()
    bad_col[0] = 4  # only 4 block columns: 0..3
    with pytest.raises(ValueError, match="outside"):
        BLOCK_SPARSE_LINEAR(x, packed.values, packed.row_ptr, bad_col, None, 64, 16, 16)
    bad_rows = packed.row_ptr.clone()
    bad_rows[-1] += 1
    with pytest.raises(ValueError, match="row_ptr"):
        BLOCK_SPARSE_LINEAR(x, packed.values, bad_rows, packed.col_idx, None, 64, 16, 16)


def test_fallback_without_a_compiler_warns_once_and_stays_right(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv("COMPRESSOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(bs, "_status", None)
    monkeypatch.setattr(bs, "_lib", None)
    monkeypatch.setattr(bs, "_warned", False)
    ok, why = kernel_available()
    assert not ok and "no-such-c++" in why
    w = _block_sparse(64, 48, (16, 16), 0.5)
    packed = BlockSparseWeight.from_dense(w, (16, 16))
    x, bias = torch.randn(3, 10, 48), torch.randn(64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = block_sparse_linear(x, packed, bias)
        y2 = block_sparse_linear(x, packed, None)
    assert [str(c.message) for c in caught if "dense F.linear" in str(c.message)] == [
        f"block-sparse kernel unavailable, running dense F.linear instead: {why}"]
    assert _rel_err(y1, F.linear(x, w, bias)) < 1e-6 and _rel_err(y2, F.linear(x, w)) < 1e-6


def test_a_second_load_uses_the_cache_without_compiling(monkeypatch):
    assert kernel_available()[0]
    cxx, version = bs._compiler()
    built = bs._build(cxx, version)

    def no_compiler(*a, **k):
        raise AssertionError("recompiled although the library is cached")

    monkeypatch.setattr(bs.subprocess, "run", no_compiler)
    assert bs._build(cxx, version) == built and built.exists()


class _Packed(nn.Module):
    def __init__(self, packed: BlockSparseWeight, bias: torch.Tensor) -> None:
        super().__init__()
        self.n, (self.bh, self.bw) = packed.shape[0], packed.block
        for name in ("values", "row_ptr", "col_idx"):
            self.register_buffer(name, getattr(packed, name))
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = BLOCK_SPARSE_LINEAR(x, self.values, self.row_ptr, self.col_idx, self.bias, self.n, self.bh, self.bw)
        return torch.relu(y)


def test_custom_op_survives_export_save_and_load(tmp_path):
    w = _block_sparse(96, 64, (32, 32), 0.5)
    model, x = _Packed(BlockSparseWeight.from_dense(w, (32, 32)), torch.randn(96)), torch.randn(2, 9, 64)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    assert any(n.target is BLOCK_SPARSE_LINEAR for n in ep.graph.nodes)
    torch.export.save(ep, tmp_path / "m.pt2")
    loaded = torch.export.load(tmp_path / "m.pt2").module()
    x5 = torch.randn(5, 9, 64)
    assert _rel_err(loaded(x5), torch.relu(F.linear(x5, w, model.bias))) < 1e-5


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc2(F.gelu(self.fc1(x))).mean(1))


@pytest.fixture
def pruned_mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = _Mlp().eval()
    with torch.no_grad():
        model.fc1.weight.copy_(_block_sparse(128, 64, (16, 16), 0.75, seed=1))
        model.fc2.weight.copy_(_block_sparse(64, 128, (16, 16), 0.5, seed=2))
    return model, torch.randn(4, 12, 64)


def _run_pass(graph, **params):
    ctx = PassContext()
    SparseKernels(SparseKernels.Params(rounds=2, **params)).run(graph, ctx)
    return ctx.log[0].summary


def test_pass_swaps_block_sparse_layers_and_keeps_outputs(pruned_mlp, tmp_path):
    model, x = pruned_mlp
    g = capture(model, x)
    note = {"pattern": "block", "block": [16, 16], "axis": 1}
    g.annotate(next(n for n in g.find("linear") if g.module_path(n) == "fc1"), "sparsity", note)
    summary = _run_pass(g, min_speedup=0.0)  # any measured speed counts: the swap is forced
    by_module = {lay["module"]: lay for lay in summary["layers"]}
    assert summary["available"] and summary["swapped"] == 2
    assert by_module["fc1"]["block"] == [16, 16] and by_module["fc1"]["block_sparsity"] == pytest.approx(0.75, abs=0.2)
    assert by_module["fc2"]["decision"] == "sparse" and by_module["fc2"]["input"] == [8, 12, 128]  # batch_size 8
    assert by_module["head"]["decision"] == "dense" and "min_sparsity" in by_module["head"]["why"]
    assert g.count(BLOCK_SPARSE_LINEAR) == 2 and g.count("linear") == 1
    for xb in (x, torch.randn(7, 12, 64)):
        assert _rel_err(g(xb), model(xb)) < 1e-5
    ep = torch.export.export(g.gm, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(ep, tmp_path / "swapped.pt2")
    assert _rel_err(torch.export.load(tmp_path / "swapped.pt2").module()(x), model(x)) < 1e-5


def test_pass_decisions_follow_the_recorded_timings(pruned_mlp):
    model, x = pruned_mlp
    g = capture(model, x)
    summary = _run_pass(g, min_speedup=1e9)  # nothing can be this much faster: nothing is swapped
    assert summary["swapped"] == 0 and g.count(BLOCK_SPARSE_LINEAR) == 0
    timed = [lay for lay in summary["layers"] if "speedup" in lay]
    assert {lay["module"] for lay in timed} == {"fc1", "fc2"}
    for lay in timed:
        assert lay["decision"] == "dense" and lay["max_rel_err"] < 1e-5
        assert lay["speedup"] == pytest.approx(lay["dense_ms"] / lay["sparse_ms"], rel=1e-2)
    g2 = capture(model, x)
    summary = _run_pass(g2, min_speedup=1.05)  # real decision: whatever it is, it must match the timings
    for lay in summary["layers"]:
        if "speedup" in lay:
            assert (lay["decision"] == "sparse") == (lay["dense_ms"] / lay["sparse_ms"] >= 1.05 - 1e-3)
    assert _rel_err(g2(x), model(x)) < 1e-5


def test_pass_leaves_nm_layers_and_a_missing_kernel_alone(pruned_mlp, monkeypatch):
    model, x = pruned_mlp
    g = capture(model, x)
    fc1 = next(n for n in g.find("linear") if g.module_path(n) == "fc1")
    g.annotate(fc1, "sparsity", {"pattern": "2:4", "axis": 1})
    summary = _run_pass(g, min_speedup=0.0)
    assert "2:4" in next(lay["why"] for lay in summary["layers"] if lay["module"] == "fc1")
    assert summary["swapped"] == 1
    import compressor.passes.sparse.kernels as pass_module

    monkeypatch.setattr(pass_module, "kernel_available", lambda: (False, "no compiler (simulated)"))
    g2 = capture(model, x)
    before = g2.gm.code
    summary = _run_pass(g2, min_speedup=0.0)
    assert summary == {**summary, "available": False, "kernel": "no compiler (simulated)", "swapped": 0}
    assert g2.gm.code == before
