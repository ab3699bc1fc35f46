"""Pools of pretrained members: pool files, source kinds and the loader behind them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from robustvote.zoo.checkpoint import verify_sha256
from robustvote.zoo.registry import get_source, register_source, source_names
from robustvote.zoo.spec import MemberSpec, Normalization, PoolSpec, load_pool_file
from robustvote.zoo.wrappers import NormalizedModel, prepare_member

logger = logging.getLogger(__name__)

__all__ = [
    "LoadedMember",
    "MemberSpec",
    "Normalization",
    "PoolSpec",
    "load_member",
    "load_members",
    "load_pool_file",
    "register_source",
    "source_names",
]


@dataclass(frozen=True)
class LoadedMember:
    """A member ready for evaluation: takes [0, 1] N×3×H×W images, returns N×C logits."""

    spec: MemberSpec
    model: NormalizedModel

    @property
    def name(self) -> str:
        return self.spec.name


def load_member(spec: MemberSpec) -> LoadedMember:
    """Verify, load and wrap one member."""
    kind = get_source(spec.source)
    if spec.path is not None and spec.path.is_file():
        verify_sha256(spec.path, spec.sha256, spec.name)
    module: nn.Module = kind.loader(spec)
    logger.debug("loaded member %s (source %s)", spec.name, spec.source)
    return LoadedMember(spec, prepare_member(module, spec.normalize))


def load_members(pool: PoolSpec, names: Sequence[str] | None = None) -> list[LoadedMember]:
    """Load the members of ``pool`` (or only ``names``, in that order)."""
    specs = pool.subset(names).members if names else pool.members
    return [load_member(spec) for spec in specs]
