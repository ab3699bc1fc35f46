"""The ``robustvote`` command line: thin commands that parse options and call the library."""

from __future__ import annotations

from robustvote.cli.main import main
from robustvote.cli import eval_command

main.add_command(eval_command.eval_command)

__all__ = ["main"]
