"""Checks in the spirit of AutoAttack's (``checks.py``): results that a reader should not trust
without a second look are written into the run's flags, not only into the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from robustvote.attacks.base import flat_norm
from robustvote.ensemble import VotingEnsemble
from robustvote.threat import ThreatModel

logger = logging.getLogger(__name__)

# Tolerances, in [0, 1] pixel scale or as fractions of the evaluated examples.
PERTURBATION_TOLERANCE = 1e-6
ZERO_GRADIENT_FRACTION = 0.01
DECISION_MARGIN = 0.05
LARGE_EPS_ACCURACY = 0.05
DETERMINISM_TOLERANCE = 1e-4


def audit_proposals(
    raw: torch.Tensor, projected: torch.Tensor, images: torch.Tensor, threat: ThreatModel
) -> dict[str, Any]:
    """Describe one attack's raw candidates and the projected ones the runner judged.

    Returns counts of NaN entries and of raw values outside [0, 1], and the largest raw and
    projected perturbation (in the threat's norm, pixel scale). It also counts projected values
    outside the box or the ball, which would be a bug in the runner.
    """
    nan = torch.isnan(raw)
    cleaned = torch.where(nan, images, raw)
    outside = (cleaned < 0) | (cleaned > 1)
    projected_norms = flat_norm(projected - images, threat.norm)
    return {
        "nan_values": int(nan.sum()),
        "nan_examples": int(nan.reshape(nan.shape[0], -1).any(dim=1).sum()),
        "raw_outside_box": int(outside.sum()),
        "raw_max_perturbation": float(flat_norm(cleaned - images, threat.norm).max()) if len(raw) else 0.0,
        "max_perturbation": float(projected_norms.max()) if len(raw) else 0.0,
        "outside_ball": int((projected_norms > threat.eps + PERTURBATION_TOLERANCE).sum()),
        "outside_box": int(((projected < 0) | (projected > 1)).sum()),
    }


def merge_audits(audits: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine per-batch audits of one attack: sums for counts, maxima for perturbations."""
    merged: dict[str, Any] = {}
    for audit in audits:
        for key, value in audit.items():
            if key.startswith(("max_", "raw_max_")):
                merged[key] = max(merged.get(key, 0.0), value)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                merged[key] = value
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def proposal_flags(attack: str, audit: Mapping[str, Any], threat: ThreatModel) -> list[str]:
    """Return the flags one attack's merged audit raises."""
    flags = []
    if audit.get("nan_examples", 0):
        flags.append(
            f"nan-candidates: {attack} proposed NaN values for {audit['nan_examples']} examples; "
            "those values were replaced by the clean image"
        )
    if audit.get("outside_ball", 0) or audit.get("outside_box", 0):
        flags.append(
            f"projection-failed: {audit.get('outside_ball', 0)} candidates of {attack} lie outside the "
            f"{threat} ball or [0, 1] after projection; the result is not valid"
        )
    if audit.get("skipped"):
        flags.append(f"attack-skipped: {attack} does not support {threat.norm.value} and did not run")
    return flags


@torch.no_grad()
def check_determinism(target: VotingEnsemble, images: torch.Tensor) -> list[str]:
    """Predict twice and flag members whose logits or labels differ between the two passes."""
    first = target.member_logits(images)
    second = target.member_logits(images)
    flags = []
    for index, name in enumerate(target.names):
        difference = float((first[index] - second[index]).abs().max())
        labels_differ = bool((first[index].argmax(-1) != second[index].argmax(-1)).any())
        if difference > DETERMINISM_TOLERANCE or labels_differ:
            flags.append(
                f"non-deterministic-member: {name} returned logits that differ by up to {difference:.3g} "
                "on two passes over the same images; attacks and their verdicts may not reproduce"
            )
    return flags


def check_gradients(target: VotingEnsemble, images: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """Flag members whose cross-entropy input gradient is exactly zero on many clean examples.

    A zero gradient (quantized outputs, saturated softmax, non-differentiable layers) starves
    every gradient attack, so their failures say nothing about robustness.
    """
    flags = []
    for index, name in enumerate(target.names):
        x = images.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(target.members[index](x), labels, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x)
        zero = gradient.reshape(gradient.shape[0], -1).abs().sum(dim=1) == 0
        fraction = float(zero.float().mean())
        if fraction > ZERO_GRADIENT_FRACTION:
            flags.append(
                f"vanishing-gradients: {name} has an all-zero input gradient on {100 * fraction:.1f}% of "
                "the first batch; gradient attacks get no signal from it there, so weigh the decision-based results"
            )
    return flags


def decision_flags(
    names: Sequence[str],
    uses_gradients: Sequence[bool],
    per_attack_robust: Mapping[str, torch.Tensor],
    clean_correct: torch.Tensor,
) -> list[str]:
    """Flag a decision-based attack that breaks many examples every earlier gradient attack left robust.

    Attacks run in suite order on examples still robust, so the examples a decision-based attack
    breaks are exactly those the attacks before it missed. More than ``DECISION_MARGIN`` of the
    examples suggests gradient masking: the gradient attacks are starved, not the model robust.
    """
    flags = []
    total = max(int(clean_correct.numel()), 1)
    previous = clean_correct
    seen_gradient_attack = False
    for name, gradient_based in zip(names, uses_gradients):
        current = per_attack_robust[name]
        broken = int((previous & ~current).sum())
        if not gradient_based and seen_gradient_attack and broken / total > DECISION_MARGIN:
            flags.append(
                f"decision-beats-gradient: the decision-based attack {name} broke {broken} of {total} "
                f"examples ({100 * broken / total:.1f}%) that every gradient attack before it missed; "
                "the gradient attacks may be masked"
            )
        seen_gradient_attack = seen_gradient_attack or gradient_based
        previous = current
    return flags


def eps_sweep_flags(eps_values: Sequence[float], robust_accuracies: Sequence[float]) -> list[str]:
    """Flag an eps sweep whose robust accuracy rises with eps or stays above ``LARGE_EPS_ACCURACY``.

    ``eps_values`` must be increasing. The second check applies only when the sweep reaches an
    eps of at least 0.25 (64/255 Linf), where any CIFAR-10 classifier should be broken.
    """
    flags = []
    pairs = list(zip(eps_values, robust_accuracies))
    for (eps_low, acc_low), (eps_high, acc_high) in zip(pairs, pairs[1:]):
        if acc_high > acc_low + 1e-9:
            flags.append(
                f"accuracy-rises-with-eps: robust accuracy {100 * acc_high:.1f}% at eps {eps_high:.4g} is "
                f"above {100 * acc_low:.1f}% at eps {eps_low:.4g}; the attacks are too weak or masked"
            )
    if pairs and pairs[-1][0] >= 0.25 and pairs[-1][1] > LARGE_EPS_ACCURACY:
        flags.append(
            f"no-fall-at-large-eps: robust accuracy is still {100 * pairs[-1][1]:.1f}% at eps {pairs[-1][0]:.4g}; "
            "it should be near 0, so the attacks are too weak or masked"
        )
    return flags
