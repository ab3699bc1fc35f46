"""The wrapper every member gets: [0, 1] images in, normalization inside, eval mode."""

from __future__ import annotations

import torch
from torch import nn

from robustvote.zoo.spec import Normalization


class NormalizedModel(nn.Module):
    """Apply ``(x - mean) / std`` per channel, then the wrapped model.

    Input: float N×C×H×W in [0, 1]. Output: the wrapped model's logits, N×classes.
    """

    def __init__(self, model: nn.Module, normalization: Normalization | None) -> None:
        super().__init__()
        self.model = model
        if normalization is None:
            self.register_buffer("mean", None)
            self.register_buffer("std", None)
        else:
            self.register_buffer("mean", torch.tensor(normalization.mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(normalization.std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.model(x)


def prepare_member(model: nn.Module, normalization: Normalization | None) -> NormalizedModel:
    """Wrap ``model`` with its normalization, put it in eval mode and freeze its weights.

    Attacks need gradients with respect to the input only, so parameters stop tracking them.
    """
    wrapped = NormalizedModel(model, normalization).eval()
    for parameter in wrapped.parameters():
        parameter.requires_grad_(False)
    return wrapped
