"""Attack only the cheapest majority of members, several majorities in turn."""

from __future__ import annotations

import itertools
import logging

import torch

from robustvote.attacks.base import check_integer, margin_loss, register_attack
from robustvote.attacks.vote_pgd import _VoteMarginAttack, rank_target_classes
from robustvote.ensemble import VotingEnsemble
from robustvote.threat import ThreatModel

logger = logging.getLogger(__name__)

# Above this many majorities, candidates are sliding windows over members sorted by cost.
MAX_ENUMERATED_SUBSETS = 1024


def majority_size(members: int) -> int:
    """Return the smallest number of members whose agreement on one class decides the vote."""
    return members // 2 + 1


def cheapest_majorities(costs: torch.Tensor, count: int) -> torch.Tensor:
    """Return N×count×M bool masks of the ``count`` majorities with the lowest summed cost.

    ``costs`` is N×M (per example and member, how far the member is from being flipped).
    """
    examples, members = costs.shape
    size = majority_size(members)
    combinations = list(itertools.combinations(range(members), size))
    if len(combinations) > MAX_ENUMERATED_SUBSETS:
        order = costs.argsort(dim=1)
        masks = torch.zeros(examples, count, members, dtype=torch.bool, device=costs.device)
        for rank in range(count):
            chosen = (torch.arange(size, device=costs.device) + rank) % members
            masks[:, rank].scatter_(1, order[:, chosen], True)
        return masks
    table = torch.zeros(len(combinations), members, dtype=torch.bool, device=costs.device)
    for row, combination in enumerate(combinations):
        table[row, list(combination)] = True
    totals = costs @ table.t().float()
    picked = totals.argsort(dim=1)[:, : min(count, len(combinations))]
    return table[picked]


@register_attack
class VoteSubset(_VoteMarginAttack):
    """Attack the majority of members cheapest to flip (this package's design).

    The cost of a member on an example is its clean margin ``z_y - max_{j != y} z_j`` (0 for a
    member that is already wrong). It takes the ``n_subsets`` majorities (``M // 2 + 1`` members)
    with the lowest summed cost. On each it runs the saturating-margin optimizer of ``vote-pgd``
    on those members only, with ``restarts`` runs of ``steps`` iterations. The target is the
    class those members favour most (weighted votes, then mean probability). When every member
    of a majority votes that class, the vote is wrong. Linf and L2.
    """

    name = "vote-subset"

    def __init__(self, *, n_subsets: int = 3, steps: int = 50, restarts: int = 1, kappa: float = 0.5, rho: float = 0.75) -> None:
        super().__init__(steps=steps, restarts=restarts, kappa=kappa, rho=rho)
        check_integer("n_subsets", n_subsets)
        self.n_subsets = n_subsets

    def propose(
        self,
        target: VotingEnsemble,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        *,
        generator: torch.Generator,
    ) -> torch.Tensor:
        with torch.no_grad():
            logits = target.member_logits(images)
            costs = torch.stack([(-margin_loss(member, labels)).clamp_min(0) for member in logits], dim=1)
            masks = cheapest_majorities(costs, self.n_subsets)
        rounds = []
        for rank in range(masks.shape[1]):
            weights = masks[:, rank].float()
            targets = rank_target_classes(logits, labels, weights)[:, 0]
            rounds.append((targets, weights))
        return self._attack_targets(target, images, labels, threat, generator, rounds)
