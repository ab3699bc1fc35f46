"""Hard-label majority-vote ensembles and their soft surrogates.

Tie rule: the hard prediction is the class with the most votes, and a tie goes to the lowest
class index (``torch.argmax`` returns the first maximum). For robust accuracy this rule is
too kind to the defender. So :func:`vote_correct` by default counts an example as correct only
when the true class has strictly more votes than every other class, and a tie that involves the
true class goes to the attacker.

A vote is piecewise constant in its input, so attacks use soft surrogates instead: the mean of
member logits, the mean of member log-softmax (which differs from the mean logits by a
per-example constant, so cross-entropy, DLR and argmax treat the two alike), and the log of
the mean member probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import torch
from torch import nn

from robustvote.errors import ConfigError


class TieRule(str, Enum):
    """Scoring rule of :func:`vote_correct` for a tie that involves the true class."""

    CONSERVATIVE = "conservative"  # the attacker wins a tie with the true class
    LOWEST_INDEX = "lowest-index"  # the plain prediction rule: the lowest tied class wins


class Surrogate(str, Enum):
    """Soft, differentiable stand-ins for the vote."""

    MEAN_LOGITS = "mean-logits"
    MEAN_LOG_SOFTMAX = "mean-log-softmax"
    LOG_MEAN_PROBS = "log-mean-probs"

    @classmethod
    def parse(cls, value: str | Surrogate) -> Surrogate:
        if isinstance(value, Surrogate):
            return value
        try:
            return cls(str(value))
        except ValueError:
            choices = ", ".join(s.value for s in cls)
            raise ConfigError(f"invalid surrogate {value!r}: expected one of {choices}") from None


def votes_from_predictions(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Count votes: M×N member labels to N×C int64 vote counts."""
    one_hot = torch.nn.functional.one_hot(predictions.long(), num_classes)
    return one_hot.sum(dim=0)


def votes_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Count votes from M×N×C member logits (each member votes for its argmax)."""
    return votes_from_predictions(logits.argmax(dim=-1), logits.shape[-1])


def predict_from_votes(votes: torch.Tensor) -> torch.Tensor:
    """Return the N hard labels of N×C vote counts; ties go to the lowest class index."""
    return votes.argmax(dim=-1)


def vote_correct(
    votes: torch.Tensor, labels: torch.Tensor, tie_rule: TieRule = TieRule.CONSERVATIVE
) -> torch.Tensor:
    """Return a bool N mask of examples the vote classifies correctly under ``tie_rule``."""
    if tie_rule is TieRule.LOWEST_INDEX:
        return predict_from_votes(votes) == labels
    true_votes = votes.gather(1, labels.view(-1, 1)).squeeze(1)
    others = votes.scatter(1, labels.view(-1, 1), -1)
    return true_votes > others.max(dim=1).values


def conservative_prediction(votes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return the N labels the conservative rule decides: the true label where the vote is correct,
    else the most-voted other class (the lowest index among tied ones).

    Where a tie with the true class makes the vote wrong, this names the rival class, whereas
    :func:`predict_from_votes` could return the true label itself.
    """
    rivals = votes.scatter(1, labels.view(-1, 1), -1).argmax(dim=1)
    return torch.where(vote_correct(votes, labels), labels, rivals)


class VotingEnsemble(nn.Module):
    """Hard-label majority vote over members that map [0, 1] N×3×H×W images to N×C logits.

    ``forward`` returns the mean logits, so the ensemble can stand in for a model wherever a
    differentiable classifier is expected; the hard decision is :meth:`predict`.
    """

    def __init__(self, members: Sequence[nn.Module], names: Sequence[str] | None = None) -> None:
        super().__init__()
        if len(members) == 0:
            raise ConfigError("a voting ensemble needs at least one member; the member list is empty")
        self.members = nn.ModuleList(members)
        self.names = list(names) if names is not None else [f"member{i}" for i in range(len(members))]
        if len(self.names) != len(self.members):
            raise ValueError(f"expected {len(self.members)} names, got {len(self.names)}")
        self.eval()

    def __len__(self) -> int:
        return len(self.members)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return M×N×C logits; differentiable when ``x`` requires grad."""
        return torch.stack([member(x) for member in self.members])

    @torch.no_grad()
    def votes(self, x: torch.Tensor) -> torch.Tensor:
        """Return N×C vote counts."""
        return votes_from_logits(self.member_logits(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Return N hard labels (ties go to the lowest class index)."""
        return predict_from_votes(self.votes(x))

    def surrogate(self, x: torch.Tensor, kind: Surrogate = Surrogate.MEAN_LOGITS) -> torch.Tensor:
        """Return N×C scores of a soft surrogate of the vote."""
        return surrogate_from_logits(self.member_logits(x), kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.surrogate(x, Surrogate.MEAN_LOGITS)


def surrogate_from_logits(logits: torch.Tensor, kind: Surrogate) -> torch.Tensor:
    """Reduce M×N×C member logits to N×C surrogate scores."""
    if kind is Surrogate.MEAN_LOGITS:
        return logits.mean(dim=0)
    if kind is Surrogate.MEAN_LOG_SOFTMAX:
        return logits.log_softmax(dim=-1).mean(dim=0)
    count = torch.tensor(float(logits.shape[0]), device=logits.device).log()
    return torch.logsumexp(logits.log_softmax(dim=-1), dim=0) - count


class SurrogateModel(nn.Module):
    """An ensemble seen through one surrogate, as a model for off-the-shelf attacks."""

    def __init__(self, ensemble: VotingEnsemble, kind: Surrogate) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ensemble.surrogate(x, self.kind)
