"""Producers, consumers and initializers of an ONNX graph: what every per-target rewrite looks up."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


class OnnxIndex:
    """Producers, consumers and initializers of a graph, rebuilt after each structural edit."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.graph = g
        self.init = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.init[name])

    def is_int_init(self, name: str, dtype: int) -> bool:
        return name in self.init and self.init[name].data_type == dtype
