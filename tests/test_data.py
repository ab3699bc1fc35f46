"""CIFAR-10 loading from the real `.npz` copy and from torchvision's python layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from robustvote.data import DATA_DIR_ENV, load_cifar10
from robustvote.errors import DataError


def test_npz_slice_shape_range_and_indices(cifar_dir: Path) -> None:
    data = load_cifar10("test", start=100, n=32, data_dir=cifar_dir, download=False)
    assert data.images.shape == (32, 3, 32, 32)
    assert data.images.dtype == torch.float32
    assert float(data.images.min()) >= 0.0
    assert float(data.images.max()) <= 1.0
    assert data.labels.dtype == torch.int64
    assert list(data.indices) == list(range(100, 132))


def test_npz_pixels_match_raw_file(cifar_dir: Path) -> None:
    raw = np.load(cifar_dir / "test.npz")
    data = load_cifar10("test", start=7, n=3, data_dir=cifar_dir, download=False)
    expected = torch.from_numpy(raw["images"][7:10].transpose(0, 3, 1, 2)).float() / 255
    assert torch.equal(data.images, expected)
    assert data.labels.tolist() == raw["labels"][7:10].tolist()


def _write_torchvision_layout(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({"data": flat, "labels": labels.tolist()}, handle)
    return folder


def test_torchvision_layout_equals_npz(cifar_dir: Path, tmp_path: Path) -> None:
    raw = np.load(cifar_dir / "test.npz")
    _write_torchvision_layout(tmp_path, raw["images"][:20], raw["labels"][:20])
    from_batches = load_cifar10("test", start=5, n=10, data_dir=tmp_path, download=False)
    from_npz = load_cifar10("test", start=5, n=10, data_dir=cifar_dir, download=False)
    assert torch.equal(from_batches.images, from_npz.images)
    assert torch.equal(from_batches.labels, from_npz.labels)


def test_data_dir_from_environment(cifar_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(cifar_dir))
    assert len(load_cifar10("test", n=4, download=False)) == 4


@pytest.mark.parametrize(
    ("start", "n", "message"),
    [(10000, 1, "start=10000 is out of range"), (9990, 20, "choose --n of at most 10"), (0, 0, "n=0")],
)
def test_slice_out_of_range(cifar_dir: Path, start: int, n: int, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_cifar10("test", start=start, n=n, data_dir=cifar_dir, download=False)


def test_missing_copy_names_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTVOTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError) as info:
        load_cifar10("test", n=4, data_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "--data-dir" in message


def test_missing_data_dir_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10("test", n=4, data_dir=tmp_path / "nowhere", download=False)
