"""Attacks on single members and on hard-label voting ensembles, suites, and the runner.

Importing this package registers every built-in attack.
"""

from robustvote.attacks import autoattack, pgd, rays, transfer, vote_pgd, vote_subset  # noqa: F401  (registers the attacks)
from robustvote.attacks.base import Attack, attack_names, build_attack, get_attack_class, register_attack
from robustvote.attacks.runner import BatchOutcome, SuiteResult, attack_batch, run_suite
from robustvote.attacks.suite import Suite, SuiteEntry, load_suite, suite_from_names

__all__ = [
    "Attack",
    "BatchOutcome",
    "Suite",
    "SuiteEntry",
    "SuiteResult",
    "attack_batch",
    "attack_names",
    "build_attack",
    "get_attack_class",
    "load_suite",
    "register_attack",
    "run_suite",
    "suite_from_names",
]
