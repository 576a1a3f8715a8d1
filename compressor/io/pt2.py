"""Read a `torch.export` .pt2 archive without running code from it.

`torch.export.load` is not a data loader: it unpickles the archive's sample inputs and any
tensor saved "with pickle" (`weights_only=False`), unpickles opaque constants, hands every
shape expression to `sympy.sympify` (which `eval`s it), resolves node targets to any attribute
of `torch`, and `ExportedProgram.module()` later `exec`s the archive's guard code and names
parameters in generated Python source. Any of those runs code chosen by whoever wrote the file.

So an untrusted archive is read here piece by piece: tensors from their raw bytes (or, for
pickled tensors, torch's allow-listed `weights_only` unpickler), and the program's JSON checked
before torch's deserializer sees it: operators from an allow-list of namespaces, shape
expressions from a small arithmetic grammar, names that are dotted identifiers, no guard code.
An archive that fails a check is refused with what was found; `trust_code` (the CLI's
`--trust-pickle`) hands the file to `torch.export.load` unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import pickle
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from compressor.errors import CompressorError, first_line

# operator namespaces whose kernels are torch's own or compressor's (registered pure functions)
OP_NAMESPACES = {"aten", "prims", "quantized_decomposed", "quantized", "compressor"}
DENIED_OPS = {"from_file"}  # aten::from_file reads (and with shared=True, writes) a file on disk
HIGHER_ORDER = {"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled", "wrap_with_autocast",
                "auto_functionalized", "auto_functionalized_v2"}
PYTHON_OPS = {"getitem", "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "not_", "mul", "add", "sub",
              "floordiv", "mod", "pow", "truediv", "and_", "or_", "lshift", "rshift"}
SYM_FUNCTIONS = {"sym_not", "sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_sqrt", "sym_sum"}
# names a shape expression may call (torch writes them with sympy's srepr, e.g.
# "Mul(Integer(197), Symbol('s77', positive=True, integer=True))"): torch's sympy functions (the
# deserializer's table) and sympy's own constructors
EXPR_FUNCTIONS = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "OpaqueUnaryFn_sqrt",
    "Symbol", "Dummy", "Integer", "Rational", "Float", "Half", "One", "Zero", "NegativeOne", "Infinity",
    "NegativeInfinity", "ComplexInfinity", "NaN", "oo", "zoo", "nan", "Add", "Mul", "Pow", "Max", "Min", "Abs",
    "floor", "ceiling", "sqrt", "Piecewise", "ExprCondPair", "Tuple", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality",
    "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan", "And", "Or", "Not",
    "BooleanTrue", "BooleanFalse", "true", "false", "True", "False",
}
EXPR_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?|'[A-Za-z0-9_.+\-]*'|==|\S")
EXPR_OPERATORS = set("+-*/%(),<>=!&|~^") | {"=="}
SYMBOL = re.compile(r"[a-z]+[0-9]+")  # shape symbols: s0, s77, u3, ...
NAME = re.compile(r"[A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")  # node, parameter and module names, dotted
FREE_TEXT = {"metadata", "in_spec", "out_spec", "as_string", "as_strings", "device"}  # data, never code
TENSOR_FILE = re.compile(r"(weight|tensor_constant)_[0-9]+")


def load_untrusted(path: Path) -> torch.export.ExportedProgram:
    """The program in a .pt2 archive, refusing any part that would run code while loading it."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass
    from torch.export.pt2_archive import PT2ArchiveReader
    from torch.export.pt2_archive.constants import (
        ARCHIVE_VERSION_PATH,
        ARCHIVE_VERSION_VALUE,
        MODELS_FILENAME_FORMAT,
        SAMPLE_INPUTS_FILENAME_FORMAT,
    )

    try:
        reader = PT2ArchiveReader(str(path))
        names = set(reader.get_file_names())
        version = reader.read_string(ARCHIVE_VERSION_PATH) if ARCHIVE_VERSION_PATH in names else "none"
    except (RuntimeError, AssertionError, UnicodeDecodeError) as e:
        raise CompressorError(f"{path} is not a readable torch.export archive ({first_line(e)}). Save one with "
                              "torch.export.save(torch.export.export(model, args), path).") from None
    model_file = MODELS_FILENAME_FORMAT.format("model")
    if version != ARCHIVE_VERSION_VALUE or model_file not in names:
        raise CompressorError(f"{path}: a torch.export archive of another version ({version}) or without a "
                              f"'{model_file}'; re-save it with this torch ({torch.__version__}), or pass "
                              "--trust-pickle to let torch.export.load try it.")
    try:
        doc = json.loads(reader.read_bytes(model_file))
        problems = list(_code_in_program(doc))
        state, found = _tensors(reader, "weights", "model_weights_config.json", names)
        constants, found_c = _tensors(reader, "constants", "model_constants_config.json", names)
        sample, found_s = _sample_inputs(reader, SAMPLE_INPUTS_FILENAME_FORMAT.format("model"), names)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CompressorError(f"{path}: a damaged torch.export archive ({first_line(e)}); re-save it with "
                              "torch.export.save.") from None
    problems += found + found_c + found_s
    if problems:
        listed = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise CompressorError(
            f"{path} holds parts that run code when loaded ({listed}). compressor loads .pt2 files without "
            "running code, so it is refused. If you trust where the file came from, pass --trust-pickle "
            "(trust_pickle=True in Python); otherwise re-export the model with torch.export.save from plain "
            "tensors and standard operators.")
    try:
        with quiet_torch():
            program = _dict_to_dataclass(schema.ExportedProgram, doc)
            return ExportedProgramDeserializer().deserialize(program, state, constants, sample)
    except Exception as e:  # torch's deserializer raises many kinds on a malformed program
        raise CompressorError(f"{path}: the program in this torch.export archive does not deserialize "
                              f"({type(e).__name__}: {first_line(e)}); re-save it with this torch "
                              f"({torch.__version__}).") from None


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """torch's loaders log warnings and whole tracebacks (unused symbols, a damaged archive), and
    its `weights_only` unpickler warns about what it finds in the file (a pickle protocol but 2, a
    damaged class reference) before it loads or refuses it: none of that says anything to a
    compress user, whose error names the file and the fix instead."""
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export.serde.serialize")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._weights_only_unpickler")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# -- the program ------------------------------------------------------------------------------------
def _code_in_program(doc: dict[str, Any]) -> Iterator[str]:
    """What in the program's JSON would run code: guard source, unknown operators, expressions
    that are not arithmetic, names that would break out of generated source."""
    if doc.get("guards_code"):
        yield f"{len(doc['guards_code'])} guard(s) of Python source"
    if "graph_module" not in doc:
        yield "no graph"
        return
    for spec in doc["graph_module"].get("signature", {}).get("input_specs", []):
        user = spec.get("user_input")
        if user is not None and "as_tensor" not in user.get("arg", {}):
            yield f"a non-tensor model input ({next(iter(user.get('arg', {'?': 0})))})"
    yield from _walk(doc["graph_module"], "")


def _walk(node: Any, key: str) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in FREE_TEXT:
                continue
            if k == "target" and isinstance(v, str):
                if not _allowed_target(v):
                    yield f"operator {v!r}"
            elif k == "expr_str" and isinstance(v, str):
                if not _arithmetic(v):
                    yield f"shape expression {v[:60]!r}"
            else:
                yield from _walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)
    elif isinstance(node, str) and not NAME.fullmatch(node):
        yield f"name {node[:60]!r} in {key}"


def _allowed_target(target: str) -> bool:
    """Operators from torch's and compressor's registries and Python's arithmetic, nothing else
    (torch's deserializer resolves any `torch.*` attribute, e.g. `torch.load`)."""
    parts = target.split(".")
    if parts[0] == "_operator":
        return len(parts) == 2 and parts[1] in PYTHON_OPS
    if parts[0] == "math":
        return len(parts) == 2 and callable(getattr(math, parts[1], None)) and not parts[1].startswith("_")
    if parts[:2] == ["torch", "ops"] and len(parts) in (4, 5):
        namespace, op = parts[2], parts[3]
        if namespace == "higher_order":
            return op in HIGHER_ORDER
        return namespace in OP_NAMESPACES and op not in DENIED_OPS and op.isidentifier()
    return len(parts) == 2 and parts[0] == "torch" and parts[1] in SYM_FUNCTIONS


def _arithmetic(expr: str) -> bool:
    """A shape expression sympify may evaluate: numbers, shape symbols, the functions above, keyword
    arguments and quoted symbol names as call arguments.

    No attribute access, subscripts or free-standing strings, so `eval` of it reaches no builtin."""
    tokens = EXPR_TOKEN.findall(expr)
    for i, token in enumerate(tokens):
        after = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token[0] == "'":  # a quoted name, only as a whole call argument: Symbol('s0', ...)
            if i == 0 or tokens[i - 1] not in ("(", ",") or after not in (",", ")"):
                return False
        elif token[0].isalpha() or token[0] == "_":
            if not (SYMBOL.fullmatch(token) or token in EXPR_FUNCTIONS or after == "="):  # name=True: a keyword
                return False
        elif not token[0].isdigit() and token not in EXPR_OPERATORS:
            return False
    return True


# -- tensors -----------------------------------------------------------------------------------------
def _tensors(reader: Any, kind: str, config_name: str, names: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Weights or constants from their raw bytes; pickled ones through `weights_only`, which
    refuses anything but tensors and torch's allow-listed types."""
    from torch._export.serde.serialize import deserialize_scalar_type
    from torch.export.pt2_archive.constants import CONSTANTS_DIR, WEIGHTS_DIR

    base = WEIGHTS_DIR if kind == "weights" else CONSTANTS_DIR
    config_path = base + config_name
    legacy = [n for n in names if n.startswith(base) and n.endswith(".pt")]
    if legacy:
        return {}, [f"{kind} in torch's legacy pickled format ({legacy[0]})"]
    if config_path not in names:
        return {}, []
    config = json.loads(reader.read_bytes(config_path))["config"]
    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    storages: dict[str, torch.Tensor] = {}
    for fqn, entry in config.items():
        file = entry["path_name"]
        if not NAME.fullmatch(fqn) or not TENSOR_FILE.fullmatch(file):
            problems.append(f"{kind} entry {fqn[:60]!r} -> {file[:60]!r}")
            continue
        if entry.get("use_pickle"):
            value = _unpickle_tensor(reader.read_bytes(base + file))
            if value is None:
                problems.append(f"{kind[:-1]} {fqn!r} pickled with Python objects")
            else:
                out[fqn] = value
            continue
        meta = entry["tensor_meta"]
        dtype = deserialize_scalar_type(meta["dtype"])
        if file not in storages:
            storages[file] = _raw_storage(reader, base + file, dtype, _ints(meta["sizes"]))
        t = torch.as_strided(storages[file], _ints(meta["sizes"]), _ints(meta["strides"]),
                             meta["storage_offset"]["as_int"])
        out[fqn] = torch.nn.Parameter(t, requires_grad=meta["requires_grad"]) if entry.get("is_param") else t
    return out, problems


def _ints(sym_ints: list[dict[str, int]]) -> tuple[int, ...]:
    return tuple(int(s["as_int"]) for s in sym_ints)


def _raw_storage(reader: Any, record: str, dtype: torch.dtype, sizes: tuple[int, ...]) -> torch.Tensor:
    nbytes = reader.archive_file.get_record_size(record)
    element = torch._utils._element_size(dtype)
    if nbytes == 0:
        if math.prod(sizes) != 0:
            raise ValueError(f"{record} is empty but declares shape {sizes}")
        return torch.empty(0, dtype=dtype)
    if nbytes % element:
        raise ValueError(f"{record}: {nbytes} bytes is not a whole number of {dtype} elements")
    raw = reader.archive_file.get_storage_from_record(record, nbytes // element, dtype)
    return torch.empty(0, dtype=dtype).set_(raw.untyped_storage(), 0, (nbytes // element,), (1,))


def _unpickle_tensor(data: bytes) -> torch.Tensor | None:
    try:
        with quiet_torch():
            value = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        return None
    return value if isinstance(value, torch.Tensor) else None


def _sample_inputs(reader: Any, record: str, names: set[str]) -> tuple[Any, list[str]]:
    if record not in names:
        return ((), {}), []
    try:
        with quiet_torch():
            value = torch.load(io.BytesIO(reader.read_bytes(record)), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        return None, [f"sample inputs ({record}) pickled with Python objects"]
    if not isinstance(value, tuple):
        return None, [f"sample inputs ({record}) are a {type(value).__name__}, not (args, kwargs)"]
    return value, []
