"""Benchmark the attack catalogue on the shared pool: robust accuracy and cost per attack.

It takes two votes: of every member of the pool, and of the best three (by clean accuracy
on the same images, or ``--best-members``). On each it runs every benchmarked attack of the
suite on its own (``vote-transfer``, the first ``vote-pgd``, ``rays``, ``standard`` on the soft
surrogate) and then the whole suite. It prints robust accuracy, forward and backward passes
(per-image member passes) and runtime side by side. It checks that the suite's worst case is no
higher than any single attack's, and measures the overhead of one vote-pgd step relative to
the members' own forward and backward passes on the same batch.

Not a timed test. Example (the command behind docs/attacks.md):

    OMP_NUM_THREADS=1 ROBUSTVOTE_ZOO=$SHARED/zoo python benchmarks/attacks.py \\
        --data-dir $SHARED/data/cifar10 --n 500 --suite attacks/vote-quick.yaml --quiet --json bench.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustvote.attacks import load_suite, run_suite
from robustvote.attacks.suite import Suite
from robustvote.attacks.vote_pgd import rank_target_classes, saturating_margin
from robustvote.data import load_cifar10
from robustvote.ensemble import VotingEnsemble
from robustvote.evaluation import evaluate_clean, resolve_device
from robustvote.threat import ThreatModel, format_eps, parse_eps
from robustvote.zoo import load_members, load_pool_file

REPO_ROOT = Path(__file__).resolve().parent.parent
# Cheapest first, so an interrupted benchmark still reports the most rows.
BENCHMARKED = ("vote-transfer", "vote-pgd", "rays", "standard")

logger = logging.getLogger("benchmarks.attacks")


def single_attack_suites(suite: Suite) -> list[Suite]:
    """Return one-attack suites made of the first entry of each benchmarked attack in ``suite``."""
    singles = []
    for attack in BENCHMARKED:
        entry = next((e for e in suite.entries if e.attack == attack), None)
        if entry is None:
            logger.warning("suite %s has no %s entry; it is left out of the comparison", suite.name, attack)
            continue
        singles.append(Suite(name=entry.name, entries=(entry,)))
    return singles


def time_call(function, repeats: int) -> float:
    function()
    began = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - began) / repeats


def vote_pgd_overhead(ensemble: VotingEnsemble, images: torch.Tensor, labels: torch.Tensor, repeats: int = 3) -> dict:
    """Time one vote-pgd step against the sum of each member's own cross-entropy forward+backward."""
    with torch.no_grad():
        targets = rank_target_classes(ensemble.member_logits(images), labels)[:, 0]

    def vote_step() -> None:
        x = images.clone().requires_grad_(True)
        loss = saturating_margin(ensemble.member_logits(x), targets, 0.5).sum()
        torch.autograd.grad(loss, x)

    def member_step(member) -> None:
        x = images.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(member(x), labels), x)

    vote_s = time_call(vote_step, repeats)
    members_s = sum(time_call(lambda m=m: member_step(m), repeats) for m in ensemble.members)
    return {"batch": int(images.shape[0]), "vote_pgd_step_s": vote_s, "members_sum_s": members_s, "ratio": vote_s / members_s}


def run_row(ensemble_label: str, target: VotingEnsemble, data, suite: Suite, threat, args) -> dict:
    began = time.perf_counter()
    result = run_suite(
        target, data.images, data.labels, suite, threat, seed=args.seed, batch_size=args.batch_size,
        device=args.torch_device, progress=not args.quiet,
    )
    row = {
        "ensemble": ensemble_label,
        "attack": suite.name if len(suite.entries) > 1 else suite.entries[0].name,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "forward": sum(c["forward"] for c in result.counts.values()),
        "backward": sum(c["backward"] for c in result.counts.values()),
        "runtime_s": time.perf_counter() - began,
        "flags": result.flags,
        "per_attack": {name: result.attack_accuracy(name) for name in result.attack_names},
    }
    print(
        f"{ensemble_label:<10} {row['attack']:<28} clean {100 * row['clean_accuracy']:6.2f}%  robust "
        f"{100 * row['robust_accuracy']:6.2f}%  fwd {row['forward']:>9}  bwd {row['backward']:>9}  "
        f"{row['runtime_s']:8.1f}s",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default=str(REPO_ROOT / "zoo" / "shared.yaml"), help="Pool file of the members.")
    parser.add_argument("--suite", default=str(REPO_ROOT / "attacks" / "vote.yaml"), help="Suite to benchmark.")
    parser.add_argument("--data-dir", default=None, help="Folder with CIFAR-10 test.npz.")
    parser.add_argument("--n", type=int, default=500, help="Number of test images (from --start).")
    parser.add_argument("--start", type=int, default=0, help="First test image.")
    parser.add_argument("--eps", default="2/255", help="Linf radius in [0, 1] pixel scale.")
    parser.add_argument("--best-members", default=None, help="Comma-separated members of the small vote (default: best 3 by clean accuracy).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="Also write all rows to this JSON file, updated after each row.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args.torch_device = resolve_device(args.device)

    pool = load_pool_file(args.pool)
    threat = ThreatModel(pool.threat_model.norm, parse_eps(args.eps))
    suite = load_suite(args.suite)
    data = load_cifar10("test", args.start, args.n, args.data_dir, download=False)
    loaded = load_members(pool)
    names = [m.name for m in loaded]
    clean = evaluate_clean(
        [m.model for m in loaded], names, data.images, data.labels, num_classes=pool.num_classes,
        batch_size=args.batch_size, device=args.torch_device,
    ).member_accuracy()
    if args.best_members:
        best = [name.strip() for name in args.best_members.split(",")]
    else:
        best = sorted(names, key=lambda name: -clean[name])[:3]
    by_name = {m.name: m.model for m in loaded}
    ensembles = [
        (f"best{len(best)}", VotingEnsemble([by_name[n] for n in best], best)),
        (f"all{len(names)}", VotingEnsemble([by_name[n] for n in names], names)),
    ]
    print(f"suite {suite.name} ({args.suite}), {threat.norm.value} eps={format_eps(threat.eps)}, "
          f"test[{args.start}:{args.start + args.n}], seed {args.seed}", flush=True)
    print("member clean accuracy: " + ", ".join(f"{n} {100 * clean[n]:.1f}%" for n in names), flush=True)
    print(f"best: {', '.join(best)}", flush=True)

    report: dict = {"suite": str(args.suite), "eps": threat.eps, "n": args.n, "start": args.start,
                    "seed": args.seed, "best": best, "member_clean": clean, "rows": [], "overhead": {}}

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    for label, ensemble in ensembles:
        images = data.images[: min(args.batch_size, 128)].to(args.torch_device)
        overhead = vote_pgd_overhead(ensemble.to(args.torch_device), images, data.labels[: images.shape[0]].to(args.torch_device))
        report["overhead"][label] = overhead
        print(f"{label:<10} one vote-pgd step / sum of member forward+backward on {overhead['batch']} images: "
              f"{overhead['ratio']:.2f} ({overhead['vote_pgd_step_s']:.3f}s vs {overhead['members_sum_s']:.3f}s)", flush=True)
        rows = []
        for single in single_attack_suites(suite) + [suite]:
            rows.append(run_row(label, ensemble, data, single, threat, args))
            report["rows"].append(rows[-1])
            save()
        worst = rows[-1]["robust_accuracy"]
        weakest = min(r["robust_accuracy"] for r in rows[:-1]) if rows[:-1] else worst
        verdict = "ok" if worst <= weakest + 1e-12 else "VIOLATED"
        report.setdefault("checks", {})[label] = verdict
        print(f"{label:<10} suite worst case {100 * worst:.2f}% <= every single attack ({100 * weakest:.2f}%): {verdict}", flush=True)
        save()

    print("\nensemble   attack                        robust   forward   backward   runtime_s")
    for row in report["rows"]:
        print(f"{row['ensemble']:<10} {row['attack']:<28} {100 * row['robust_accuracy']:6.2f}%  {row['forward']:>9}  "
              f"{row['backward']:>9}  {row['runtime_s']:9.1f}")
    return 0 if all(v == "ok" for v in report.get("checks", {}).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
