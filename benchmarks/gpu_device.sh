#!/usr/bin/env bash
# GPU runs on a lent machine, one stage a call (the figures under benchmarks/results/gpu_*):
#   bash benchmarks/gpu_device.sh bench|check|tests|model|accuracy
# (benchmarks/gpu_h200.sh of earlier rounds, renamed: its pipeline-large stage is `MODES=independent ... bench`)
# Travels with the call: .whl/ (Beam's cp312 wheels, installed to /tmp/site once), .devdata/ (squad_A,
# squad_B1 and the bert-base-uncased vocab, gzipped); for check and tests .devmodel/minilm-packed.npz
# (the bundled MiniLM's weights, benchmarks/device_data.py). Writes under $OUT. On any NVIDIA machine
# with the project installed, `make bench-gpu` runs the same benchmark without these steps.
# Preparing them here (all three are in .git/info/exclude; .whl + .devdata ~38 MB, .devmodel 21 MB: carry
# .devmodel in a later call on the same warm machine, the working tree may carry 64 MiB a call):
#   for p in apache-beam==2.77.0 fastavro fasteners httplib2 jsonpickle objsize proto-plus pymongo pytz zstandard \
#            'beartype<0.23' cryptography cffi pycparser; do python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64 -d .whl "$p"; done
#   mkdir -p .devdata && for f in data/squad/squad_A.json data/squad/squad_B1.json vocab/bert-base-uncased-vocab.txt; do
#     gzip -9 -c ../shared/$f > .devdata/$(basename $f).gz; done
#   python -m benchmarks.device_data pack models/minilm-l6-squad2 .devmodel/minilm-packed.npz
set -euo pipefail
stage=${1:?stage}
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if [ ! -d /tmp/site/apache_beam ] && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
D=/tmp/devdata
mkdir -p $D/data/squad $D/models $D/vocab
for f in .devdata/*.gz; do
  name=$(basename "$f" .gz)
  case $name in squad_*) dest=$D/data/squad/$name ;; *) dest=$D/vocab/$name ;; esac
  [ -f "$dest" ] || gunzip -c "$f" > "$dest"
done
M=$D/models/minilm-l6-squad2
if [ -f .devmodel/minilm-packed.npz ] && [ ! -f $M/config.json ]; then
  python3 -m benchmarks.device_data unpack .devmodel/minilm-packed.npz models/minilm-l6-squad2 $M
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
case "$stage" in
  bench)  # N pipeline processes feeding one inference server vs each with its own model, and the model alone
    python3 -m benchmarks.bench_gpu pipeline --model /tmp/bert-large-random --random-bert-large \
      --vocab $D/vocab/bert-base-uncased-vocab.txt --squad $D/data/squad/squad_A.json --questions ${QUESTIONS:-200000} \
      --procs ${PROCS:-8,16,4} --modes ${MODES:-server,independent} --independent-procs "${INDEPENDENT_PROCS:-}" \
      --work-dir /tmp/bench-work --out "$OUT/gpu_server.jsonl" ;;
  check)  # all of B1 through the server vs in process (no Beam needed)
    python3 -m benchmarks.check_server_answers --data $D/data/squad/squad_B1.json --model $M --device cuda \
      --dtype fp16 --clients ${CLIENTS:-1,8} --out "$OUT/b1_server_vs_inprocess.jsonl" ;;
  tests)
    TRT_QA_SHARED=$D TRT_QA_TEST_CACHE=/tmp/trt-qa-test-cache python3 -m pytest -q -ra -m gpu tests \
      2>&1 | tee "$OUT/gpu_tests.txt" | tail -25 ;;
  model)  # the model alone by padding scheme (the earlier rounds' gpu_model_only_* figures)
    python3 -m benchmarks.bench_gpu model --squad $D/data/squad/squad_A.json --vocab $D/vocab/bert-base-uncased-vocab.txt \
      --sample-questions 3000 --schemes pad384,buckets3,buckets6,sorted_pad8,planner3,planner6 --batch-sizes 64,128 \
      --no-runner-check --out "$OUT/gpu_model_only.jsonl" --md "$OUT/gpu_model_only.md" ;;
  accuracy)  # all of B1, torch fp16 on the GPU: in process and through the Beam pipeline (official metric)
    python3 -m trt_handler.evaluate --backend torch --device cuda --dtype fp16 --model $M \
      --data $D/data/squad/squad_B1.json --answers "$OUT/b1_torch_fp16_inprocess.json" \
      | tee "$OUT/b1_torch_fp16_inprocess_metric.json"
    python3 -m pipelines.qa_batch --backend torch --torch-device cuda --torch-dtype fp16 --model $M \
      --input $D/data/squad/squad_B1.json --output "$OUT/b1_torch_fp16" --eval | tail -1 \
      | tee "$OUT/b1_torch_fp16_pipeline_metric.json" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
