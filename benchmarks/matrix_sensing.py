"""Greedy pruning with and without a group-lasso penalty on overparameterized matrix sensing.

Reproduces the qualitative claim of Rajaraman, Devvrit, Mokhtari and Ramchandran, "Greedy
Pruning with Group Lasso Provably Generalizes for Matrix Sensing" (NeurIPS 2023): with the
penalty, gradient descent from a small start leaves exactly r columns of U with a large
norm, so pruning by column norm and fine-tuning reaches a test error of the order
noise·sqrt(r·d/n); without it, many columns keep comparable norms and the same threshold
keeps most of them.

Usage::

    python benchmarks/matrix_sensing.py                      # defaults below, a few minutes on one CPU core
    python benchmarks/matrix_sensing.py --csv results/pruning/matrix_sensing.csv

Errors are RMSEs: training RMSE on the n noisy measurements, and test RMSE
``||U U^T - M*||_F`` (the expected RMSE on fresh noiseless measurements).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from robustvote.io import write_csv_atomic
from robustvote.pruning.matrix_sensing import DescentConfig, PruningRun, make_problem, statistical_rate, train_prune_finetune
from robustvote.pruning.prune import PruneRule


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=20, help="d, the side of the d×d ground truth")
    parser.add_argument("--rank", type=int, default=2, help="r, the rank of the ground truth")
    parser.add_argument("--width", type=int, default=20, help="k, the columns of the overparameterized U")
    parser.add_argument("--n", type=int, default=400, help="measurements of the detailed comparison")
    parser.add_argument("--sweep", default="100,200,400,800,1600,3200", help="comma-separated n of the rate sweep")
    parser.add_argument("--noise", type=float, default=0.1, help="standard deviation of the measurement noise")
    parser.add_argument("--lam", type=float, default=0.02, help="group-lasso strength")
    parser.add_argument("--lasso-eps", type=float, default=1e-3, help="group-lasso smoothing")
    parser.add_argument("--threshold", type=float, default=0.1, help="prune columns below this fraction of the largest norm")
    parser.add_argument("--steps", type=int, default=3000, help="gradient steps before pruning")
    parser.add_argument("--finetune-steps", type=int, default=1000, help="gradient steps after pruning")
    parser.add_argument("--lr", type=float, default=0.1, help="gradient-descent step size")
    parser.add_argument("--init-scale", type=float, default=1e-2, help="standard deviation of the initial entries of U")
    parser.add_argument("--seeds", type=int, default=3, help="seeds averaged in the rate sweep")
    parser.add_argument("--csv", type=Path, default=None, help="also write every run as CSV here")
    return parser.parse_args(argv)


def run_once(
    args: argparse.Namespace, n: int, lam: float, seed: int, rule: PruneRule | None = None
) -> tuple[PruningRun, float]:
    problem = make_problem(args.dim, args.rank, n, noise=args.noise, seed=seed)
    run = train_prune_finetune(
        problem, args.width,
        DescentConfig(steps=args.steps, lr=args.lr, lam=lam, eps=args.lasso_eps),
        rule or PruneRule(threshold=args.threshold, relative=True),
        DescentConfig(steps=args.finetune_steps, lr=args.lr),
        init_scale=args.init_scale, seed=seed,
    )
    return run, statistical_rate(problem)


def row(n: int, lam: float, seed: int, run: PruningRun, rate: float) -> dict[str, float | int]:
    return {
        "n": n, "lam": lam, "seed": seed, "survivors": run.survivors,
        "train_before": run.before.train, "test_before": run.before.test,
        "train_pruned": run.pruned.train, "test_pruned": run.pruned.test,
        "train_after": run.after.train, "test_after": run.after.test, "rate": rate,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    torch.set_num_threads(1)
    rows = []
    print(f"d={args.dim} r={args.rank} k={args.width} noise={args.noise} lam={args.lam} "
          f"threshold={args.threshold}·max  steps={args.steps}+{args.finetune_steps} lr={args.lr}")

    print(f"\n== n={args.n}, seed 0: with and without the group lasso ==")
    forced = PruneRule(target_width=args.rank)
    cases = (
        (args.lam, None, f"norm >= {args.threshold}·max"),
        (0.0, None, f"norm >= {args.threshold}·max"),
        (0.0, forced, f"the {args.rank} largest, forced"),
    )
    for lam, rule, kept_by in cases:
        run, rate = run_once(args, args.n, lam, seed=0, rule=rule)
        if rule is None:
            rows.append(row(args.n, lam, 0, run, rate))
        norms = ", ".join(f"{v:.3f}" for v in run.norms.sort(descending=True).values)
        print(f"\nlam={lam:g}: sorted column norms [{norms}]")
        print(f"  columns kept ({kept_by}): {run.survivors} of {args.width} (rank {args.rank})")
        print(f"  {'stage':<18} {'train RMSE':>11} {'test RMSE':>11}")
        for stage, errors in (("before pruning", run.before), ("after pruning", run.pruned), ("after fine-tuning", run.after)):
            print(f"  {stage:<18} {errors.train:>11.5f} {errors.test:>11.5f}")
        print(f"  noise·sqrt(r·d/n) = {rate:.5f}")

    sweep = [int(value) for value in args.sweep.split(",")]
    print(f"\n== test RMSE after fine-tuning as n grows (mean of {args.seeds} seeds) ==")
    print(f"{'n':>6} {'rate':>9} {'lasso':>9} {'ratio':>6} {'kept':>5} {'no lasso':>9} {'ratio':>6} {'kept':>5}")
    for n in sweep:
        summary = {}
        for lam in (args.lam, 0.0):
            runs = []
            for seed in range(args.seeds):
                run, rate = run_once(args, n, lam, seed)
                rows.append(row(n, lam, seed, run, rate))
                runs.append(run)
            error = sum(r.after.test for r in runs) / len(runs)
            kept = sum(r.survivors for r in runs) / len(runs)
            summary[lam] = (error, kept)
        (with_error, with_kept), (without_error, without_kept) = summary[args.lam], summary[0.0]
        print(f"{n:>6} {rate:>9.5f} {with_error:>9.5f} {with_error / rate:>6.2f} {with_kept:>5.1f} "
              f"{without_error:>9.5f} {without_error / rate:>6.2f} {without_kept:>5.1f}")
    if args.csv is not None:
        write_csv_atomic(args.csv, rows)
        print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
