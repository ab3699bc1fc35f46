"""``robustvote attack``: robust accuracy of the vote (or of each member) under an attack suite."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from robustvote.attacks import load_suite, suite_from_names
from robustvote.attacks.audit import eps_sweep_flags
from robustvote.attacks.suite import Suite, shipped_suite_path
from robustvote.cli.options import (
    data_options,
    device_options,
    members_option,
    parse_member_list,
    pool_option,
    split_list,
)
from robustvote.data import load_cifar10
from robustvote.ensemble import VotingEnsemble
from robustvote.errors import ConfigError
from robustvote.evaluation import resolve_device
from robustvote.runs import execute_run, write_summary
from robustvote.threat import Norm, ThreatModel, format_eps, parse_eps
from robustvote.zoo import load_members, load_pool_file

logger = logging.getLogger(__name__)


def choose_suite(method: str | None, suite_path: str | None, single_model: bool) -> Suite:
    """Return the suite named by ``--method`` or ``--suite``, else the shipped default.

    The default is ``attacks/vote.yaml`` for a vote of several members and
    ``attacks/standard.yaml`` for a single model.
    """
    if method and suite_path:
        raise ConfigError("--method and --suite are mutually exclusive; give one of them")
    if method:
        return suite_from_names(split_list(method, "--method"))
    if suite_path:
        return load_suite(suite_path)
    return load_suite(shipped_suite_path("standard" if single_model else "vote"))


def format_summary(summary: dict[str, Any]) -> str:
    """Return the summary as a plain-text table: one row per attack, then the worst case."""
    width = max([len("clean")] + [len(a["name"]) for a in summary["attacks"]] + [len("worst case")])
    lines = [
        f"{summary['model']}  {summary['threat_model']} eps={format_eps(summary['eps'])}  "
        f"n={summary['n']} ({summary['data_indices']})  seed={summary['seed']}",
        f"{'attack':<{width}}  {'accuracy':>8}  {'forward':>10}  {'backward':>10}  {'time_s':>8}",
        f"{'clean':<{width}}  {100 * summary['clean_accuracy']:>7.2f}%",
    ]
    for attack in summary["attacks"]:
        lines.append(
            f"{attack['name']:<{width}}  {100 * attack['robust_accuracy']:>7.2f}%  {attack['forward']:>10}  "
            f"{attack['backward']:>10}  {attack['runtime_s']:>8.1f}"
        )
    lines.append(f"{'worst case':<{width}}  {100 * summary['robust_accuracy']:>7.2f}%")
    lines += [f"flag: {flag}" for flag in summary["flags"]]
    return "\n".join(lines)


@click.command("attack")
@pool_option
@members_option
@click.option("--method", default=None, help="Attack name, or comma-separated names run in order (see docs/attacks.md).")
@click.option("--suite", "suite_path", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Attack-suite YAML file (default: attacks/vote.yaml for a vote, attacks/standard.yaml for one model).")
@click.option("--eps", default=None,
              help="Radius in [0, 1] pixel scale, e.g. 2/255 (default: the pool's eps). Several comma-separated "
                   "values run an eps sweep, one sub-folder per eps, checked for accuracy that rises with eps.")
@click.option("--norm", default=None, type=click.Choice([n.value for n in Norm], case_sensitive=False),
              help="Threat-model norm (default: the pool's).")
@click.option("--each-member", is_flag=True, help="Attack each member on its own instead of their vote.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice the attacks make.")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder for config, per-batch outcomes and summary.json (none written when omitted).")
@click.option("--resume", is_flag=True, help="Continue the run in --out, skipping finished batches.")
@data_options(default_n=500)
@device_options
def attack_command(pool_path: str, members: str | None, method: str | None, suite_path: str | None,
                   eps: str | None, norm: str | None, each_member: bool, seed: int, out: Path | None,
                   resume: bool, data_dir: str | None, split: str, start: int, n: int, device: str,
                   batch_size: int) -> None:
    """Attack the majority vote of a pool (or each member) and report the per-example worst case.

    Every candidate is projected onto the eps-ball and [0, 1] and re-checked on the hard vote.
    A tie with the true class counts as an error.
    """
    if resume and out is None:
        raise ConfigError("--resume needs --out, the run folder to continue")
    pool = load_pool_file(pool_path)
    names = parse_member_list(members)
    if names:
        pool = pool.subset(names)
    norm_value = Norm.parse(norm) if norm else pool.threat_model.norm
    if norm_value is not pool.threat_model.norm and not eps:
        raise ConfigError(
            f"--norm {norm_value.value} differs from the pool's {pool.threat_model.norm.value} norm, whose eps "
            f"does not carry over; give --eps for the {norm_value.value} ball, e.g. --eps 0.5"
        )
    eps_values = sorted({parse_eps(v) for v in split_list(eps, "--eps")}) if eps else [pool.threat_model.eps]
    if not eps_values:
        raise ConfigError(f"--eps {eps!r} names no radius; give a value such as 2/255")
    threats = [ThreatModel(norm_value, value) for value in eps_values]
    suite = choose_suite(method, suite_path, single_model=each_member or len(pool.members) == 1)
    suite.require_norm(norm_value)
    data = load_cifar10(split, start, n, data_dir)
    loaded = load_members(pool)
    torch_device = resolve_device(device)

    if each_member:
        runs = [(m.name, VotingEnsemble([m.model], [m.name]), out / m.name if out else None) for m in loaded]
    else:
        label = loaded[0].name if len(loaded) == 1 else "vote(" + "+".join(m.name for m in loaded) + ")"
        runs = [(label, VotingEnsemble([m.model for m in loaded], [m.name for m in loaded]), out)]
    if out is not None and each_member and not resume and out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"run folder {out} already exists and is not empty; pass --resume to continue that run, "
            "or choose another --out folder"
        )

    for _, target, _ in runs:
        suite.require_members(target.names)
    for label, target, folder in runs:
        summaries = []
        for threat in threats:
            where = folder
            if folder is not None and len(threats) > 1:
                where = folder / ("eps-" + format_eps(threat.eps).replace("/", "-"))
            logger.info("attacking %s with suite %s at %s", label, suite.name, threat)
            summary = execute_run(
                target, data, suite, threat, pool=pool, model=label, seed=seed, batch_size=batch_size,
                device=torch_device, out=where, resume=resume,
            )
            summaries.append((where, summary))
        if len(threats) > 1:
            add_sweep_flags(summaries)
        for _, summary in summaries:
            click.echo(format_summary(summary))
            click.echo("")


def add_sweep_flags(summaries: list[tuple[Path | None, dict[str, Any]]]) -> None:
    """Add eps-sweep flags to every summary of one sweep (ascending eps) and rewrite the files."""
    flags = eps_sweep_flags([s["eps"] for _, s in summaries], [s["robust_accuracy"] for _, s in summaries])
    for flag in flags:
        logger.warning("%s", flag)
    for folder, summary in summaries:
        summary["flags"] = list(summary["flags"]) + flags
        if folder is not None and flags:
            write_summary(folder, summary)
