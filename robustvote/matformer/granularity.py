"""Granularities of a MatViT: how many FFN hidden units each layer keeps.

A MatViT FFN of hidden width ``d_ff`` nests four submodels that keep its first ``d_ff/8``
(S), ``d_ff/4`` (M), ``d_ff/2`` (L) or all ``d_ff`` (XL) hidden units. A granularity spec
gives one letter for every layer (``"M"``) or one letter per layer (``"S,M,L,XL"``, Mix'n'Match).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from robustvote.errors import ConfigError


class Granularity(str, Enum):
    """One nested FFN width, named by the fraction of ``d_ff`` it keeps."""

    S = "S"
    M = "M"
    L = "L"
    XL = "XL"

    @property
    def divisor(self) -> int:
        """``d_ff`` divided by this granularity's hidden width."""
        return {"S": 8, "M": 4, "L": 2, "XL": 1}[self.value]

    def width(self, d_ff: int) -> int:
        """Return the number of hidden units this granularity keeps out of ``d_ff``."""
        return d_ff // self.divisor


ALL_GRANULARITIES = (Granularity.S, Granularity.M, Granularity.L, Granularity.XL)
GranularitySpec = str | Granularity | Sequence[str | Granularity]
_EXPECTED = "S, M, L or XL"


def _parse_letter(token: str | Granularity, spec: object) -> Granularity:
    if isinstance(token, Granularity):
        return token
    text = str(token).strip().upper()
    try:
        return Granularity(text)
    except ValueError:
        raise ConfigError(f"unknown granularity {str(token).strip()!r} in spec {spec!r}; expected {_EXPECTED}") from None


def parse_granularity(spec: GranularitySpec, depth: int) -> tuple[Granularity, ...]:
    """Return one :class:`Granularity` per layer for a model of ``depth`` layers.

    ``spec`` is one letter (used for every layer), a comma-separated string with one letter
    per layer, or a sequence of letters. A wrong count or an unknown letter raises
    :class:`ConfigError`.
    """
    if isinstance(spec, (str, Granularity)):
        tokens: list[str | Granularity] = [spec] if isinstance(spec, Granularity) else spec.split(",")
    elif isinstance(spec, Sequence):
        tokens = list(spec)
    else:
        raise ConfigError(f"invalid granularity spec {spec!r}: expected {_EXPECTED}, or one letter per layer")
    if not tokens or any(str(t).strip() == "" for t in tokens):
        raise ConfigError(f"invalid granularity spec {spec!r}: empty entry; expected {_EXPECTED}, or one letter per layer")
    layers = tuple(_parse_letter(token, spec) for token in tokens)
    if len(layers) == 1:
        return layers * depth
    if len(layers) != depth:
        raise ConfigError(
            f"granularity spec {spec!r} lists {len(layers)} layers but the model has {depth}; "
            f"give one letter for all layers or exactly {depth} comma-separated letters"
        )
    return layers


def format_granularity(layers: Sequence[Granularity]) -> str:
    """Write per-layer granularities as one letter when all are equal, else comma-separated."""
    if len(set(layers)) == 1:
        return layers[0].value
    return ",".join(g.value for g in layers)
