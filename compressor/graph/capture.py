"""Capture a model with `torch.export` into a `Graph`."""

from __future__ import annotations

import copy

import torch
from torch import nn

from compressor.errors import CompressorError
from compressor.graph.graph import Graph

BATCH = torch.export.Dim("batch", min=1, max=4096)


def capture(model: nn.Module | torch.export.ExportedProgram, example_input: torch.Tensor) -> Graph:
    """Export with a dynamic batch so artifacts serve any batch size; fall back to a static one.

    Some models (batch-dependent reshapes written with literal sizes) cannot be exported with a
    symbolic batch; they still compress, with the batch fixed to the example's.

    The graph owns copies of the weights: passes that train or edit constants in place (the
    distillation fine-tune) must not change the caller's model.
    """
    if isinstance(model, torch.export.ExportedProgram):
        return Graph(copy.deepcopy(model.module()), (example_input,), fixed_batch=program_batch(model))
    if isinstance(model, torch.jit.ScriptModule):
        ep = _from_torchscript(model, example_input)
        return Graph(copy.deepcopy(ep.module()), (example_input,), fixed_batch=program_batch(ep))
    model = copy.deepcopy(model).eval()
    errors = []
    for dynamic in (({0: BATCH},), None):
        try:
            ep = torch.export.export(model, (example_input,), dynamic_shapes=dynamic, strict=False)
            return Graph(ep.module(), (example_input,), fixed_batch=program_batch(ep))
        except Exception as e:
            errors.append(f"{'dynamic' if dynamic else 'static'} batch: {type(e).__name__}: {e}")
    raise CompressorError(
        "torch.export could not capture the model, so no pass can run on it.\n  "
        + "\n  ".join(err.splitlines()[0] for err in errors)
        + "\nMake the forward traceable (no data-dependent Python control flow) or pass a .pt2 file "
        "saved with torch.export.save."
    )


def program_batch(ep: torch.export.ExportedProgram) -> int | None:
    """The batch size a program was specialized to, or None if its batch axis is symbolic."""
    user = torch.export.graph_signature.InputKind.USER_INPUT
    inputs = [s.arg.name for s in ep.graph_signature.input_specs if s.kind == user]
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == inputs[0])
    size = node.meta["val"].shape[0]
    return size if isinstance(size, int) else None


def _from_torchscript(model: torch.jit.ScriptModule, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """TorchScript is converted by torch's own TS→ExportedProgram converter."""
    from torch._export.converter import TS2EPConverter

    try:
        return TS2EPConverter(model, (example_input,)).convert()
    except Exception as e:
        raise CompressorError(f"could not convert the TorchScript model to an ExportedProgram ({type(e).__name__}: "
                              f"{str(e)[:300]}). Save the model with torch.export.save instead (.pt2).") from e
