import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor import zoo
from compressor.graph import Graph, capture, decompose_sdpa


@pytest.mark.parametrize("name", ["vit_mnist", "vit_mnist_sdpa", "resnet_mnist"])
def test_capture_matches_eager_with_dynamic_batch(name):
    torch.manual_seed(0)
    m = zoo.build(name, **({"depth": 2} if "vit" in name else {})).eval()
    g = capture(m, torch.randn(2, 1, 28, 28))
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(g(x), m(x), atol=1e-5, rtol=1e-5)


def test_patterns_and_module_paths(vit_tiny):
    g = capture(vit_tiny, torch.randn(2, 1, 28, 28))
    ln_linear = g.match("layer_norm", "linear")
    assert sorted(Graph.module_path(c[1]) for c in ln_linear) == [
        "blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.1.mlp.fc1"]
    mlps = g.match("linear", "gelu", "linear")
    assert [Graph.module_path(c[2]) for c in mlps] == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]
    assert g.count("softmax") == 2


def test_cnn_conv_bn_pattern():
    g = capture(zoo.build("resnet_mnist").eval(), torch.randn(2, 1, 28, 28))
    assert len(g.match("conv", "batch_norm")) == g.count("batch_norm") > 0


def test_sdpa_decomposition_is_exact_and_exposes_softmax(vit_tiny):
    m = zoo.build("vit_mnist_sdpa", depth=2).eval()
    m.load_state_dict(vit_tiny.state_dict())
    g = capture(m, torch.randn(2, 1, 28, 28))
    assert g.count("softmax") == 0 and g.count("sdpa") == 2
    assert decompose_sdpa(g) == 2
    assert g.count("sdpa") == 0 and len(g.match("matmul", "softmax", "matmul")) == 0  # scale sits between
    assert g.count("softmax") == 2 and g.count("matmul") == 4
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(g(x), vit_tiny(x), atol=1e-5, rtol=1e-5)


class MaskedAttention(nn.Module):
    def __init__(self, causal: bool, masked: bool) -> None:
        super().__init__()
        self.causal, self.masked = causal, masked
        self.proj = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.proj(x).unsqueeze(1).chunk(3, dim=-1)
        mask = None
        if self.masked:
            mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril(diagonal=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)


@pytest.mark.parametrize("causal, masked", [(True, False), (False, True)])
def test_sdpa_decomposition_keeps_masks(causal, masked):
    torch.manual_seed(0)
    m = MaskedAttention(causal, masked).eval()
    g = capture(m, torch.randn(2, 6, 8))
    decompose_sdpa(g)
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(g(x), m(x), atol=1e-5, rtol=1e-5)
