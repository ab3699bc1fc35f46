"""The robustness matrix: every pool member attacked on its own, cached per member.

Row i of the matrix belongs to member i, column j to example j of the selection slice:
``robust[i, j]`` is true when member i classifies example j correctly and no attack of the
suite fooled it. Next to it the matrix stores each member's clean predictions and the class its
worst adversarial example is labelled with (the clean label where no attack succeeded).

The cache is one JSON file. It records what produced the matrix (dataset, threat model, data
slice and a digest of its pixels, the attack suite, the seed), and each row records a key made
from the member's spec and the sha256 of its weight file. A later run with the same setup
reuses every row whose key still matches and attacks only the members that are new or
changed. A run with a different setup is rejected unless ``recompute`` is set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustvote.data import CifarSlice
from robustvote.errors import ConfigError, DataError
from robustvote.io import write_atomic
from robustvote.threat import ThreatModel, format_eps
from robustvote.zoo import LoadedMember, MemberSpec
from robustvote.zoo.checkpoint import sha256_of

logger = logging.getLogger(__name__)

MATRIX_FORMAT_VERSION = 1
MATRIX_KIND = "robustvote robustness matrix"


@dataclass(frozen=True)
class MatrixSetup:
    """Everything besides the members that determines a robustness matrix.

    ``eps`` is in [0, 1] pixel scale. ``suite`` is a JSON-ready description of the attacks with
    their budgets, and ``data_sha256`` the digest of the slice's pixels and labels.
    """

    dataset: str
    norm: str
    eps: float
    split: str
    start: int
    n: int
    data_sha256: str
    suite: Any
    seed: int

    @property
    def data_indices(self) -> str:
        """The slice in the form ``test[5000:5500]``."""
        return f"{self.split}[{self.start}:{self.start + self.n}]"

    def describe_difference(self, other: MatrixSetup, field: str) -> str:
        """Return how ``field`` differs between this setup (cached) and ``other`` (requested)."""
        mine, theirs = getattr(self, field), getattr(other, field)
        if field == "eps":
            mine, theirs = format_eps(mine), format_eps(theirs)
        elif field == "data_sha256":
            return f"data_sha256: cached {mine[:12]}..., requested {theirs[:12]}... (other pixels or labels)"
        elif field == "suite":
            return "suite: " + _suite_difference(mine, theirs)
        return f"{field}: cached {mine}, requested {theirs}"

    def differences(self, other: MatrixSetup) -> list[str]:
        """Return the names of the fields on which ``other`` differs, in declaration order."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def _suite_difference(cached: Any, requested: Any) -> str:
    """Describe the difference of two suite descriptions (lists of name, attack, options)."""
    cached_names = [entry.get("name") for entry in cached]
    requested_names = [entry.get("name") for entry in requested]
    if cached_names != requested_names:
        return f"cached attacks {', '.join(cached_names)}, requested {', '.join(requested_names)}"
    changes = []
    for old, new in zip(cached, requested):
        old_options, new_options = old.get("options", {}), new.get("options", {})
        for key in sorted(set(old_options) | set(new_options)):
            if old_options.get(key) != new_options.get(key):
                changes.append(f"{old['name']} {key} cached {old_options.get(key)}, requested {new_options.get(key)}")
    return ", ".join(changes) or "the attack entries differ"


@dataclass(frozen=True, eq=False)
class MemberRow:
    """One member's row: bool N ``robust``, int64 N ``clean_predictions`` and ``adv_labels``."""

    name: str
    key: str
    robust: np.ndarray
    clean_predictions: np.ndarray
    adv_labels: np.ndarray
    runtime_s: float
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class RobustnessMatrix:
    """Rows of the members in pool order, over the N examples of ``labels`` (int64 N)."""

    setup: MatrixSetup
    labels: np.ndarray
    rows: tuple[MemberRow, ...]

    @property
    def names(self) -> list[str]:
        return [row.name for row in self.rows]

    @property
    def robust(self) -> np.ndarray:
        """Bool M×N: member stays correct under every attack of the suite."""
        return np.stack([row.robust for row in self.rows])

    @property
    def clean_predictions(self) -> np.ndarray:
        """Int64 M×N labels of the members on the clean images."""
        return np.stack([row.clean_predictions for row in self.rows])

    @property
    def clean_correct(self) -> np.ndarray:
        """Bool M×N: member classifies the clean image correctly."""
        return self.clean_predictions == self.labels[None, :]

    @property
    def adv_labels(self) -> np.ndarray:
        """Int64 M×N labels on each member's worst adversarial example (clean label if none)."""
        return np.stack([row.adv_labels for row in self.rows])

    @property
    def indices(self) -> np.ndarray:
        """Int64 N positions of the examples in their split."""
        return np.arange(self.setup.start, self.setup.start + self.setup.n)


def data_digest(data: CifarSlice) -> str:
    """Return the sha256 of a slice's float32 pixels and int64 labels."""
    digest = hashlib.sha256()
    digest.update(data.images.detach().cpu().contiguous().numpy().astype(np.float32).tobytes())
    digest.update(data.labels.cpu().numpy().astype(np.int64).tobytes())
    return digest.hexdigest()


def member_key(spec: MemberSpec) -> str:
    """Return a digest of everything that defines a member: its spec fields and its file's sha256.

    The file is hashed even when the spec gives no ``sha256``, so a replaced weight file changes
    the key. A member without a file (a RobustBench model) is keyed by its spec alone.
    """
    # TODO: the resolved path is part of the key, so moving unchanged weight files (or pointing
    # ROBUSTVOTE_ZOO elsewhere) recomputes their rows although file_sha256 already identifies them.
    file_sha256 = sha256_of(spec.path) if spec.path is not None and spec.path.is_file() else None
    normalize = dataclasses.asdict(spec.normalize) if spec.normalize is not None else None
    fields = {
        "name": spec.name,
        "source": spec.source,
        "path": str(spec.path) if spec.path is not None else None,
        "sha256": spec.sha256,
        "file_sha256": file_sha256,
        "normalize": normalize,
        "options": dict(spec.options),
    }
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Cache file


def _bits(mask: np.ndarray) -> str:
    return "".join("1" if value else "0" for value in mask.tolist())


def _row_to_json(row: MemberRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "key": row.key,
        "robust": _bits(row.robust),
        "clean_predictions": row.clean_predictions.tolist(),
        "adv_labels": row.adv_labels.tolist(),
        "runtime_s": row.runtime_s,
        "flags": list(row.flags),
    }


def _row_from_json(raw: Mapping[str, Any], examples: int) -> MemberRow:
    robust = np.frombuffer(raw["robust"].encode(), dtype=np.uint8) == ord("1")
    row = MemberRow(
        name=str(raw["name"]),
        key=str(raw["key"]),
        robust=robust,
        clean_predictions=np.asarray(raw["clean_predictions"], dtype=np.int64),
        adv_labels=np.asarray(raw["adv_labels"], dtype=np.int64),
        runtime_s=float(raw["runtime_s"]),
        flags=tuple(raw.get("flags", ())),
    )
    for name in ("robust", "clean_predictions", "adv_labels"):
        if getattr(row, name).shape != (examples,):
            raise ValueError(f"row {row.name!r} has {getattr(row, name).shape[0]} {name} for {examples} examples")
    return row


def save_cache(path: str | os.PathLike[str], setup: MatrixSetup, labels: np.ndarray,
               rows: Sequence[MemberRow]) -> None:
    """Write the setup, labels and every row to ``path`` atomically."""
    payload = {
        "format_version": MATRIX_FORMAT_VERSION,
        "kind": MATRIX_KIND,
        "setup": dataclasses.asdict(setup),
        "labels": np.asarray(labels).tolist(),
        "rows": [_row_to_json(row) for row in rows],
    }
    write_atomic(path, json.dumps(payload, separators=(",", ":")) + "\n")


def load_cache(path: str | os.PathLike[str]) -> tuple[MatrixSetup, np.ndarray, list[MemberRow]]:
    """Read a cache file written by :func:`save_cache`; raise DataError if it is unreadable."""
    fix = "delete it or pass --recompute to attack every member again"
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read robustness matrix {path} ({exc}); {fix}") from None
    if not isinstance(raw, dict) or raw.get("kind") != MATRIX_KIND:
        raise DataError(f"{path} is not a robustness matrix written by robustvote select; {fix}")
    if raw.get("format_version") != MATRIX_FORMAT_VERSION:
        raise DataError(
            f"robustness matrix {path} has format_version {raw.get('format_version')!r}, this "
            f"version of robustvote reads {MATRIX_FORMAT_VERSION}; {fix}"
        )
    try:
        setup = MatrixSetup(**raw["setup"])
        labels = np.asarray(raw["labels"], dtype=np.int64)
        rows = [_row_from_json(item, setup.n) for item in raw["rows"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"robustness matrix {path} is damaged ({exc}); {fix}") from None
    return setup, labels, rows


# ---------------------------------------------------------------------------------------------
# Computing rows

AttackMember = Callable[[LoadedMember, CifarSlice], MemberRow]


def make_member_attacker(
    suite: Any,
    threat: ThreatModel,
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    progress: bool = True,
) -> AttackMember:
    """Return a function that attacks one member on its own with ``suite`` and builds its row.

    The member is attacked as a 1-member voting ensemble through the attack runner, so success
    is judged by the runner's projection and re-check, as for any ensemble.
    """
    from robustvote.attacks import run_suite
    from robustvote.ensemble import VotingEnsemble
    from robustvote.evaluation import predict_batched

    def attack(member: LoadedMember, data: CifarSlice) -> MemberRow:
        started = time.perf_counter()
        model = member.model.to(device)
        target = VotingEnsemble([model], [member.name])
        result = run_suite(
            target, data.images, data.labels, suite, threat,
            seed=seed, batch_size=batch_size, device=device, run_dir=None, resume=False, progress=progress,
        )
        clean = predict_batched([model], data.images, batch_size=batch_size, device=device)[0]
        clean_correct = clean.numpy() == data.labels.numpy()
        flags = list(result.flags)
        mismatched = int((np.asarray(result.clean_correct, dtype=bool) != clean_correct).sum())
        if mismatched:
            message = f"clean correctness differs between two passes on {mismatched} example(s)"
            logger.warning("member %s: %s; it may not be deterministic", member.name, message)
            flags.append(message)
        return MemberRow(
            name=member.name,
            key=member_key(member.spec),
            # Robust needs both passes to be correct, so a flaky member is never counted robust.
            robust=np.asarray(result.robust, dtype=bool) & clean_correct,
            clean_predictions=clean.numpy().astype(np.int64),
            adv_labels=np.asarray(result.adv_labels, dtype=np.int64),
            runtime_s=time.perf_counter() - started,
            flags=tuple(flags),
        )

    return attack


@dataclass(frozen=True)
class MatrixBuild:
    """A matrix for the requested members and which rows were attacked now or reused."""

    matrix: RobustnessMatrix
    attacked: tuple[str, ...]
    reused: tuple[str, ...]


def build_matrix(
    members: Sequence[LoadedMember],
    data: CifarSlice,
    setup: MatrixSetup,
    attack: AttackMember,
    *,
    cache_path: str | os.PathLike[str],
    recompute: bool = False,
) -> MatrixBuild:
    """Return the robustness matrix of ``members`` on ``data``, attacking only what the cache lacks.

    The cache is saved after every member attacked, so an interrupted run keeps the rows it
    finished. Rows of members not requested this time stay in the cache. A cache made with a
    different ``setup`` raises a ConfigError naming the differences, unless ``recompute`` is true;
    then it is replaced with a warning.
    """
    labels = data.labels.cpu().numpy().astype(np.int64)
    cached: dict[str, MemberRow] = {}
    path = Path(cache_path)
    if path.exists() and recompute:
        logger.warning("recomputing every row: the robustness matrix %s will be replaced", path)
    elif path.exists():
        cached_setup, cached_labels, rows = load_cache(path)
        differences = cached_setup.differences(setup)
        if differences:
            detail = "; ".join(cached_setup.describe_difference(setup, name) for name in differences)
            raise ConfigError(
                f"robustness matrix {path} was computed with a different setup ({detail}); "
                "pass --recompute to replace it, or choose another --out to keep it"
            )
        if not np.array_equal(cached_labels, labels):
            raise ConfigError(
                f"robustness matrix {path} contains other labels for {setup.data_indices}; "
                "pass --recompute to replace it, or choose another --out to keep it"
            )
        cached = {row.name: row for row in rows}

    attacked: list[str] = []
    reused: list[str] = []
    for member in members:
        key = member_key(member.spec)
        row = cached.get(member.name)
        if row is not None and row.key == key:
            reused.append(member.name)
            continue
        reason = "new" if row is None else "changed since the cached row"
        logger.info("attacking member %s (%s) on %s", member.name, reason, setup.data_indices)
        cached[member.name] = attack(member, data)
        attacked.append(member.name)
        save_cache(path, setup, labels, list(cached.values()))

    if not path.exists():
        save_cache(path, setup, labels, list(cached.values()))
    logger.info("robustness matrix: %d member(s) attacked, %d reused from %s", len(attacked), len(reused), path)
    matrix = RobustnessMatrix(setup, labels, tuple(cached[m.name] for m in members))
    return MatrixBuild(matrix, tuple(attacked), tuple(reused))
