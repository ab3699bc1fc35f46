"""The ``robustvote`` command line: thin commands that parse options and call the library."""

from __future__ import annotations

from robustvote.cli.main import main
from robustvote.cli import eval_command
from robustvote.cli import attack_command
from robustvote.cli import train_command
from robustvote.cli import extract_command
from robustvote.cli import select_command
from robustvote.cli import leaderboard_command
from robustvote.cli import prune_command
from robustvote.cli import agreement_command

main.add_command(eval_command.eval_command)
main.add_command(attack_command.attack_command)
main.add_command(train_command.train_group)
main.add_command(extract_command.extract_command)
main.add_command(select_command.select_command)
main.add_command(leaderboard_command.leaderboard_command)
main.add_command(prune_command.prune_command)
main.add_command(agreement_command.agreement_command)

__all__ = ["main"]
