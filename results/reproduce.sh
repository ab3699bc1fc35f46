#!/usr/bin/env bash
# Rebuild results/selection and results/leaderboard.{csv,md} from scratch on the CPU.
# Usage: ROBUSTVOTE_ZOO=/path/to/zoo ROBUSTVOTE_DATA_DIR=/path/to/cifar10 bash results/reproduce.sh
# Two chains run side by side, one thread each; about 45 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
rv=".venv/bin/robustvote"
attack_options=(--suite attacks/vote-quick.yaml --start 0 --n 300 --device cpu --eps 2/255 --seed 0)

rm -rf runs/results && mkdir -p runs/results
rm -f results/leaderboard.csv results/leaderboard.md results/leaderboard-300.csv results/leaderboard-300.md
(
  "$rv" select --pool zoo/shared.yaml --n 500 --device cpu --recompute --out results/selection
  "$rv" attack --pool results/selection/best_k3.yaml "${attack_options[@]}" --out runs/results/best-k3
  "$rv" attack --pool results/selection/best_k5.yaml "${attack_options[@]}" --out runs/results/best-k5
) > runs/results/chain-a.log 2>&1 &
chain_a=$!
(
  "$rv" attack --pool zoo/shared.yaml "${attack_options[@]}" --out runs/results/vote-all
  "$rv" attack --pool zoo/shared.yaml --each-member "${attack_options[@]}" --out runs/results/members
) > runs/results/chain-b.log 2>&1 &
chain_b=$!
wait "$chain_a"
wait "$chain_b"

"$rv" leaderboard runs/results/members runs/results/best-k3 runs/results/best-k5 runs/results/vote-all \
  -o results/leaderboard.csv
