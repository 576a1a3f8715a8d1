"""Turn a user's model file into an `nn.Module` (or ExportedProgram), safely.

Formats: our checkpoint dict (architecture + config + state_dict + preprocessing), a bare
state_dict with `--arch`, TorchScript, `torch.export` `.pt2`, and a pickled module (only with an
explicit trust flag, because unpickling runs arbitrary code from the file).
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor import zoo
from compressor.data.preprocess import Preprocess
from compressor.errors import CompressorError

CHECKPOINT_FORMAT = "compressor.checkpoint"
WEIGHTS_ONLY_REFUSAL = "Unsupported global"  # torch.load(weights_only=True) refusing a pickled class
FORMATS_HINT = ("a compressor checkpoint or state_dict (.pt/.pth, with --arch for a bare state_dict), "
                "a TorchScript archive, or a torch.export .pt2 file")


@dataclass
class LoadedModel:
    """A model ready to capture, with what its file said about its inputs."""

    module: nn.Module | torch.export.ExportedProgram
    source: str
    kind: str
    name: str
    preprocess: Preprocess | None = None
    dataset: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _unlifted: nn.Module | None = field(default=None, repr=False)

    def runnable(self) -> nn.Module:
        """A module to run eagerly; an ExportedProgram's unlifted module is built once."""
        if not isinstance(self.module, torch.export.ExportedProgram):
            return self.module
        if self._unlifted is None:
            self._unlifted = self.module.module()
        return self._unlifted


def load_model(path: str | Path, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Load a model file; every failure names the file, what was expected and the fix."""
    p = Path(path)
    if not p.exists():
        raise CompressorError(f"model file not found: {p}")
    if p.is_dir():
        raise CompressorError(f"{p} is a folder; pass a model file ({FORMATS_HINT}).")
    if p.suffix == ".onnx":
        raise CompressorError(f"{p} is an ONNX model; compressor compresses PyTorch models and exports ONNX itself. "
                              "Pass the PyTorch model it came from (checkpoint, state_dict with --arch, TorchScript "
                              "or torch.export .pt2).")
    if p.suffix == ".pt2":
        return _load_exported(p)
    if _is_torchscript(p):
        return LoadedModel(torch.jit.load(str(p), map_location="cpu").eval(), str(p), "torchscript", p.stem)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if WEIGHTS_ONLY_REFUSAL not in str(e):  # a broken or non-pickle file, not a refused object
            raise CompressorError(f"{p} is not a PyTorch model file (neither a torch archive nor a pickle). "
                                  f"Expected {FORMATS_HINT}.") from e
        if not trust_pickle:
            raise CompressorError(
                f"{p} holds pickled Python objects (probably a whole nn.Module saved with torch.save(model)). "
                "Loading it would run code from the file, so it is refused by default. If you trust where the "
                "file came from, pass --trust-pickle (trust_pickle=True in Python); otherwise save "
                "model.state_dict() and pass it with --arch NAME."
            ) from e
        return _load_pickled_module(p)
    except Exception as e:
        raise CompressorError(f"{p} is not a PyTorch model file ({type(e).__name__}: {str(e)[:200]}). "
                              f"Expected {FORMATS_HINT}.") from e
    return _from_object(obj, p, arch)


def _is_torchscript(p: Path) -> bool:
    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _load_exported(p: Path) -> LoadedModel:
    try:
        ep = torch.export.load(str(p))
    except Exception as e:
        raise CompressorError(f"{p} is not a readable torch.export archive ({type(e).__name__}: {e}). "
                              "Save one with torch.export.save(torch.export.export(model, args), path).") from e
    return LoadedModel(ep, str(p), "exported_program", p.stem)


def _load_pickled_module(p: Path) -> LoadedModel:
    obj = torch.load(p, map_location="cpu", weights_only=False)
    if not isinstance(obj, nn.Module):
        raise CompressorError(f"{p}: unpickled a {type(obj).__name__}, not an nn.Module. Expected {FORMATS_HINT}.")
    return LoadedModel(obj.eval(), str(p), "pickled_module", p.stem)


def _from_object(obj: Any, p: Path, arch: str | None) -> LoadedModel:
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return _from_checkpoint(obj, p, arch)
    state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CompressorError(f"{p} does not hold a model: found {type(obj).__name__} without a state_dict. "
                              f"Expected {FORMATS_HINT}.")
    if arch is None:
        raise CompressorError(f"{p} is a bare state_dict: the architecture is not in the file. Pass --arch NAME "
                              f"(one of: {', '.join(zoo.list_models())}).")
    arch_name, config = _zoo_config(arch)
    module = _build(arch_name, config, state, p)
    return LoadedModel(module, str(p), "state_dict", arch, _zoo_preprocess(arch, config))


def _from_checkpoint(ckpt: dict[str, Any], p: Path, arch: str | None) -> LoadedModel:
    arch_name, config = ckpt["arch"], dict(ckpt.get("config", {}))
    if arch is not None:
        arch_name, config = _zoo_config(arch)
    module = _build(arch_name, config, ckpt["state_dict"], p)
    pre = Preprocess(**ckpt["preprocess"]) if ckpt.get("preprocess") else _zoo_preprocess(arch_name, config)
    return LoadedModel(module, str(p), "checkpoint", ckpt.get("preset", arch_name), pre, ckpt.get("dataset"),
                       {"metrics": ckpt.get("metrics", {})})


def _zoo_config(name: str) -> tuple[str, dict[str, Any]]:
    try:
        if name in zoo.ARCHS:
            return name, {}
        return zoo.preset_config(name)
    except KeyError as e:
        raise CompressorError(f"unknown architecture {name!r}; zoo models: {', '.join(zoo.list_models())}.") from e


def _zoo_preprocess(arch: str, config: dict[str, Any]) -> Preprocess | None:
    """ImageNet-shaped zoo models default to ImageNet normalization at their input size."""
    size = config.get("img_size")
    chans = config.get("in_chans", 3)
    if size is None or chans != 3:
        return None
    from compressor.data.preprocess import IMAGENET_MEAN, IMAGENET_STD

    return Preprocess(size=(size, size), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _build(arch: str, config: dict[str, Any], state: dict[str, torch.Tensor], p: Path) -> nn.Module:
    module = zoo.build(arch, **config)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:400]
        raise CompressorError(f"{p}: the weights do not fit architecture {arch!r} ({detail}). Check --arch "
                              f"(zoo models: {', '.join(zoo.list_models())}).") from e
    return module.eval()


def load_module(model: nn.Module) -> LoadedModel:
    """An in-memory module from the Python API."""
    return LoadedModel(model.eval(), f"<{type(model).__name__}>", "module", type(model).__name__)
