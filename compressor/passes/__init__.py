"""The pass registry. Importing this package registers the built-in passes."""

from compressor.passes.base import PASSES, Pass, PassContext, PassParams, PassRecord, register_pass
from compressor.passes.finetune import distill  # noqa: F401  (registers finetune.distill)
from compressor.passes.prune import block, nm, structured  # noqa: F401  (registers prune.*)
from compressor.passes.quant import (  # noqa: F401  (registers the quant.* passes)
    adaround,
    aphq,
    bias_correction,
    dopq,
    int8_ptq,
    int_only,
    repq,
)
from compressor.passes.reparam import channel_idle, equalize, fold_bn, repavit  # noqa: F401  (registers reparam.*)
from compressor.passes.sparse import kernels  # noqa: F401  (registers sparse.kernels)

__all__ = ["PASSES", "Pass", "PassContext", "PassParams", "PassRecord", "register_pass"]
