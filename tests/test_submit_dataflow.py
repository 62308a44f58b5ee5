"""pipelines.submit_dataflow --dry-run: the printed command carries every Dataflow GPU option."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from pipelines import submit_dataflow
from tests.gcs_emulator import gcs_emulator  # noqa: F401  (pytest fixture)

REPO = Path(__file__).resolve().parents[1]

ARGS = [
    "--project", "my-proj", "--region", "us-central1", "--bucket", "my-bucket",
    "--image", "us-docker.pkg.dev/my-proj/repo/trt-bert-qa:0.1.0",
    "--engine", "gs://my-bucket/engines/minilm-t4.engine", "--model", "gs://my-bucket/models/minilm",
    "--input", "gs://my-bucket/data/dev.json", "--output", "gs://my-bucket/out/answers",
]


def _dry_run(extra: List[str]) -> List[str]:
    """Run the module as `make submit-dataflow DRY_RUN=1` does and parse the printed command."""
    proc = subprocess.run([sys.executable, "-m", "pipelines.submit_dataflow", *ARGS, *extra, "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return shlex.split(lines[0])


def _options(cmd: List[str]) -> Dict[str, List[str]]:
    """--flag value pairs of the pipeline command (a flag may repeat, e.g. --experiments)."""
    out: Dict[str, List[str]] = {}
    i = cmd.index("pipelines.qa_batch") + 1
    while i < len(cmd):
        flag = cmd[i]
        assert flag.startswith("--"), f"unexpected token {flag!r} in {cmd}"
        if i + 1 < len(cmd) and not cmd[i + 1].startswith("--"):
            out.setdefault(flag, []).append(cmd[i + 1])
            i += 2
        else:
            out.setdefault(flag, []).append("")
            i += 1
    return out


def test_t4_dry_run_command() -> None:
    cmd = _dry_run(["--gpu", "T4", "--job-name", "qa-test"])
    assert cmd[1:3] == ["-m", "pipelines.qa_batch"]
    o = _options(cmd)
    assert o["--runner"] == ["DataflowRunner"]
    assert o["--project"] == ["my-proj"] and o["--region"] == ["us-central1"] and o["--job_name"] == ["qa-test"]
    assert o["--backend"] == ["tensorrt"] and o["--engine"] == ["gs://my-bucket/engines/minilm-t4.engine"]
    assert o["--model"] == ["gs://my-bucket/models/minilm"]
    assert o["--input"] == ["gs://my-bucket/data/dev.json"] and o["--output"] == ["gs://my-bucket/out/answers"]
    assert o["--temp_location"] == ["gs://my-bucket/tmp"] and o["--staging_location"] == ["gs://my-bucket/staging"]
    assert o["--sdk_container_image"] == ["us-docker.pkg.dev/my-proj/repo/trt-bert-qa:0.1.0"]
    assert o["--sdk_location"] == ["container"]
    # one SDK process per vCPU (no no_use_multiple_sdk_containers), all feeding one inference server
    assert o["--experiments"] == ["use_runner_v2"] and o["--inference-server"] == [""]
    assert o["--dataflow_service_options"] == ["worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"]
    assert o["--machine_type"] == ["n1-standard-8"]
    assert "--number_of_worker_harness_threads" not in o and "--gpu-count" not in o
    assert o["--disk_size_gb"] == ["50"]


def test_l4_uses_a_g2_machine_and_extra_flags_reach_the_pipeline() -> None:
    o = _options(_dry_run(["--gpu", "L4", "--gpu-count", "2", "--threads", "8", "--max-workers", "3",
                           "--max-batch", "128"]))
    assert o["--dataflow_service_options"] == ["worker_accelerator=type:nvidia-l4;count:2;install-nvidia-driver"]
    assert o["--machine_type"] == ["g2-standard-24"]  # the G2 type that carries two L4s
    assert o["--number_of_worker_harness_threads"] == ["8"]
    assert o["--max_num_workers"] == ["3"]
    assert o["--max-batch"] == ["128"]
    # two GPUs: one inference server each, the worker's processes spread over them (round-robin)
    assert o["--gpu-count"] == ["2"] and o["--experiments"] == ["use_runner_v2"] and o["--inference-server"] == [""]


@pytest.mark.parametrize("gpu, count, accelerator, machine", [
    ("A100", 1, "nvidia-tesla-a100", "a2-highgpu-1g"),
    ("A100", 4, "nvidia-tesla-a100", "a2-highgpu-4g"),
    ("A100-80GB", 1, "nvidia-a100-80gb", "a2-ultragpu-1g"),
    ("H100", 1, "nvidia-h100-80gb", "a3-highgpu-1g"),
    ("H100", 8, "nvidia-h100-80gb", "a3-highgpu-8g"),
    ("T4", 4, "nvidia-tesla-t4", "n1-standard-32"),
])
def test_every_gpu_type_gets_its_accelerator_and_a_machine_of_its_family(
        gpu: str, count: int, accelerator: str, machine: str) -> None:
    args = submit_dataflow.build_parser().parse_args(ARGS + ["--gpu", gpu, "--gpu-count", str(count)])
    o = _options(submit_dataflow.build_command(args))
    assert o["--dataflow_service_options"] == [f"worker_accelerator=type:{accelerator};count:{count};install-nvidia-driver"]
    assert o["--machine_type"] == [machine]


def test_mps_only_where_processes_keep_their_own_engines() -> None:
    args = submit_dataflow.build_parser().parse_args(ARGS + ["--gpu", "L4", "--no-inference-server", "--mps"])
    o = _options(submit_dataflow.build_command(args))
    assert o["--dataflow_service_options"] == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver;use_nvidia_mps"]
    assert "--inference-server" not in o


def test_the_printed_command_parses_as_pipeline_and_beam_options() -> None:
    """The pipeline's own parser accepts the command and hands the Dataflow flags to Beam."""
    from apache_beam.options.pipeline_options import (
        DebugOptions,
        GoogleCloudOptions,
        PipelineOptions,
        StandardOptions,
        WorkerOptions,
    )

    from pipelines.options import split_argv
    from pipelines.qa_batch import build_parser

    cmd = _dry_run(["--gpu", "T4"])
    args, beam_args = split_argv(build_parser(), cmd[3:])
    assert args.backend == "tensorrt" and args.engine.startswith("gs://")
    opts = PipelineOptions(beam_args)
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    gcp = opts.view_as(GoogleCloudOptions)
    assert gcp.project == "my-proj" and gcp.temp_location == "gs://my-bucket/tmp"
    assert gcp.dataflow_service_options == ["worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"]
    worker = opts.view_as(WorkerOptions)
    assert worker.machine_type == "n1-standard-8"
    assert worker.sdk_container_image == "us-docker.pkg.dev/my-proj/repo/trt-bert-qa:0.1.0"
    assert worker.disk_size_gb == 50
    debug = opts.view_as(DebugOptions)
    assert "no_use_multiple_sdk_containers" not in debug.experiments and "use_runner_v2" in debug.experiments
    assert args.inference_server is True


@pytest.mark.parametrize("change, message", [
    (["--engine", "/local/model.engine"], "--engine must be a gs:// path"),
    (["--output", "out/answers"], "--output must be a gs:// path"),
    (["--model", "./cache/onnx/minilm"], "is a local path"),
    (["--gpu", "L4", "--machine-type", "n1-standard-8"], "L4 GPUs attach only to g2-standard-"),
    (["--gpu", "H100", "--gpu-count", "3"], "H100 workers carry 1, 2, 4, 8 GPUs, not 3"),
    (["--gpu", "A100", "--gpu-count", "2", "--machine-type", "a2-highgpu-1g"], "a2-highgpu-1g carries 1 A100 GPUs"),
    (["--gpu", "T4", "--mps"], "--mps is for single-GPU workers"),
    (["--project", ""], "--project is empty"),
])
def test_bad_arguments_fail_with_a_sentence(change: List[str], message: str) -> None:
    args = submit_dataflow.build_parser().parse_args(ARGS + change)
    with pytest.raises(ValueError, match=message):
        submit_dataflow.build_command(args)


def test_python_mismatch_is_explained() -> None:
    other = "3.99"
    msg = submit_dataflow._python_mismatch({"PYTHON_VERSION": other})
    assert msg is not None and "3.99" in msg and "same minor version" in msg
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert submit_dataflow._python_mismatch({"PYTHON_VERSION": here}) is None


@pytest.mark.parametrize("gpu, count", [("L4", 1), ("T4", 1), ("A100", 2), ("A100-80GB", 1), ("H100", 1)])
def test_the_real_dataflow_job_is_built_offline_as_a_template(gcs_emulator: Any, tmp_path: Path,  # noqa: F811
                                                               gpu: str, count: int) -> None:
    """The job Dataflow would run, built by Beam's DataflowRunner itself from the command
    submit_dataflow makes: a classic template (--template-location) written to the GCS emulator,
    with staging there too (the pipeline proto and the setup.py package are really uploaded); no
    Dataflow API call is made. Its content carries every GPU-job option and the RunInference step."""
    import json as _json

    from apache_beam.io.filesystems import FileSystems
    from apache_beam.portability.api import beam_runner_api_pb2

    from pipelines import qa_batch

    b = gcs_emulator.bucket
    prefix = f"tpl-{tmp_path.name}"
    data = gcs_emulator.upload(REPO / "samples" / "squad_sample.jsonl", f"{prefix}/data/sample.jsonl")
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        gcs_emulator.upload(REPO / "models" / "minilm-l6-squad2" / name, f"{prefix}/models/minilm/{name}")
    engine = gcs_emulator.upload(REPO / "setup.py", f"{prefix}/engines/t4.engine")  # never opened offline
    template = f"gs://{b}/{prefix}/templates/qa.json"
    args = submit_dataflow.build_parser().parse_args([
        "--project", "trt-qa-test", "--region", "us-central1", "--bucket", f"{b}/{prefix}",
        "--image", "us-docker.pkg.dev/trt-qa-test/repo/trt-bert-qa:0.1.0", "--engine", engine,
        "--model", f"gs://{b}/{prefix}/models/minilm", "--input", data, "--output", f"gs://{b}/{prefix}/out/answers",
        "--job-name", "qa-template-test", "--gpu", gpu, "--gpu-count", str(count), "--threads", "6",
        "--setup-file", str(REPO / "setup.py"), "--template-location", template])
    machine = submit_dataflow.GPUS[gpu].machines[count]
    cmd = submit_dataflow.build_command(args)
    assert cmd[1:3] == ["-m", "pipelines.qa_batch"]
    assert qa_batch.main(cmd[3:]) == 0
    with FileSystems.open(template) as f:
        job = _json.loads(f.read())
    env = job["environment"]
    pool = env["workerPools"][0]
    assert job["name"] == "qa-template-test" and job["type"] == "JOB_TYPE_BATCH"
    assert "use_runner_v2" in env["experiments"] and "no_use_multiple_sdk_containers" not in env["experiments"]
    accelerator = submit_dataflow.GPUS[gpu].accelerator
    assert env["serviceOptions"] == [f"worker_accelerator=type:{accelerator};count:{count};install-nvidia-driver"]
    assert pool["machineType"] == machine and pool["numThreadsPerWorker"] == 6 and pool["diskSizeGb"] == 50
    image = "us-docker.pkg.dev/trt-qa-test/repo/trt-bert-qa:0.1.0"
    assert pool["workerHarnessContainerImage"] == image
    assert [c["containerImage"] for c in pool["sdkHarnessContainerImages"]] == [image]
    # a Python SDK container uses one core, so Dataflow starts one per vCPU (no_use_multiple_sdk_containers,
    # checked absent above, is what would override it)
    assert pool["sdkHarnessContainerImages"][0]["useSingleCorePerContainer"] is True
    packages = {p["name"]: p["location"] for p in pool["packages"]}
    assert "workflow.tar.gz" in packages  # the setup.py package (an sdist Beam built and staged)
    staged = packages["workflow.tar.gz"].replace("storage.googleapis.com/", "gs://", 1)
    assert FileSystems.exists(staged)
    # the staged pipeline proto holds the RunInference step with our handler's settings
    opts = env["sdkPipelineOptions"]["options"]
    assert opts["sdk_container_image"] == image and opts["template_location"] == template
    # the pipeline's own settings travel in the job: every process feeds one inference server per GPU
    assert "--inference-server" in cmd and (count == 1) == ("--gpu-count" not in cmd)
    pipeline_pb = FileSystems.join(opts["staging_location"], "pipeline.pb")
    with FileSystems.open(pipeline_pb) as f:
        proto = beam_runner_api_pb2.Pipeline.FromString(f.read())
    names = [t.unique_name for t in proto.components.transforms.values()]
    assert any(n.endswith("AnswerQuestions/RunInference/BeamML_RunInference") for n in names), names[:40]
    # nothing ran: no answers were written
    assert not FileSystems.match([f"gs://{b}/{prefix}/out/answers-*"])[0].metadata_list
