"""``robustvote eval``: clean accuracy of every member and of their vote."""

from __future__ import annotations

import logging

import click

from robustvote.cli.options import csv_option, data_options, device_options, members_option, parse_member_list, pool_option
from robustvote.data import load_cifar10
from robustvote.ensemble import TieRule
from robustvote.evaluation import evaluate_clean, resolve_device
from robustvote.io import write_csv_atomic
from robustvote.zoo import load_members, load_pool_file

logger = logging.getLogger(__name__)

CSV_COLUMNS = ["model", "members", "n_members", "clean_accuracy", "n", "split", "start", "tie_rule"]


@click.command("eval")
@pool_option
@members_option
@data_options(default_n=1000)
@device_options
@csv_option
def eval_command(pool_path: str, members: str | None, data_dir: str | None, split: str, start: int, n: int,
                 device: str, batch_size: int, csv_path: str | None) -> None:
    """Measure clean accuracy of each member and of the majority vote of all of them.

    The vote is scored twice: conservatively (a tie with the true class is an error) and with
    the plain rule (the lowest tied class index wins).
    """
    pool = load_pool_file(pool_path)
    names = parse_member_list(members)
    if names:
        pool = pool.subset(names)
    data = load_cifar10(split, start, n, data_dir)
    loaded = load_members(pool)
    result = evaluate_clean(
        [m.model for m in loaded], [m.name for m in loaded], data.images, data.labels,
        num_classes=pool.num_classes, batch_size=batch_size, device=resolve_device(device), progress=True,
    )

    member_names = [m.name for m in loaded]
    common = {"n": len(data), "split": data.split.value, "start": start}
    rows = [
        {"model": name, "members": name, "n_members": 1, "clean_accuracy": acc, "tie_rule": "", **common}
        for name, acc in result.member_accuracy().items()
    ]
    for rule in TieRule:
        rows.append({
            "model": f"vote[{rule.value}]", "members": "+".join(member_names), "n_members": len(member_names),
            "clean_accuracy": result.vote_accuracy(tie_rule=rule), "tie_rule": rule.value, **common,
        })

    width = max(len(r["model"]) for r in rows)
    click.echo(f"{'model':<{width}}  clean_accuracy  n")
    for row in rows:
        click.echo(f"{row['model']:<{width}}  {100 * row['clean_accuracy']:>13.2f}%  {row['n']}")
    if csv_path:
        write_csv_atomic(csv_path, rows, CSV_COLUMNS)
        logger.info("wrote %s", csv_path)
