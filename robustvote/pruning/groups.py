"""Hidden units of a layer pair, their group norms and the smooth group-lasso penalty.

A unit is one output of a ``first`` layer together with the inputs of the ``second`` layer
that read it. In the first layer that is a row of an ``nn.Linear`` weight or an output channel
of an ``nn.Conv2d``, with its bias entry. In the second it is a column of an ``nn.Linear``, an
input channel of an ``nn.Conv2d``, or, after a flatten in C·H·W order, the H·W columns of an
``nn.Linear`` that read one channel. The penalty follows Rajaraman, Devvrit,
Mokhtari and Ramchandran, "Greedy Pruning with Group Lasso Provably Generalizes for Matrix
Sensing" (NeurIPS 2023): ``lam * sum_g sqrt(||w_g||^2 + eps^2)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from robustvote.errors import ConfigError

PRUNABLE_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class UnitGroup:
    """A layer pair whose shared hidden units are penalized and pruned together.

    ``first`` and ``second`` are module paths as in ``model.named_modules()`` (e.g. ``"5"``
    and ``"7"`` in :func:`robustvote.zoo.architectures.cnn_a`). Only element-wise layers
    (ReLU and the like) or a flatten may sit between them; a normalization layer in between
    is not rebuilt. ``width_arg`` names the architecture-factory argument that sets the
    number of units, so a pruned checkpoint can be rebuilt from ``arch_kwargs``.
    """

    first: str
    second: str
    width_arg: str | None = None

    @classmethod
    def parse(cls, text: str) -> UnitGroup:
        """Parse ``FIRST,SECOND`` or ``FIRST,SECOND=WIDTH_ARG`` (e.g. ``5,7=width``)."""
        pair, _, width_arg = text.partition("=")
        parts = [part.strip() for part in pair.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"invalid layer pair {text!r}: expected FIRST,SECOND or FIRST,SECOND=WIDTH_ARG "
                "with module paths from model.named_modules(), e.g. 5,7=width"
            )
        return cls(parts[0], parts[1], width_arg.strip() or None)

    def __str__(self) -> str:
        suffix = f"={self.width_arg}" if self.width_arg else ""
        return f"{self.first},{self.second}{suffix}"


@dataclass(frozen=True)
class ResolvedGroup:
    """A :class:`UnitGroup` bound to the modules of one model.

    ``block`` is the number of inputs of ``second`` per unit: 1 for Linear→Linear and
    Conv→Conv, H·W for a Conv2d whose N×C×H×W output is flattened into a Linear.
    """

    group: UnitGroup
    first: nn.Linear | nn.Conv2d
    second: nn.Linear | nn.Conv2d
    block: int

    @property
    def units(self) -> int:
        return _out_units(self.first)


def _out_units(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _in_units(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _get_layer(model: nn.Module, path: str, group: UnitGroup) -> nn.Linear | nn.Conv2d:
    try:
        layer = model.get_submodule(path)
    except AttributeError:
        names = [name for name, module in model.named_modules() if isinstance(module, PRUNABLE_LAYERS)]
        raise ConfigError(
            f"layer pair {group}: the model has no module {path!r}; Linear and Conv2d modules "
            f"there: {', '.join(names) or 'none'}"
        ) from None
    if not isinstance(layer, PRUNABLE_LAYERS):
        raise ConfigError(
            f"layer pair {group}: module {path!r} is a {type(layer).__name__}; only nn.Linear "
            "and nn.Conv2d layers can be pruned"
        )
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ConfigError(
            f"layer pair {group}: conv {path!r} has groups={layer.groups}; only groups=1 is supported"
        )
    return layer


def resolve_group(model: nn.Module, group: UnitGroup) -> ResolvedGroup:
    """Find the two layers of ``group`` in ``model`` and check that their shapes fit together."""
    first = _get_layer(model, group.first, group)
    second = _get_layer(model, group.second, group)
    units, inputs = _out_units(first), _in_units(second)
    if isinstance(first, nn.Linear) and isinstance(second, nn.Conv2d):
        raise ConfigError(f"layer pair {group}: a Linear layer followed by a Conv2d is not supported")
    if isinstance(second, nn.Conv2d) and inputs != units:
        raise ConfigError(
            f"layer pair {group}: conv {group.second!r} takes {inputs} input channels but "
            f"{group.first!r} has {units} outputs; name two consecutive layers"
        )
    if inputs % units != 0 or (isinstance(first, nn.Linear) and inputs != units):
        raise ConfigError(
            f"layer pair {group}: {group.second!r} takes {inputs} inputs, which do not split into "
            f"blocks for the {units} units of {group.first!r}; name two consecutive layers"
        )
    return ResolvedGroup(group, first, second, inputs // units)


def resolve_groups(model: nn.Module, groups: Sequence[UnitGroup]) -> list[ResolvedGroup]:
    """Resolve every group, rejecting an empty list and two pairs with the same ``first`` layer."""
    if not groups:
        raise ConfigError("no layer pair given; name at least one FIRST,SECOND pair of layers")
    resolved = [resolve_group(model, group) for group in groups]
    firsts = [group.first for group in groups]
    if len(set(firsts)) != len(firsts):
        raise ConfigError(f"layer pairs {', '.join(map(str, groups))} prune the units of one layer twice")
    return resolved


def unit_squared_norms(resolved: ResolvedGroup) -> torch.Tensor:
    """Return the squared l2 norm of each unit's weights (float, shape ``units``).

    The group of unit c contains the c-th output of ``first`` (weights and bias entry) and the
    inputs of ``second`` that read it.
    """
    first, second, units = resolved.first, resolved.second, resolved.units
    squared = first.weight.pow(2).reshape(units, -1).sum(dim=1)
    if first.bias is not None:
        squared = squared + first.bias.pow(2)
    if isinstance(second, nn.Linear):
        columns = second.weight.reshape(second.out_features, units, resolved.block)
        squared = squared + columns.pow(2).sum(dim=(0, 2))
    else:
        squared = squared + second.weight.pow(2).sum(dim=(0, 2, 3))
    return squared


@torch.no_grad()
def unit_norms(model: nn.Module, group: UnitGroup) -> torch.Tensor:
    """Return the l2 norm of each hidden unit of ``group`` in ``model`` (shape ``units``)."""
    return unit_squared_norms(resolve_group(model, group)).sqrt().detach().cpu()


@dataclass(frozen=True)
class GroupLasso:
    """The smooth group-lasso penalty ``lam * sum over units of sqrt(||w_unit||^2 + eps^2)``.

    ``eps`` keeps the penalty differentiable at zero, so gradient descent can use it. Call it
    on the model that contains the groups' layers; it returns a scalar tensor that keeps the
    gradient graph.
    """

    groups: tuple[UnitGroup, ...]
    lam: float
    eps: float = 1e-3

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ConfigError(f"invalid group-lasso strength lam={self.lam}; expected a number >= 0")
        if not self.eps > 0:
            raise ConfigError(f"invalid group-lasso smoothing eps={self.eps}; expected a number > 0")

    def __call__(self, model: nn.Module) -> torch.Tensor:
        total = None
        for resolved in resolve_groups(model, self.groups):
            term = (unit_squared_norms(resolved) + self.eps**2).sqrt().sum()
            total = term if total is None else total + term
        return self.lam * total
