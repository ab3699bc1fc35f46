"""``source: matvit``: one granularity of a MatViT checkpoint (NAME.safetensors plus NAME.json)."""

from __future__ import annotations

from torch import nn

from robustvote.errors import ConfigError
from robustvote.matformer.checkpoint import load_matvit
from robustvote.matformer.extract import extract_submodel
from robustvote.matformer.granularity import Granularity, format_granularity, parse_granularity
from robustvote.zoo.checkpoint import require_file
from robustvote.zoo.registry import register_source
from robustvote.zoo.spec import MemberSpec


@register_source("matvit", required=("path",), optional=("granularity",))
def load_matvit_member(spec: MemberSpec) -> nn.Module:
    """A MatViT submodel: ``granularity`` is one of S, M, L, XL or one letter per layer (default XL).

    A nested checkpoint is sliced into a standalone submodel on load. An extracted checkpoint
    runs at its own widths, so a ``granularity`` other than the one it was extracted at is an
    error. The model normalizes its inputs itself, so the member needs no ``normalize`` field.
    """
    path = require_file(spec.path, spec.name)
    model = load_matvit(path)
    requested = spec.option("granularity")
    try:
        if model.config.nested:
            return extract_submodel(model, Granularity.XL if requested is None else requested)
        if requested is not None:
            layers = tuple(g.value for g in parse_granularity(requested, model.config.depth))
            if layers != model.config.granularity:
                stored = format_granularity([Granularity(g) for g in model.config.granularity or ()])
                raise ConfigError(
                    f"checkpoint {path} was extracted at granularity {stored}, not {requested!r}; "
                    "drop 'granularity' or point 'path' at the nested checkpoint"
                )
    except ConfigError as exc:
        raise ConfigError(f"member {spec.name!r}: {exc}") from None
    return model
