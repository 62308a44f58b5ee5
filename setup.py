"""Package metadata for trt_handler: BERT question answering with TensorRT in Beam RunInference.

Dataflow ships this package to workers with ``--setup_file ./setup.py``; the GPU container
installs it too. Extras keep the heavy, platform-specific pieces optional:

  cpu       ONNX Runtime reference backend (laptops, tests, the notebook)
  export    Hugging Face checkpoint -> ONNX (torch, onnxscript)
  rtx       TensorRT for RTX: build engines ahead of time without a GPU
  lean      TensorRT 11's lean runtime (runs --version-compatible engines; type-check stubs)
  gpu       cuda-python for the engine session, plus the lean runtime (full TensorRT comes from the NGC container)
  gcp       Beam's GCP IO (gs://, Pub/Sub, BigQuery) and Dataflow
  notebook  Beam Interactive + plotting
  dev       tests, type checks, lint, local GCS emulator
"""

from setuptools import find_packages, setup

# Versions shared with container/versions.env (a test checks they agree).
BEAM_VERSION = "2.77.0"

EXTRAS = {
    "cpu": ["onnxruntime>=1.20"],
    "export": [
        "torch>=2.4",
        "onnx>=1.17",
        "onnxscript>=0.2",
        "onnxconverter-common>=1.14",
        "safetensors>=0.4",
    ],
    "rtx": ["tensorrt-rtx-cu13>=1.2", "onnx>=1.17", "onnxconverter-common>=1.14"],
    # TensorRT's lean runtime (runs engines built --version-compatible; imports on a CPU box, where
    # `make typecheck` checks the engine session against its stubs).
    "lean": ["tensorrt-lean-cu12-bindings==11.4.*", "tensorrt-lean-cu12-libs==11.4.*"],
    # TensorRT itself comes from the NGC container; onnx + onnxconverter-common let workers rebuild engines.
    "gpu": [
        "cuda-python>=12.6",
        "onnx>=1.17",
        "onnxconverter-common>=1.14",
        "tensorrt-lean-cu12-bindings==11.4.*",
        "tensorrt-lean-cu12-libs==11.4.*",
    ],
    "gcp": [f"apache-beam[gcp]=={BEAM_VERSION}"],
    "notebook": [
        f"apache-beam[interactive]=={BEAM_VERSION}",
        "matplotlib>=3.8",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
    ],
    "dev": [
        "pytest>=8",
        "mypy>=1.10",
        "ruff>=0.6",
        "gcp-storage-emulator>=2024.8.3",
        "psutil>=5.9",
        "matplotlib>=3.8",
    ],
}
EXTRAS["all-cpu"] = sorted({r for k in ("cpu", "export", "rtx", "gcp", "notebook", "dev") for r in EXTRAS[k]})

setup(
    name="trt-bert-qa-beam",
    version="0.1.0",
    description="BERT SQuAD question answering with TensorRT engines in Apache Beam RunInference",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["trt_handler", "trt_handler.*", "pipelines", "pipelines.*"]),
    install_requires=[
        f"apache-beam=={BEAM_VERSION}",
        "numpy>=1.24",
        "tokenizers>=0.20",
        "transformers>=4.45",
    ],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "trt-qa-engine=trt_handler.engines.build:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "License :: OSI Approved :: Apache Software License",
    ],
)
