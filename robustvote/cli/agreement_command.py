"""``robustvote agreement``: how often members predict what a reference member predicts, clean and under attack."""

from __future__ import annotations

import logging
import math

import click

from robustvote.agreement import AgreementRow, measure_agreement
from robustvote.cli.attack_command import choose_suite
from robustvote.cli.options import (
    csv_option,
    data_options,
    device_options,
    members_option,
    parse_member_list,
    pool_option,
)
from robustvote.data import load_cifar10
from robustvote.errors import ConfigError
from robustvote.evaluation import resolve_device
from robustvote.io import write_csv_atomic
from robustvote.runs import data_indices_label, git_commit
from robustvote.threat import ThreatModel, format_eps, parse_eps
from robustvote.zoo import load_members, load_pool_file

logger = logging.getLogger(__name__)

CSV_COLUMNS = [
    "member", "reference", "clean_agreement", "attacked_agreement", "fooled_agreement", "transfer_rate",
    "clean_accuracy", "transfer_accuracy", "n", "n_fooled", "pool", "dataset", "data_indices", "threat_model", "eps",
    "suite", "seed", "commit", "flags",
]


def _percent(value: float) -> str:
    return "     n/a" if math.isnan(value) else f"{100 * value:7.2f}%"


def format_rows(rows: list[AgreementRow]) -> str:
    """Return the rows as a plain-text table, values in percent."""
    width = max(len("member"), *(len(r.member) for r in rows))
    header = ["clean_agree", "attacked_agree", "fooled_agree", "transfer_rate", "clean_acc", "transfer_acc"]
    lines = [f"{'member':<{width}}  " + "  ".join(f"{h:>14}" for h in header)]
    for row in rows:
        values = [row.clean_agreement, row.attacked_agreement, row.fooled_agreement, row.transfer_rate,
                  row.clean_accuracy, row.transfer_accuracy]
        lines.append(f"{row.member:<{width}}  " + "  ".join(f"{_percent(v):>14}" for v in values))
    return "\n".join(lines)


@click.command("agreement")
@pool_option
@members_option
@click.option("--reference", required=True, help="Member whose predictions the others are compared with; the attack targets it.")
@click.option("--method", default=None, help="Attack name, or comma-separated names run in order (default: attacks/standard.yaml).")
@click.option("--suite", "suite_path", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Attack-suite YAML file instead of --method.")
@click.option("--eps", default=None, help="Radius in [0, 1] pixel scale, e.g. 2/255 (default: the pool's eps).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice the attacks make.")
@data_options(default_n=1000)
@device_options
@csv_option
def agreement_command(pool_path: str, members: str | None, reference: str, method: str | None,
                      suite_path: str | None, eps: str | None, seed: int, data_dir: str | None, split: str,
                      start: int, n: int, device: str, batch_size: int, csv_path: str | None) -> None:
    """Compare every member's predictions with --reference's, on clean images and under attack.

    The suite attacks the reference alone, and every member then classifies the adversarial
    examples found. clean_agree and attacked_agree give the share of the n images on which a
    member predicts the reference's class, clean and on the reference's worst-case examples.
    fooled_agree is the share of the examples that fooled the reference on which the member
    predicts the same wrong class. transfer_rate is the share of those examples, among the ones
    the member classifies correctly when clean, on which it is wrong too. clean_acc and
    transfer_acc are the member's accuracy on the clean and the attacked images. For members
    other than the reference, transfer_acc is only an upper bound on robust accuracy. All
    values are in percent.
    """
    pool = load_pool_file(pool_path)
    if reference not in [m.name for m in pool.members]:
        raise ConfigError(
            f"--reference {reference!r} is not a member of {pool_path}; choose one of "
            f"{', '.join(m.name for m in pool.members)}"
        )
    names = parse_member_list(members)
    if names:
        pool = pool.subset(names if reference in names else [reference, *names])
    threat = ThreatModel(pool.threat_model.norm, parse_eps(eps) if eps else pool.threat_model.eps)
    suite = choose_suite(method, suite_path, single_model=True)
    suite.require_norm(threat.norm)
    suite.require_members([reference])
    data = load_cifar10(split, start, n, data_dir)
    loaded = load_members(pool)
    rows, result = measure_agreement(
        [m.model for m in loaded], [m.name for m in loaded], reference, data.images, data.labels, suite, threat,
        seed=seed, batch_size=batch_size, device=resolve_device(device), progress=True,
    )
    click.echo(
        f"agreement with {reference}  {threat.norm.value} eps={format_eps(threat.eps)}  suite {suite.name}  "
        f"n={len(data)}  fooled {rows[0].n_fooled}  seed={seed}"
    )
    click.echo(format_rows(rows))
    for flag in result.flags:
        click.echo(f"flag: {flag}")
    if csv_path:
        common = {
            "pool": pool_path, "dataset": pool.dataset, "data_indices": data_indices_label(data.split.value, start, len(data)),
            "threat_model": threat.norm.value, "eps": threat.eps, "suite": suite.name, "seed": seed,
            "commit": git_commit() or "", "flags": "; ".join(result.flags),
        }
        write_csv_atomic(csv_path, [{**row.to_row(), **common} for row in rows], CSV_COLUMNS, na_rep="nan")
        logger.info("wrote %s", csv_path)
