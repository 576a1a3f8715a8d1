"""What `compress search` tries: bundled recipes, then per-layer mixed precision from measured sensitivity.

Mixed precision edits the anchor recipe (the bundled one with `quant.int8_ptq`, whose `layers:`
rules express per-layer settings) from the sensitivity table the anchor's own run measured:

- **float-back** (objective latency): the k layers whose quantization alone costs most (rank 1 =
  worst, the `--sensitivity` ranking) stay in float, k = 1, 2, 4, 8. The greedy is the standard
  one (INC's and NNCF's accuracy-aware loops fall back layer by layer in the same order); here each
  k is a candidate measured on its artifact, so the latency each fallback costs is seen, not guessed.
- **weight-bit allocation** (objective size): starting from 8-bit weights everywhere, layers move to
  4 bits in order of least damage per weight (the only-this-layer drop at 4 bits, from the uniform
  W4A8 run's sensitivity table, divided by the layer's weights) until the average over all weights
  reaches 6 and 5 bits. LRP-QViT ranks layers by layer-wise relevance instead; that ranking needs a
  backward relevance pass this project does not have and was not measured against this one.

Activations stay 8-bit: ONNX Runtime and OpenVINO have no kernels for narrower activations on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compressor.errors import CompressorError
from compressor.passes import PASSES
from compressor.recipe import RECIPE_DIR, PassEntry, Recipe, load_recipe

ANCHOR_PASS = "quant.int8_ptq"
ANCHOR_RECIPE = "int8-ptq"
# images the anchors' sensitivity tables are measured on: one simulated pass per layer each, so on a
# 50-layer ViT at 224 px all 1000 test images would cost longer than every candidate together; the
# ranking, not the absolute numbers, is what the mixed-precision candidates use
SENSITIVITY_IMAGES = 256
FLOAT_BACK = (1, 2, 4, 8)
AVERAGE_BITS = (6.0, 5.0)


@dataclass
class Candidate:
    """A recipe to build and measure; `origin` says where it came from (for the report)."""

    name: str
    recipe: Recipe
    origin: str
    sensitivity: bool | int = False  # measure the per-layer table on this one (an anchor), on this many images


def bundled(names: Sequence[str] | None) -> list[Candidate]:
    """The bundled recipes named (or all but those with a reconstruction pass, which take hours per
    model on a CPU: name them to include them). Each is tried; one that does not apply to the model
    is reported as such by its run."""
    if names:
        recipes = [load_recipe(n) for n in names]
    else:
        recipes = [r for r in (load_recipe(p) for p in sorted(RECIPE_DIR.glob("*.yaml"))) if not _slow(r)]
    seen = set()
    for r in recipes:
        if r.name in seen:
            raise CompressorError(f"--recipes names {r.name!r} twice.")
        seen.add(r.name)
    return [Candidate(r.name, r, "bundled recipe" if (RECIPE_DIR / f"{r.name}.yaml").exists() else "recipe file")
            for r in recipes]


def _slow(rec: Recipe) -> bool:
    return any("fast" in PASSES[e.name].Params.model_fields for e in rec.passes)


def anchor(candidates: Sequence[Candidate]) -> Candidate | None:
    """The candidate mixed precision edits: the bundled `int8-ptq` when it is among them, else the first
    whose recipe quantizes with `quant.int8_ptq` (a recipe file of the user's). Without the preference,
    name order made `2of4-int8` (pruned, then int8) the anchor on the MNIST CNN."""
    quantizing = [c for c in candidates if any(e.name == ANCHOR_PASS for e in c.recipe.passes)]
    return next((c for c in quantizing if c.name == ANCHOR_RECIPE), quantizing[0] if quantizing else None)


def with_rules(rec: Recipe, name: str, rules: list[dict[str, Any]], **params: Any) -> Recipe:
    """`rec` renamed, with `rules` appended to its int8 pass's `layers:` (and `params` set on that pass)."""
    entries = []
    for e in rec.passes:
        if e.name == ANCHOR_PASS:
            merged = {**e.params, **params, "layers": [*e.params.get("layers", []), *rules]}
            PASSES[ANCHOR_PASS].Params(**merged)
            e = PassEntry(name=e.name, params=merged)
        entries.append(e)
    return rec.model_copy(update={"name": name, "passes": entries,
                                  "description": f"{rec.description} (compress search: {name})"})


def w4_anchor(base: Candidate) -> Candidate:
    """Uniform 4-bit weights on the anchor: a candidate itself, and the sensitivity table at 4 bits."""
    name = f"{base.name} w4"
    return Candidate(name, with_rules(base.recipe, name, [], weight_bits=4), "uniform 4-bit weights",
                     sensitivity=SENSITIVITY_IMAGES)


def layer_rows(sensitivity: dict[str, Any]) -> list[dict[str, Any]]:
    """The sensitivity rows of layers a `match` rule can name (Linear, Conv, attention matmuls), with
    the module path the rule matches."""
    rows = []
    for r in sensitivity["rows"]:
        if r["kind"] == "activation":
            continue
        path = r["layer"].split("#")[0]
        if r["kind"] == "matmul":
            path = path.rsplit(".", 1)[0]
        rows.append({**r, "path": path})
    return rows


def float_back(base: Candidate, sensitivity: dict[str, Any]) -> list[Candidate]:
    """The anchor with its k most damaging layers in float (see the module docstring)."""
    ranked = sorted(layer_rows(sensitivity), key=lambda r: r["rank"])
    out, paths = [], []
    for r in ranked:
        if r["path"] not in paths:
            paths.append(r["path"])
    for k in FLOAT_BACK:
        if k > len(paths):
            break
        name = f"{base.name} float-back {k}"
        rules = [{"match": _literal(p), "quantize": False} for p in paths[:k]]
        out.append(Candidate(name, with_rules(base.recipe, name, rules),
                             f"mixed precision: the {k} most sensitive layer(s) in float ({', '.join(paths[:k])})"))
    return out


def bit_allocation(base: Candidate, sensitivity: dict[str, Any], weights: dict[str, int]) -> list[Candidate]:
    """The anchor with layers at 4 bits, least damage per weight first, until the average weight bits
    reach each of `AVERAGE_BITS` (see the module docstring); `weights` maps module path to its count."""
    rows = [r for r in layer_rows(sensitivity) if r["kind"] in ("linear", "conv") and weights.get(r["path"])]
    order = sorted(rows, key=lambda r: (r["delta"] / weights[r["path"]], r["logit_sqnr_db"]), reverse=True)
    total = sum(weights.values())
    out = []
    for target in AVERAGE_BITS:
        low, bits = [], 8.0
        for r in order:
            if bits <= target:
                break
            low.append(r["path"])
            bits -= 4 * weights[r["path"]] / total
        if bits > target or not low:
            continue
        name = f"{base.name} w4-8 avg {bits:.1f}"
        rules = [{"match": _literal(p), "weight_bits": 4} for p in low]
        out.append(Candidate(name, with_rules(base.recipe, name, rules),
                             f"mixed precision: {len(low)} layer(s) at 4-bit weights, the rest 8 (average {bits:.2f} "
                             "bits per weight)"))
    return out


def _literal(path: str) -> str:
    """A glob matching exactly `path` (module paths may hold '[' in user models)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path) if any(c in path for c in "*?[") else path


def weight_counts(passes: list[dict[str, Any]]) -> dict[str, int]:
    """Module path → weights, from the anchor's int8 pass record (its `layers` with their shapes)."""
    counts: dict[str, int] = {}
    for p in passes:
        if p["name"] == ANCHOR_PASS:
            for la in p["summary"].get("layers", []):
                n = 1
                for d in la["shape"]:
                    n *= int(d)
                counts[la["module"]] = counts.get(la["module"], 0) + n
    return counts
