"""Vote counting, the tie rule and the soft surrogates, on hand-made logits and real members."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustvote.ensemble import (
    Surrogate,
    TieRule,
    VotingEnsemble,
    conservative_prediction,
    predict_from_votes,
    surrogate_from_logits,
    vote_correct,
    votes_from_logits,
)
from robustvote.errors import ConfigError


def _one_hot_logits(labels: list[list[int]], classes: int = 3) -> torch.Tensor:
    """Build M×N×C logits in which member m predicts labels[m][n]."""
    return torch.nn.functional.one_hot(torch.tensor(labels), classes).float()


def test_votes_count_member_predictions() -> None:
    logits = _one_hot_logits([[0, 1], [0, 2], [1, 2]])
    votes = votes_from_logits(logits)
    assert votes.tolist() == [[2, 1, 0], [0, 1, 2]]


def test_tie_goes_to_lowest_class_index() -> None:
    # Two members: one votes 2, the other votes 1, so classes 1 and 2 tie.
    votes = votes_from_logits(_one_hot_logits([[2], [1]]))
    assert predict_from_votes(votes).tolist() == [1]


def test_conservative_rule_gives_tie_to_attacker() -> None:
    votes = votes_from_logits(_one_hot_logits([[2, 2, 0, 1], [1, 2, 0, 0]]))
    labels = torch.tensor([1, 2, 0, 0])
    # Example 0 ties classes 1 and 2 with the true class 1 involved; example 3 ties 0 and 1.
    conservative = vote_correct(votes, labels, TieRule.CONSERVATIVE)
    plain = vote_correct(votes, labels, TieRule.LOWEST_INDEX)
    assert conservative.tolist() == [False, True, True, False]
    assert plain.tolist() == [True, True, True, True]


def test_conservative_prediction_names_rival() -> None:
    # Example 0: classes 1 and 2 tie and 1 is true, so the decided label is 2, not the lower 1.
    # Example 1: both vote for the true class. Example 2: classes 0 and 1 tie, true is 2.
    votes = votes_from_logits(_one_hot_logits([[2, 2, 0], [1, 2, 1]]))
    labels = torch.tensor([1, 2, 2])
    assert predict_from_votes(votes).tolist()[0] == 1
    assert conservative_prediction(votes, labels).tolist() == [2, 2, 0]


def test_plain_rule_loses_tie_to_lower_class() -> None:
    votes = votes_from_logits(_one_hot_logits([[0], [2]]))
    assert vote_correct(votes, torch.tensor([2]), TieRule.LOWEST_INDEX).tolist() == [False]


def test_mean_log_softmax_matches_mean_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 10, generator=generator) * 3
    mean_logits = surrogate_from_logits(logits, Surrogate.MEAN_LOGITS)
    mean_log_softmax = surrogate_from_logits(logits, Surrogate.MEAN_LOG_SOFTMAX)
    assert torch.allclose(mean_logits.softmax(-1), mean_log_softmax.softmax(-1), atol=1e-6)


def test_log_mean_probs_is_log_of_mean_probabilities() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 10, generator=generator)
    expected = logits.softmax(-1).mean(0).log()
    assert torch.allclose(surrogate_from_logits(logits, Surrogate.LOG_MEAN_PROBS), expected, atol=1e-6)


def test_empty_ensemble_is_rejected() -> None:
    with pytest.raises(ConfigError, match="at least one member"):
        VotingEnsemble([])


def test_surrogate_name_is_validated() -> None:
    with pytest.raises(ConfigError, match="mean-logits"):
        Surrogate.parse("average")


def test_real_ensemble_shapes_and_vote(shared_members, test_slice) -> None:
    ensemble = VotingEnsemble([m.model for m in shared_members], [m.name for m in shared_members])
    images = test_slice.images[:16]
    with torch.no_grad():
        logits = ensemble.member_logits(images)
    assert logits.shape == (8, 16, 10)
    votes = ensemble.votes(images)
    assert votes.sum(dim=1).tolist() == [8] * 16
    assert torch.equal(ensemble.predict(images), predict_from_votes(votes))
    for member in ensemble.members:
        assert not member.training


def test_surrogate_gradient_flows_to_input(shared_members, test_slice) -> None:
    ensemble = VotingEnsemble([m.model for m in shared_members[:3]])
    images = test_slice.images[:4].clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(ensemble.surrogate(images), test_slice.labels[:4])
    loss.backward()
    assert images.grad is not None
    assert float(images.grad.abs().sum()) > 0
