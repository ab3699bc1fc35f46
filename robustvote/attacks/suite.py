"""Attack suites: ordered lists of attacks with budgets, read from YAML files under ``attacks/``.

A suite file looks like::

    name: vote
    description: free text
    attacks:
      - attack: vote-pgd          # a registered attack name
        name: vote-pgd-kappa1     # optional display name, unique within the suite
        kappa: 1.0                # any keyword option of that attack
      - attack: apgd-ce
        model: surrogate           # or a member name
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustvote.attacks.base import SURROGATE_TARGET, Attack, build_attack
from robustvote.threat import Norm
from robustvote.errors import ConfigError

_ENTRY_KEYS = ("attack", "name")


@dataclass(frozen=True)
class SuiteEntry:
    """One attack of a suite: its display ``name``, registered ``attack`` name and options."""

    name: str
    attack: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Attack:
        return build_attack(self.attack, dict(self.options))

    def to_dict(self) -> dict[str, Any]:
        """Return the entry with every option resolved, defaults included."""
        return {"name": self.name, "attack": self.attack, "options": self.build().options()}


@dataclass(frozen=True)
class Suite:
    """An ordered list of attacks; later attacks run only on examples still robust."""

    name: str
    entries: tuple[SuiteEntry, ...]
    path: Path | None = None

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def build(self) -> list[Attack]:
        return [entry.build() for entry in self.entries]

    def require_norm(self, norm: Norm) -> None:
        """Raise a ConfigError unless some attack of the suite supports ``norm``.

        Attacks that do not support the norm are skipped with a flag. If all of them were skipped,
        the reported robust accuracy would be the clean accuracy.
        """
        if not any(norm in attack.norms for attack in self.build()):
            raise ConfigError(
                f"no attack of suite {self.name!r} ({', '.join(self.names)}) supports the {norm.value} norm; "
                "add one that does (pgd, apgd-ce, vote-pgd, ...) or change --norm"
            )

    def require_members(self, names: Sequence[str]) -> None:
        """Raise a ConfigError when an attack targets a member (``model: NAME``) not in ``names``."""
        for entry in self.entries:
            model = entry.options.get("model")
            if model is not None and model != SURROGATE_TARGET and model not in names:
                raise ConfigError(
                    f"attack {entry.name!r} of suite {self.name!r} targets model {model!r}, which is not a "
                    f"member here ({', '.join(names)}); use 'surrogate' or one of these names"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "attacks": [entry.to_dict() for entry in self.entries],
        }


def _parse_entry(raw: Any, index: int, origin: str) -> SuiteEntry:
    if isinstance(raw, str):
        raw = {"attack": raw}
    if not isinstance(raw, Mapping) or "attack" not in raw:
        raise ConfigError(
            f"{origin}: attack #{index + 1} must be a mapping with an 'attack' key (a registered "
            f"attack name), got {raw!r}"
        )
    attack = str(raw["attack"])
    name = str(raw.get("name", attack))
    options = {str(k): (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k not in _ENTRY_KEYS}
    entry = SuiteEntry(name=name, attack=attack, options=options)
    try:
        entry.build()
    except ConfigError as exc:
        raise ConfigError(f"{origin}: attack #{index + 1} ({name}): {exc}") from None
    return entry


def parse_suite(raw: Any, origin: str, path: Path | None = None) -> Suite:
    """Validate a suite read from YAML; every attack is built once so bad options fail here."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("attacks"), list) or not raw["attacks"]:
        raise ConfigError(f"{origin}: expected a mapping with a non-empty 'attacks' list")
    entries = tuple(_parse_entry(item, i, origin) for i, item in enumerate(raw["attacks"]))
    names = [entry.name for entry in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"{origin}: attack name(s) {', '.join(repeated)} appear twice; give each entry a unique 'name'"
        )
    default_name = path.stem if path else "custom"
    return Suite(name=str(raw.get("name", default_name)), entries=entries, path=path)


def load_suite(path: str | os.PathLike[str]) -> Suite:
    """Read and validate a suite file."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"suite file {file} not found; see attacks/*.yaml for the shipped suites") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read suite file {file}: {exc}") from None
    return parse_suite(raw, str(file), file.resolve())


def suite_from_names(names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> Suite:
    """Build a suite of registered attacks with default budgets (or ``options[name]``)."""
    if isinstance(names, str):
        raise ConfigError(f"expected a list of attack names, got the string {names!r}")
    options = options or {}
    raw = {"attacks": [{"attack": name, **dict(options.get(name, {}))} for name in names]}
    return parse_suite(raw, "attack list " + ",".join(names))


def shipped_suite_path(name: str) -> Path:
    """Return the path of a suite shipped in the repository's ``attacks/`` folder."""
    # NOTE: attacks/ is not package data, so the shipped suites resolve only from a source
    # checkout (including an editable install); elsewhere pass --suite with a file path.
    return Path(__file__).resolve().parent.parent.parent / "attacks" / f"{name}.yaml"
