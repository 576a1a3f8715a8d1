import torch
from torch import nn

from compressor import zoo
from compressor.graph import capture
from compressor.passes import PASSES, PassContext


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


def test_fold_bn_is_exact_on_the_cnn():
    torch.manual_seed(0)
    m = zoo.build("resnet_mnist").eval()
    _randomize_bn(m)
    g = capture(m, torch.randn(2, 1, 28, 28))
    n_bn = g.count("batch_norm")
    PASSES["reparam.fold_bn"]().run(g, ctx := PassContext())
    assert g.count("batch_norm") == 0 and ctx.log[0].summary["folded"] == n_bn
    assert not any("running_mean" in k for k in g.gm.state_dict())
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(g(x), m(x), rtol=1e-5, atol=1e-5)


def test_fold_linear_bn1d():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).eval()
    _randomize_bn(m)
    g = capture(m, torch.randn(2, 8))
    PASSES["reparam.fold_bn"]().run(g, PassContext())
    assert g.count("batch_norm") == 0
    x = torch.randn(5, 8)
    torch.testing.assert_close(g(x), m(x), rtol=1e-5, atol=1e-5)
