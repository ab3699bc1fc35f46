"""Agreement of members with a reference model, on clean images and under attack on the reference.

For nested submodels (a MatViT's S, M and L against its XL) agreement measures consistency: a
submodel that agrees with XL everywhere adds nothing to a vote. Under attack the question is
whether an adversarial example made against the reference moves the other members the same way.

For each member, on N labelled images:

- ``clean_agreement``: share of the N clean images on which the member predicts the reference's class.
- ``attacked_agreement``: the same on the reference's worst-case examples (the adversarial
  example the suite found against the reference, or the clean image where it found none).
- ``fooled_agreement``: among the examples on which the attack fooled the reference, the share
  on which the member predicts the same wrong class.
- ``transfer_rate``: among the examples that fooled the reference and that the member
  classifies correctly when clean, the share on which the member is wrong on the adversarial one.
- ``transfer_accuracy``: the member's accuracy on the reference's worst-case examples. For the
  reference this is its robust accuracy under the suite. For any other member it is only an
  upper bound on its robust accuracy, because the examples were not made against it.

The reference's class on its worst-case examples is the one the runner judged, so these rows
never disagree with the suite's robust accuracy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from robustvote.attacks.runner import SuiteResult, run_suite
from robustvote.attacks.suite import Suite
from robustvote.ensemble import VotingEnsemble
from robustvote.errors import ConfigError
from robustvote.evaluation import predict_batched
from robustvote.threat import ThreatModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgreementRow:
    """Agreement of one member with the reference; fractions in [0, 1] (see the module docstring).

    ``fooled_agreement`` and ``transfer_rate`` are NaN when no example counts for them: the
    attack fooled the reference nowhere, or the member is wrong on every such clean image.
    """

    member: str
    reference: str
    clean_agreement: float
    attacked_agreement: float
    fooled_agreement: float
    transfer_rate: float
    clean_accuracy: float
    transfer_accuracy: float
    n: int
    n_fooled: int

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def _share(mask: torch.Tensor) -> float:
    return float(mask.double().mean()) if mask.numel() else math.nan


def agreement_rows(
    names: Sequence[str],
    reference: str,
    clean_predictions: torch.Tensor,
    attacked_predictions: torch.Tensor,
    labels: torch.Tensor,
    fooled: torch.Tensor,
) -> list[AgreementRow]:
    """Return one row per member from M×N predictions on clean and on attacked images.

    ``reference`` must be one of ``names``; ``fooled`` is the bool N mask of examples on which
    the attack fooled the reference.
    """
    ref = list(names).index(reference)
    n_fooled = int(fooled.sum())
    rows = []
    for index, name in enumerate(names):
        clean, attacked = clean_predictions[index], attacked_predictions[index]
        same_attacked = attacked == attacked_predictions[ref]
        wrong = attacked != labels
        transferable = fooled & (clean == labels)
        rows.append(AgreementRow(
            member=name,
            reference=reference,
            clean_agreement=_share(clean == clean_predictions[ref]),
            attacked_agreement=_share(same_attacked),
            fooled_agreement=_share(same_attacked[fooled]),
            transfer_rate=_share(wrong[transferable]),
            clean_accuracy=_share(clean == labels),
            transfer_accuracy=_share(~wrong),
            n=int(labels.numel()),
            n_fooled=n_fooled,
        ))
    return rows


def measure_agreement(
    models: Sequence[nn.Module],
    names: Sequence[str],
    reference: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    suite: Suite,
    threat: ThreatModel,
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device = torch.device("cpu"),
    progress: bool = False,
) -> tuple[list[AgreementRow], SuiteResult]:
    """Attack ``reference`` with ``suite``, then measure every member's agreement with it.

    Returns the rows (the reference's own row included, with agreement 1) and the suite
    result of the attack on the reference.
    """
    names = list(names)
    if reference not in names:
        raise ConfigError(f"reference {reference!r} is not a member; choose one of {', '.join(names)}")
    moved = [m.to(device).eval() for m in models]
    ref = names.index(reference)
    target = VotingEnsemble([moved[ref]], [reference])
    result = run_suite(
        target, images, labels, suite, threat, seed=seed, batch_size=batch_size, device=device,
        progress=progress, keep_adv_images=True,
    )
    if result.adv_images is None:
        raise RuntimeError("the attack run kept no adversarial images; run it without a run folder")
    clean = predict_batched(moved, images, batch_size=batch_size, device=device)
    attacked = predict_batched(moved, result.adv_images, batch_size=batch_size, device=device)
    # A second pass in other batches can flip an example that sits on the decision boundary,
    # so the reference keeps the class the runner judged, and any difference is flagged.
    changed = int((attacked[ref] != result.adv_labels).sum())
    if changed:
        flag = (
            f"recheck-mismatch: {changed} of {len(labels)} worst-case examples of {reference} got another class "
            "when classified again in other batches; the reference rows use the runner's judgement"
        )
        logger.warning("%s", flag)
        result = replace(result, flags=[*result.flags, flag])
    attacked[ref] = result.adv_labels
    fooled = result.clean_correct & ~result.robust
    return agreement_rows(names, reference, clean, attacked, labels, fooled), result
