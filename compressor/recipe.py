"""Recipes: a named, ordered list of passes with export targets and a gate, in YAML.

Everything is validated before any compute: unknown pass names, unknown keys and bad values
are reported with the recipe file, the line and the allowed values. The resolved recipe (every
default written out) is saved next to the artifacts so a run can be reproduced exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from compressor.data.preprocess import Preprocess
from compressor.errors import CompressorError
from compressor.passes import PASSES, Pass

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
SCHEMA_VERSION = 1


GateOn = Literal["point", "lower-bound"]


class GateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Literal["top1", "agreement"] = Field(
        "top1", description="top1 needs labels (falls back to agreement without); agreement = top-1 match "
                            "with the float model")
    max_drop: float | None = Field(None, ge=0, allow_inf_nan=False,
                                   description="largest accepted accuracy drop, in points")
    gate_on: GateOn = Field(
        "point", description="point: fail when the measured drop exceeds max_drop; lower-bound: only when the "
                             "drop's 95 % interval lies wholly above it (the drop is significant)")


class BenchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8], min_length=1)
    threads: int = Field(2, ge=1)
    warmup: int = Field(5, ge=0)
    runs: int = Field(30, ge=3, description="timed rounds at least")
    min_seconds: float = Field(2.0, ge=0, allow_inf_nan=False,
                               description="keep timing rounds until this much time was spent "
                                           "(sub-millisecond models need hundreds of samples)")
    max_runs: int = Field(2000, ge=3, description="upper bound on timed rounds")

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("batch sizes must be >= 1")
        return v


class CalibSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(32, ge=1)
    max_images: int | None = Field(None, ge=1, description="use at most this many calibration images")


class PassEntry(BaseModel):
    """One step: the pass name and its (validated) parameters."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    def build(self) -> Pass:
        cls = PASSES[self.name]
        return cls(cls.Params(**self.params))


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    name: str
    description: str = ""
    passes: list[PassEntry] = Field(min_length=1)
    export: list[str] = Field(default_factory=lambda: ["onnx"], min_length=1)
    optional_export: list[str] = Field(
        default_factory=list, description="targets whose failure to export or run is reported (status failed) "
                                          "but does not fail the run (exit 3)")
    export_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-target settings, e.g. {coreml: {minimum_deployment_target: iOS17}}")
    gate: GateSpec = Field(default_factory=GateSpec)
    calibration: CalibSpec = Field(default_factory=CalibSpec)
    benchmark: BenchSpec = Field(default_factory=BenchSpec)
    preprocess: Preprocess | None = None
    resolved: dict[str, Any] | None = Field(
        None, description="written by compress into the resolved recipe.yaml (tool versions, calibration data "
                          "hash); provenance only, ignored when the recipe runs")

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"this compressor reads recipe schema_version {SCHEMA_VERSION}; a recipe of version {v} "
                             f"needs {'a newer' if v > SCHEMA_VERSION else 'an older'} compressor")
        return v

    @field_validator("export")
    @classmethod
    def _known_targets(cls, v: list[str]) -> list[str]:
        from exporters import EXPORTERS

        unknown = [t for t in v if t not in EXPORTERS]
        if unknown:
            raise ValueError(f"unknown export target {unknown[0]!r}; targets: {', '.join(sorted(EXPORTERS))}")
        if len(set(v)) != len(v):
            raise ValueError(f"a target is listed twice: {', '.join(v)}")
        return v

    @field_validator("optional_export")
    @classmethod
    def _optional_among_targets(cls, v: list[str], info: ValidationInfo) -> list[str]:
        targets = info.data.get("export") or []
        stray = [t for t in v if t not in targets]
        if stray:
            raise ValueError(f"{', '.join(stray)} is not among the exported targets ({', '.join(targets)})")
        return v

    @field_validator("export_options")
    @classmethod
    def _known_options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from exporters import EXPORTERS

        for target, options in v.items():
            if target not in EXPORTERS:
                raise ValueError(f"unknown export target {target!r}; targets: {', '.join(sorted(EXPORTERS))}")
            EXPORTERS[target].Options(**options)
        return v

    def fast(self) -> Recipe:
        """This recipe with every pass that has a `fast` preset switched to it (CLI `--fast`)."""
        fast = self.with_pass_param("fast", True)
        if fast.passes == self.passes:
            having = sorted(n for n, c in PASSES.items() if "fast" in c.Params.model_fields)
            raise CompressorError(f"--fast: no pass of recipe {self.name!r} has a fast preset (passes that do: "
                                  f"{', '.join(having)}).")
        return fast

    def with_pass_param(self, key: str, value: Any) -> Recipe:
        """This recipe with `key` set on every pass that takes it, so one switch (a preset, a guard)
        reaches all the passes it concerns without the caller knowing which they are."""
        entries = [PassEntry(name=e.name, params={**e.params, key: value})
                   if key in PASSES[e.name].Params.model_fields else e for e in self.passes]
        return self.model_copy(update={"passes": entries})

    def with_overrides(self, values: dict[tuple[str, ...], Any], labels: dict[tuple[str, ...], str]) -> Recipe:
        """This recipe with fields set from another source (the command line, `compress()`'s
        arguments), validated by the same models as the YAML; errors name `labels[field]`."""
        data = self.model_dump()
        for path, value in values.items():
            node = data
            for key in path[:-1]:
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
            node[path[-1]] = value
        try:
            return Recipe(**data)
        except ValidationError as e:
            lines = []
            for err in e.errors():
                path = next((p for p in values if tuple(err["loc"][:len(p)]) == p), None)
                where = f"{labels[path]} {values[path]!r}" if path else f"recipe {self.name!r}: " + ".".join(
                    map(str, err["loc"]))
                lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
            raise CompressorError("; ".join(lines)) from None

    def to_yaml_dict(self) -> dict[str, Any]:
        """The recipe as written in YAML (`pass:` key plus parameters inline), defaults included."""
        d = self.model_dump(mode="json", exclude_none=True)
        d["passes"] = [{"pass": p.name, **p.build().params.model_dump(mode="json")} for p in self.passes]
        return d


def list_recipes() -> dict[str, str]:
    """Bundled recipe names and their descriptions."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        out[path.stem] = load_recipe(path).description
    return out


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise CompressorError(f"recipe file not found: {p}")
        return p
    bundled = RECIPE_DIR / f"{name_or_path}.yaml"
    if not bundled.exists():
        names = ", ".join(sorted(q.stem for q in RECIPE_DIR.glob("*.yaml")))
        raise CompressorError(f"unknown recipe {str(name_or_path)!r}. Bundled recipes: {names}. "
                              "Or pass the path of a recipe .yaml file.")
    return bundled


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load and validate a bundled recipe by name, or a recipe YAML file by path."""
    path = resolve_recipe_path(name_or_path)
    text = path.read_text()
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CompressorError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise CompressorError(f"{path}: a recipe is a YAML mapping with at least 'name' and 'passes'.")
    return recipe_from_dict(data, source=str(path), yaml_root=root)


def recipe_from_dict(data: dict[str, Any], source: str = "<recipe>", yaml_root: yaml.Node | None = None) -> Recipe:
    """Validate a recipe mapping; errors name `source`, the key, its line and the allowed values."""
    data = dict(data)
    entries = data.get("passes")
    if isinstance(entries, list):
        data["passes"] = [_pass_entry(e, i, source, yaml_root) for i, e in enumerate(entries)]
    try:
        return Recipe(**data)
    except ValidationError as e:
        raise CompressorError(_format_errors(e, source, yaml_root)) from None


def _pass_entry(entry: Any, index: int, source: str, root: yaml.Node | None) -> PassEntry:
    where = f"{source}{_line(root, ('passes', index))}: passes[{index}]"
    if not isinstance(entry, dict) or "pass" not in entry:
        raise CompressorError(f"{where}: each pass is a mapping with a 'pass:' name and its parameters.")
    params = {k: v for k, v in entry.items() if k != "pass"}
    name = entry["pass"]
    if name not in PASSES:
        raise CompressorError(f"{where}: unknown pass {name!r}. Known passes: {', '.join(sorted(PASSES))}.")
    try:
        PASSES[name].Params(**params)
    except ValidationError as e:
        raise CompressorError(_format_errors(e, source, root, prefix=("passes", index), label=f"pass {name}")) from None
    return PassEntry(name=name, params=params)


def _format_errors(err: ValidationError, source: str, root: yaml.Node | None,
                   prefix: tuple = (), label: str = "recipe") -> str:
    lines = [f"{source}: invalid {label}:"]
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(prefix, loc, label)
            msg = f"unknown key{'; allowed: ' + ', '.join(allowed) if allowed else ''}"
        elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"  {key}{_line(root, loc)}: {msg}")
    return "\n".join(lines)


def _allowed_keys(prefix: tuple, loc: tuple, label: str) -> list[str]:
    """The keys allowed where an unknown one was found: the fields of the model at that place."""
    if prefix and label.startswith("pass "):
        model = _model_at(PASSES[label.removeprefix("pass ")].Params, loc[len(prefix):-1])
    else:
        model = _model_at(Recipe, loc[:-1])
    return sorted(model.model_fields) if model else []


def _model_at(model: type[BaseModel] | None, parts: tuple) -> type[BaseModel] | None:
    """The pydantic model reached from `model` along field names (list indices skipped):
    ('layers', 1) from int8's parameters is a LayerRule."""
    for part in parts:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        model = _inner_model(field.annotation) if field else None
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for a in get_args(annotation) if (m := _inner_model(a)) is not None), None)


def _line(root: yaml.Node | None, loc: tuple) -> str:
    """' (line N)' for the deepest node of `loc` that exists in the YAML tree."""
    node, found = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            found, node = match[0], match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = found = node.value[part]
        else:
            break
    return f" (line {found.start_mark.line + 1})" if found is not None else ""
