"""Batched clean evaluation of members and their vote."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from robustvote.ensemble import TieRule, vote_correct, votes_from_predictions


def resolve_device(name: str = "auto") -> torch.device:
    """Return CUDA when available for ``auto``, else the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def predict_batched(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    description: str = "predict",
) -> torch.Tensor:
    """Return M×N hard labels of each model on ``images`` (N×3×H×W in [0, 1])."""
    outputs = torch.empty(len(models), images.shape[0], dtype=torch.long)
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, desc=description, disable=not progress, leave=False):
        batch = images[start : start + batch_size].to(device)
        for index, model in enumerate(models):
            outputs[index, start : start + batch.shape[0]] = model(batch).argmax(dim=-1).cpu()
    return outputs


@dataclass(frozen=True)
class CleanResult:
    """Member predictions (M×N) on a labelled slice, and the vote they make."""

    names: list[str]
    predictions: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def member_accuracy(self) -> dict[str, float]:
        # Averaged in float64, so that CSV files show 0.674 and not float32's 0.6740000247955322.
        correct = (self.predictions == self.labels.unsqueeze(0)).double().mean(dim=1)
        return {name: float(acc) for name, acc in zip(self.names, correct)}

    def vote_accuracy(self, members: Sequence[str] | None = None, tie_rule: TieRule = TieRule.CONSERVATIVE) -> float:
        rows = [self.names.index(m) for m in members] if members else list(range(len(self.names)))
        votes = votes_from_predictions(self.predictions[rows], self.num_classes)
        return float(vote_correct(votes, self.labels, tie_rule).double().mean())


def evaluate_clean(
    models: Sequence[nn.Module],
    names: Sequence[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
) -> CleanResult:
    """Predict every model on a slice and keep the labels for accuracy and votes."""
    moved = [m.to(device) for m in models]
    predictions = predict_batched(
        moved, images, batch_size=batch_size, device=device, progress=progress, description="clean"
    )
    return CleanResult(list(names), predictions, labels.clone(), num_classes)
