import torch

from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from compressor.passes.prune.block import allocate, block_mask, blocks_of, distortion_curve, refit_kept


def test_blocks_of_and_block_mask_agree_on_the_tiling():
    w = torch.arange(8 * 12.0).reshape(8, 12)
    b = blocks_of(w, 4, 3)
    assert b.shape == (2, 4, 12)
    assert torch.equal(b[1, 2], w[4:8, 6:9].flatten())
    keep = torch.zeros(2, 4, dtype=torch.bool)
    keep[1, 2] = True
    mask = block_mask(keep, 4, 3)
    assert mask.sum() == 12 and mask[4:8, 6:9].all()


def test_distortion_curve_is_the_formula_at_every_k():
    g0 = torch.Generator().manual_seed(0)
    w, g = torch.randn(8, 8, generator=g0), torch.randn(8, 8, generator=g0)
    order, curve = distortion_curve(w, g, 4, 4, "taylor", lam=1e-3)
    assert len(curve) == 5 and curve[0] == 0
    for k in range(5):
        keep = torch.ones(4, dtype=torch.bool)
        keep[order[:k]] = False
        dw = -(w * ~block_mask(keep.reshape(2, 2), 4, 4)).double()
        gd = g.double()
        expect = ((dw * gd) ** 2).mean() + 0.5 * ((gd * dw).sum() ** 2 + 1e-3 * (dw**2).sum())
        assert torch.isclose(curve[k], expect)
    scores = (blocks_of(w, 4, 4) * blocks_of(g, 4, 4)).abs().mean(-1).flatten()
    assert torch.equal(scores[order], scores.sort().values)  # least salient block goes first


def test_allocation_meets_the_target_and_prunes_cheap_layers_more():
    k = torch.arange(11, dtype=torch.float64)
    cheap, costly = 0.01 * k**2, 1.0 * k**2
    removed = allocate([cheap, costly], target=0.5, floor=0.05)
    assert sum(removed) >= 10
    assert removed[0] > removed[1]
    assert max(removed) <= 9  # 5 % floor: 10 blocks keep at least one... int(10 * 0.95) = 9


def test_block_pass_on_the_mnist_vit(mnist_vit):
    model, calib, x, y = mnist_vit
    g = capture(model, x[:2])
    ctx = PassContext(calib=calib, calib_limit=128)
    PASSES["prune.block"](PASSES["prune.block"].Params(sparsity=0.3, block=[16, 16])).run(g, ctx)
    summary = ctx.log[-1].summary
    assert abs(summary["achieved"] - 0.3) < 0.05
    assert summary["pruned_layers"] == 16 and "head" in summary["skipped"]
    notes = list(g.annotated("sparsity"))
    assert len(notes) == 16
    for node, note in notes:
        w = g.attr(node.args[1])
        tiles = blocks_of(w, 16, 16)
        alive = (tiles != 0).any(-1)
        assert torch.equal(alive, blocks_of(note["mask"].float(), 16, 16).any(-1))  # whole blocks only
    acc = float((g(x[:300]).argmax(1) == y[:300]).float().mean())
    assert acc > 0.2  # one-shot on a 64-wide model costs a lot (see benches/prune.py); not destroyed


def test_refit_minimises_the_layer_output_error_for_the_mask():
    g0 = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 32, generator=g0) @ torch.randn(32, 32, generator=g0)  # correlated inputs
    w = torch.randn(16, 32, generator=g0)
    keep = torch.rand(2, 4, generator=g0) > 0.5
    mask = block_mask(keep, 8, 8)
    new = refit_kept(w, mask, x.double().T @ x.double(), 8, damp=1e-6)
    assert torch.equal(new != 0, mask & (new != 0)) and (new[~mask] == 0).all()
    err = lambda v: float(((x @ (w - v).T) ** 2).mean())  # noqa: E731
    assert err(new) < 0.7 * err(w * mask)
    wiggle = new + 1e-2 * torch.randn(new.shape, generator=g0) * mask  # any other kept values do worse
    assert err(new) < err(wiggle)
