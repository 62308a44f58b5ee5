#!/usr/bin/env bash
# The GPU runs behind benchmarks/results/gpu_*_h200.* (made through the lent H200, one stage a call):
#   bash benchmarks/gpu_h200.sh model|pipeline-small|pipeline-large|accuracy
# Expects Beam's cp312 wheels in .whl/ (installed to /tmp/site once), data in .devdata/ (squad_A.json,
# bert-base-uncased-vocab.txt) and, for accuracy, .devdata2/ laid out like ../shared (the MiniLM
# checkpoint and squad_B1.json). Writes under $OUT. On any NVIDIA machine with Beam installed the
# same commands run without the wheel step: see `make bench-gpu`.
set -euo pipefail
stage=${1:?stage}
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if [ ! -d /tmp/site/apache_beam ] && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
D=.devdata
BERTL=/tmp/bert-large-random
case "$stage" in
  model)
    python3 -m benchmarks.bench_gpu model --squad $D/squad_A.json --vocab $D/bert-base-uncased-vocab.txt \
      --sample-questions 3000 --schemes pad384,buckets3,buckets6,sorted_pad8,planner3,planner6 --batch-sizes 64,128 \
      --no-runner-check --out "$OUT/gpu_model_only_h200.jsonl" --md "$OUT/gpu_model_only_h200.md" ;;
  pipeline-small)
    python3 -m benchmarks.bench_gpu pipeline --model $BERTL --random-bert-large --vocab $D/bert-base-uncased-vocab.txt \
      --squad $D/squad_A.json --questions 50000 --procs 1,2 --modes independent \
      --out "$OUT/gpu_pipeline_h200.jsonl" --md "$OUT/gpu_pipeline_small_h200.md" ;;
  pipeline-large)
    python3 -m benchmarks.bench_gpu pipeline --model $BERTL --random-bert-large --vocab $D/bert-base-uncased-vocab.txt \
      --squad $D/squad_A.json --questions 200000 --procs ${PROCS:-4,8,16} --modes independent \
      --out "$OUT/gpu_pipeline_h200.jsonl" --md "$OUT/gpu_pipeline_large_h200.md" ;;
  direct)
    python3 -m benchmarks.bench_gpu pipeline --model $BERTL --random-bert-large --vocab $D/bert-base-uncased-vocab.txt \
      --squad $D/squad_A.json --questions ${QUESTIONS:-50000} --procs ${PROCS:-8} --modes direct \
      --out "$OUT/gpu_pipeline_h200.jsonl" --md "$OUT/gpu_pipeline_direct_h200.md" ;;
  accuracy)
    export TRT_QA_SHARED=$PWD/.devdata2 TRT_QA_TEST_CACHE=/tmp/trt-qa-test-cache
    python3 -m pytest -q -ra -m gpu tests 2>&1 | tee "$OUT/gpu_tests_h200.txt" | tail -25
    M=.devdata2/models/minilm-l6-squad2
    B1=.devdata2/data/squad/squad_B1.json
    python3 -m trt_handler.evaluate --backend torch --device cuda --dtype fp16 --model $M --data $B1 \
      --answers "$OUT/b1_torch_fp16_inprocess.json" | tee "$OUT/b1_torch_fp16_inprocess_metric.json"
    if python3 -c "import apache_beam" 2>/dev/null; then
      python3 -m pipelines.qa_batch --backend torch --torch-device cuda --torch-dtype fp16 --model $M \
        --input $B1 --output "$OUT/b1_torch_fp16" --eval | tail -1 | tee "$OUT/b1_torch_fp16_pipeline_metric.json"
    else
      echo "Beam is not installed here: the B1 run went through answer_batch in-process only"
    fi ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
