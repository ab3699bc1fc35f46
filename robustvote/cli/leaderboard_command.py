"""``robustvote leaderboard``: merge attack run folders into a CSV and a Markdown table."""

from __future__ import annotations

import click

from robustvote.leaderboard import update_leaderboard


@click.command("leaderboard")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", "csv_path", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Leaderboard CSV; rows already in it are kept, and rows of the same model and threat model replaced.")
@click.option("--markdown", "markdown_path", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Markdown rendering [default: the CSV path with .md].")
@click.option("--skip-invalid", is_flag=True,
              help="Leave out run folders that are missing, incomplete or of another format version, with a warning, instead of failing.")
def leaderboard_command(run_dirs: tuple[str, ...], csv_path: str, markdown_path: str | None, skip_invalid: bool) -> None:
    """Turn RUN_DIRS written by ``robustvote attack`` into one leaderboard row per model and threat model.

    A folder made with --each-member adds one row per member. The CSV and Markdown files are
    written atomically and sorted by robust accuracy (the worst case over each run's suite).
    """
    rows, problems = update_leaderboard(run_dirs, csv_path, markdown_path, skip_invalid=skip_invalid)
    for problem in problems:
        click.echo(f"skipped {problem}", err=True)
    click.echo(f"{len(rows)} row(s) in {csv_path}")
