from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compressor.data import Preprocess, fingerprint, open_source
from compressor.errors import CompressorError

SPEC = Preprocess(channels=1, mean=(0.5,), std=(0.25,))


def _write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")


def test_folder_of_images_is_preprocessed(tmp_path, mnist_images):
    _write_pngs(tmp_path, mnist_images[:10])
    src = open_source(tmp_path, SPEC)
    x, y = next(src.batches(4))
    assert x.shape == (4, 1, 28, 28) and y is None
    expected = (torch.from_numpy(mnist_images[:4]).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x[:, 0], expected)


def test_folder_per_class_gives_labels(tmp_path, mnist_images):
    _write_pngs(tmp_path / "3", mnist_images[:2])
    _write_pngs(tmp_path / "7", mnist_images[2:5])
    src = open_source(tmp_path, SPEC)
    assert src.labels.tolist() == [3, 3, 7, 7, 7]
    assert [y.tolist() for _, y in src.batches(2)] == [[3, 3], [7, 7], [7]]


def test_label_file_beside_images(tmp_path, mnist_images):
    _write_pngs(tmp_path, mnist_images[:3])
    np.save(tmp_path / "labels.npy", np.array([4, 1, 2]))
    assert open_source(tmp_path, SPEC).labels.tolist() == [4, 1, 2]


def test_arrays_npy_npz_pt_agree(tmp_path, mnist_images):
    imgs = mnist_images[:6]
    np.save(tmp_path / "a.npy", imgs)
    np.savez(tmp_path / "a.npz", x=imgs, y=np.arange(6))
    torch.save({"x": torch.from_numpy(imgs), "y": torch.arange(6)}, tmp_path / "a.pt")
    outs = [next(open_source(tmp_path / f"a.{ext}", SPEC).batches(6)) for ext in ("npy", "npz", "pt")]
    for x, _ in outs[1:]:
        torch.testing.assert_close(x, outs[0][0])
    assert outs[1][1].tolist() == list(range(6)) and outs[2][1].tolist() == list(range(6))


def test_float_arrays_are_model_ready(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    got, _ = next(open_source(tmp_path / "x.npy", Preprocess(mean=(0.5,), std=(2.0,))).batches(5))
    np.testing.assert_array_equal(got.numpy(), x)


def test_resize_to_spec_size(tmp_path, mnist_images):
    _write_pngs(tmp_path, mnist_images[:2])
    src = open_source(tmp_path, Preprocess(size=(14, 14), channels=3))
    assert src.sample_shape() == (3, 14, 14)


def test_fill_completes_the_last_batch_from_the_start(tmp_path, mnist_images):
    _write_pngs(tmp_path / "3", mnist_images[:2])
    _write_pngs(tmp_path / "7", mnist_images[2:5])
    src = open_source(tmp_path, SPEC)
    batches = list(src.batches(4, fill=True))
    assert [x.shape[0] for x, _ in batches] == [4, 4]
    assert batches[1][1].tolist() == [7, 3, 3, 7]  # item 4, then items 0..2 again
    torch.testing.assert_close(batches[1][0][1:], batches[0][0][:3])


def test_fingerprint_depends_on_content(tmp_path, mnist_images):
    _write_pngs(tmp_path / "a", mnist_images[:4])
    _write_pngs(tmp_path / "b", mnist_images[1:5])
    fa, fb = (fingerprint(open_source(tmp_path / d, SPEC)) for d in "ab")
    assert fa != fb and fa == fingerprint(open_source(tmp_path / "a", SPEC))


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "no images found"),
    (lambda p: None, "not found"),
    (lambda p: p.with_suffix(".csv").write_text("1,2"), "unsupported"),
])
def test_bad_data_is_named(tmp_path, make, message):
    target = tmp_path / "data"
    make(target)
    path = target.with_suffix(".csv") if message == "unsupported" else target
    with pytest.raises(CompressorError, match=message):
        open_source(path, SPEC)


def test_mixed_sizes_without_spec_is_an_error(tmp_path, mnist_images):
    _write_pngs(tmp_path, mnist_images[:1])
    Image.fromarray(mnist_images[1][:20, :20]).save(tmp_path / "small.png")
    with pytest.raises(CompressorError, match="different sizes"):
        next(open_source(tmp_path, Preprocess()).batches(8))


def test_corrupt_image_is_named(tmp_path, mnist_images):
    _write_pngs(tmp_path, mnist_images[:1])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(CompressorError, match=r"bad\.png"):
        next(open_source(tmp_path, SPEC).batches(8))
