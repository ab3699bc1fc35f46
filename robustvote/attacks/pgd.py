"""Projected gradient descent on one member or on a soft surrogate of the vote."""

from __future__ import annotations

import logging
from enum import Enum

import torch
import torch.nn.functional as F

from robustvote.attacks.base import (
    SURROGATE_TARGET,
    Attack,
    check_integer,
    check_positive,
    margin_loss,
    project,
    random_start,
    register_attack,
    score_model,
    steepest_step,
)
from robustvote.ensemble import Surrogate, VotingEnsemble
from robustvote.threat import ThreatModel

logger = logging.getLogger(__name__)


class PgdLoss(str, Enum):
    """Loss that PGD maximizes."""

    CE = "ce"  # cross-entropy of the true class
    MARGIN = "margin"  # best other logit minus the true logit (Carlini and Wagner, 2017)


@register_attack
class PGD(Attack):
    """Projected gradient descent (Madry et al., 2018, "Towards deep learning models resistant
    to adversarial attacks").

    Maximizes the cross-entropy or the margin loss of ``model`` (a member name, or ``"surrogate"``
    for the ``surrogate`` of the vote) with steepest-ascent steps (sign for Linf, normalized
    gradient for L2) of size ``rel_step_size * eps``, projected after every step. Each of
    ``restarts`` runs starts from a random point of the ball when ``random_start`` is true
    (else the first run starts at the clean image). Per example it keeps the iterate with the
    highest margin of the attacked model. Linf and L2; images N×3×H×W in [0, 1].
    """

    name = "pgd"

    def __init__(
        self,
        *,
        steps: int = 20,
        rel_step_size: float = 0.25,
        loss: str = "ce",
        restarts: int = 1,
        random_start: bool = True,
        model: str = SURROGATE_TARGET,
        surrogate: str = Surrogate.MEAN_LOGITS.value,
    ) -> None:
        check_integer("steps", steps)
        check_integer("restarts", restarts)
        check_positive("rel_step_size", rel_step_size)
        self.steps = steps
        self.rel_step_size = rel_step_size
        self.loss = PgdLoss(loss).value
        self.restarts = restarts
        self.random_start = bool(random_start)
        self.model = model
        self.surrogate = Surrogate.parse(surrogate).value

    def propose(
        self,
        target: VotingEnsemble,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        *,
        generator: torch.Generator,
    ) -> torch.Tensor:
        model = score_model(target, self.model, self.surrogate)
        best = images.clone()
        best_margin = torch.full((images.shape[0],), float("-inf"), device=images.device)
        for restart in range(self.restarts):
            if self.random_start or restart > 0:
                start = random_start(images, threat, generator)
            else:
                start = images.clone()
            adversarial, margin = self._run(model, images, labels, threat, start)
            better = margin > best_margin
            best[better] = adversarial[better]
            best_margin = torch.maximum(best_margin, margin)
        return best

    def _run(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        start: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        step_size = self.rel_step_size * threat.eps
        current = start
        best = start.clone()
        best_margin = torch.full((images.shape[0],), float("-inf"), device=images.device)
        # One more forward than steps: the last iterate is scored too.
        for step in range(self.steps + 1):
            current = current.detach().requires_grad_(step < self.steps)
            with torch.set_grad_enabled(step < self.steps):
                scores = model(current)
                margin = margin_loss(scores, labels)
            better = margin.detach() > best_margin
            best[better] = current.detach()[better]
            best_margin = torch.maximum(best_margin, margin.detach())
            if step == self.steps:
                break
            if self.loss == PgdLoss.CE.value:
                objective = F.cross_entropy(scores, labels, reduction="sum")
            else:
                objective = margin.sum()
            (gradient,) = torch.autograd.grad(objective, current)
            current = project(current.detach() + step_size * steepest_step(gradient, threat.norm), images, threat)
        return best, best_margin
