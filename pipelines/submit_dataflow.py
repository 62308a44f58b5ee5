"""Submit the batch pipeline to Dataflow GPU workers running our container (or print the command).

    python -m pipelines.submit_dataflow --project P --region us-central1 --bucket B \\
        --image us-docker.pkg.dev/P/repo/trt-bert-qa:0.1.0 --engine gs://B/engines/minilm-t4.engine \\
        --model gs://B/models/minilm-bundle --input gs://B/data/dev.json --output gs://B/out/answers \\
        --gpu T4 [--dry-run] [-- extra pipeline flags]

The command it runs is ``python -m pipelines.qa_batch ... --runner DataflowRunner`` with the
options Dataflow GPU jobs need: the GPU as a service option (driver installed by Dataflow), a
machine type that takes that GPU, our image as the SDK container, and one SDK process per worker
(``no_use_multiple_sdk_containers``) so each GPU holds one engine, with several harness threads
feeding it. ``--dry-run`` prints the command and submits nothing. Flags this script does not know
are passed on to the pipeline (e.g. ``--max-batch 128`` or ``--max_num_workers 4``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

VERSIONS_ENV = Path(__file__).resolve().parents[1] / "container" / "versions.env"
DEFAULT_THREADS = 4  # harness threads feeding the one SDK process

# GPU -> (Dataflow's worker_accelerator type, default machine type: its family is the only one that can carry it).
GPUS: Dict[str, Tuple[str, str]] = {
    # T4 attaches to N1 machines; 4 vCPUs tokenize fast enough for one T4 with a small model.
    "T4": ("nvidia-tesla-t4", "n1-standard-4"),
    # L4 exists only on G2 machines (g2-standard-4 is the smallest, 1 L4).
    "L4": ("nvidia-l4", "g2-standard-4"),
}


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
    p.add_argument("--gpu-count", type=int, default=1, help="GPUs per worker (default 1)")
    p.add_argument("--machine-type", default=None, help="override the machine type (T4: n1-*, L4: g2-*)")
    p.add_argument("--threads", type=int, default=None, help="--number_of_worker_harness_threads (default 4)")
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
    accelerator_type, default_machine = GPUS[args.gpu]
    if args.gpu_count < 1:
        raise ValueError(f"--gpu-count must be at least 1, got {args.gpu_count}")
    machine = args.machine_type or default_machine
    family = default_machine.split("-")[0] + "-"
    if not machine.startswith(family):
        raise ValueError(f"{args.gpu} GPUs attach only to {family}* machine types, got {machine}")
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
    accelerator = f"worker_accelerator=type:{accelerator_type};count:{args.gpu_count};install-nvidia-driver"
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
        "--experiments", "use_runner_v2",
        # One SDK process shares one engine (and one GPU) over its harness threads; with several GPUs
        # a worker runs one SDK process per vCPU and each loads its engine on its own GPU.
        *(["--experiments", "no_use_multiple_sdk_containers"] if args.gpu_count == 1 else
          ["--gpu-count", str(args.gpu_count)]),
        "--dataflow_service_options", accelerator,
        "--machine_type", machine,
        "--number_of_worker_harness_threads", str(args.threads or DEFAULT_THREADS),
        "--disk_size_gb", str(args.disk_size_gb),
    ]
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
