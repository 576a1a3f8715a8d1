"""Turn a user's model file into an `nn.Module` (or ExportedProgram), safely.

Formats: our checkpoint dict (architecture + config + state_dict + preprocessing), a bare
state_dict with `--arch`, and `torch.export` `.pt2`, all read without running code from the
file; TorchScript and a pickled module only with an explicit trust flag, because both are code.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import sys
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor import zoo
from compressor.data.preprocess import Preprocess
from compressor.errors import CompressorError, first_line
from compressor.io.pt2 import load_untrusted, quiet_torch

CHECKPOINT_FORMAT = "compressor.checkpoint"
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"  # torch.load(weights_only=True) refusing an object
PICKLE_SCAN_BYTES = 16 * 2**20  # a refused pickle is disassembled this far to name what it imports
CODE_RUNNING_MODULES = {"os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
                        "code", "ctypes", "pickle", "marshal", "webbrowser", "pdb", "multiprocessing", "commands"}
CODE_RUNNING_BUILTINS = {f"builtins.{n}" for n in ("eval", "exec", "compile", "__import__", "open", "getattr",
                                                   "setattr", "globals", "breakpoint", "input")}
ZIP_INFLATE_LIMIT, ZIP_INFLATE_SLACK = 4, 64 * 2**20  # entries may inflate to 4x the file plus 64 MiB
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
    """Load a model file; every failure names the file, what was expected and the fix.

    Nothing from the file runs unless `trust_pickle`: checkpoints and state_dicts go through
    torch's allow-listed `weights_only` unpickler and .pt2 programs through `pt2.load_untrusted`;
    a pickled module or TorchScript (both code) is refused without the flag.
    """
    p = Path(path)
    if not p.exists():
        raise CompressorError(f"model file not found: {p}")
    if p.is_dir():
        raise CompressorError(f"{p} is a folder; pass a model file ({FORMATS_HINT}).")
    if p.suffix == ".onnx":
        raise CompressorError(f"{p} is an ONNX model; compressor compresses PyTorch models and exports ONNX itself. "
                              "Pass the PyTorch model it came from (checkpoint, state_dict with --arch, TorchScript "
                              "or torch.export .pt2).")
    names = _zip_names(p)
    if p.suffix == ".pt2" and not zipfile.is_zipfile(p):  # torch's own reason is a paragraph about miniz
        raise CompressorError(f"{p} is not a readable torch.export archive: it is not a zip file (truncated, or "
                              "another kind of file). Copy it again, or save it with "
                              "torch.export.save(torch.export.export(model, args), path).")
    if p.suffix == ".pt2" or any(n.endswith("/archive_format") for n in names):
        return _checked(_load_exported(p, trust_pickle), p)
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return _checked(_load_torchscript(p, trust_pickle), p)
    try:
        with quiet_torch():
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        wanted = _pickle_globals(_pickle_bytes(p, names))
        if WEIGHTS_ONLY_REFUSAL not in str(e) or wanted is None:  # not a pickle, or a damaged one
            raise CompressorError(f"{p} is not a PyTorch model file (neither a torch archive nor a pickle "
                                  f"that loads). Expected {FORMATS_HINT}.") from None
        if not trust_pickle:
            raise CompressorError(_refused_pickle(p, wanted)) from None
        return _checked(_load_pickled_module(p), p)
    except Exception as e:
        raise CompressorError(f"{p} is not a PyTorch model file ({type(e).__name__}: {first_line(e)}). "
                              f"Expected {FORMATS_HINT}.") from None
    return _checked(_from_object(obj, p, arch), p)


def _zip_names(p: Path) -> list[str]:
    """The entries of a zip-based model file ([] for other files), refusing a damaged archive
    and one whose entries would inflate far beyond the file (torch writes them uncompressed)."""
    if not zipfile.is_zipfile(p):
        return []
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CompressorError(f"{p} is a damaged zip archive ({first_line(e)}); copy or save the model "
                              "file again.") from None
    inflated = sum(i.file_size for i in infos)
    if inflated > ZIP_INFLATE_LIMIT * max(p.stat().st_size, 1) + ZIP_INFLATE_SLACK:
        raise CompressorError(f"{p}: its zip entries inflate to {inflated / 1e9:.1f} GB from a "
                              f"{p.stat().st_size / 1e6:.1f} MB file (a decompression bomb); refused. Save the "
                              "model again with torch.save or torch.export.save.")
    return [i.filename for i in infos]


def _pickle_bytes(p: Path, names: list[str]) -> bytes:
    """The pickle of a torch.save file: its zip's data.pkl, or the start of a legacy/raw pickle."""
    data_pkl = next((n for n in names if n.endswith("/data.pkl")), None)
    try:
        if data_pkl is not None:
            with zipfile.ZipFile(p) as z:
                return z.read(data_pkl)
        with open(p, "rb") as f:
            return f.read(PICKLE_SCAN_BYTES)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error):  # damaged: nothing to name
        return b""


def _pickle_globals(data: bytes) -> list[str] | None:
    """The module.name globals a pickle would import, found by disassembling it (nothing runs);
    None when the bytes are not a pickle. torch's legacy format is several pickles in a row."""
    found: list[str] = []
    strings: list[str] = []
    stream = io.BytesIO(data)
    parsed_any = False
    while stream.tell() < len(data):
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
            parsed_any = True
        except (ValueError, EOFError, UnicodeDecodeError, OverflowError):
            break
    return list(dict.fromkeys(found)) if parsed_any else None


def _refused_pickle(p: Path, wanted: list[str]) -> str:
    """Why a pickle was refused, naming what it imports: a module's classes, or a function such as
    os.system that only a malicious file would call."""
    dangerous = [g for g in wanted if g.split(".")[0] in CODE_RUNNING_MODULES or g in CODE_RUNNING_BUILTINS]
    if dangerous:
        return (f"{p} holds a pickle that calls {', '.join(dangerous[:3])}: functions that run commands or code. "
                "Files like this are how malicious models attack; it was refused and nothing from it ran. Do not "
                "pass --trust-pickle unless you know exactly what this file is.")
    own = [g for g in wanted if not g.startswith(("torch.", "collections.", "builtins.", "__builtin__."))]
    classes = ", ".join(own or wanted)[:200]
    return (f"{p} holds pickled Python objects ({classes or 'objects that are not tensors'}; probably a whole "
            "nn.Module saved with torch.save(model)). Loading it would run code from the file, so it is refused "
            "by default. If you trust where the file came from, pass --trust-pickle (trust_pickle=True in "
            "Python); otherwise save model.state_dict() and pass it with --arch NAME, or export the model to a "
            ".pt2 with torch.export.save.")


def _load_exported(p: Path, trust: bool) -> LoadedModel:
    if not trust:
        return LoadedModel(load_untrusted(p), str(p), "exported_program", p.stem)
    try:
        from torch.export.pt2_archive import PT2ArchiveReader

        PT2ArchiveReader(str(p))  # a damaged archive's own reason, not torch.export.load's generic one
        with quiet_torch():
            ep = torch.export.load(str(p))
    except Exception as e:
        raise CompressorError(f"{p} is not a readable torch.export archive ({type(e).__name__}: {first_line(e)}). "
                              "Save one with torch.export.save(torch.export.export(model, args), path).") from None
    return LoadedModel(ep, str(p), "exported_program", p.stem)


def _load_torchscript(p: Path, trust: bool) -> LoadedModel:
    if not trust:
        raise CompressorError(
            f"{p} is a TorchScript archive. TorchScript is a program: its code runs when compressor loads and "
            "traces the model, and it can read and write files, so it is refused by default. If you trust where "
            "the file came from, pass --trust-pickle (trust_pickle=True in Python); otherwise export the model "
            "with torch.export.save (a .pt2 loads without running code) or save its state_dict and pass --arch.")
    try:
        return LoadedModel(torch.jit.load(str(p), map_location="cpu").eval(), str(p), "torchscript", p.stem)
    except Exception as e:
        raise CompressorError(f"{p}: TorchScript could not load this archive ({type(e).__name__}: "
                              f"{first_line(e)}). Save it again with torch.jit.save, or export a .pt2.") from None


def _load_pickled_module(p: Path) -> LoadedModel:
    """Unpickle a trusted module; its class may live in a script beside the model or in the
    current folder, as it did when it was saved."""
    try:
        with _importable_from(Path.cwd(), p.resolve().parent):
            obj = torch.load(p, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as e:
        raise CompressorError(_class_not_found(p, e)) from None
    except Exception as e:
        raise CompressorError(f"{p}: unpickling failed ({type(e).__name__}: {first_line(e)}). Export the model "
                              "to a .pt2 (torch.export.save) or TorchScript instead.") from None
    if not isinstance(obj, nn.Module):
        raise CompressorError(f"{p}: unpickled a {type(obj).__name__}, not an nn.Module. Expected {FORMATS_HINT}.")
    return LoadedModel(obj.eval(), str(p), "pickled_module", p.stem)


@contextlib.contextmanager
def _importable_from(*folders: Path) -> Iterator[None]:
    """Let unpickling import modules from `folders` (after the installed packages, so a local file
    cannot shadow one); sys.path is restored afterwards."""
    added = [str(f) for f in folders if str(f) not in sys.path]
    sys.path.extend(added)
    try:
        yield
    finally:
        for f in added:
            sys.path.remove(f)


def _class_not_found(p: Path, e: Exception) -> str:
    what = getattr(e, "name", None) or first_line(e)
    where = f"{Path.cwd()} and {p.resolve().parent}"
    if "__main__" in str(e):
        why = ("its class was defined in the script that saved it (__main__), so no module can provide it "
               f"({first_line(e)})")
    else:
        why = (f"the class it was pickled with cannot be imported: {what} was not found in {where} or the "
               "installed packages")
    return (f"{p}: {why}. Run compress from the folder of the module that defines the class, or save the model "
            "in a format that carries its own graph: torch.export.save (.pt2) or torch.jit.save (TorchScript).")


def _checked(loaded: LoadedModel, p: Path) -> LoadedModel:
    """Refuse weights that are NaN or infinite: every later number would be meaningless (a NaN
    model agrees with itself 100 %)."""
    module = loaded.module
    if isinstance(module, torch.export.ExportedProgram):
        tensors = {**module.state_dict, **{k: v for k, v in module.constants.items() if isinstance(v, torch.Tensor)}}
    else:
        tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CompressorError(f"{p}: weight {name!r} holds {bad} NaN or infinite values of {t.numel()}; the "
                                  "model's outputs would be meaningless. Re-train or re-save the model.")
    return loaded


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
    arch_name, config, state = ckpt.get("arch"), ckpt.get("config", {}), ckpt.get("state_dict")
    fix = "Re-save the checkpoint, or save model.state_dict() alone and pass --arch NAME."
    if not isinstance(arch_name, str) and arch is None:
        raise CompressorError(f"{p}: a compressor checkpoint without a valid 'arch' (found {arch_name!r}). {fix}")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise CompressorError(f"{p}: the checkpoint's 'config' is a {type(config).__name__}, not a mapping of "
                              f"architecture settings. {fix}")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CompressorError(f"{p}: the checkpoint's 'state_dict' is a {type(state).__name__}, not a mapping "
                              f"of parameter names to tensors. {fix}")
    config = dict(config)
    if arch is not None:
        arch_name, config = _zoo_config(arch)
    module = _build(arch_name, config, state, p)
    try:
        pre = ckpt.get("preprocess")
        spec = Preprocess(**pre) if pre else _zoo_preprocess(arch_name, config)
    except (TypeError, ValueError) as e:
        raise CompressorError(f"{p}: the checkpoint's 'preprocess' is not valid ({first_line(e)}); fix it or "
                              "override it with --size/--channels/--mean/--std.") from None
    return LoadedModel(module, str(p), "checkpoint", ckpt.get("preset", arch_name), spec, ckpt.get("dataset"),
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
    try:
        module = zoo.build(arch, **config)
    except KeyError:
        raise CompressorError(f"{p}: unknown architecture {arch!r}; zoo models: "
                              f"{', '.join(zoo.list_models())}.") from None
    except (TypeError, ValueError, RuntimeError) as e:
        raise CompressorError(f"{p}: architecture {arch!r} cannot be built from the file's config "
                              f"({first_line(e)}). Re-save the checkpoint or pass --arch NAME.") from None
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
