"""Run folders written by ``robustvote attack`` and read by ``robustvote leaderboard``.

A run folder contains ``config.json`` (what was run, on what, with which versions) and
``outcomes/batch-NNNNNNN.json``, one file per finished batch, written atomically as batches
finish. When the run ends it also contains ``summary.json`` with accuracies, pass counts and
flags. With ``--each-member`` it contains one such folder per member instead.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from robustvote.errors import ConfigError
from robustvote.io import write_json_atomic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
OUTCOMES_FOLDER = "outcomes"
# Config keys that may differ between a run and its resumption.
_VOLATILE_KEYS = ("versions", "commit", "device", "created")


class OutcomeStore:
    """Per-batch outcome files of one run; a batch is identified by its first position."""

    def __init__(self, folder: Path, attack_names: Sequence[str], batch_size: int) -> None:
        self.folder = Path(folder) / OUTCOMES_FOLDER
        self.attack_names = list(attack_names)
        self.batch_size = batch_size

    def path(self, start: int) -> Path:
        return self.folder / f"batch-{start:07d}.json"

    def finished_starts(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("batch-*.json"))

    def read(self, start: int) -> dict[str, Any] | None:
        """Return the stored record of the batch at ``start``, or None when it is not finished."""
        path = self.path(start)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read batch outcome {path}: {exc}; delete the file to recompute it") from None
        if record.get("attacks") != self.attack_names or record.get("start") != start:
            raise ConfigError(
                f"batch outcome {path} was made by attacks {record.get('attacks')}, not {self.attack_names}; "
                "resume with the same suite or start a new run folder"
            )
        return record

    def write(self, start: int, record: Mapping[str, Any]) -> None:
        write_json_atomic(self.path(start), dict(record))


def prepare_run_folder(folder: str | os.PathLike[str], resume: bool) -> Path:
    """Create ``folder``, or check that it may be reused: non-empty needs ``resume``.

    With ``resume``, a missing or empty folder starts a new run, so one command both starts a
    run and continues it after an interruption.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder; choose a folder path")
    if resume and (path / CONFIG_FILE).is_file():
        return path
    if resume and path.is_dir() and any(path.iterdir()):
        raise ConfigError(
            f"cannot resume: {CONFIG_FILE} not found in the non-empty folder {path}; "
            "choose another --out folder, or empty this one to start a new run"
        )
    if resume:
        logger.info("no run to resume in %s; starting a new run", path)
        path.mkdir(parents=True, exist_ok=True)
        return path
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(
            f"run folder {path} already exists and is not empty; pass --resume to continue that run, "
            "or choose another --out folder"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def library_versions() -> dict[str, str | None]:
    """Return the versions of Python and of the libraries that decide a result."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "robustvote", "pyautoattack", "robustbench", "onnx2torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def git_commit() -> str | None:
    """Return the commit of the robustvote checkout (with ``-dirty`` for local changes), if any."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
            text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def write_config(folder: Path, config: Mapping[str, Any], resume: bool) -> None:
    """Write ``config.json``; on resume, check that the stored config describes the same run."""
    path = folder / CONFIG_FILE
    config = {"format_version": FORMAT_VERSION, **config}
    if resume and path.is_file():
        stored = json.loads(path.read_text())
        differing = sorted(
            key for key in set(stored) | set(config)
            if key not in _VOLATILE_KEYS and stored.get(key) != json.loads(json.dumps(config.get(key)))
        )
        if differing:
            raise ConfigError(
                f"cannot resume {folder}: its {CONFIG_FILE} differs in {', '.join(differing)}; "
                "rerun with the original options or choose a new --out folder"
            )
        return
    write_json_atomic(path, config)


def build_summary(
    result: Any,
    *,
    model: str,
    members: Sequence[str],
    dataset: str,
    threat: Any,
    seed: int,
    data_indices: str,
    complete: bool = True,
) -> dict[str, Any]:
    """Return the ``summary.json`` payload of a :class:`~robustvote.attacks.runner.SuiteResult`."""
    attacks = [
        {
            "name": name,
            "robust_accuracy": result.attack_accuracy(name),
            "forward": result.counts[name]["forward"],
            "backward": result.counts[name]["backward"],
            "runtime_s": result.runtime_s[name],
            "audit": result.audit[name],
        }
        for name in result.attack_names
    ]
    return {
        "format_version": FORMAT_VERSION,
        "model": model,
        "members": list(members),
        "n_members": len(members),
        "dataset": dataset,
        "threat_model": threat.norm.value,
        "eps": threat.eps,
        "n": result.n,
        "seed": seed,
        "data_indices": data_indices,
        "commit": git_commit(),
        "runtime_s": sum(result.runtime_s.values()),
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "attacks": attacks,
        "flags": list(result.flags),
        "complete": complete,
    }


def write_summary(folder: Path, summary: Mapping[str, Any]) -> None:
    write_json_atomic(folder / SUMMARY_FILE, dict(summary))


def read_summary(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run folder's ``summary.json``."""
    path = Path(folder) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; is {folder} a finished robustvote attack run folder?") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from None


def pool_record(pool: Any) -> dict[str, Any]:
    """Return the resolved pool for ``config.json``: dataset, threat model and member sources."""
    return {
        "path": str(pool.path) if pool.path else None,
        "dataset": pool.dataset,
        "threat_model": pool.threat_model.norm.value,
        "eps": pool.threat_model.eps,
        "members": [
            {
                "name": member.name,
                "source": member.source,
                "path": str(member.path) if member.path else None,
                "sha256": member.sha256,
            }
            for member in pool.members
        ],
    }


def data_indices_label(split: str, start: int, n: int) -> str:
    """Return the data slice as text, e.g. ``test[0:500]``."""
    return f"{split}[{start}:{start + n}]"


def execute_run(
    target: Any,
    data: Any,
    suite: Any,
    threat: Any,
    *,
    pool: Any,
    model: str,
    seed: int,
    batch_size: int,
    device: Any,
    out: Path | None,
    resume: bool,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``suite`` on ``target`` over a data slice, with a run folder when ``out`` is set.

    Writes ``config.json`` before the first batch and ``summary.json`` after the last, and
    returns the summary. ``data`` is a :class:`~robustvote.data.CifarSlice`.
    """
    from robustvote.attacks.runner import run_suite

    start = int(data.indices[0]) if len(data) else 0
    indices = data_indices_label(data.split.value, start, len(data))
    if out is not None:
        folder = prepare_run_folder(out, resume)
        config = {
            "pool": pool_record(pool),
            "model": model,
            "members": list(target.names),
            "suite": suite.to_dict(),
            "norm": threat.norm.value,
            "eps": threat.eps,
            "seed": seed,
            "split": data.split.value,
            "start": start,
            "n": len(data),
            "data_indices": indices,
            "batch_size": batch_size,
            "tie_rule": "conservative",
            "versions": library_versions(),
            "commit": git_commit(),
            "device": str(device),
        }
        write_config(folder, config, resume)
    result = run_suite(
        target, data.images, data.labels, suite, threat, seed=seed, batch_size=batch_size, device=device,
        run_dir=out, resume=resume, progress=progress,
    )
    summary = build_summary(
        result, model=model, members=target.names, dataset=pool.dataset, threat=threat, seed=seed,
        data_indices=indices,
    )
    if out is not None:
        write_summary(Path(out), summary)
        logger.info("wrote %s", Path(out) / SUMMARY_FILE)
    return summary
