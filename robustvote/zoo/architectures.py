"""Architectures for state-dict members, importable as ``robustvote.zoo.architectures:NAME``."""

from __future__ import annotations

from torch import nn


def cnn_a(num_classes: int = 10, width: int = 100) -> nn.Sequential:
    """Build the small CNN of Wong and Kolter (2018) and of SDP-FO (Dathathri et al., 2020), "CNN-A".

    conv 3→16 (4×4, stride 2, pad 1), ReLU, conv 16→32 (4×4, stride 2, pad 1), ReLU, flatten
    (C·H·W order, 2048), linear 2048→``width``, ReLU, linear ``width``→``num_classes``. The
    Sequential indices give the state-dict keys ``0.*``, ``2.*``, ``5.*`` and ``7.*`` that the
    published checkpoints use. Input: normalized N×3×32×32.
    """
    return nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )
