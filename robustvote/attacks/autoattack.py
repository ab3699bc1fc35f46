"""AutoAttack's components (Croce and Hein, 2020), run through the ``pyautoattack`` package.

Each attack works on one member (``model: NAME``) or on a soft surrogate of the vote
(``model: surrogate``, with ``surrogate: mean-logits | mean-log-softmax | log-mean-probs``).
pyautoattack judges success by the argmax of the model it attacks; the runner re-judges every
candidate on the hard vote.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from robustvote.attacks.base import (
    SURROGATE_TARGET,
    Attack,
    check_integer,
    check_positive,
    project,
    register_attack,
    score_model,
    vote_fooled,
)
from robustvote.compat import alias_autoattack
from robustvote.ensemble import Surrogate, VotingEnsemble
from robustvote.threat import ThreatModel

logger = logging.getLogger(__name__)

# The budgets of AutoAttack's "standard" version (pyautoattack 0.2.0, autoattack.py).
STANDARD_ITERATIONS = 100
STANDARD_TARGET_CLASSES = 9
STANDARD_SQUARE_QUERIES = 5000
STANDARD_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def _seed_from(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def _target_classes(requested: int, scores_width: int) -> int:
    return max(1, min(requested, scores_width - 1))


class _LogSink:
    """A logger for pyautoattack's checks that names the component attacked.

    pyautoattack reports zero input gradients of the model it attacks (which may be a
    surrogate) with a Python warning that points into its own source. Passed as its
    ``logger``, this writes the same finding as one robustvote log line instead.
    """

    def __init__(self, component: str) -> None:
        self.component = component

    def warning(self, message: str) -> None:
        logger.warning("pyautoattack %s: %s", self.component, message)


def run_component(
    component: str,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    threat: ThreatModel,
    *,
    seed: int,
    n_iter: int,
    n_restarts: int,
    n_target_classes: int,
    n_queries: int,
    p_init: float,
) -> torch.Tensor:
    """Run one pyautoattack component on ``model`` and return its N×3×H×W candidates."""
    alias_autoattack()
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    device = images.device
    common: dict[str, Any] = {"norm": threat.norm.value, "eps": threat.eps, "seed": seed, "device": device}
    with torch.no_grad():
        width = int(model(images[:1]).shape[-1])
    if component == "apgd-ce":
        attack: Any = APGDAttack(model, n_iter=n_iter, n_restarts=n_restarts, loss="ce", rho=0.75, logger=_LogSink(component), **common)
    elif component == "apgd-dlr":
        attack = APGDAttack(model, n_iter=n_iter, n_restarts=n_restarts, loss="dlr", rho=0.75, logger=_LogSink(component), **common)
    elif component == "apgd-t":
        attack = APGDAttack_targeted(
            model, n_iter=n_iter, n_restarts=n_restarts, rho=0.75,
            n_target_classes=_target_classes(n_target_classes, width), logger=_LogSink(component), **common,
        )
    elif component == "fab-t":
        attack = FABAttack_PT(
            model, n_iter=n_iter, n_restarts=n_restarts, targeted=True,
            n_target_classes=_target_classes(n_target_classes, width), **common,
        )
    elif component == "square":
        attack = SquareAttack(
            model, n_queries=n_queries, p_init=p_init, n_restarts=n_restarts, resc_schedule=False, **common
        )
    else:
        raise ValueError(f"unknown AutoAttack component {component!r}")
    return attack.perturb(images, labels).detach()


class _AutoAttackComponent(Attack):
    """Shared options: which model to attack, and the pyautoattack budget."""

    component = ""

    def __init__(
        self,
        *,
        n_iter: int = STANDARD_ITERATIONS,
        n_restarts: int = 1,
        n_target_classes: int = STANDARD_TARGET_CLASSES,
        model: str = SURROGATE_TARGET,
        surrogate: str = Surrogate.MEAN_LOGITS.value,
    ) -> None:
        check_integer("n_iter", n_iter)
        check_integer("n_restarts", n_restarts)
        check_integer("n_target_classes", n_target_classes)
        self.n_iter = n_iter
        self.n_restarts = n_restarts
        self.n_target_classes = n_target_classes
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
        return run_component(
            self.component, model, images, labels, threat, seed=_seed_from(generator), **self.budget()
        )

    def budget(self) -> dict[str, Any]:
        """Return the pyautoattack budget keywords of :func:`run_component` for this component."""
        return {
            "n_iter": self.n_iter, "n_restarts": self.n_restarts, "n_target_classes": self.n_target_classes,
            "n_queries": 0, "p_init": 0.0,
        }


@register_attack
class ApgdCE(_AutoAttackComponent):
    """APGD on the cross-entropy loss (Croce and Hein, 2020, "Reliable evaluation of adversarial
    robustness with an ensemble of diverse parameter-free attacks"): PGD with momentum and a step
    size halved at checkpoints when progress stalls. Linf and L2. ``n_target_classes`` is unused.
    """

    name = "apgd-ce"
    component = "apgd-ce"


@register_attack
class ApgdDLR(_AutoAttackComponent):
    """APGD on the untargeted difference-of-logits-ratio loss (Croce and Hein, 2020), which is
    invariant to the scale of the logits. Linf and L2. ``n_target_classes`` is unused.
    """

    name = "apgd-dlr"
    component = "apgd-dlr"


@register_attack
class ApgdT(_AutoAttackComponent):
    """Targeted APGD on the targeted DLR loss (Croce and Hein, 2020), once per each of the
    ``n_target_classes`` highest-scoring wrong classes of the attacked model. Linf and L2.
    """

    name = "apgd-t"
    component = "apgd-t"


@register_attack
class FabT(_AutoAttackComponent):
    """Targeted FAB (Croce and Hein, 2020, "Minimally distorted adversarial examples with a fast
    adaptive boundary attack"): linearizes the decision boundary toward each of the
    ``n_target_classes`` likeliest wrong classes and steps to its projection. Linf and L2.
    """

    name = "fab-t"
    component = "fab-t"


@register_attack
class Square(_AutoAttackComponent):
    """Square Attack (Andriushchenko et al., 2020): a score-based random search over square
    patches on the margin loss of the attacked model, ``n_queries`` queries per example from
    an initial patch fraction ``p_init``. Needs no gradients but still reads the model's scores,
    so it counts as a score-based attack. Linf and L2.
    """

    name = "square"
    component = "square"

    def __init__(
        self,
        *,
        n_queries: int = STANDARD_SQUARE_QUERIES,
        p_init: float = 0.8,
        n_restarts: int = 1,
        model: str = SURROGATE_TARGET,
        surrogate: str = Surrogate.MEAN_LOGITS.value,
    ) -> None:
        check_integer("n_queries", n_queries)
        check_integer("n_restarts", n_restarts)
        check_positive("p_init", p_init)
        self.n_queries = n_queries
        self.p_init = p_init
        self.n_restarts = n_restarts
        self.model = model
        self.surrogate = Surrogate.parse(surrogate).value

    def budget(self) -> dict[str, Any]:
        return {
            "n_iter": 1, "n_restarts": self.n_restarts, "n_target_classes": 1,
            "n_queries": self.n_queries, "p_init": self.p_init,
        }


@register_attack
class AutoAttackStandard(Attack):
    """AutoAttack's standard version (Croce and Hein, 2020): APGD-CE, APGD-T, FAB-T and Square in
    that order, each on the examples the hard vote still classifies correctly, with the
    published budgets (100 iterations, 9 target classes, 5000 Square queries) unless overridden.
    ``components`` may drop some of the four. Linf and L2.
    """

    name = "standard"

    def __init__(
        self,
        *,
        n_iter: int = STANDARD_ITERATIONS,
        n_target_classes: int = STANDARD_TARGET_CLASSES,
        n_queries: int = STANDARD_SQUARE_QUERIES,
        components: tuple[str, ...] | list[str] = STANDARD_COMPONENTS,
        model: str = SURROGATE_TARGET,
        surrogate: str = Surrogate.MEAN_LOGITS.value,
    ) -> None:
        check_integer("n_iter", n_iter)
        check_integer("n_target_classes", n_target_classes)
        check_integer("n_queries", n_queries)
        unknown = [c for c in components if c not in STANDARD_COMPONENTS]
        if unknown or not components:
            raise ValueError(f"components must be a non-empty subset of {list(STANDARD_COMPONENTS)}, got {components!r}")
        self.n_iter = n_iter
        self.n_target_classes = n_target_classes
        self.n_queries = n_queries
        self.components = tuple(components)
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
        candidates = images.clone()
        remaining = ~vote_fooled(target, images, labels)
        for component in self.components:
            if not bool(remaining.any()):
                break
            index = remaining.nonzero().squeeze(1)
            proposal = run_component(
                component, model, images[index], labels[index], threat, seed=_seed_from(generator),
                n_iter=self.n_iter, n_restarts=1, n_target_classes=self.n_target_classes,
                n_queries=self.n_queries, p_init=0.8,
            )
            proposal = project(proposal, images[index], threat)
            fooled = vote_fooled(target, proposal, labels[index])
            candidates[index[fooled]] = proposal[fooled]
            remaining[index[fooled]] = False
            logger.debug("standard: %s fooled the vote on %d of %d", component, int(fooled.sum()), len(index))
        return candidates
