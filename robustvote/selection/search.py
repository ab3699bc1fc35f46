"""Subset search over a robustness matrix: the majority-robust estimate, exhaustive and beam search.

The robustness matrix ``robust`` is bool M×N: entry (i, j) is true when member i, attacked on
its own, still classifies example j correctly. For a subset S of odd size k, the
majority-robust estimate is the fraction of the N examples on which more than k/2 members of
S are individually robust.

The estimate is a heuristic for ranking subsets, not a bound on the vote's robust accuracy. A
joint attack on the vote can break an example on which a majority is individually robust, and
members fooled by different perturbations, or pushed to different classes, are not
necessarily fooled by one perturbation together. Only ``robustvote attack`` on the vote
measures it.

Exhaustive search scores every subset with bit-packed rows. Each row is packed into 64-bit
words, and the robust members of a subset are counted per example with bit-sliced adders (one
word per bit of the count), then compared with the majority threshold. So 64 examples cost a
handful of word operations.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import combinations, islice

import numpy as np
import torch

from robustvote.ensemble import TieRule, vote_correct
from robustvote.errors import ConfigError

DEFAULT_MAX_EXHAUSTIVE = 2_000_000
DEFAULT_BEAM_WIDTH = 32
_WORD_BITS = 64
# Subsets scored per vectorized step; bounds the temporary arrays to a few tens of MB.
_CHUNK_WORDS = 1 << 21


class SearchMethod(str, Enum):
    """Search method used for one subset size."""

    EXHAUSTIVE = "exhaustive"
    BEAM = "beam"


@dataclass(frozen=True)
class ScoredSubset:
    """A subset of members (row indices, ascending) with its scores, both fractions of N."""

    members: tuple[int, ...]
    estimate: float
    clean_accuracy: float


@dataclass(frozen=True)
class SizeSearch:
    """The best subsets of one size, best first, and how they were found.

    ``subsets_total`` is the number of subsets of that size, ``subsets_scored`` how many of them
    were scored (all of them for exhaustive search).
    """

    size: int
    method: SearchMethod
    subsets_total: int
    subsets_scored: int
    top: tuple[ScoredSubset, ...]


def pack_rows(robust: np.ndarray) -> np.ndarray:
    """Pack a bool M×N matrix into uint64 M×ceil(N/64) words; padding bits are 0 (not robust)."""
    matrix = np.asarray(robust, dtype=bool)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D bool matrix (members × examples), got shape {matrix.shape}")
    members, examples = matrix.shape
    words = max(1, math.ceil(examples / _WORD_BITS))
    padded = np.zeros((members, words * _WORD_BITS), dtype=bool)
    padded[:, :examples] = matrix
    packed = np.packbits(padded, axis=1, bitorder="little")
    return packed.view("<u8").reshape(members, words)


def majority_counts(packed: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """Count, for each subset, the examples on which a strict majority of it is robust.

    ``packed`` is uint64 M×W from :func:`pack_rows`; ``subsets`` int S×k row indices (k may be
    even: a strict majority is more than k/2). Returns int64 S.
    """
    size = subsets.shape[1]
    threshold = size // 2 + 1
    rows = packed[subsets]  # S×k×W
    # Bit-sliced counter: planes[b] contains bit b of the per-example count of robust members.
    planes: list[np.ndarray] = []
    for position in range(size):
        carry = rows[:, position, :].copy()
        for plane in planes:
            next_carry = plane & carry
            plane ^= carry
            carry = next_carry
        planes.append(carry)
    # count >= threshold, compared bit by bit from the most significant plane down.
    greater = np.zeros_like(planes[0])
    equal = np.full_like(planes[0], np.uint64(0xFFFFFFFFFFFFFFFF))
    for bit in reversed(range(len(planes))):
        if (threshold >> bit) & 1:
            equal &= planes[bit]
        else:
            greater |= equal & planes[bit]
            equal &= ~planes[bit]
    majority = greater | equal
    return np.bitwise_count(majority).sum(axis=1, dtype=np.int64)


def majority_robust_estimate(robust: np.ndarray, subset: Sequence[int]) -> float:
    """Return the fraction of examples on which more than half of ``subset`` is robust."""
    matrix = np.asarray(robust, dtype=bool)
    count = matrix[list(subset)].sum(axis=0)
    return float((2 * count > len(subset)).mean())


def score_subsets(packed: np.ndarray, subsets: np.ndarray, num_examples: int) -> np.ndarray:
    """Return the majority-robust estimate (float64 S) of each row of ``subsets`` (int S×k)."""
    if len(subsets) == 0:
        return np.zeros(0)
    chunk = max(1, _CHUNK_WORDS // (subsets.shape[1] * packed.shape[1]))
    counts = [majority_counts(packed, subsets[i : i + chunk]) for i in range(0, len(subsets), chunk)]
    return np.concatenate(counts) / num_examples


def clean_vote_accuracy(
    predictions: np.ndarray,
    labels: np.ndarray,
    subsets: np.ndarray,
    num_classes: int,
    tie_rule: TieRule = TieRule.CONSERVATIVE,
) -> np.ndarray:
    """Return the clean accuracy (float64 S) of each subset's hard vote.

    ``predictions`` is int M×N member labels on clean images, ``labels`` int N, ``subsets``
    int S×k. Ties follow ``tie_rule`` (by default the attacker wins a tie with the true class).
    """
    if len(subsets) == 0:
        return np.zeros(0)
    one_hot = np.eye(num_classes, dtype=np.int16)[predictions]  # M×N×C
    examples = predictions.shape[1]
    chunk = max(1, _CHUNK_WORDS // (subsets.shape[1] * examples * num_classes // 8 + 1))
    target = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    accuracies = []
    for start in range(0, len(subsets), chunk):
        block = subsets[start : start + chunk]
        votes = torch.from_numpy(one_hot[block].sum(axis=1, dtype=np.int16).astype(np.int64))
        flat = votes.reshape(-1, num_classes)
        correct = vote_correct(flat, target.repeat(len(block)), tie_rule).reshape(len(block), examples)
        accuracies.append(correct.double().mean(dim=1).numpy())
    return np.concatenate(accuracies)


def _rank(
    subsets: np.ndarray,
    estimates: np.ndarray,
    predictions: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    top: int,
) -> tuple[ScoredSubset, ...]:
    """Return the ``top`` subsets by estimate, ties broken by clean vote accuracy, then by index."""
    if len(subsets) == 0:
        return ()
    order = np.argsort(-estimates, kind="stable")
    cutoff = estimates[order[min(top, len(order)) - 1]]
    # Every subset tied with the last place can still win on clean accuracy.
    candidates = order[estimates[order] >= cutoff]
    clean = clean_vote_accuracy(predictions, labels, subsets[candidates], num_classes)
    ranked = sorted(
        zip(candidates.tolist(), clean.tolist()),
        key=lambda item: (-estimates[item[0]], -item[1], tuple(subsets[item[0]])),
    )
    return tuple(
        ScoredSubset(tuple(int(m) for m in subsets[index]), float(estimates[index]), float(accuracy))
        for index, accuracy in ranked[:top]
    )


def _chunked_combinations(members: int, size: int, chunk: int) -> Iterator[np.ndarray]:
    iterator = combinations(range(members), size)
    while True:
        block = list(islice(iterator, chunk))
        if not block:
            return
        yield np.asarray(block, dtype=np.int64)


def exhaustive_search(
    robust: np.ndarray,
    predictions: np.ndarray,
    labels: np.ndarray,
    size: int,
    *,
    num_classes: int,
    top: int = 5,
) -> SizeSearch:
    """Score every subset of ``size`` rows of ``robust`` (bool M×N); return the ``top`` best."""
    members, examples = robust.shape
    packed = pack_rows(robust)
    best_subsets: list[np.ndarray] = []
    best_estimates: list[np.ndarray] = []
    total = 0
    for block in _chunked_combinations(members, size, 1 << 16):
        estimates = score_subsets(packed, block, examples)
        total += len(block)
        # Keep every subset that can still reach the top, ties with the last place included.
        keep = estimates >= np.sort(estimates)[::-1][min(top, len(estimates)) - 1]
        best_subsets.append(block[keep])
        best_estimates.append(estimates[keep])
    subsets = np.concatenate(best_subsets)
    estimates = np.concatenate(best_estimates)
    ranked = _rank(subsets, estimates, predictions, labels, num_classes, top)
    return SizeSearch(size, SearchMethod.EXHAUSTIVE, total, total, ranked)


def _extend(beam: Iterable[tuple[int, ...]], members: int) -> np.ndarray:
    grown = {tuple(sorted(subset + (m,))) for subset in beam for m in range(members) if m not in subset}
    return np.asarray(sorted(grown), dtype=np.int64)


def _swap_neighbours(subset: tuple[int, ...], members: int) -> np.ndarray:
    outside = [m for m in range(members) if m not in subset]
    neighbours = {
        tuple(sorted(subset[:i] + subset[i + 1 :] + (m,))) for i in range(len(subset)) for m in outside
    }
    return np.asarray(sorted(neighbours), dtype=np.int64)


def beam_search(
    robust: np.ndarray,
    predictions: np.ndarray,
    labels: np.ndarray,
    size: int,
    *,
    num_classes: int,
    top: int = 5,
    beam_width: int = DEFAULT_BEAM_WIDTH,
) -> SizeSearch:
    """Grow subsets one member at a time, keeping the ``beam_width`` best, then refine by swaps.

    A partial subset of j members is scored by the fraction of examples on which a strict
    majority of its j members is robust. After size ``size`` is reached, each kept subset is
    improved by single-member swaps until no swap raises its estimate. With ``beam_width`` at
    least the number of subsets of every intermediate size, this is exhaustive search.
    """
    if beam_width < 1:
        raise ConfigError(f"invalid beam width {beam_width}; choose a width of at least 1")
    members, examples = robust.shape
    packed = pack_rows(robust)
    scored: dict[tuple[int, ...], float] = {}

    def score(candidates: np.ndarray) -> np.ndarray:
        estimates = score_subsets(packed, candidates, examples)
        if candidates.shape[1] == size:
            scored.update(zip(map(tuple, candidates.tolist()), estimates.tolist()))
        return estimates

    beam: list[tuple[int, ...]] = [()]
    for _ in range(size):
        candidates = _extend(beam, members)
        estimates = score(candidates)
        order = np.argsort(-estimates, kind="stable")[:beam_width]
        beam = [tuple(candidates[i].tolist()) for i in order]

    for start in beam:
        current = start
        while True:
            neighbours = _swap_neighbours(current, members)
            if len(neighbours) == 0:  # the subset is the whole pool
                break
            estimates = score(neighbours)
            best = int(np.argmax(estimates))
            if estimates[best] <= scored[current]:
                break
            current = tuple(neighbours[best].tolist())

    subsets = np.asarray(list(scored), dtype=np.int64)
    estimates = np.asarray(list(scored.values()))
    ranked = _rank(subsets, estimates, predictions, labels, num_classes, top)
    return SizeSearch(size, SearchMethod.BEAM, math.comb(members, size), len(scored), ranked)


def search_size(
    robust: np.ndarray,
    predictions: np.ndarray,
    labels: np.ndarray,
    size: int,
    *,
    num_classes: int,
    top: int = 5,
    max_exhaustive: int = DEFAULT_MAX_EXHAUSTIVE,
    beam_width: int = DEFAULT_BEAM_WIDTH,
) -> SizeSearch:
    """Search subsets of ``size`` members: exhaustively while there are at most ``max_exhaustive``
    of them, else by beam search.

    ``robust`` is bool M×N, ``predictions`` int M×N clean member labels, ``labels`` int N.
    """
    check_size(size, robust.shape[0])
    if math.comb(robust.shape[0], size) <= max_exhaustive:
        return exhaustive_search(robust, predictions, labels, size, num_classes=num_classes, top=top)
    return beam_search(
        robust, predictions, labels, size, num_classes=num_classes, top=top, beam_width=beam_width
    )


def check_size(size: int, pool_size: int) -> None:
    """Raise a :class:`ConfigError` unless ``size`` is odd and at most ``pool_size``."""
    if size < 1 or size % 2 == 0:
        raise ConfigError(
            f"invalid subset size {size}: a majority vote needs an odd number of members; "
            "choose sizes such as 3,5,7"
        )
    if size > pool_size:
        raise ConfigError(
            f"subset size {size} is larger than the pool of {pool_size} members; "
            f"choose sizes of at most {pool_size}"
        )
