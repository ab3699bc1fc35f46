"""Transfer: adversarial examples of single members and of member subsets, replayed on the vote."""

from __future__ import annotations

import logging

import torch

from robustvote.attacks.base import (
    Attack,
    check_integer,
    check_positive,
    project,
    register_attack,
    vote_fooled,
)
from robustvote.attacks.pgd import PGD
from robustvote.attacks.vote_subset import majority_size
from robustvote.ensemble import VotingEnsemble
from robustvote.threat import ThreatModel

logger = logging.getLogger(__name__)


def transfer_sources(members: int, n_subsets: int, generator: torch.Generator) -> list[list[int]]:
    """Return the source member lists: each member alone, then ``n_subsets`` distinct random majorities.

    Subsets are drawn with ``generator``; with fewer than three members there is no proper
    majority subset to add beyond the whole ensemble.
    """
    sources = [[m] for m in range(members)]
    size = majority_size(members)
    if members < 3 or size >= members:
        return sources
    seen: set[tuple[int, ...]] = set()
    attempts = 0
    while len(seen) < n_subsets and attempts < 50 * max(n_subsets, 1):
        attempts += 1
        chosen = tuple(sorted(torch.randperm(members, generator=generator)[:size].tolist()))
        if chosen not in seen:
            seen.add(chosen)
            sources.append(list(chosen))
    return sources


@register_attack
class VoteTransfer(Attack):
    """Transfer attack on the vote (Papernot et al., 2016, "Transferability in machine
    learning"; Liu et al., 2017, "Delving into transferable adversarial examples").

    The sources are every member alone, then ``n_subsets`` random majorities of members (through
    their mean-logits surrogate). On each source it runs PGD on the margin loss (``steps``
    iterations, step ``rel_step_size * eps``, random start) for the examples the vote still gets
    right, and replays the results on the full hard vote. The first source that fools the vote
    on an example wins.
    Linf and L2; images N×3×H×W in [0, 1].
    """

    name = "vote-transfer"

    def __init__(self, *, steps: int = 20, rel_step_size: float = 0.25, n_subsets: int = 4, loss: str = "margin") -> None:
        check_integer("steps", steps)
        check_integer("n_subsets", n_subsets, minimum=0)
        check_positive("rel_step_size", rel_step_size)
        self.steps = steps
        self.rel_step_size = rel_step_size
        self.n_subsets = n_subsets
        self.loss = loss
        PGD(steps=steps, rel_step_size=rel_step_size, loss=loss)  # rejects an unknown loss now, not mid-run

    def propose(
        self,
        target: VotingEnsemble,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        *,
        generator: torch.Generator,
    ) -> torch.Tensor:
        candidates = images.clone()
        remaining = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        pgd = PGD(steps=self.steps, rel_step_size=self.rel_step_size, loss=self.loss)
        for source in transfer_sources(len(target), self.n_subsets, generator):
            index = remaining.nonzero().squeeze(1)
            if index.numel() == 0:
                break
            surrogate = VotingEnsemble([target.members[m] for m in source], [target.names[m] for m in source])
            proposal = project(
                pgd.propose(surrogate, images[index], labels[index], threat, generator=generator), images[index], threat
            )
            fooled = vote_fooled(target, proposal, labels[index])
            candidates[index[fooled]] = proposal[fooled]
            remaining[index[fooled]] = False
            logger.debug("vote-transfer: source %s fooled the vote on %d of %d", surrogate.names, int(fooled.sum()), index.numel())
        return candidates
