"""The attack contract, the attack registry, projection and pass counting.

An attack only proposes candidate adversarial examples, as in foolbox 3. The runner, never the
attack, projects each candidate onto the eps-ball around its clean image and onto [0, 1],
re-runs the hard vote and records success. So no attack can report a success that is not one. Attacks may query the vote themselves (for early stopping), but their verdict is not
trusted.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from robustvote.ensemble import Surrogate, VotingEnsemble, vote_correct
from robustvote.errors import ConfigError
from robustvote.threat import Norm, ThreatModel

logger = logging.getLogger(__name__)

SURROGATE_TARGET = "surrogate"


class Attack:
    """Base class: subclasses set the class attributes and implement :meth:`propose`.

    Hyperparameters are keyword-only arguments of ``__init__``; a suite file may set any of
    them by name. ``uses_gradients`` is false for decision-based attacks (they need only the
    hard vote's labels), which the audit compares against the gradient attacks.
    """

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True
    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.LINF, Norm.L2})

    def propose(
        self,
        target: VotingEnsemble,
        images: torch.Tensor,
        labels: torch.Tensor,
        threat: ThreatModel,
        *,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Return N×3×H×W candidates for ``images`` (N×3×H×W in [0, 1]) with true ``labels`` (N).

        ``generator`` is a seeded CPU generator, the only source of randomness an attack may
        use besides the global torch seed, which the runner sets before each call.
        """
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Return the hyperparameters this instance was built with, by keyword."""
        return {key: getattr(self, key) for key in option_names(type(self))}


AttackType = TypeVar("AttackType", bound=type[Attack])
_REGISTRY: dict[str, type[Attack]] = {}


def register_attack(cls: AttackType) -> AttackType:
    """Register an :class:`Attack` subclass under its ``name`` (class decorator)."""
    if not cls.name:
        raise ValueError(f"attack class {cls.__qualname__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"attack {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _ensure_builtin_attacks() -> None:
    # Importing the package runs each attack module's @register_attack once (modules are cached).
    import robustvote.attacks  # noqa: F401


def attack_names() -> list[str]:
    """Return the names of all registered attacks, sorted."""
    _ensure_builtin_attacks()
    return sorted(_REGISTRY)


def get_attack_class(name: str) -> type[Attack]:
    """Return the attack class ``name`` or raise a :class:`ConfigError` listing the known ones."""
    _ensure_builtin_attacks()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown attack {name!r}; expected one of: {known}") from None


def option_names(cls: type[Attack]) -> list[str]:
    """Return the keyword-only hyperparameters of an attack class, in signature order."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def build_attack(name: str, options: dict[str, Any] | None = None) -> Attack:
    """Instantiate attack ``name`` with ``options``; unknown or invalid options raise ConfigError."""
    cls = get_attack_class(name)
    options = dict(options or {})
    accepted = option_names(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for attack {name!r}; accepted: {', '.join(accepted)}"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid options {options} for attack {name!r}: {exc}") from None


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise ValueError unless ``value`` is a positive (or non-negative) number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")


def check_integer(name: str, value: Any, *, minimum: int = 1) -> None:
    """Raise ValueError unless ``value`` is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Geometry


def flat_norm(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Return the N per-example norms of an N×... perturbation."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm is Norm.LINF:
        return flat.abs().amax(dim=1)
    return flat.norm(p=2, dim=1)


def project(candidates: torch.Tensor, images: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project ``candidates`` onto the ``threat`` ball around ``images``, then onto [0, 1].

    For L2 the ball projection comes first and the box clip can only shrink the perturbation,
    so the result lies in both sets. NaN entries become the clean value.
    """
    candidates = torch.where(torch.isnan(candidates), images, candidates)
    delta = candidates - images
    if threat.norm is Norm.LINF:
        delta = delta.clamp(-threat.eps, threat.eps)
    else:
        norms = flat_norm(delta, Norm.L2).view(-1, *([1] * (delta.dim() - 1)))
        delta = delta * torch.clamp(threat.eps / norms.clamp_min(1e-12), max=1.0)
    return (images + delta).clamp(0.0, 1.0)


def random_start(images: torch.Tensor, threat: ThreatModel, generator: torch.Generator) -> torch.Tensor:
    """Draw a uniform point of the Linf ball, or a point of the L2 ball with uniform direction."""
    noise = torch.rand(images.shape, generator=generator).to(images.device) * 2 - 1
    if threat.norm is Norm.LINF:
        start = images + threat.eps * noise
    else:
        direction = torch.randn(images.shape, generator=generator).to(images.device)
        norms = flat_norm(direction, Norm.L2).view(-1, *([1] * (images.dim() - 1)))
        radius = torch.rand(images.shape[0], generator=generator).to(images.device)
        start = images + direction / norms * threat.eps * radius.view_as(norms)
    return project(start, images, threat)


def steepest_step(gradient: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Return the unit steepest-ascent direction: the sign for Linf, the normalized gradient for L2."""
    if norm is Norm.LINF:
        return gradient.sign()
    norms = flat_norm(gradient, Norm.L2).view(-1, *([1] * (gradient.dim() - 1)))
    return gradient / norms.clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------
# What an attack attacks: one member or a soft surrogate of the vote


def score_model(target: VotingEnsemble, model: str, surrogate: str | Surrogate) -> nn.Module:
    """Return the differentiable model an attack works on: a member by name, or a soft surrogate.

    ``model`` is ``"surrogate"`` or a member name; ``surrogate`` is a :class:`Surrogate` value.
    A one-member ensemble's mean-logits surrogate is the member itself.
    """
    from robustvote.ensemble import SurrogateModel

    if model == SURROGATE_TARGET:
        kind = Surrogate.parse(surrogate)
        if len(target) == 1 and kind is not Surrogate.LOG_MEAN_PROBS:
            return target.members[0]
        return SurrogateModel(target, kind)
    if model not in target.names:
        raise ConfigError(
            f"attack target {model!r} is not a member of this ensemble ({', '.join(target.names)}); "
            f"use 'surrogate' or one of the member names"
        )
    return target.members[target.names.index(model)]


def margin_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the N untargeted margins ``max_{j != y} z_j - z_y`` (positive means misclassified)."""
    true = scores.gather(1, labels.view(-1, 1)).squeeze(1)
    others = scores.scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)
    return others - true


@torch.no_grad()
def vote_fooled(target: VotingEnsemble, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the bool N mask of examples the hard vote gets wrong (ties with the true class count as wrong)."""
    return ~vote_correct(target.votes(images), labels)


# ---------------------------------------------------------------------------------------------
# Counting model passes


@dataclass
class PassCounter:
    """Per-image member passes: a forward of one member on N images counts N."""

    forward: int = 0
    backward: int = 0

    def snapshot(self) -> dict[str, int]:
        return {"forward": self.forward, "backward": self.backward}


class CountedModel(nn.Module):
    """Wrap a member so that its forward and backward passes are added to a :class:`PassCounter`."""

    def __init__(self, model: nn.Module, counter: PassCounter) -> None:
        super().__init__()
        self.model = model
        self.counter = counter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.model(x)
        batch = int(x.shape[0])
        self.counter.forward += batch
        if output.requires_grad:
            output.register_hook(self._backward_hook(batch))
        return output

    def _backward_hook(self, batch: int) -> Callable[[torch.Tensor], None]:
        def count(gradient: torch.Tensor) -> None:
            self.counter.backward += batch

        return count


def counted_ensemble(target: VotingEnsemble, counter: PassCounter) -> VotingEnsemble:
    """Return a view of ``target`` whose members count their passes in ``counter``."""
    return VotingEnsemble([CountedModel(m, counter) for m in target.members], target.names)
