"""Pool files: the YAML schema, its validation and variable expansion.

A pool file lists the members of a pool and the threat model they are judged under::

    dataset: cifar10
    threat_model: Linf
    eps: 2/255
    members:
      - name: resnet_4b
        source: onnx
        path: ${ROBUSTVOTE_ZOO}/weights/resnet_4b.onnx
        sha256: 0482...
        normalize: {mean: [0.4914, 0.4822, 0.4465], std: [0.2471, 0.2435, 0.2616]}

Relative paths are resolved against the pool file's folder. ``${VAR}`` expands an environment
variable and ``${VAR:-default}`` falls back to ``default`` when it is unset or empty.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from robustvote.errors import ConfigError
from robustvote.threat import Norm, ThreatModel, parse_eps, parse_fraction
from robustvote.zoo.registry import get_source

DATASETS = ("cifar10",)
NUM_CLASSES = {"cifar10": 10}
_COMMON_FIELDS = ("name", "source", "path", "sha256", "normalize", "notes")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std`` applied to [0, 1] images inside the member wrapper."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class MemberSpec:
    """One pool member as written in a pool file, with paths resolved.

    ``options`` contains the fields specific to the source kind (``architecture``, ``key``, ...).
    """

    name: str
    source: str
    path: Path | None = None
    sha256: str | None = None
    normalize: Normalization | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    notes: str | None = None

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass(frozen=True)
class PoolSpec:
    """A parsed pool file."""

    dataset: str
    threat_model: ThreatModel
    members: tuple[MemberSpec, ...]
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]

    def member_names(self) -> list[str]:
        return [m.name for m in self.members]

    def subset(self, names: Sequence[str]) -> PoolSpec:
        """Return the pool restricted to ``names``, in the given order."""
        by_name = {m.name: m for m in self.members}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError(
                f"unknown member(s) {', '.join(unknown)} in pool {self.path}; "
                f"known: {', '.join(by_name)}"
            )
        if len(set(names)) != len(names):
            raise ConfigError(f"member list {', '.join(names)} names a member twice")
        return replace(self, members=tuple(by_name[n] for n in names))


def expand_variables(text: str, where: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in a path. An unset ``${VAR}`` is an error.

    A relative path in an environment variable was written in the shell, so it is made absolute
    against the working directory. A relative default stays relative to the pool file.
    """

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value:
            return os.path.abspath(os.path.expanduser(value)) if match.start() == 0 else value
        if default is not None:
            return default
        raise ConfigError(
            f"{where}: environment variable {name} is not set; export it or write "
            f"${{{name}:-default}} in the pool file"
        )

    return _VARIABLE.sub(substitute, text)


def _parse_normalization(raw: Any, where: str) -> Normalization:
    if not isinstance(raw, Mapping) or set(raw) != {"mean", "std"}:
        raise ConfigError(f"{where}: 'normalize' must be a mapping with keys 'mean' and 'std'")
    values = {}
    for key in ("mean", "std"):
        items = raw[key]
        if not isinstance(items, Sequence) or isinstance(items, str) or len(items) != 3:
            raise ConfigError(f"{where}: normalize.{key} must list 3 numbers (R, G, B), got {items!r}")
        try:
            values[key] = tuple(parse_fraction(v) for v in items)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: normalize.{key} must list 3 numbers, got {items!r}") from None
    if any(s <= 0 for s in values["std"]):
        raise ConfigError(f"{where}: normalize.std must be positive, got {list(values['std'])}")
    return Normalization(values["mean"], values["std"])


def parse_member(raw: Any, index: int, base_dir: Path, origin: str) -> MemberSpec:
    """Validate one entry of ``members`` and resolve its path against ``base_dir``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: member #{index + 1} must be a mapping, got {raw!r}")
    name = raw.get("name")
    if not name or not isinstance(name, str):
        raise ConfigError(f"{origin}: member #{index + 1} is missing the field 'name'")
    where = f"{origin}: member {name!r}"
    source_name = raw.get("source")
    if not source_name:
        raise ConfigError(f"{where} is missing the field 'source'")
    kind = get_source(str(source_name))

    missing = [f for f in kind.required if raw.get(f) is None]
    if missing:
        raise ConfigError(
            f"{where} (source {kind.name}) is missing the field(s) {', '.join(missing)}"
        )
    allowed = set(_COMMON_FIELDS) | set(kind.required) | set(kind.optional)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {', '.join(unknown)}; source {kind.name} accepts "
            f"{', '.join(sorted(allowed))}"
        )

    def resolve(value: Any) -> Path:
        expanded = Path(expand_variables(str(value), where)).expanduser()
        # Normalized like a path from an environment variable, so that one file gets one name
        # however the pool file reaches it (and cached selection rows keyed by it still match).
        return Path(os.path.abspath(expanded if expanded.is_absolute() else base_dir / expanded))

    path = resolve(raw["path"]) if raw.get("path") is not None else None
    sha256 = raw.get("sha256")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(sha256)):
        raise ConfigError(f"{where}: sha256 must be 64 hexadecimal digits, got {sha256!r}")
    normalize = None
    if raw.get("normalize") is not None:
        normalize = _parse_normalization(raw["normalize"], where)
    options = {k: v for k, v in raw.items() if k not in _COMMON_FIELDS}
    for key in kind.path_fields:
        if options.get(key) is not None:
            options[key] = resolve(options[key])
    return MemberSpec(
        name=name,
        source=kind.name,
        path=path,
        sha256=str(sha256).lower() if sha256 else None,
        normalize=normalize,
        options=options,
        notes=raw.get("notes"),
    )


def parse_pool(raw: Any, base_dir: Path, origin: str) -> PoolSpec:
    """Validate a pool file's parsed YAML content."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: a pool file must be a YAML mapping with a 'members' list")
    for key in ("dataset", "threat_model", "eps", "members"):
        if raw.get(key) is None:
            raise ConfigError(f"{origin} is missing the top-level field '{key}'")
    unknown = sorted(set(raw) - {"dataset", "threat_model", "eps", "members", "notes"})
    if unknown:
        raise ConfigError(f"{origin} has unknown top-level field(s) {', '.join(unknown)}")
    dataset = str(raw["dataset"]).lower()
    if dataset not in DATASETS:
        raise ConfigError(f"{origin}: unsupported dataset {raw['dataset']!r}; expected one of {DATASETS}")
    try:
        threat = ThreatModel(Norm.parse(raw["threat_model"]), parse_eps(raw["eps"]))
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    members_raw = raw["members"]
    if not isinstance(members_raw, Sequence) or isinstance(members_raw, str) or not members_raw:
        raise ConfigError(f"{origin}: 'members' is empty; list at least one member")
    members = tuple(parse_member(m, i, base_dir, origin) for i, m in enumerate(members_raw))
    names = [m.name for m in members]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{origin}: member name(s) {', '.join(duplicates)} appear more than once")
    return PoolSpec(dataset=dataset, threat_model=threat, members=members)


def load_pool_file(path: str | os.PathLike[str]) -> PoolSpec:
    """Read and validate a pool file."""
    pool_path = Path(path).expanduser()
    if not pool_path.is_file():
        raise ConfigError(f"pool file {pool_path} not found; pass an existing YAML file to --pool")
    try:
        raw = yaml.safe_load(pool_path.read_text())
    except yaml.YAMLError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"pool file {pool_path} is not valid YAML: {first_line}") from None
    spec = parse_pool(raw, pool_path.resolve().parent, str(pool_path))
    return replace(spec, path=pool_path)
