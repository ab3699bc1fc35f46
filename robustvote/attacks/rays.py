"""RayS: a decision-based Linf attack that reads only the hard vote's labels.

Chen and Gu (2020), "RayS: A Ray Searching Method for Hard-label Adversarial Attack" (KDD).
The attack searches over sign directions d in {-1, +1}^D for the one whose decision radius
r(d) = min{r : the vote is wrong on clip(x + r·d, 0, 1)} is smallest; the Linf size of the
perturbation r·d is r. The search is hierarchical: stage s cuts d into 2^s contiguous blocks
of the flattened image and flips one block at a time, keeping a flip when it lowers the radius.
A flip is tested with one query at the current best radius and, if that query is adversarial,
refined by binary search. When blocks reach single coordinates the search starts again at
stage 0. Because it needs no gradient, gradient masking cannot hide robustness from it.
"""

from __future__ import annotations

import logging

import torch

from robustvote.attacks.base import Attack, check_integer, check_positive, register_attack
from robustvote.ensemble import VotingEnsemble, vote_correct
from robustvote.threat import Norm, ThreatModel

logger = logging.getLogger(__name__)


@register_attack
class RayS(Attack):
    """RayS (Chen and Gu, 2020), decision-based, Linf only.

    Each example gets at most ``queries`` hard-vote queries (one query is a vote of every
    member on one image). Binary searches stop when the radius interval is narrower than
    ``tolerance`` (pixel scale) or lies entirely above eps. An example stops once its radius is
    at most eps. Returns ``clip(x + min(r, eps)·d)`` for the best direction d found.
    """

    name = "rays"
    uses_gradients = False
    norms = frozenset({Norm.LINF})

    def __init__(self, *, queries: int = 1000, tolerance: float = 1e-3) -> None:
        check_integer("queries", queries)
        check_positive("tolerance", tolerance)
        self.queries = queries
        self.tolerance = float(tolerance)

    def propose(
        self,
        target: VotingEnsemble,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        *,
        generator: torch.Generator,
    ) -> torch.Tensor:
        count = images.shape[0]
        device = images.device
        flat = images.reshape(count, -1)
        dimension = flat.shape[1]
        used = torch.zeros(count, dtype=torch.long, device=device)

        def adversarial(directions: torch.Tensor, radii: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            points = (flat[index] + radii.view(-1, 1) * directions).clamp(0, 1).view(-1, *images.shape[1:])
            used[index] += 1
            return ~vote_correct(target.votes(points), labels[index])

        def search(directions: torch.Tensor, high: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            # Binary search on [0, high] (adversarial at high); a first query at eps ends early.
            low = torch.zeros_like(high)
            at_eps = high > threat.eps
            if bool(at_eps.any()):
                hit = adversarial(directions[at_eps], torch.full_like(high[at_eps], threat.eps), index[at_eps])
                sub = at_eps.nonzero().squeeze(1)
                high[sub[hit]] = threat.eps
                low[sub[~hit]] = threat.eps
            open_ = (high - low > self.tolerance) & (high > threat.eps) & (used[index] < self.queries)
            while bool(open_.any()):
                sub = open_.nonzero().squeeze(1)
                middle = (low[sub] + high[sub]) / 2
                hit = adversarial(directions[sub], middle, index[sub])
                high[sub[hit]] = middle[hit]
                low[sub[~hit]] = middle[~hit]
                open_ = (high - low > self.tolerance) & (high > threat.eps) & (used[index] < self.queries)
            return high

        all_index = torch.arange(count, device=device)
        signs = torch.randint(0, 2, (count, dimension), generator=generator).to(device).float() * 2 - 1
        radius = torch.full((count,), float("inf"), device=device)
        start_hit = adversarial(signs, torch.ones(count, device=device), all_index)
        if bool(start_hit.any()):
            sub = start_hit.nonzero().squeeze(1)
            radius[sub] = search(signs[sub], torch.ones(sub.numel(), device=device), sub)

        stage, block = 0, 0
        while True:
            active = ((radius > threat.eps) & (used < self.queries)).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            blocks = 2**stage
            length = -(-dimension // blocks)
            begin, end = block * length, min((block + 1) * length, dimension)
            trial = signs[active].clone()
            trial[:, begin:end] *= -1
            probe = torch.where(torch.isfinite(radius[active]), radius[active], torch.ones_like(radius[active]))
            hit = adversarial(trial, probe, active)
            if bool(hit.any()):
                sub = active[hit]
                new_radius = search(trial[hit], probe[hit].clone(), sub)
                better = new_radius < radius[sub]
                radius[sub[better]] = new_radius[better]
                signs[sub[better]] = trial[hit][better]
            block += 1
            if block >= blocks or end >= dimension:
                block = 0
                stage = 0 if length <= 1 else stage + 1

        logger.debug("rays: %d of %d within eps, mean queries %.0f", int((radius <= threat.eps).sum()), count, float(used.float().mean()))
        step = torch.clamp(radius, max=threat.eps).view(-1, 1)
        return (flat + step * signs).clamp(0, 1).view_as(images)
