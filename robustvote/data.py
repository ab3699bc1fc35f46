"""CIFAR-10 loading from a local `.npz` copy, torchvision's python layout, or a download.

Images come out as float32 tensors in [0, 1], NCHW, RGB; labels as int64.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from robustvote.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "ROBUSTVOTE_DATA_DIR"
CACHE_DIR_ENV = "ROBUSTVOTE_CACHE"
TORCHVISION_FOLDER = "cifar-10-batches-py"
_TORCHVISION_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}


class Split(str, Enum):
    """CIFAR-10 split."""

    TRAIN = "train"
    TEST = "test"

    @classmethod
    def parse(cls, value: str | Split) -> Split:
        if isinstance(value, Split):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ConfigError(f"invalid split {value!r}: expected 'train' or 'test'") from None


@dataclass(frozen=True)
class CifarSlice:
    """A contiguous slice of one CIFAR-10 split.

    ``images`` is float32 N×3×32×32 in [0, 1]; ``labels`` int64 N; ``indices`` the positions
    of the images in the split; ``source`` the file or folder they were read from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: np.ndarray
    split: Split
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def default_cache_dir() -> Path:
    """Return the download cache: ``$ROBUSTVOTE_CACHE/cifar10`` or ``~/.cache/robustvote/cifar10``."""
    root = os.environ.get(CACHE_DIR_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "robustvote"
    return base / "cifar10"


def _find_local_copy(folder: Path, split: Split) -> tuple[str, Path] | None:
    """Return the layout and path of a CIFAR-10 copy of ``split`` inside ``folder``, if any."""
    npz = folder / f"{split.value}.npz"
    if npz.is_file():
        return "npz", npz
    for candidate in (folder / TORCHVISION_FOLDER, folder):
        if all((candidate / name).is_file() for name in _TORCHVISION_FILES[split.value]):
            return "torchvision", candidate
    return None


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(
            f"cannot read CIFAR-10 file {path}: {exc}; expected arrays 'images' "
            "(uint8 N×32×32×3) and 'labels'"
        ) from None
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise DataError(
            f"invalid CIFAR-10 file {path}: 'images' has shape {images.shape} and dtype "
            f"{images.dtype}, expected uint8 N×32×32×3"
        )
    if labels.shape != (images.shape[0],):
        raise DataError(
            f"invalid CIFAR-10 file {path}: {labels.shape[0]} labels for {images.shape[0]} images"
        )
    return images, labels.astype(np.int64)


def _read_torchvision(folder: Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in _TORCHVISION_FILES[split.value]:
        # The python-version CIFAR-10 batches are pickled dicts of arrays and lists.
        with open(folder / name, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch["labels"])
    stacked = np.concatenate(images).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(stacked), np.asarray(labels, dtype=np.int64)


def _download(cache_dir: Path, split: Split) -> Path:
    import torchvision

    logger.info("downloading CIFAR-10 into %s", cache_dir)
    try:
        torchvision.datasets.CIFAR10(
            root=str(cache_dir), train=split is Split.TRAIN, download=True
        )
    except Exception as exc:  # torchvision raises URLError, OSError or RuntimeError offline
        raise DataError(
            f"CIFAR-10 not found locally and the download into {cache_dir} failed ({exc}); "
            f"point --data-dir or ${DATA_DIR_ENV} at a folder with {split.value}.npz "
            f"or {TORCHVISION_FOLDER}/"
        ) from None
    return cache_dir / TORCHVISION_FOLDER


def check_slice(total: int, start: int, n: int | None, split: Split) -> int:
    """Validate ``start`` and ``n`` against a split of ``total`` images; return the slice end."""
    if start < 0 or start >= total:
        raise DataError(
            f"data slice start={start} is out of range for the {split.value} split of "
            f"{total} images; choose --start between 0 and {total - 1}"
        )
    end = total if n is None else start + n
    if n is not None and n <= 0:
        raise DataError(f"invalid data slice size n={n}; choose --n of at least 1")
    if end > total:
        raise DataError(
            f"data slice start={start}, n={n} ends at {end}, past the {total} images of the "
            f"{split.value} split; choose --n of at most {total - start}"
        )
    return end


def load_cifar10(
    split: str | Split = Split.TEST,
    start: int = 0,
    n: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> CifarSlice:
    """Load images ``start`` to ``start + n`` of a CIFAR-10 split.

    The folder is ``data_dir``, else ``$ROBUSTVOTE_DATA_DIR``, else the download cache. It may
    hold ``train.npz``/``test.npz`` (``images`` uint8 N×32×32×3, ``labels``) or torchvision's
    ``cifar-10-batches-py``. When nothing is found and ``download`` is true, torchvision
    downloads CIFAR-10 into the cache; otherwise, or when that fails, a :class:`DataError`
    names every folder searched.
    """
    split = Split.parse(split)
    searched: list[Path] = []
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = os.environ[DATA_DIR_ENV]
    if data_dir is not None:
        searched.append(Path(data_dir).expanduser())
    cache_dir = default_cache_dir()
    searched.append(cache_dir)

    found = None
    for folder in searched:
        found = _find_local_copy(folder, split)
        if found is not None:
            break
    if found is None:
        if data_dir is not None and not Path(data_dir).expanduser().is_dir():
            raise DataError(
                f"data directory {data_dir} does not exist; point --data-dir or "
                f"${DATA_DIR_ENV} at a folder with {split.value}.npz or {TORCHVISION_FOLDER}/"
            )
        if not download:
            where = ", ".join(str(p) for p in searched)
            raise DataError(
                f"CIFAR-10 {split.value} split not found in {where}; point --data-dir or "
                f"${DATA_DIR_ENV} at a folder with {split.value}.npz or {TORCHVISION_FOLDER}/"
            )
        found = ("torchvision", _download(cache_dir, split))

    layout, path = found
    if layout == "npz":
        images, labels = _read_npz(path)
    else:
        images, labels = _read_torchvision(path, split)
    logger.debug("read %d %s images from %s", len(labels), split.value, path)

    end = check_slice(len(labels), start, n, split)
    chunk = images[start:end]
    tensor = torch.from_numpy(np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))).float().div_(255)
    return CifarSlice(
        images=tensor,
        labels=torch.from_numpy(labels[start:end].copy()),
        indices=np.arange(start, end),
        split=split,
        source=str(path),
    )
