"""Threat models: the norm and radius an adversary may perturb an input by."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from robustvote.errors import ConfigError


class Norm(str, Enum):
    """Perturbation norm."""

    LINF = "Linf"
    L2 = "L2"

    @classmethod
    def parse(cls, value: str | Norm) -> Norm:
        """Convert user text such as ``Linf``, ``linf`` or ``L2`` to a :class:`Norm`."""
        if isinstance(value, Norm):
            return value
        for norm in cls:
            if str(value).strip().lower() == norm.value.lower():
                return norm
        choices = ", ".join(n.value for n in cls)
        raise ConfigError(f"invalid threat model {value!r}: expected one of {choices}")


def parse_fraction(value: str | float | int) -> float:
    """Parse a number written plainly or as a fraction like ``8/255``; raise ValueError if invalid."""
    text = str(value).strip()
    if "/" in text:
        numerator, denominator = text.split("/", 1)
        try:
            return float(numerator) / float(denominator)
        except ZeroDivisionError:
            raise ValueError(f"zero denominator in {text!r}") from None
    return float(text)


def parse_eps(value: str | float | int) -> float:
    """Parse a radius in [0, 1] pixel scale, written as a number or a fraction like ``8/255``."""
    try:
        eps = parse_fraction(value)
    except ValueError:
        raise ConfigError(
            f"invalid eps {value!r}: expected a number in [0, 1] pixel scale such as 0.0078 or 2/255"
        ) from None
    if not math.isfinite(eps) or eps < 0 or eps > 1:
        raise ConfigError(
            f"invalid eps {value!r}: must lie in [0, 1] pixel scale (for 8 of 255 levels write 8/255)"
        )
    return eps


def format_eps(eps: float) -> str:
    """Write eps as ``k/255`` when it is a whole number of pixel levels, else as a decimal."""
    levels = eps * 255
    if abs(levels - round(levels)) < 1e-6:
        return f"{int(round(levels))}/255"
    return f"{eps:.6g}"


@dataclass(frozen=True)
class ThreatModel:
    """A norm ball of radius ``eps`` (pixel scale, images in [0, 1])."""

    norm: Norm
    eps: float

    def __str__(self) -> str:
        return f"{self.norm.value} eps={format_eps(self.eps)}"
