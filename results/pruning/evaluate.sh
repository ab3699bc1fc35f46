#!/usr/bin/env bash
# Clean and APGD-CE robust accuracy (Linf 2/255, test images 0-999, seed 0) of the published
# sdp_a_mix and of the pruned members written by the `prune` commands in README.md, as one
# leaderboard. Run from the repository root after those commands.
set -euo pipefail
export OMP_NUM_THREADS=1
rv=".venv/bin/robustvote"
options=(--method apgd-ce --n 1000 --start 0 --seed 0 --device cpu)

rm -rf runs/pruning
"$rv" attack --pool zoo/shared.yaml --members sdp_a_mix "${options[@]}" --out runs/pruning/sdp_a_mix
for name in sdp_a_mix_w100_retrained sdp_a_mix_w50 sdp_a_mix_w25 sdp_a_mix_w25_nolasso; do
  "$rv" attack --pool "results/pruning/$name.yaml" "${options[@]}" --out "runs/pruning/$name"
done
rm -f results/pruning/leaderboard.csv results/pruning/leaderboard.md
"$rv" leaderboard runs/pruning/* -o results/pruning/leaderboard.csv
