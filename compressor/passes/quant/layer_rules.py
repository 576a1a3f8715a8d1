"""Per-layer quantizer settings in a recipe: `layers:` rules over op types and module paths.

A pass's own parameters are the global setting; a rule with `op:` (linear, conv, matmul) overrides
them for every layer of that type, and a rule with `match:` (a glob over module paths, the names
`--sensitivity` prints) overrides both for the layers it names. That precedence, global → op type
→ module path, is coremltools.optimize's; within one tier the later rule wins, so a list reads
like a sequence of edits. `compress search` writes these rules (layers returned to float, weights
moved to 4 bits) and a user can write them by hand:

    - pass: quant.int8_ptq
      weight_bits: 8
      layers:
        - {op: conv, weight_bits: 6}
        - {match: "blocks.0.*", weight_bits: 4}
        - {match: head, quantize: false}

A `match` that names no layer is an error (a typo must not silently quantize a layer the user
meant to protect), reported with the closest module paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import fx

from compressor.graph.graph import Graph, is_kind

OpKind = Literal["linear", "conv", "matmul"]


class LayerRule(BaseModel):
    """One rule: which layers (`op` or `match`, exactly one) and what to set on them."""

    model_config = ConfigDict(extra="forbid")
    op: OpKind | None = Field(None, description="every layer of this op type")
    match: str | None = Field(None, description="glob over module paths, e.g. 'blocks.1[01].*' or 'head'")
    quantize: bool | None = Field(None, description="false keeps the matched layers in float")
    weight_bits: int | None = Field(None, ge=2, le=8, description="weight bits of the matched Linear/Conv layers")

    @model_validator(mode="after")
    def _one_target_one_setting(self) -> LayerRule:
        if (self.op is None) == (self.match is None):
            raise ValueError("a layer rule names its layers with exactly one of 'op' or 'match'")
        if self.quantize is None and self.weight_bits is None:
            raise ValueError("a layer rule sets 'quantize' or 'weight_bits'")
        if self.op == "matmul" and self.weight_bits is not None:
            raise ValueError("'weight_bits' does not apply to op 'matmul' (activation x activation, no weight)")
        return self


@dataclass(frozen=True)
class LayerSetting:
    """What a pass does to one layer once the rules are applied."""

    quantize: bool = True
    weight_bits: int = 8


def layer_settings(graph: Graph, rules: Sequence[LayerRule], default: LayerSetting,
                   setting: str) -> Callable[[fx.Node], LayerSetting]:
    """The resolved setting of a node, global → op type → module path (see the module docstring);
    every `match` is checked against the model's layers here, before any calibration."""
    by_op = [r for r in rules if r.op is not None]
    by_path = [(r, graph.matcher([r.match], f"{setting} match")) for r in rules if r.match is not None]

    def resolve(node: fx.Node) -> LayerSetting:
        s = default
        for rule in by_op:
            if is_kind(node, rule.op):
                s = _applied(s, rule)
        for rule, matches in by_path:
            if matches(node):
                s = _applied(s, rule)
        return s

    return resolve


def _applied(s: LayerSetting, rule: LayerRule) -> LayerSetting:
    return replace(s, **{k: v for k in ("quantize", "weight_bits") if (v := getattr(rule, k)) is not None})
