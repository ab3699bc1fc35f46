"""Targeted attacks on the hard vote through a saturating margin summed over members.

A vote flips when the true class loses its plurality. Members fooled toward different wrong
classes rarely achieve that, because each wrong class gains only one vote. So the attack picks a
target class t per example and maximizes, over the perturbation,

    L(x) = sum_m w_m * min(z_m,t(x) - max_{j != t} z_m,j(x), kappa)

over members m with weights w_m (1 for ``vote-pgd``; a subset mask for ``vote-subset``). A
member that already votes t with margin kappa contributes no gradient, so the effort moves to
the members that do not vote t yet. The step schedule follows APGD (Croce and Hein, 2020,
"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks"): momentum 0.75, an initial step of 2·eps, halved at checkpoints when progress stalls,
restarting from the best point. An example stops as soon as the hard vote on it is wrong.
"""

from __future__ import annotations

import logging
import math

import torch

from robustvote.attacks.base import (
    Attack,
    check_integer,
    check_positive,
    project,
    random_start,
    register_attack,
    steepest_step,
)
from robustvote.ensemble import VotingEnsemble, vote_correct, votes_from_logits
from robustvote.threat import ThreatModel

logger = logging.getLogger(__name__)

MOMENTUM = 0.75


UNTARGETED = -1


def saturating_margin(
    member_logits: torch.Tensor, targets: torch.Tensor, kappa: float, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Return M×N margins ``min(z_t - max_{j != t} z_j, kappa)`` of M×N×C logits toward N targets.

    Where a target is ``UNTARGETED`` the margin is ``min(max_{j != y} z_j - z_y, kappa)`` for the
    true label y from ``labels``: positive once the member no longer votes y.
    """
    untargeted = targets == UNTARGETED
    index = torch.where(untargeted, torch.zeros_like(targets), targets).view(1, -1, 1)
    index = index.expand(member_logits.shape[0], -1, 1)
    target_logit = member_logits.gather(2, index).squeeze(2)
    others = member_logits.scatter(2, index, float("-inf")).amax(dim=2)
    margin = target_logit - others
    if labels is not None and bool(untargeted.any()):
        true_index = labels.view(1, -1, 1).expand(member_logits.shape[0], -1, 1)
        true_logit = member_logits.gather(2, true_index).squeeze(2)
        best_other = member_logits.scatter(2, true_index, float("-inf")).amax(dim=2)
        margin = torch.where(untargeted.view(1, -1), best_other - true_logit, margin)
    return torch.clamp(margin, max=kappa)


def apgd_checkpoints(steps: int) -> set[int]:
    """Return the iterations at which APGD may halve its step: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), as fractions of ``steps``."""
    fractions = [0.0, 0.22]
    while fractions[-1] < 1:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    # The small offset keeps float error (0.57 stored as 0.5700000001) from moving a checkpoint.
    iterations = {math.ceil(p * steps - 1e-9) for p in fractions[1:]}
    return {i for i in iterations if 0 < i < steps}


def rank_target_classes(member_logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Rank wrong classes per example, likeliest first: by weighted votes, ties by mean probability.

    ``member_logits`` is M×N×C, ``weights`` N×M (all ones when None). Returns N×(C-1) classes.
    """
    members, count, classes = member_logits.shape
    if weights is None:
        weights = torch.ones(count, members, device=member_logits.device)
    weight = weights.t().unsqueeze(2)
    votes = (torch.nn.functional.one_hot(member_logits.argmax(2), classes) * weight).sum(0)
    probabilities = (member_logits.softmax(2) * weight).sum(0) / weight.sum(0).clamp_min(1e-12)
    score = votes + probabilities
    score = score.scatter(1, labels.view(-1, 1), float("-inf"))
    return score.argsort(dim=1, descending=True)[:, : classes - 1]


def optimize_vote_margin(
    target: VotingEnsemble,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    threat: ThreatModel,
    start: torch.Tensor,
    *,
    steps: int,
    kappa: float,
    weights: torch.Tensor | None = None,
    rho: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximize the weighted saturating margin toward ``targets`` with APGD's step schedule.

    Returns N×3×H×W points (the first that fools the hard vote, else the one with the highest
    loss) and the bool N mask of examples on which the hard vote was fooled.
    """
    count = images.shape[0]
    device = images.device
    weights = torch.ones(count, len(target), device=device) if weights is None else weights.to(device)
    checkpoints = apgd_checkpoints(steps)

    def evaluate(x: torch.Tensor, index: torch.Tensor, need_gradient: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = x.detach().requires_grad_(need_gradient)
        with torch.set_grad_enabled(need_gradient):
            logits = target.member_logits(x)
            margins = saturating_margin(logits, targets[index], kappa, labels[index])
            loss = (margins * weights[index].t()).sum(0)
        fooled = ~vote_correct(votes_from_logits(logits.detach()), labels[index])
        gradient = torch.autograd.grad(loss.sum(), x)[0] if need_gradient else None
        return loss.detach(), fooled, gradient

    all_index = torch.arange(count, device=device)
    current = start.clone()
    loss, fooled, first_gradient = evaluate(current, all_index, True)
    gradient = first_gradient if first_gradient is not None else torch.zeros_like(images)
    result = current.clone()
    done = fooled.clone()
    best_loss = loss.clone()
    best = current.clone()
    previous = current.clone()
    step_size = torch.full((count,), 2 * threat.eps, device=device)
    successes = torch.zeros(count, device=device)
    best_at_checkpoint = best_loss.clone()
    step_at_checkpoint = step_size.clone()
    last_checkpoint = 0
    current_loss = loss.clone()

    for iteration in range(steps):
        active = (~done).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        shape = (-1,) + (1,) * (images.dim() - 1)
        x_k = current[active]
        step = step_size[active].view(shape) * steepest_step(gradient[active], threat.norm)
        z = project(x_k + step, images[active], threat)
        momentum = MOMENTUM if iteration > 0 else 1.0
        x_next = project(x_k + momentum * (z - x_k) + (1 - momentum) * (x_k - previous[active]), images[active], threat)
        previous[active] = x_k
        current[active] = x_next
        new_loss, new_fooled, new_gradient = evaluate(x_next, active, True)

        gradient[active] = new_gradient
        successes[active] += (new_loss > current_loss[active]).float()
        current_loss[active] = new_loss
        improved = new_loss > best_loss[active]
        best_loss[active] = torch.where(improved, new_loss, best_loss[active])
        best[active[improved]] = x_next[improved]

        newly = active[new_fooled]
        result[newly] = x_next[new_fooled]
        done[newly] = True

        if iteration + 1 in checkpoints:
            window = iteration + 1 - last_checkpoint
            stalled = successes < rho * window
            stalled |= (step_at_checkpoint == step_size) & (best_at_checkpoint == best_loss)
            halve = stalled & ~done
            step_at_checkpoint = step_size.clone()
            step_size = torch.where(halve, step_size / 2, step_size)
            # Restart halved examples from their best point.
            current[halve] = best[halve]
            previous[halve] = best[halve]
            if bool(halve.any()):
                restarted = halve.nonzero().squeeze(1)
                reloss, _, regradient = evaluate(current[restarted], restarted, True)
                gradient[restarted] = regradient
                current_loss[restarted] = reloss
            successes.zero_()
            best_at_checkpoint = best_loss.clone()
            last_checkpoint = iteration + 1

    result[~done] = best[~done]
    return result, done


class _VoteMarginAttack(Attack):
    """Shared budget of the saturating-margin attacks."""

    def __init__(self, *, steps: int, restarts: int, kappa: float, rho: float) -> None:
        check_integer("steps", steps)
        check_integer("restarts", restarts)
        check_positive("kappa", kappa)
        check_positive("rho", rho)
        self.steps = steps
        self.restarts = restarts
        self.kappa = float(kappa)
        self.rho = float(rho)

    def _attack_targets(
        self,
        target: VotingEnsemble,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        generator: torch.Generator,
        rounds: list[tuple[torch.Tensor, torch.Tensor | None]],
    ) -> torch.Tensor:
        """Run each (targets N, weights N×M or None) round and every restart on unfooled examples."""
        candidates = images.clone()
        remaining = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        for targets, weights in rounds:
            for restart in range(self.restarts):
                index = remaining.nonzero().squeeze(1)
                if index.numel() == 0:
                    return candidates
                x = images[index]
                start = x.clone() if restart == 0 else random_start(x, threat, generator)
                found, fooled = optimize_vote_margin(
                    target, x, labels[index], targets[index], threat, start, steps=self.steps,
                    kappa=self.kappa, weights=None if weights is None else weights[index], rho=self.rho,
                )
                candidates[index] = found
                remaining[index[fooled]] = False
        return candidates


@register_attack
class VotePGD(_VoteMarginAttack):
    """Targeted saturating-margin attack on the vote (this package's design, APGD schedule).

    Target classes are the ``n_targets`` likeliest wrong classes, ranked by clean votes, then by
    mean member probability. For each target it makes ``restarts`` runs, the first from the clean
    image and the rest from random points of the ball. Each run maximizes the sum over members of
    ``min(margin toward t, kappa)`` for ``steps`` iterations and stops per example once the hard
    vote is wrong. With ``untargeted`` (the default) a first round maximizes the sum of
    ``min(max_{j != y} z_j - z_y, kappa)`` instead: under the conservative tie rule a vote is
    also lost when members leave the true class for different classes (two of three members
    voting two different wrong classes tie with it), which the targeted rounds cannot exploit.
    Linf and L2; images N×3×H×W in [0, 1].
    """

    name = "vote-pgd"

    def __init__(
        self,
        *,
        n_targets: int = 3,
        untargeted: bool = True,
        steps: int = 50,
        restarts: int = 1,
        kappa: float = 0.5,
        rho: float = 0.75,
    ) -> None:
        super().__init__(steps=steps, restarts=restarts, kappa=kappa, rho=rho)
        check_integer("n_targets", n_targets, minimum=0)
        if n_targets == 0 and not untargeted:
            raise ValueError("n_targets is 0 and untargeted is false, so vote-pgd would not attack at all")
        self.n_targets = n_targets
        self.untargeted = bool(untargeted)

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
            ranked = rank_target_classes(target.member_logits(images), labels)
        rounds: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        if self.untargeted:
            rounds.append((torch.full_like(labels, UNTARGETED), None))
        rounds += [(ranked[:, rank], None) for rank in range(min(self.n_targets, ranked.shape[1]))]
        return self._attack_targets(target, images, labels, threat, generator, rounds)
