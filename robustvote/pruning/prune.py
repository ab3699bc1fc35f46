"""Greedy pruning: rank hidden units by group norm, keep the largest, rebuild smaller layers.

The pruned layers are new ``nn.Linear``/``nn.Conv2d`` modules with fewer units, not masks, so
parameter count and compute really drop. Kept units are stored in order of decreasing norm,
so the first m units of a pruned layer are its m strongest: a nesting order like MatViT's.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from robustvote.errors import ConfigError
from robustvote.pruning.groups import ResolvedGroup, UnitGroup, resolve_group, resolve_groups, unit_squared_norms

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneRule:
    """The rule that decides which units survive.

    A unit survives when its norm is at least ``threshold`` (an absolute norm, or a fraction
    of the largest norm in its layer when ``relative``). ``target_width`` then keeps at most
    that many of the survivors, the largest first. At least one rule must be set.
    """

    threshold: float | None = None
    relative: bool = False
    target_width: int | None = None

    def __post_init__(self) -> None:
        if self.threshold is None and self.target_width is None:
            raise ConfigError("no pruning rule given; set a threshold, a target width or both")
        if self.threshold is not None and not self.threshold >= 0:
            raise ConfigError(f"invalid pruning threshold {self.threshold}; expected a number >= 0")
        if self.relative and self.threshold is not None and self.threshold > 1:
            raise ConfigError(
                f"invalid relative threshold {self.threshold}; a fraction of the largest norm lies in [0, 1]"
            )
        if self.target_width is not None and self.target_width < 1:
            raise ConfigError(f"invalid target width {self.target_width}; keep at least 1 unit")


def select_units(norms: torch.Tensor, rule: PruneRule) -> torch.Tensor:
    """Return the indices of the units to keep (int64), ordered by decreasing norm.

    ``norms`` is a float vector of unit norms. Raises :class:`ConfigError` when the threshold
    would remove every unit.
    """
    order = torch.argsort(norms, descending=True, stable=True)
    keep = order
    if rule.threshold is not None:
        cutoff = rule.threshold * float(norms.max()) if rule.relative else rule.threshold
        keep = order[norms[order] >= cutoff]
        if keep.numel() == 0:
            kind = "relative threshold" if rule.relative else "threshold"
            raise ConfigError(
                f"{kind} {rule.threshold} removes all {norms.numel()} units (largest norm "
                f"{float(norms.max()):.4g}); lower the threshold or set a target width"
            )
    if rule.target_width is not None:
        keep = keep[: rule.target_width]
    return keep


def _shrink_first(layer: nn.Linear | nn.Conv2d, keep: torch.Tensor) -> nn.Linear | nn.Conv2d:
    width = int(keep.numel())
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Linear):
        smaller: nn.Linear | nn.Conv2d = nn.Linear(layer.in_features, width, bias=layer.bias is not None, **factory)
    else:
        smaller = nn.Conv2d(
            layer.in_channels, width, layer.kernel_size, stride=layer.stride, padding=layer.padding,
            dilation=layer.dilation, bias=layer.bias is not None, padding_mode=layer.padding_mode, **factory,
        )
    with torch.no_grad():
        smaller.weight.copy_(layer.weight[keep])
        if layer.bias is not None:
            smaller.bias.copy_(layer.bias[keep])
    return smaller


def _shrink_second(resolved: ResolvedGroup, keep: torch.Tensor) -> nn.Linear | nn.Conv2d:
    layer, block = resolved.second, resolved.block
    width = int(keep.numel())
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            smaller: nn.Linear | nn.Conv2d = nn.Linear(
                width * block, layer.out_features, bias=layer.bias is not None, **factory
            )
            columns = layer.weight.reshape(layer.out_features, resolved.units, block)[:, keep]
            smaller.weight.copy_(columns.reshape(layer.out_features, width * block))
        else:
            smaller = nn.Conv2d(
                width, layer.out_channels, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                dilation=layer.dilation, bias=layer.bias is not None, padding_mode=layer.padding_mode, **factory,
            )
            smaller.weight.copy_(layer.weight[:, keep])
        if layer.bias is not None:
            smaller.bias.copy_(layer.bias)
    return smaller


def _replace_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def shrink_group(model: nn.Module, group: UnitGroup, keep: torch.Tensor) -> None:
    """Replace the layers of ``group`` in ``model`` (in place) by layers with only the ``keep`` units."""
    resolved = resolve_group(model, group)
    keep = keep.to(device=resolved.first.weight.device, dtype=torch.long)
    if keep.numel() == 0 or int(keep.min()) < 0 or int(keep.max()) >= resolved.units:
        raise ConfigError(f"layer pair {group}: unit indices to keep must lie in [0, {resolved.units})")
    second = _shrink_second(resolved, keep)
    first = _shrink_first(resolved.first, keep)
    _replace_module(model, group.first, first)
    _replace_module(model, group.second, second)


def count_parameters(model: nn.Module) -> int:
    """Return the number of scalar parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters())


@dataclass(frozen=True)
class GroupPruning:
    """The pruning of one layer pair: unit norms before pruning and the kept unit indices."""

    group: UnitGroup
    norms: torch.Tensor
    kept: torch.Tensor

    @property
    def width_before(self) -> int:
        return int(self.norms.numel())

    @property
    def width_after(self) -> int:
        return int(self.kept.numel())


@dataclass(frozen=True)
class PruneResult:
    """A pruned copy of a model, with per-pair details and parameter counts."""

    model: nn.Module
    groups: tuple[GroupPruning, ...]
    parameters_before: int
    parameters_after: int

    def widths(self) -> dict[str, int]:
        """Return the pruned width of each pair's ``width_arg`` (pairs without one are left out)."""
        return {g.group.width_arg: g.width_after for g in self.groups if g.group.width_arg}


def prune_model(model: nn.Module, groups: Sequence[UnitGroup], rule: PruneRule) -> PruneResult:
    """Prune the hidden units of every pair in ``groups`` from a deep copy of ``model``.

    Each pair is ranked by the l2 norm of its unit groups (see
    :func:`robustvote.pruning.groups.unit_squared_norms`) and cut by ``rule``. Pairs are
    pruned one after another, so a layer may be the ``second`` of one pair and the ``first``
    of the next. ``model`` itself is left unchanged.
    """
    resolve_groups(model, groups)
    pruned = copy.deepcopy(model)
    details = []
    for group in groups:
        with torch.no_grad():
            norms = unit_squared_norms(resolve_group(pruned, group)).sqrt().detach().cpu()
        kept = select_units(norms, rule)
        shrink_group(pruned, group, kept)
        details.append(GroupPruning(group, norms, kept))
        logger.info("pruned %s from %d to %d units", group, norms.numel(), kept.numel())
    return PruneResult(pruned, tuple(details), count_parameters(model), count_parameters(pruned))
