"""Submit the batch pipeline to Dataflow GPU workers running our container (or print the command).

    python -m pipelines.submit_dataflow --project P --region us-central1 --bucket B \\
        --image us-docker.pkg.dev/P/repo/trt-bert-qa:0.1.0 --engine gs://B/engines/minilm-t4.engine \\
        --model gs://B/models/minilm-bundle --input gs://B/data/dev.json --output gs://B/out/answers \\
        --gpu T4 [--gpu-count N] [--dry-run] [-- extra pipeline flags]

The command it runs is ``python -m pipelines.qa_batch ... --runner DataflowRunner`` with the
options Dataflow GPU jobs need: the GPU as a service option (driver installed by Dataflow), a
machine type of the family that carries that GPU, our image as the SDK container, and the worker
topology that keeps the GPU busy: one SDK process per vCPU (Dataflow's default for Python; no
``no_use_multiple_sdk_containers``, which Google's docs say the GIL makes slow), all of them feeding
one inference server per GPU (``--inference-server``: one engine per GPU, pooled batches).
``--no-inference-server`` gives every process its own engine instead, where ``--mps`` (NVIDIA MPS,
single-GPU workers) lets their kernels share the GPU. ``--dry-run`` prints the command and submits
nothing. Flags this script does not know are passed on to the pipeline (e.g. ``--max-batch 128``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

VERSIONS_ENV = Path(__file__).resolve().parents[1] / "container" / "versions.env"


@dataclass(frozen=True)
class GpuType:
    """A GPU Dataflow offers: its ``worker_accelerator`` type, the machine-type prefix of the family
    that carries it, and per GPU count the default machine type (vCPUs = SDK processes feeding the
    GPUs; see docs/dataflow.md for how the defaults follow from the measured processes per GPU)."""

    accelerator: str
    family: str
    machines: Dict[int, str]
    fixed: bool  # the machine type fixes the GPU count (accelerator-optimized families)


GPUS: Dict[str, GpuType] = {
    "T4": GpuType("nvidia-tesla-t4", "n1-", {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"}, False),
    "L4": GpuType("nvidia-l4", "g2-standard-",
                  {1: "g2-standard-8", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"}, True),
    "A100": GpuType("nvidia-tesla-a100", "a2-highgpu-",
                    {n: f"a2-highgpu-{n}g" for n in (1, 2, 4, 8)}, True),
    "A100-80GB": GpuType("nvidia-a100-80gb", "a2-ultragpu-",
                         {n: f"a2-ultragpu-{n}g" for n in (1, 2, 4, 8)}, True),
    "H100": GpuType("nvidia-h100-80gb", "a3-highgpu-", {n: f"a3-highgpu-{n}g" for n in (1, 2, 4, 8)}, True),
}
# GPUs an accelerator-optimized machine type carries, where its name does not say it (G2)
_G2_GPUS = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}


def machine_gpus(machine: str) -> Optional[int]:
    """GPUs built into an accelerator-optimized machine type (a2-highgpu-2g: 2; g2-standard-24: 2);
    None for a general-purpose type (N1, which takes 1, 2 or 4 T4s) or one we do not know."""
    m = re.fullmatch(r"a[23]-(?:highgpu|ultragpu|megagpu)-(\d+)g", machine)
    if m:
        return int(m.group(1))
    m = re.fullmatch(r"g2-standard-(\d+)", machine)
    return _G2_GPUS.get(int(m.group(1))) if m else None


def read_versions(path: Path = VERSIONS_ENV) -> Dict[str, str]:
    """KEY=VALUE lines of container/versions.env (comments and blank lines skipped)."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    pairs = (line.partition("=") for line in lines if line and not line.startswith("#"))
    return {key.strip(): value.strip().strip('"') for key, _, value in pairs}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.submit_dataflow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", required=True, help="GCP project id")
    p.add_argument("--region", required=True, help="Dataflow region with GPU quota, e.g. us-central1")
    p.add_argument("--bucket", required=True, help="bucket name (or gs://name) for temp and staging files")
    p.add_argument("--image", required=True, help="worker image built by `make container` (registry path:tag)")
    p.add_argument("--engine", required=True, help="gs:// TensorRT engine built for this GPU type and the image's TensorRT")
    p.add_argument("--model", required=True, help="gs:// model bundle folder (tokenizer files) or a Hugging Face hub id")
    p.add_argument("--input", required=True, help="gs:// JSONL or SQuAD JSON")
    p.add_argument("--output", required=True, help="gs:// output prefix")
    p.add_argument("--gpu", choices=sorted(GPUS), default="T4", help="GPU type per worker (default T4)")
    p.add_argument("--gpu-count", type=int, default=1, help="GPUs per worker (default 1): one inference server each")
    p.add_argument("--machine-type", default=None,
                   help="override the machine type (T4: n1-*, L4: g2-standard-*, A100: a2-highgpu-*, A100-80GB: "
                        "a2-ultragpu-*, H100: a3-highgpu-*); its vCPUs are the SDK processes feeding the GPUs")
    p.add_argument("--no-inference-server", dest="inference_server", action="store_false",
                   help="every SDK process loads its own engine instead of sharing one server per GPU")
    p.add_argument("--mps", action="store_true",
                   help="NVIDIA MPS (use_nvidia_mps): with --no-inference-server on single-GPU workers, lets the "
                        "processes' engines run side by side on the GPU")
    p.add_argument("--threads", type=int, default=None,
                   help="--number_of_worker_harness_threads per SDK process (default: Dataflow's)")
    p.add_argument("--disk-size-gb", type=int, default=50, help="worker disk; the image is ~10 GB (default 50)")
    p.add_argument("--max-workers", type=int, default=None, help="--max_num_workers (caps GPUs bought)")
    p.add_argument("--job-name", default=None, help="Dataflow job name (default trt-bert-qa-<time>)")
    p.add_argument("--setup-file", default=None,
                   help="also stage this setup.py's package (Beam --setup_file), so workers run this checkout's code "
                        "over the image's copy without an image rebuild")
    p.add_argument("--template-location", default=None,
                   help="gs:// path: write the job as a Dataflow classic template there instead of running it "
                        "(Beam --template_location; launch it later with gcloud dataflow jobs run)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of submitting")
    return p


def build_command(args: argparse.Namespace, extra: Sequence[str] = (), python: str = sys.executable) -> List[str]:
    """The full ``python -m pipelines.qa_batch`` command line for a Dataflow GPU job."""
    for name in ("project", "region", "bucket", "image", "engine", "model", "input", "output"):
        if not str(getattr(args, name)).strip():
            raise ValueError(f"--{name} is empty; set it (make submit-dataflow {name.upper()}=...)")
    gpu = GPUS[args.gpu]
    if args.gpu_count not in gpu.machines:
        raise ValueError(f"{args.gpu} workers carry {', '.join(map(str, sorted(gpu.machines)))} GPUs, not {args.gpu_count}")
    machine = args.machine_type or gpu.machines[args.gpu_count]
    if not machine.startswith(gpu.family):
        raise ValueError(f"{args.gpu} GPUs attach only to {gpu.family}* machine types, got {machine}")
    carried = machine_gpus(machine)
    if gpu.fixed and carried != args.gpu_count:
        raise ValueError(f"{machine} carries {carried or 'an unknown number of'} {args.gpu} GPUs, not --gpu-count "
                         f"{args.gpu_count}; use {gpu.machines[args.gpu_count]} or set --gpu-count to match")
    if args.mps and (args.inference_server or args.gpu_count != 1):
        raise ValueError("--mps is for single-GPU workers whose processes each keep an engine "
                         "(--no-inference-server); with the inference server the GPU holds one engine already")
    for name in ("engine", "input", "output", "template_location"):
        value = getattr(args, name)
        if value is not None and not value.startswith("gs://"):
            raise ValueError(f"--{name.replace('_', '-')} must be a gs:// path that Dataflow workers can read, "
                             f"got {value!r}")
    if not args.model.startswith("gs://") and (args.model.startswith((".", "/", "~")) or Path(args.model).exists()):
        raise ValueError(f"--model {args.model!r} is a local path; upload the bundle folder to gs:// or pass a hub id")
    bucket = (args.bucket if args.bucket.startswith("gs://") else f"gs://{args.bucket}").rstrip("/")
    job = args.job_name or f"trt-bert-qa-{time.strftime('%Y%m%d-%H%M%S')}"
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job):
        raise ValueError(f"Dataflow job names are lowercase letters, digits and dashes, got {job!r}")
    accelerator = (f"worker_accelerator=type:{gpu.accelerator};count:{args.gpu_count};install-nvidia-driver"
                   + (";use_nvidia_mps" if args.mps else ""))
    cmd = [
        python, "-m", "pipelines.qa_batch",
        "--input", args.input,
        "--output", args.output,
        "--model", args.model,
        "--backend", "tensorrt",
        "--engine", args.engine,
        "--runner", "DataflowRunner",
        "--project", args.project,
        "--region", args.region,
        "--job_name", job,
        "--temp_location", f"{bucket}/tmp",
        "--staging_location", f"{bucket}/staging",
        "--sdk_container_image", args.image,
        "--sdk_location", "container",
        "--experiments", "use_runner_v2",  # one SDK process per vCPU (Dataflow's default for Python)
        *(["--inference-server"] if args.inference_server else []),  # all of them feed one server per GPU
        *(["--gpu-count", str(args.gpu_count)] if args.gpu_count > 1 else []),
        "--dataflow_service_options", accelerator,
        "--machine_type", machine,
        "--disk_size_gb", str(args.disk_size_gb),
    ]
    if args.threads:
        cmd += ["--number_of_worker_harness_threads", str(args.threads)]
    if args.max_workers:
        cmd += ["--max_num_workers", str(args.max_workers)]
    if args.setup_file:
        if not Path(args.setup_file).is_file():
            raise ValueError(f"--setup-file {args.setup_file} does not exist")
        cmd += ["--setup_file", str(Path(args.setup_file).resolve())]  # Beam builds the sdist from its folder
    if args.template_location:
        cmd += ["--template_location", args.template_location]
    return cmd + list(extra)


def _python_mismatch(versions: Dict[str, str]) -> Optional[str]:
    want = versions.get("PYTHON_VERSION", "")
    have = f"{sys.version_info.major}.{sys.version_info.minor}"
    if want and want != have:
        return (f"this Python is {have} but the worker image runs {want}; Dataflow needs the same minor "
                f"version on both sides (pickled code), so submit from a Python {want} environment")
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        cmd = build_command(args, extra)
    except ValueError as exc:
        parser.error(str(exc))
    mismatch = _python_mismatch(read_versions())
    if args.dry_run:
        if mismatch:
            print(f"warning: {mismatch}", file=sys.stderr)
        print(shlex.join(cmd))
        return 0
    if mismatch:
        print(f"error: {mismatch}", file=sys.stderr)
        return 2
    print(f"submitting: {shlex.join(cmd)}", file=sys.stderr)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
