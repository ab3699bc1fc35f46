"""Atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from robustvote.io import write_atomic


def test_write_atomic_content_and_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "table.csv"
    write_atomic(target, "a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]
