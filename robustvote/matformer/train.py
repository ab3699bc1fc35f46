"""Joint training of all four MatViT granularities, as MatFormer trains them.

Each step sums the cross-entropy of the S, M, L and XL submodels on the same batch
(Devvrit et al., "MatFormer", 2023). With adversarial training, one perturbation per image
is made against that sum, so it attacks all four granularities jointly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from robustvote.data import Split, load_cifar10
from robustvote.errors import ConfigError, DataError
from robustvote.matformer.checkpoint import read_config, write_config
from robustvote.matformer.granularity import ALL_GRANULARITIES
from robustvote.matformer.model import MatViT, MatViTConfig
from robustvote.training import MODEL_FILE, EpochCallback, EpochRecord, TrainConfig, train

logger = logging.getLogger(__name__)

DEFAULT_HOLDOUT = 1000


def matformer_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return the sum over S, M, L and XL of the mean cross-entropy on ``x`` (N×3×32×32 in [0, 1])."""
    return sum(F.cross_entropy(model(x, granularity=g), y) for g in ALL_GRANULARITIES)


@torch.no_grad()
def evaluate_granularities(model: MatViT, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Return ``loss_G`` (mean cross-entropy) and ``acc_G`` (clean accuracy in [0, 1]) for each granularity G."""
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    for granularity in ALL_GRANULARITIES:
        loss = correct = 0.0
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].float()
            if images.dtype == torch.uint8:
                x = x / 255
            y = labels[start : start + batch_size]
            logits = model(x, granularity=granularity)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(dim=1) == y).sum())
        metrics[f"loss_{granularity.value}"] = loss / images.shape[0]
        metrics[f"acc_{granularity.value}"] = correct / images.shape[0]
    model.train(was_training)
    return metrics


@dataclass(frozen=True)
class TrainingSplit:
    """Shuffled training images (uint8 N×3×32×32) and a held-out slice for the per-epoch log."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    holdout_images: torch.Tensor
    holdout_labels: torch.Tensor


def split_training_set(
    data_dir: str | os.PathLike[str] | None, seed: int, n_train: int | None, holdout: int = DEFAULT_HOLDOUT
) -> TrainingSplit:
    """Shuffle the CIFAR-10 train split with ``seed``; hold out its first ``holdout`` images, train on the next ``n_train``.

    The split is shuffled because a local copy may be grouped by class. ``n_train=None``
    trains on every image that is not held out.
    """
    data = load_cifar10(Split.TRAIN, 0, None, data_dir, download=True)
    available = len(data) - holdout
    if holdout < 1:
        raise DataError(f"invalid --holdout {holdout}: the per-epoch accuracy needs at least 1 held-out image")
    if available < 1:
        raise DataError(
            f"invalid --holdout {holdout}: it leaves none of the {len(data)} training images to train on; choose fewer"
        )
    if n_train is None:
        n_train = available
    if n_train < 1 or n_train > available:
        raise DataError(f"invalid --n-train {n_train}: expected 1 to {available} (the {holdout} held-out images excluded)")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(data)))
    # Stored as uint8 to keep all 50,000 images in 150 MB; the training loop converts per batch.
    images = data.images.mul(255).round_().to(torch.uint8)
    held, used = order[:holdout], order[holdout : holdout + n_train]
    return TrainingSplit(images[used], data.labels[used], images[held], data.labels[held])


def train_matvit(
    model_config: MatViTConfig,
    train_config: TrainConfig,
    split: TrainingSplit,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
) -> tuple[MatViT, list[EpochRecord]]:
    """Train a nested MatViT with the MatFormer loss.

    Every epoch is checkpointed to ``out_dir/model.safetensors`` plus ``model.json``, and its
    record contains ``loss_G`` and ``acc_G`` of each granularity G on the held-out slice.
    """
    folder = Path(out_dir)
    weights = folder / MODEL_FILE
    if resume and weights.with_suffix(".json").is_file():
        saved, _ = read_config(weights)
        if saved != model_config:
            raise ConfigError(
                f"cannot resume from {folder}: its model is {saved.to_json()}, not {model_config.to_json()}; "
                "rerun with the original model options"
            )
    torch.manual_seed(train_config.seed)
    model = MatViT(model_config)
    folder.mkdir(parents=True, exist_ok=True)
    extra = {"training": train_config.to_json(), "n_train": int(split.train_labels.shape[0]),
             "n_holdout": int(split.holdout_labels.shape[0])}

    def evaluate(current: nn.Module) -> Mapping[str, float]:
        return evaluate_granularities(current, split.holdout_images, split.holdout_labels)

    def record_epoch(record: EpochRecord, current: nn.Module) -> None:
        write_config(weights, model_config, {**extra, "finished_epochs": record.epoch})
        if on_epoch_end is not None:
            on_epoch_end(record, current)

    history = train(
        model, matformer_loss, split.train_images, split.train_labels, train_config,
        out_dir=folder, resume=resume, eval_fn=evaluate, on_epoch_end=record_epoch, progress=progress,
    )
    return model, history
