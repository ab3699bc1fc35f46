#!/usr/bin/env bash
# Measure the committed MatViT (zoo/matvit_cifar10.safetensors) and its submodels on the CPU:
# clean accuracy, robust accuracy of S, L and XL, agreement with XL, the two selection runs
# (which attack every member on test[5000:5500]), and attacked votes. Two chains run side by
# side, one thread each. Rerunning continues unfinished runs; delete runs/matvit to start over.
# Usage: ROBUSTVOTE_DATA_DIR=/path/to/cifar10 bash results/matvit/reproduce.sh
# (ROBUSTVOTE_ZOO=/path/to/shared/zoo when the shared models are not in ../shared/zoo).
# The combined selection reuses the eight shared members' rows cached in
# results/selection-matvit/matrix.json (first made by results/reproduce.sh), so it attacks only
# the MatViT members. About an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
rv=".venv/bin/robustvote"
pool=zoo/matvit-cifar10.yaml
common=(--eps 2/255 --seed 0 --device cpu)
out=results/matvit

mkdir -p runs/matvit "$out"
(
  "$rv" eval --pool "$pool" --n 10000 --device cpu --csv "$out/clean-10000.csv"
  "$rv" eval --pool "$pool" --n 1000 --device cpu --csv "$out/clean-1000.csv"
  "$rv" select --pool zoo/shared-plus-matvit.yaml --n 500 --device cpu --out results/selection-matvit
  # The MatViT rows were just computed on the same slice with the same attacks, so the second
  # selection reuses all of them from the cache.
  cp results/selection-matvit/matrix.json results/selection-matvit-only/matrix.json
  "$rv" select --pool "$pool" --n 500 --device cpu --out results/selection-matvit-only
  "$rv" attack --pool "$pool" --members matvit_XL --suite attacks/vote-quick.yaml --n 300 "${common[@]}" \
    --out runs/matvit/vote-quick-xl --resume
  "$rv" attack --pool results/selection-matvit-only/best_k3.yaml --suite attacks/vote-quick.yaml --n 300 \
    "${common[@]}" --out runs/matvit/vote-quick-best-k3 --resume
) >> runs/matvit/chain-a.log 2>&1 &
chain_a=$!
(
  "$rv" attack --pool "$pool" --members matvit_XL --each-member --method apgd-ce,apgd-t --n 1000 "${common[@]}" \
    --out runs/matvit/apgd-xl --resume
  "$rv" attack --pool "$pool" --members matvit_S,matvit_L --each-member --method apgd-ce,apgd-t \
    --n 1000 "${common[@]}" --out runs/matvit/apgd-sl --resume
  "$rv" agreement --pool "$pool" --reference matvit_XL --method apgd-ce --n 1000 "${common[@]}" \
    --csv "$out/agreement-apgd-ce.csv"
) >> runs/matvit/chain-b.log 2>&1 &
chain_b=$!
wait "$chain_a"
wait "$chain_b"

"$rv" leaderboard runs/matvit/apgd-xl runs/matvit/apgd-sl -o "$out/apgd-1000.csv"
"$rv" leaderboard runs/matvit/vote-quick-xl runs/matvit/vote-quick-best-k3 -o "$out/vote-quick-300.csv"
