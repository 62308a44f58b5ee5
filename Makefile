# BERT QA with TensorRT in Beam RunInference. `make help` lists the targets.
SHELL := /bin/bash
PYTHON_BIN ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

# --- main job settings (override on the command line) --------------------------------------
MODEL ?= models/minilm-l6-squad2
INPUT ?= samples/squad_sample.jsonl
OUTPUT ?= out/answers
BACKEND ?= onnx
ENGINE ?=
ONNX ?=
DATA ?= ../shared/data/squad/squad_B1.json
CACHE ?= cache
VOCAB ?= ../shared/vocab/bert-base-uncased-vocab.txt
TARGETS ?=
EXTRA_ARGS ?=

.PHONY: help install test test-slow test-gpu lint typecheck run eval eval-inprocess onnx engine engine-bert-large \
        gpu-check submit-dataflow container container-push bench bench-gpu notebook clean

# DATA given on the command line (not the default): `make engine DATA=...` derives the plan from it.
DATA_GIVEN = $(filter command line environment,$(origin DATA))
# $(call q,PATH): PATH as one shell word, as written (spaces, globs, quotes kept for the program to read):
# make run INPUT='data/part*.jsonl' passes the glob itself, and the pipeline reads every file it matches.
q = '$(subst ','\'',$(1))'

help:
	@grep -E '^## ' Makefile | sed 's/^## //'

## install          create .venv with everything the CPU path, engine building and the tests need
install:
	$(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[all-cpu,gpu]"

## test             unit, integration and CPU engine-build tests (GPU tests are skipped with the reason)
test:
	$(PY) -m pytest -q -ra tests

## test-slow        whole-split acceptance runs (B1 accuracy vs the model card; minutes on a CPU)
test-slow:
	TRT_QA_SLOW=1 $(PY) -m pytest -q -ra -m slow tests

## test-gpu         only the tests marked gpu (run on a machine with an NVIDIA GPU)
test-gpu:
	$(PY) -m pytest -q -ra -m gpu tests

## lint / typecheck ruff, and mypy (strict on the engine, build and handler modules)
lint:
	$(PY) -m ruff check trt_handler pipelines tests benchmarks tools

typecheck:
	$(PY) -m tools.typecheck

## run              answer INPUT with the local Beam pipeline (BACKEND=onnx|torch|tensorrt, MODEL=dir|hub id)
run:
	$(PY) -m pipelines.qa_batch --input $(call q,$(INPUT)) --output $(call q,$(OUTPUT)) --model $(call q,$(MODEL)) \
	  --backend $(BACKEND) $(if $(ENGINE),--engine $(call q,$(ENGINE))) --cache-dir $(call q,$(CACHE)) --show 5 $(EXTRA_ARGS)

## eval             official SQuAD metric of MODEL on DATA through the Beam pipeline (last line: JSON)
eval:
	$(PY) -m pipelines.qa_batch --input $(call q,$(DATA)) --output $(call q,$(OUTPUT)-eval) --model $(call q,$(MODEL)) \
	  --backend $(BACKEND) $(if $(ENGINE),--engine $(call q,$(ENGINE))) --cache-dir $(call q,$(CACHE)) --eval $(EXTRA_ARGS)

## eval-inprocess   the same metric without Beam (features -> ONNX Runtime -> answers in one process)
eval-inprocess:
	$(PY) -m trt_handler.evaluate --data $(call q,$(DATA)) --model $(call q,$(MODEL)) --cache-dir $(call q,$(CACHE)) $(EXTRA_ARGS)

## onnx             export MODEL to ONNX (cached under CACHE, checked against PyTorch)
onnx:
	$(PY) -m trt_handler.engines.export --model $(call q,$(MODEL)) --cache-dir $(call q,$(CACHE))

## engine           build a TensorRT / TensorRT-RTX engine from MODEL's ONNX; DATA=squad.json derives its profiles
engine:
	$(PY) -m trt_handler.engines.build --model $(call q,$(MODEL)) --cache-dir $(call q,$(CACHE)) $(if $(TARGETS),--targets $(TARGETS)) \
	  $(if $(DATA_GIVEN),--data $(call q,$(DATA))) $(EXTRA_ARGS)

## engine-bert-large  build a BERT-large-shaped (24 layers, hidden 1024, random weights) engine; prints build time
engine-bert-large:
	$(PY) -m trt_handler.engines.build --bert-large-random --vocab $(call q,$(VOCAB)) --cache-dir $(call q,$(CACHE)) $(if $(TARGETS),--targets $(TARGETS)) $(EXTRA_ARGS)

## gpu-check        compare ENGINE with ONNX Runtime on real SQuAD windows (needs a GPU + TensorRT)
gpu-check:
	$(PY) -m trt_handler.gpu_check --engine $(call q,$(ENGINE)) --onnx $(call q,$(ONNX)) --model $(call q,$(MODEL)) --data $(call q,$(DATA)) $(EXTRA_ARGS)

## submit-dataflow  submit the pipeline to Dataflow GPU workers (DRY_RUN=1 prints the command)
submit-dataflow:
	$(PY) -m pipelines.submit_dataflow --project $(call q,$(PROJECT)) --region $(call q,$(REGION)) --bucket $(call q,$(BUCKET)) \
	  --image $(call q,$(IMAGE)) --engine $(call q,$(ENGINE)) --model $(call q,$(MODEL)) --input $(call q,$(INPUT)) \
	  --output $(call q,$(OUTPUT)) --gpu $(call q,$(or $(GPU),T4)) $(if $(DRY_RUN),--dry-run) $(EXTRA_ARGS)

## container        build the Dataflow worker image (needs Docker); container-push pushes IMAGE
container:
	bash container/build.sh $(call q,$(IMAGE))

container-push:
	bash container/build.sh $(call q,$(IMAGE)) --push

## bench            benchmarks (figures, not tests): DATA=<squad json>; writes benchmarks/results/
bench:
	$(PY) -m benchmarks.run --data $(call q,$(if $(DATA_GIVEN),$(DATA),../shared/data/squad/squad_A.json)) --model $(call q,$(MODEL)) --cache-dir $(call q,$(CACHE)) $(EXTRA_ARGS)

## bench-gpu        GPU figures on this machine's NVIDIA GPU: model only, then N pipeline processes feeding one
##                  inference server vs N independent ones, and the model alone on the same windows
##                  (PyTorch BERT-large shape; BACKEND=tensorrt ENGINE=e MODEL=bundle for an engine; DATA, QUESTIONS, PROCS)
QUESTIONS ?= 200000
PROCS ?= 4,8,16
GPU_BACKEND = $(if $(filter tensorrt,$(BACKEND)),--backend tensorrt --engine $(call q,$(ENGINE)),)
GPU_MODEL = $(if $(filter tensorrt,$(BACKEND)),$(call q,$(MODEL)),$(call q,$(CACHE)/bert-large-random) --random-bert-large)
GPU_SQUAD = $(call q,$(if $(DATA_GIVEN),$(DATA),../shared/data/squad/squad_A.json))
bench-gpu:
	$(PY) -m benchmarks.bench_gpu model $(GPU_BACKEND) --squad $(GPU_SQUAD) \
	  --vocab $(call q,$(VOCAB)) --out benchmarks/results/gpu_model_only.jsonl --md benchmarks/results/gpu_model_only.md
	$(PY) -m benchmarks.bench_gpu pipeline $(GPU_BACKEND) --model $(GPU_MODEL) --vocab $(call q,$(VOCAB)) \
	  --squad $(GPU_SQUAD) --questions $(QUESTIONS) --procs $(PROCS) \
	  --modes server,independent --out benchmarks/results/gpu_server.jsonl --md benchmarks/results/gpu_server.md

## notebook         execute the Beam Interactive notebook headless
notebook:
	$(PY) -m pipelines.run_notebook notebooks/qa_interactive.ipynb

clean:
	rm -rf out cache typings .pytest_cache .mypy_cache
