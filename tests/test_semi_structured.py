import pytest
import torch
import torch.nn.functional as F

from compressor.kernels.semi_structured import (
    semi_structured_available,
    semi_structured_linear,
    semi_structured_weight,
)
from compressor.passes.prune.nm import magnitude_mask

AVAILABLE, REASON = semi_structured_available()


def test_availability_names_the_reason_here():
    if not torch.cuda.is_available():
        assert not AVAILABLE and "CUDA" in REASON


@pytest.mark.skipif(not AVAILABLE, reason=REASON or "semi-structured sparsity available")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_linear_matches_dense_on_gpu(dtype):
    w = torch.randn(256, 128, device="cuda", dtype=dtype)
    w = w * magnitude_mask(w, 2, 4)
    x = torch.randn(4, 64, 128, device="cuda", dtype=dtype)
    out = semi_structured_linear(x, semi_structured_weight(w), None)
    torch.testing.assert_close(out, F.linear(x, w), rtol=2e-2, atol=1e-1)


def test_a_dense_weight_is_refused_before_any_gpu_work():
    with pytest.raises(ValueError, match="2:4"):
        semi_structured_weight(torch.ones(8, 8))
