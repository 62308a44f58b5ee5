#!/usr/bin/env bash
# Alternating A/B of the CPU ceiling: this checkout against an older commit, ROUNDS pairs in one session.
#   bash benchmarks/ab_cpu_ceiling.sh 9795651 [ROUNDS=5]   (needs ../shared; prints one JSON line per run)
set -euo pipefail
rev=${1:?commit to compare against}; rounds=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd); old=$(mktemp -d)
git -C "$here" archive "$rev" | tar -x -C "$old"
S=${TRT_QA_SHARED:-$here/../shared}
run() { (cd "$2" && PYTHONPATH="$2" "$here/.venv/bin/python" -m benchmarks.bench_cpu_ceiling \
  --data "$S/data/squad/squad_A.json" --model "$S/models/minilm-l6-squad2" --cache-dir "$here/cache" \
  --questions 20000 --variants pipeline 2>/dev/null | sed "s/^/$1 /"); }
for r in $(seq "$rounds"); do run "NEW$r" "$here"; run "OLD$r" "$old"; done
rm -rf "$old"
