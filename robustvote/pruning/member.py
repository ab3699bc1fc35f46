"""Pruning a pool member: group-lasso training, greedy pruning, fine-tuning, and a loadable result.

The member must come from the ``state_dict`` source, because the pruned weights are written
as a plain safetensors state dict that the same architecture factory rebuilds, with the new
widths passed through ``arch_kwargs``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from robustvote.errors import ConfigError
from robustvote.io import write_atomic
from robustvote.pruning.groups import GroupLasso, UnitGroup, resolve_groups
from robustvote.pruning.prune import PruneResult, PruneRule, prune_model
from robustvote.threat import ThreatModel, format_eps
from robustvote.training import EpochRecord, TrainConfig, save_model_weights, train
from robustvote.zoo import LoadedMember, MemberSpec, load_member, load_pool_file
from robustvote.zoo.checkpoint import sha256_of
from robustvote.zoo.wrappers import NormalizedModel

logger = logging.getLogger(__name__)

PRUNABLE_SOURCE = "state_dict"


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy of ``model(x)`` (N×C logits) against labels ``y`` (N)."""
    return nn.functional.cross_entropy(model(x), y)


def check_prunable(spec: MemberSpec, groups: tuple[UnitGroup, ...]) -> None:
    """Raise :class:`ConfigError` unless a pruned ``spec`` can be rebuilt from a pool file.

    That needs the ``state_dict`` source and a ``width_arg`` on every layer pair.
    """
    if spec.source != PRUNABLE_SOURCE:
        raise ConfigError(
            f"member {spec.name!r} has source {spec.source!r}; pruning needs source state_dict, "
            "whose architecture factory can rebuild the smaller layers (pass --checkpoint and "
            "--architecture for a plain state dict)"
        )
    missing = [str(group) for group in groups if not group.width_arg]
    if missing:
        raise ConfigError(
            f"layer pair(s) {', '.join(missing)} name no width argument, so the pruned checkpoint "
            f"could not be rebuilt; write FIRST,SECOND=ARG where ARG is the factory argument "
            f"of {spec.option('architecture')} that sets the number of units, e.g. 5,7=width"
        )


def trainable(member: LoadedMember) -> NormalizedModel:
    """Return the member's wrapped model with gradients enabled on its parameters again."""
    model = member.model
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


@dataclass(frozen=True)
class MemberPruning:
    """A pruned and fine-tuned member (``model``: [0, 1] images in, logits out), the
    pruning details, and the training history of both phases (empty when a phase was skipped)."""

    model: NormalizedModel
    pruning: PruneResult
    penalty_history: tuple[EpochRecord, ...]
    finetune_history: tuple[EpochRecord, ...]


def prune_member(
    model: NormalizedModel,
    lasso: GroupLasso,
    rule: PruneRule,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    penalty_config: TrainConfig | None,
    finetune_config: TrainConfig | None,
    device: torch.device,
    progress: bool = True,
) -> MemberPruning:
    """Train ``model`` with ``lasso`` added to the loss, prune it by ``rule``, fine-tune without it.

    ``model`` is trained in place during the first phase. Layer paths in ``lasso.groups``
    are relative to the wrapped architecture (``model.model``). ``images`` are float
    N×3×32×32 in [0, 1] (or uint8), ``labels`` int64 N. A phase whose config is ``None`` is
    skipped.
    """
    resolve_groups(model.model, lasso.groups)
    penalty_history: list[EpochRecord] = []
    if penalty_config is not None:
        penalty_history = train(
            model, cross_entropy_loss, images, labels, penalty_config,
            penalty=lambda wrapped: lasso(wrapped.model), device=device, progress=progress,
        )
    model.eval()
    result = prune_model(model.model, lasso.groups, rule)
    pruned = NormalizedModel(result.model, None)
    pruned.mean, pruned.std = model.mean, model.std  # the same normalization buffers
    finetune_history: list[EpochRecord] = []
    if finetune_config is not None:
        finetune_history = train(
            pruned, cross_entropy_loss, images, labels, finetune_config, device=device, progress=progress
        )
    pruned.eval()
    return MemberPruning(pruned, result, tuple(penalty_history), tuple(finetune_history))


def pruned_member_entry(
    spec: MemberSpec, pruning: PruneResult, name: str, weights: Path, pool_dir: Path
) -> dict[str, Any]:
    """Return the pool-file entry (a mapping) of a pruned member whose weights are at ``weights``.

    The path is written relative to ``pool_dir`` when the weights lie below it.
    """
    arch_kwargs = dict(spec.option("arch_kwargs") or {})
    arch_kwargs.update(pruning.widths())
    try:
        path = os.path.relpath(weights.resolve(), pool_dir.resolve())
    except ValueError:  # another drive on Windows
        path = str(weights.resolve())
    entry: dict[str, Any] = {
        "name": name,
        "source": PRUNABLE_SOURCE,
        "architecture": spec.option("architecture"),
        "arch_kwargs": arch_kwargs,
        "path": path,
        "sha256": sha256_of(weights),
    }
    if spec.normalize is not None:
        entry["normalize"] = {"mean": list(spec.normalize.mean), "std": list(spec.normalize.std)}
    widths = ", ".join(f"{g.group} {g.width_before}->{g.width_after}" for g in pruning.groups)
    entry["notes"] = f"{spec.name} with its hidden units pruned by norm ({widths}), written by robustvote prune."
    return entry


def write_pruned_member(
    model: NormalizedModel,
    spec: MemberSpec,
    pruning: PruneResult,
    name: str,
    weights: Path,
    pool_file: Path,
    threat: ThreatModel,
    dataset: str = "cifar10",
) -> Mapping[str, Any]:
    """Write the pruned architecture's state dict to ``weights`` and a one-member pool file.

    The pool file is loaded back and its member's logits compared with ``model``'s on random
    inputs, so a checkpoint the pool file cannot rebuild is caught here. Returns the entry.
    """
    if weights.suffix != ".safetensors":
        raise ConfigError(f"output file {weights} must end in .safetensors")
    save_model_weights(model.model, weights)
    entry = pruned_member_entry(spec, pruning, name, weights, pool_file.parent)
    pool = {"dataset": dataset, "threat_model": threat.norm.value, "eps": format_eps(threat.eps), "members": [entry]}
    write_atomic(pool_file, yaml.safe_dump(pool, sort_keys=False))

    reloaded = load_member(load_pool_file(pool_file).members[0])
    probe = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    with torch.no_grad():
        expected = model.eval()(probe.to(device)).cpu()
        actual = reloaded.model(probe)
    if not torch.allclose(expected, actual, atol=1e-5, rtol=1e-4):
        raise ConfigError(
            f"the pool file {pool_file} rebuilds a model whose logits differ from the pruned model's; "
            f"check that the width argument(s) {sorted(pruning.widths())} of {spec.option('architecture')} "
            "set the pruned layers' sizes"
        )
    logger.info("wrote %s and %s", weights, pool_file)
    return entry
