"""``source: state_dict``: an importable architecture factory plus a checkpoint of its weights."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from robustvote.errors import ConfigError, ModelLoadError
from robustvote.zoo.checkpoint import load_torch_checkpoint, require_file, select_key
from robustvote.zoo.registry import register_source
from robustvote.zoo.spec import MemberSpec


def import_factory(reference: str, member: str) -> Any:
    """Import ``module:attribute`` (``module.attribute`` also works) and return the attribute."""
    module_name, sep, attribute = str(reference).partition(":")
    if not sep:
        module_name, _, attribute = str(reference).rpartition(".")
    if not module_name or not attribute:
        raise ConfigError(
            f"member {member!r}: architecture {reference!r} must read 'module:function', "
            "e.g. robustvote.zoo.architectures:cnn_a"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"member {member!r}: cannot import module {module_name!r} of architecture {reference!r}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"member {member!r}: module {module_name!r} has no attribute {attribute!r}") from None


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    """Load ``state_dict`` into ``model`` strictly, naming every missing, unexpected or misshapen key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshapen = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
        if misshapen:
            parts.append(f"shape mismatches (checkpoint vs model): {', '.join(misshapen[:5])}")
        raise ModelLoadError(
            f"{where}: the architecture does not match the checkpoint ({'; '.join(parts)}); "
            "fix 'architecture' or 'key' in the pool file"
        )
    model.load_state_dict(state_dict, strict=True)


@register_source(
    "state_dict", required=("path", "architecture"), optional=("key", "arch_kwargs")
)
def load_state_dict_member(spec: MemberSpec) -> nn.Module:
    """Load a state dict strictly into a model built by ``architecture`` (``module:function``)."""
    path = require_file(spec.path, spec.name)
    factory = import_factory(spec.option("architecture"), spec.name)
    kwargs = spec.option("arch_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"member {spec.name!r}: arch_kwargs must be a mapping, got {kwargs!r}")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"member {spec.name!r}: architecture {spec.option('architecture')!r} rejected arch_kwargs {dict(kwargs)}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"member {spec.name!r}: architecture {spec.option('architecture')!r} returned {type(model).__name__}, not a torch.nn.Module")

    checkpoint = load_torch_checkpoint(path, spec.name)
    state_dict = select_key(checkpoint, spec.option("key"), path, spec.name)
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ModelLoadError(
            f"checkpoint {path} (member {spec.name!r}) at key {spec.option('key')!r} is not a state "
            "dict of tensors; set 'key' to the path of the state dict inside the checkpoint, e.g. state_dict.0"
        )
    load_strict(model, state_dict, f"member {spec.name!r} ({path})")
    return model
