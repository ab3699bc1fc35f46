"""Registry of member source kinds (``robustbench``, ``onnx``, ``state_dict``, ...).

A source kind turns a :class:`~robustvote.zoo.spec.MemberSpec` into a torch module that maps
images to logits. It declares the pool-file fields it needs, so the pool parser can name a
missing or unknown field before anything is loaded. New kinds register with
:func:`register_source` and need no change elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from robustvote.errors import ConfigError

if TYPE_CHECKING:
    from robustvote.zoo.spec import MemberSpec

Loader = Callable[["MemberSpec"], nn.Module]


@dataclass(frozen=True)
class SourceKind:
    """A member source: its loader and the pool-file fields it requires or accepts."""

    name: str
    loader: Loader
    required: tuple[str, ...]
    optional: tuple[str, ...]
    path_fields: tuple[str, ...]
    description: str


_SOURCES: dict[str, SourceKind] = {}


def register_source(
    name: str,
    *,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    path_fields: tuple[str, ...] = (),
) -> Callable[[Loader], Loader]:
    """Register ``loader`` as the source kind ``name`` (decorator).

    ``path_fields`` names extra fields that hold paths: like ``path``, they expand variables
    and resolve against the pool file's folder.
    """

    def decorate(loader: Loader) -> Loader:
        if name in _SOURCES:
            raise ValueError(f"source kind {name!r} is registered twice")
        doc = (loader.__doc__ or "").strip().splitlines()
        _SOURCES[name] = SourceKind(name, loader, required, optional, path_fields, doc[0] if doc else "")
        return loader

    return decorate


def _ensure_builtin_sources() -> None:
    # Importing the package registers every built-in kind exactly once.
    import robustvote.zoo.sources  # noqa: F401


def get_source(name: str) -> SourceKind:
    """Return the source kind ``name`` or raise a :class:`ConfigError` listing the known kinds."""
    _ensure_builtin_sources()
    try:
        return _SOURCES[name]
    except KeyError:
        known = ", ".join(sorted(_SOURCES))
        raise ConfigError(f"unknown source kind {name!r}; expected one of: {known}") from None


def source_names() -> list[str]:
    """Return the names of all registered source kinds, sorted."""
    _ensure_builtin_sources()
    return sorted(_SOURCES)
