"""Selection output: the top subsets per size, the provenance record and ready pool files."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from robustvote.errors import ConfigError
from robustvote.io import write_atomic, write_csv_atomic, write_json_atomic
from robustvote.selection.diversity import Diversity
from robustvote.selection.matrix import RobustnessMatrix
from robustvote.selection.search import SizeSearch
from robustvote.zoo import PoolSpec, load_pool_file
from robustvote.zoo.spec import expand_variables

logger = logging.getLogger(__name__)

SUBSET_COLUMNS = [
    "size", "rank", "members", "estimate", "clean_accuracy", "mean_joint_vulnerability",
    "method", "subsets_scored", "subsets_total",
]
# A path that starts with ${VAR:-default}: the default is rebased, the variable is kept.
_LEADING_DEFAULT = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}(.*)$")


def subset_rows(searches: Sequence[SizeSearch], names: Sequence[str], diversity: Diversity) -> list[dict[str, Any]]:
    """Return one row per ranked subset: its members joined by ``+`` and its scores (fractions)."""
    rows = []
    for search in searches:
        for rank, subset in enumerate(search.top, start=1):
            rows.append({
                "size": search.size,
                "rank": rank,
                "members": "+".join(names[i] for i in subset.members),
                "estimate": subset.estimate,
                "clean_accuracy": subset.clean_accuracy,
                "mean_joint_vulnerability": round(diversity.mean_joint_vulnerability(subset.members), 6),
                "method": search.method.value,
                "subsets_scored": search.subsets_scored,
                "subsets_total": search.subsets_total,
            })
    return rows


def rebase_path(raw: str, source_dir: Path, target_dir: Path, where: str) -> str:
    """Rewrite a pool-file path so that it names the same file from ``target_dir``.

    The relative default of a leading ``${VAR:-default}`` is rebased and the variable kept, so
    the path stays right whether or not ``VAR`` is set. Otherwise a path that expands to an
    absolute path is kept as written, and a relative one is rewritten relative to ``target_dir``.
    """
    match = _LEADING_DEFAULT.match(raw)
    if match is not None and not Path(match.group(2)).expanduser().is_absolute():
        variable, default, rest = match.groups()
        moved = os.path.relpath((source_dir / default).resolve(), target_dir.resolve())
        return f"${{{variable}:-{Path(moved).as_posix()}}}{rest}"
    expanded = Path(expand_variables(raw, where)).expanduser()
    if expanded.is_absolute():
        return raw
    return Path(os.path.relpath((source_dir / expanded).resolve(), target_dir.resolve())).as_posix()


def _resolved(path: Path | None) -> Path | None:
    return path.resolve() if path is not None else None


def write_pool_file(pool: PoolSpec, names: Sequence[str], path: str | os.PathLike[str], notes: str) -> None:
    """Write the members ``names`` of ``pool`` as a new pool file at ``path``.

    Member entries are copied from the source pool file as written, with paths rebased so that
    they resolve to the same files. The result is loaded back and checked.
    """
    if pool.path is None:
        raise ConfigError("the pool has no file to copy members from; load it with load_pool_file")
    source = Path(pool.path)
    raw = yaml.safe_load(source.read_text())
    entries = {entry["name"]: dict(entry) for entry in raw["members"]}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    members = []
    for name in names:
        entry = entries[name]
        if entry.get("path") is not None:
            entry["path"] = rebase_path(str(entry["path"]), source.resolve().parent, target.parent,
                                        f"{source}: member {name!r}")
        members.append(entry)
    document = {
        "dataset": raw["dataset"],
        "threat_model": raw["threat_model"],
        "eps": raw["eps"],
        "notes": notes,
        "members": members,
    }
    write_atomic(target, yaml.safe_dump(document, sort_keys=False, width=100))

    written = load_pool_file(target)
    expected = {m.name: _resolved(m.path) for m in pool.subset(list(names)).members}
    moved = [m.name for m in written.members if _resolved(m.path) != expected[m.name]]
    if moved:
        raise ConfigError(f"pool file {target} resolves member(s) {', '.join(moved)} to other paths than {source}")


def selection_record(
    pool: PoolSpec,
    matrix: RobustnessMatrix,
    searches: Sequence[SizeSearch],
    rows: Sequence[Mapping[str, Any]],
    pool_files: Mapping[int, str],
    attacked: Sequence[str],
    reused: Sequence[str],
) -> dict[str, Any]:
    """Return the JSON record of a selection: what it ran on, how it searched, what it chose."""
    setup = matrix.setup
    return {
        "pool": str(pool.path),
        "members": matrix.names,
        "dataset": setup.dataset,
        "threat_model": setup.norm,
        "eps": setup.eps,
        "data_indices": setup.data_indices,
        "data_sha256": setup.data_sha256,
        "suite": setup.suite,
        "seed": setup.seed,
        "rows_attacked": list(attacked),
        "rows_reused": list(reused),
        "sizes": [
            {
                "size": search.size,
                "method": search.method.value,
                "subsets_scored": search.subsets_scored,
                "subsets_total": search.subsets_total,
                "pool_file": pool_files.get(search.size),
                "top": [row for row in rows if row["size"] == search.size],
            }
            for search in searches
        ],
    }


def write_selection(
    out_dir: str | os.PathLike[str],
    pool: PoolSpec,
    matrix: RobustnessMatrix,
    searches: Sequence[SizeSearch],
    diversity: Diversity,
    *,
    attacked: Sequence[str] = (),
    reused: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Write ``subsets.csv``, ``selection.json`` and ``best_k{size}.yaml`` for every size.

    Returns the subset rows (see :func:`subset_rows`).
    """
    out = Path(out_dir)
    names = matrix.names
    rows = subset_rows(searches, names, diversity)
    write_csv_atomic(out / "subsets.csv", rows, SUBSET_COLUMNS)

    pool_files: dict[int, str] = {}
    setup = matrix.setup
    for search in searches:
        if not search.top:
            continue
        best = search.top[0]
        chosen = [names[i] for i in best.members]
        notes = (
            f"Best {search.size} of {len(names)} members of {pool.path} by robustvote select "
            f"({search.method.value} search): majority-robust estimate {100 * best.estimate:.1f}%, "
            f"clean vote accuracy {100 * best.clean_accuracy:.1f}% on {setup.data_indices} "
            f"(n={setup.n}), seed {setup.seed}. Evaluate it on images outside {setup.data_indices}."
        )
        file_name = f"best_k{search.size}.yaml"
        write_pool_file(pool, chosen, out / file_name, notes)
        pool_files[search.size] = file_name

    record = selection_record(pool, matrix, searches, rows, pool_files, attacked, reused)
    write_json_atomic(out / "selection.json", record)
    logger.info("wrote the selection to %s", out)
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Format the best subset of each size as a short text table (percentages)."""
    best = [row for row in rows if row["rank"] == 1]
    header = ("size", "method", "estimate", "clean", "joint vuln.", "members")
    lines = [f"{header[0]:>4}  {header[1]:<10}  {header[2]:>8}  {header[3]:>6}  {header[4]:>11}  {header[5]}"]
    for row in best:
        lines.append(
            f"{row['size']:>4}  {row['method']:<10}  {100 * row['estimate']:>7.1f}%  "
            f"{100 * row['clean_accuracy']:>5.1f}%  {100 * row['mean_joint_vulnerability']:>10.1f}%  {row['members']}"
        )
    return "\n".join(lines)
