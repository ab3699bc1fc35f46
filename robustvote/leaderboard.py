"""Leaderboards: attack run folders to one CSV row per model and threat model, and a Markdown table.

Each run folder written by ``robustvote attack`` contains a ``summary.json`` (see
:mod:`robustvote.runs`); a folder made with ``--each-member`` contains one sub-folder per member
instead. A row is identified by model, members, dataset, threat model and eps: merging new runs
into an existing CSV replaces the rows they share and keeps the others, so a rerun never
duplicates a row. A per-attack column ``robust_<attack>`` contains the robust accuracy after
that attack and every attack before it in the suite. ``robust_accuracy`` is the per-example
worst case over the whole suite.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robustvote.errors import DataError, RobustVoteError
from robustvote.io import write_atomic, write_csv_atomic
from robustvote.runs import CONFIG_FILE, FORMAT_VERSION, SUMMARY_FILE, read_summary
from robustvote.threat import format_eps

logger = logging.getLogger(__name__)

HEAD_COLUMNS = ["model", "members", "n_members", "dataset", "threat_model", "eps", "n", "clean_accuracy"]
TAIL_COLUMNS = [
    "robust_accuracy", "robust_ci95_low", "robust_ci95_high", "suite", "seed", "data_indices", "commit",
    "runtime_s", "flags", "run_dir",
]
# A row is one evaluation: the same model under another suite, slice or seed gets a row of its own,
# so a weaker evaluation never replaces a stronger one.
KEY_COLUMNS = ["model", "members", "dataset", "threat_model", "eps", "suite", "data_indices", "seed"]
ATTACK_PREFIX = "robust_"
REQUIRED_SUMMARY_KEYS = (
    "model", "members", "n_members", "dataset", "threat_model", "eps", "n", "seed", "data_indices",
    "clean_accuracy", "robust_accuracy", "attacks", "flags", "complete",
)
# Accuracies are fractions of at most millions of examples, and summaries may carry float32
# noise (0.6000000238 for 0.6), so rows keep 6 decimals.
DECIMALS = 6


@dataclass(frozen=True)
class RunProblem:
    """A run folder that cannot enter the leaderboard, and why."""

    run_dir: str
    reason: str

    def __str__(self) -> str:
        return f"{self.run_dir} ({self.reason})"


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Return the Wilson score interval (95% for z = 1.96) of a proportion over ``n`` examples."""
    if n <= 0:
        return (math.nan, math.nan)
    denominator = 1 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half_width), min(1.0, centre + half_width))


def _natural_key(path: Path) -> list[tuple[int, Any]]:
    # Digits compare as numbers, so eps-4-255 sorts before eps-16-255.
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", str(path)) if part]


def find_summaries(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Return the run folders at or below ``run_dir``: every folder that contains a summary.

    A run folder is not searched further, so this finds a single run, the member folders of
    ``--each-member``, the eps folders of a sweep, and any mix of them nested at any depth.
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise DataError(f"run folder {folder} not found or not a folder")
    found: list[Path] = []
    pending = [folder]
    visited: set[Path] = set()
    while pending:
        current = pending.pop()
        # Symbolic links are followed, and the resolved set stops a link cycle.
        resolved = current.resolve()
        if resolved in visited:
            continue
        visited.add(resolved)
        if (current / SUMMARY_FILE).exists():
            found.append(current)
            continue
        try:
            pending += [child for child in current.iterdir() if child.is_dir()]
        except OSError as exc:
            raise DataError(f"cannot list run folder {current}: {exc.strerror or exc}") from None
    if not found:
        raise DataError(
            f"{SUMMARY_FILE} not found in {folder} or any folder below it; the run may have stopped "
            "before its first summary"
        )
    return sorted(found, key=_natural_key)


def suite_name(folder: Path) -> str:
    """Return the suite name recorded in a run's ``config.json``, or "" when there is none."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        return str(config["suite"]["name"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return ""


def summary_row(folder: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a checked ``summary.json`` payload into one leaderboard row."""
    n = int(summary["n"])
    robust = round(float(summary["robust_accuracy"]), DECIMALS)
    low, high = wilson_interval(robust, n)
    row: dict[str, Any] = {
        "model": summary["model"],
        "members": "+".join(summary["members"]),
        "n_members": int(summary["n_members"]),
        "dataset": summary["dataset"],
        "threat_model": summary["threat_model"],
        "eps": float(summary["eps"]),
        "n": n,
        "clean_accuracy": round(float(summary["clean_accuracy"]), DECIMALS),
    }
    for attack in summary["attacks"]:
        row[ATTACK_PREFIX + attack["name"]] = round(float(attack["robust_accuracy"]), DECIMALS)
    row.update({
        "robust_accuracy": robust,
        "robust_ci95_low": round(low, DECIMALS),
        "robust_ci95_high": round(high, DECIMALS),
        "suite": suite_name(folder),
        "seed": summary["seed"],
        "data_indices": summary["data_indices"],
        "commit": summary.get("commit") or "",
        "runtime_s": float(summary.get("runtime_s") or 0.0),
        "flags": json.dumps(list(summary["flags"])),
        "run_dir": str(folder),
    })
    return row


def check_summary(summary: Any) -> str | None:
    """Return why a summary cannot enter the leaderboard, or None when it can."""
    if not isinstance(summary, Mapping):
        return f"{SUMMARY_FILE} is not a JSON object"
    version = summary.get("format_version")
    if version != FORMAT_VERSION:
        return (f"incompatible format_version {version!r}, this robustvote reads {FORMAT_VERSION}; "
                "rerun it with this version")
    missing = [key for key in REQUIRED_SUMMARY_KEYS if key not in summary]
    if missing:
        return f"{SUMMARY_FILE} is missing {', '.join(missing)}"
    if not summary["complete"]:
        return "incomplete: complete is false; finish it with robustvote attack --resume"
    return None


def collect_rows(run_dirs: Iterable[str | os.PathLike[str]]) -> tuple[list[dict[str, Any]], list[RunProblem]]:
    """Read every run folder; return the rows and the folders that could not be used, with why."""
    rows: list[dict[str, Any]] = []
    problems: list[RunProblem] = []
    for run_dir in run_dirs:
        try:
            folders = find_summaries(run_dir)
        except DataError as exc:
            problems.append(RunProblem(str(run_dir), str(exc)))
            continue
        for folder in folders:
            try:
                summary = read_summary(folder)
            except RobustVoteError as exc:
                problems.append(RunProblem(str(folder), str(exc)))
                continue
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(RunProblem(str(folder), f"cannot read {SUMMARY_FILE}: {exc}"))
                continue
            reason = check_summary(summary)
            if reason is not None:
                problems.append(RunProblem(str(folder), reason))
                continue
            try:
                rows.append(summary_row(folder, summary))
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(RunProblem(str(folder), f"invalid value in {SUMMARY_FILE}: {exc!r}"))
    return rows, problems


def _row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    eps = format_eps(float(row["eps"]))
    return (
        str(row["model"]), str(row["members"]), str(row["dataset"]), str(row["threat_model"]), eps,
        str(row["suite"]), str(row["data_indices"]), str(row["seed"]),
    )


def read_leaderboard(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read an existing leaderboard CSV (empty when the file does not exist)."""
    file = Path(path)
    if not file.exists():
        return []
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read leaderboard {file}: {exc}; move it away to start a new one") from None
    missing = [column for column in KEY_COLUMNS + ["robust_accuracy"] if column not in frame.columns]
    if missing:
        raise DataError(
            f"{file} is not a robustvote leaderboard (no column {', '.join(missing)}); choose another -o file"
        )
    return frame.to_dict("records")


def merge_rows(existing: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return ``existing`` with rows of the same key replaced by ``new`` (later runs win)."""
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in existing:
        merged[_row_key(row)] = dict(row)
    for row in new:
        key = _row_key(row)
        if key in merged:
            logger.warning("replacing the row of %s (%s eps=%s, suite %s, %s, seed %s) with the newer run",
                           key[0], key[3], key[4], key[5], key[6], key[7])
        merged[key] = dict(row)
    return sorted(
        merged.values(),
        key=lambda row: (str(row["dataset"]), str(row["threat_model"]), float(row["eps"]),
                         -float(row["robust_accuracy"]), str(row["model"])),
    )


def leaderboard_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the fixed columns with one ``robust_<attack>`` column per attack, in first-seen order."""
    fixed = set(HEAD_COLUMNS) | set(TAIL_COLUMNS)
    attacks: list[str] = []
    for row in rows:
        for column in row:
            if column.startswith(ATTACK_PREFIX) and column not in fixed and column not in attacks:
                attacks.append(column)
    return HEAD_COLUMNS + attacks + TAIL_COLUMNS


def parse_flags(value: Any) -> list[str]:
    """Return the flags of a row; the CSV stores them as a JSON list of strings."""
    if not value:
        return []
    try:
        flags = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        return [str(value)]
    return [str(flag) for flag in flags] if isinstance(flags, list) else [str(flags)]


def _percent(value: Any) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{100 * float(value):.1f}"


def render_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render the rows as Markdown: one table per dataset and threat model, by robust accuracy."""
    columns = leaderboard_columns(rows)
    attacks = [c for c in columns if c.startswith(ATTACK_PREFIX) and c not in TAIL_COLUMNS]
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        group = (str(row["dataset"]), str(row["threat_model"]), format_eps(float(row["eps"])))
        groups.setdefault(group, []).append(row)

    lines = ["# Leaderboard", "",
             "Accuracies in percent. A `robust_<attack>` column is the robust accuracy after that attack "
             "and every attack before it in its suite; `robust` is the per-example worst case over the "
             "suite, with its 95% Wilson interval over the n examples.", ""]
    for (dataset, threat_model, eps), group in sorted(groups.items()):
        group = sorted(group, key=lambda row: (-float(row["robust_accuracy"]), str(row["model"])))
        lines += [f"## {dataset}, {threat_model} eps={eps}", ""]
        header = ["rank", "model", "n_members", "clean"] + [c[len(ATTACK_PREFIX):] for c in attacks]
        header += ["robust", "95% CI", "suite", "n", "data", "seed", "flags"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * len(header)) + "|")
        flagged: list[tuple[str, str]] = []
        for rank, row in enumerate(group, start=1):
            flags = parse_flags(row.get("flags"))
            flagged += [(str(row["model"]), flag) for flag in flags]
            cells = [str(rank), f"`{row['model']}`", str(row["n_members"]), _percent(row["clean_accuracy"])]
            cells += [_percent(row.get(column)) for column in attacks]
            cells += [
                f"**{_percent(row['robust_accuracy'])}**",
                f"{_percent(row.get('robust_ci95_low'))}-{_percent(row.get('robust_ci95_high'))}",
                str(row.get("suite") or ""),
                str(row["n"]), str(row["data_indices"]), str(row["seed"]), str(len(flags)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        slices = sorted({str(row["data_indices"]) for row in group})
        if len(slices) > 1:
            lines += ["", f"Note: these rows were evaluated on different data ({', '.join(slices)}), "
                          "so their numbers are not strictly comparable."]
        if flagged:
            lines += ["", "Flags:", ""] + [f"- `{model}`: {flag}" for model, flag in flagged]
        lines.append("")
    return "\n".join(lines)


def update_leaderboard(
    run_dirs: Sequence[str | os.PathLike[str]],
    csv_path: str | os.PathLike[str],
    markdown_path: str | os.PathLike[str] | None = None,
    *,
    skip_invalid: bool = False,
) -> tuple[list[dict[str, Any]], list[RunProblem]]:
    """Merge the runs into the CSV at ``csv_path`` and render it as Markdown, both atomically.

    Run folders that are missing, unreadable, incomplete or of another format version raise a
    DataError naming each of them. With ``skip_invalid`` they are logged as warnings and
    returned instead. Nothing is written when there is an error. Returns the merged rows
    and the skipped folders.
    """
    new_rows, problems = collect_rows(run_dirs)
    if problems and not skip_invalid:
        raise DataError(
            f"cannot use {len(problems)} run folder(s): " + "; ".join(map(str, problems))
            + "; fix or drop them, or pass --skip-invalid to leave them out"
        )
    for problem in problems:
        logger.warning("skipped run folder %s", problem)
    existing = read_leaderboard(csv_path)
    rows = merge_rows(existing, new_rows)
    write_csv_atomic(csv_path, rows, leaderboard_columns(rows))
    markdown = Path(markdown_path) if markdown_path else Path(csv_path).with_suffix(".md")
    write_atomic(markdown, render_markdown(rows))
    logger.info("wrote %d rows to %s and %s", len(rows), csv_path, markdown)
    return rows, problems
