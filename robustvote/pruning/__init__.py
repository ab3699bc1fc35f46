"""Group-lasso training and greedy pruning of hidden units, and the matrix-sensing account of why it works."""

from robustvote.pruning.groups import GroupLasso, UnitGroup, resolve_group, unit_norms
from robustvote.pruning.prune import (
    GroupPruning,
    PruneResult,
    PruneRule,
    count_parameters,
    prune_model,
    select_units,
    shrink_group,
)

__all__ = [
    "GroupLasso",
    "GroupPruning",
    "PruneResult",
    "PruneRule",
    "UnitGroup",
    "count_parameters",
    "prune_model",
    "resolve_group",
    "select_units",
    "shrink_group",
    "unit_norms",
]
