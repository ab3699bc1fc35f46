"""Pairwise diversity of pool members under attack, as tables and a heatmap.

For members i and j of a robustness matrix (bool M×N, true where the member, attacked on its
own, stays correct):

- joint vulnerability: the fraction of examples on which both are not robust (misclassified
  clean or fooled). Its diagonal is one minus the member's robust accuracy. Two members can
  only outvote a third where they are not fooled together, so low values are what a vote needs.
- disagreement: the fraction of examples on which exactly one of the two is robust.

These two are the double-fault and disagreement measures of Kuncheva and Whitaker, "Measures of
Diversity in Classifier Ensembles and Their Relationship with the Ensemble Accuracy" (Machine
Learning 51, 2003), applied to robustness instead of clean correctness. A third measure is:

- same adversarial class: the fraction of examples on which both are not robust and end on
  the same wrong class. Wrong votes only add up when they agree on a class, so this is the
  part of the joint vulnerability that hurts a plurality vote most.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robustvote.io import atomic_output, write_csv_atomic


@dataclass(frozen=True, eq=False)
class Diversity:
    """Pairwise measures (float64 M×M, fractions of N) and per-member accuracies (float64 M)."""

    names: tuple[str, ...]
    joint_vulnerability: np.ndarray
    disagreement: np.ndarray
    same_adversarial_class: np.ndarray
    robust_accuracy: np.ndarray
    clean_accuracy: np.ndarray

    def mean_joint_vulnerability(self, subset: Sequence[int]) -> float:
        """Return the mean joint vulnerability over the pairs of ``subset`` (0 for one member)."""
        rows = list(subset)
        if len(rows) < 2:
            return 0.0
        block = self.joint_vulnerability[np.ix_(rows, rows)]
        upper = np.triu_indices(len(rows), k=1)
        return float(block[upper].mean())


def measure_diversity(
    names: Sequence[str],
    robust: np.ndarray,
    clean_correct: np.ndarray,
    adv_labels: np.ndarray,
    labels: np.ndarray,
) -> Diversity:
    """Compute the pairwise measures from bool M×N ``robust`` and ``clean_correct``, int M×N
    ``adv_labels`` (the class each member ends on) and int N ``labels``."""
    robust = np.asarray(robust, dtype=bool)
    vulnerable = (~robust).astype(np.float64)
    examples = robust.shape[1]
    joint = vulnerable @ vulnerable.T / examples
    robust_float = robust.astype(np.float64)
    disagreement = (robust_float @ (1 - robust_float).T + (1 - robust_float) @ robust_float.T) / examples
    wrong_class = np.where(robust, -1, np.asarray(adv_labels))
    # A member that is not robust but still ends on the true class (misclassified clean, then
    # no adversarial example found) has no wrong class to share.
    wrong_class = np.where(wrong_class == np.asarray(labels)[None, :], -1, wrong_class)
    same = np.zeros_like(joint)
    for i in range(len(names)):
        same[i] = ((wrong_class[i][None, :] == wrong_class) & (wrong_class >= 0)).mean(axis=1)
    return Diversity(
        names=tuple(names),
        joint_vulnerability=joint,
        disagreement=disagreement,
        same_adversarial_class=same,
        robust_accuracy=robust_float.mean(axis=1),
        clean_accuracy=np.asarray(clean_correct, dtype=np.float64).mean(axis=1),
    )


def write_diversity_csv(diversity: Diversity, members_path: str | os.PathLike[str],
                        pairs_path: str | os.PathLike[str]) -> None:
    """Write per-member accuracies and the pairwise measures (one row per ordered pair i < j)."""
    member_rows = [
        {"member": name, "clean_accuracy": clean, "robust_accuracy": robust}
        for name, clean, robust in zip(diversity.names, diversity.clean_accuracy, diversity.robust_accuracy)
    ]
    write_csv_atomic(members_path, member_rows, ["member", "clean_accuracy", "robust_accuracy"])
    pair_rows = []
    for i, first in enumerate(diversity.names):
        for j in range(i + 1, len(diversity.names)):
            pair_rows.append({
                "member_a": first,
                "member_b": diversity.names[j],
                "joint_vulnerability": round(float(diversity.joint_vulnerability[i, j]), 6),
                "disagreement": round(float(diversity.disagreement[i, j]), 6),
                "same_adversarial_class": round(float(diversity.same_adversarial_class[i, j]), 6),
            })
    columns = ["member_a", "member_b", "joint_vulnerability", "disagreement", "same_adversarial_class"]
    write_csv_atomic(pairs_path, pair_rows, columns)


def write_heatmap(diversity: Diversity, path: str | os.PathLike[str], *, title: str = "") -> None:
    """Draw joint vulnerability and disagreement side by side, values in percent, to a PNG.

    Uses matplotlib's Agg canvas directly, so no display and no global backend switch is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [f"{name} ({100 * acc:.0f}%)" for name, acc in zip(diversity.names, diversity.robust_accuracy)]
    size = len(labels)
    side = max(4.0, 0.55 * size + 2.5)
    figure = Figure(figsize=(2 * side + 1, side + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    panels = [
        ("joint vulnerability: both not robust (%)", diversity.joint_vulnerability, "Reds"),
        ("disagreement: exactly one robust (%)", diversity.disagreement, "Blues"),
    ]
    for index, (panel_title, values, colormap) in enumerate(panels):
        axes = figure.add_subplot(1, 2, index + 1)
        image = axes.imshow(100 * values, cmap=colormap, vmin=0, vmax=100)
        axes.set_xticks(range(size), labels, rotation=60, ha="right", fontsize=8)
        axes.set_yticks(range(size), labels, fontsize=8)
        axes.set_title(panel_title, fontsize=10)
        for i in range(size):
            for j in range(size):
                value = 100 * values[i, j]
                axes.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                          color="white" if value > 60 else "black")
        figure.colorbar(image, ax=axes, shrink=0.8)
    legend = "tick labels: member (robust accuracy)"
    figure.suptitle(f"{title}\n{legend}" if title else legend, fontsize=10)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=120)
