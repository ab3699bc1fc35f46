"""Atomic file writes, so an interrupted run never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from robustvote.errors import ConfigError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_atomic(temporary: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Give a finished temporary file the usual permissions and rename it onto ``target``.

    ``tempfile.mkstemp`` creates files readable by the owner only. Results are meant to be shared,
    so the file gets ``0o666`` minus the umask, as ``open`` would give it.
    """
    os.chmod(temporary, 0o666 & ~_current_umask())
    os.replace(temporary, target)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that replaces ``path`` in one rename on success.

    The temporary name ends with the target's suffix, so writers that pick a format from the
    extension (matplotlib's ``savefig``) still work. On error the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}")
    os.close(fd)
    try:
        yield Path(temporary)
        replace_atomic(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_output(path) as temporary:
        temporary.write_text(text)


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_csv_atomic(
    path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
    na_rep: str = "",
) -> None:
    """Write ``rows`` as CSV through a temporary file; missing values and NaN are written as ``na_rep``."""
    frame = pd.DataFrame(list(rows), columns=list(columns) if columns else None)
    write_atomic(path, frame.to_csv(index=False, na_rep=na_rep))


def check_writable(path: str | os.PathLike[str], option: str) -> None:
    """Raise :class:`ConfigError` unless a file can be created at ``path``, so a long run fails before it starts.

    The nearest existing parent folder must accept a new file (missing folders are created
    on write), and ``path`` itself must not be a folder.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{option} {target} is a folder; give a file name such as {target / 'results.csv'}")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {target}: {parent} is a file, not a folder; choose another location")
    try:
        # Create a real file: permission bits do not apply to root or to a read-only file system.
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {target}: cannot write in {parent} ({exc.strerror}); choose a writable location") from None
