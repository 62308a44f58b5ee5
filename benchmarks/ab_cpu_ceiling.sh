#!/usr/bin/env bash
# Alternating A/B of the CPU ceiling: this checkout against older commits, ROUNDS rounds in one session.
#   bash benchmarks/ab_cpu_ceiling.sh 5 9795651                  (the README's pairs)
#   bash benchmarks/ab_cpu_ceiling.sh 3 9795651 f95772c a2682d1   (the rounds with two more commits)
#   VARIANTS=pipeline,jsonl bash benchmarks/ab_cpu_ceiling.sh 3 9795651   (more figures a run; default pipeline)
# Needs ../shared (or TRT_QA_SHARED) and `make install`; prints one JSON line a figure, tagged NEW<r> / <rev><r>.
set -euo pipefail
rounds=${1:?rounds}; shift
revs=("${@:?commit(s) to compare against}")
here=$(cd "$(dirname "$0")/.." && pwd)
S=${TRT_QA_SHARED:-$here/../shared}
work=$(mktemp -d)
for rev in "${revs[@]}"; do mkdir -p "$work/$rev" && git -C "$here" archive "$rev" | tar -x -C "$work/$rev"; done
run() { (cd "$2" && PYTHONPATH="$2" "$here/.venv/bin/python" -m benchmarks.bench_cpu_ceiling \
  --data "$S/data/squad/squad_A.json" --model "$S/models/minilm-l6-squad2" --cache-dir "$here/cache" \
  --questions 20000 --variants "${VARIANTS:-pipeline}" 2>/dev/null | sed "s/^/$1 /"); }
for r in $(seq "$rounds"); do
  run "NEW$r" "$here"
  for rev in "${revs[@]}"; do run "$rev$r" "$work/$rev"; done
done
rm -rf "$work"
