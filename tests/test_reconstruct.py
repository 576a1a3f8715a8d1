import torch
import torch.nn.functional as F

from compressor.graph import capture
from compressor.passes.quant.quantizers import UniformQuantizer, fake_uniform
from compressor.passes.quant.reconstruct import (
    adaround_fake,
    adaround_init,
    adaround_weight,
    average_perturbation_hessian,
    float_overrides,
    full_run,
    partition_units,
    perturbation_direction,
    rectified_sigmoid,
    run_nodes,
)


def test_units_are_the_blocks_and_chain_to_the_model_output(vit_tiny):
    x = torch.randn(3, 1, 28, 28)
    g = capture(vit_tiny, x[:2])
    units = partition_units(g)
    assert [u.name for u in units] == ["patch_embed", "blocks.0", "blocks.1", "head"]
    y = x
    for u in units:  # each unit reads only its input (and constants)
        y = run_nodes(g, u.nodes, {u.input: y})
    torch.testing.assert_close(y, g(x))


def test_adaround_starts_at_the_float_weight_and_hard_rounding_is_its_own_fake_quant():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 32, generator=gen)
    q = UniformQuantizer.minmax(w, 4, axis=0)
    s, z = q.scale.reshape(-1, 1), q.zero_point.reshape(-1, 1)
    alpha = adaround_init(w, s)
    frac = w / s - torch.floor(w / s)
    code = w / s + z
    inside = (frac > 0.01) & (frac < 0.99) & (code >= 0) & (code <= 15)  # init clamps frac; the grid clamps codes
    torch.testing.assert_close(adaround_fake(w, s, z, 15, alpha)[inside], w[inside], rtol=0, atol=1e-5)
    alpha = alpha + torch.randn(alpha.shape, generator=gen)  # as if trained: some roundings flip
    hard = adaround_fake(w, s, z, 15, alpha, hard=True)
    assert torch.equal(fake_uniform(adaround_weight(w, s, alpha), s, z, 15), hard)
    up = (alpha >= 0) & (adaround_weight(w, s, alpha) > w)
    assert bool(up.any()) and bool(((rectified_sigmoid(alpha) >= 0) & (rectified_sigmoid(alpha) <= 1)).all())
    assert not torch.equal(hard, q.fake(w))  # it is not round-to-nearest


def _exact_hvp(g, node, x, v):
    """H·v of KL(p_FP ‖ p̂) with respect to the output of `node`, by double backward, per sample."""
    base = float_overrides(g)
    with torch.no_grad():
        env = full_run(g, x, base, torch.float64)
    logits_node = next(n for n in g.nodes if n.op == "output").args[0][0]
    log_p = F.log_softmax(env[logits_node] / 20, -1)
    later = [n for n in g.nodes if n.op == "call_function"]
    later = later[later.index(node) + 1:]

    def kl(value: torch.Tensor) -> torch.Tensor:
        logits = run_nodes(g, later, {**env, node: value}, base, torch.float64)
        return (log_p.exp() * (log_p - F.log_softmax(logits / 20, -1))).sum()

    return torch.autograd.functional.hvp(kl, env[node].clone(), v)[1]


def test_aph_equals_the_exact_hessian_vector_product_and_all_ones_is_its_null_space(mnist_vit):
    """|J⁺ − J⁻|/2ε averaged over samples is mean_n |H_n·v|. With APHQ's v = 1 at a block output
    of a pre-LN ViT, H·1 is zero (the next LayerNorm removes a per-token shift): only noise is left."""
    model, _, x, _ = mnist_vit
    x = x[:4]
    g = capture(model, x[:2])
    node = partition_units(g)[1].output
    eps = 1e-6
    h = average_perturbation_hessian(g, node, x, eps=eps, seed=3) / (2 * eps)
    v = perturbation_direction(torch.Size([4, *h.shape]), "rademacher", torch.Generator().manual_seed(3))
    exact = _exact_hvp(g, node, x, v).abs().mean(0).float()
    torch.testing.assert_close(h, exact, rtol=1e-3, atol=1e-3 * float(exact.abs().max()))
    ones = _exact_hvp(g, node, x, torch.ones_like(v)).abs().max()
    assert float(ones) < 1e-9 * float(exact.abs().max())
