"""Static checks of the worker image (no Docker engine here): versions in one place and consistent,
the Dockerfile's stages, ARGs and entrypoint, and what build.sh hands to `docker build`."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTAINER = REPO / "container"


def _versions() -> Dict[str, str]:
    from pipelines.submit_dataflow import read_versions

    return read_versions(CONTAINER / "versions.env")


def _setup_beam_version() -> str:
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BEAM_VERSION" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no BEAM_VERSION")


def _instructions() -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (CONTAINER / "Dockerfile").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_beam_version_matches_setup_py() -> None:
    assert _versions()["BEAM_VERSION"] == _setup_beam_version()


def test_versions_are_consistent() -> None:
    v = _versions()
    assert set(v) == {"NGC_TENSORRT_TAG", "PYTHON_VERSION", "BEAM_VERSION", "CUDA_PYTHON_SPEC"}
    assert re.fullmatch(r"3\.1[0-9]", v["PYTHON_VERSION"])
    assert re.fullmatch(r"\d{2}\.\d{2}-py3", v["NGC_TENSORRT_TAG"])
    classifiers = (REPO / "setup.py").read_text(encoding="utf-8")
    assert f"Programming Language :: Python :: {v['PYTHON_VERSION']}" in classifiers
    assert v["CUDA_PYTHON_SPEC"].startswith("cuda-python")


def test_dockerfile_stages_args_and_entrypoint() -> None:
    ins = _instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms == [
        "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk",
        "nvcr.io/nvidia/tensorrt:${NGC_TENSORRT_TAG}",
    ]
    first_from = next(i for i, (w, _) in enumerate(ins) if w == "FROM")
    global_args = {rest for word, rest in ins[:first_from] if word == "ARG"}
    assert global_args == {"NGC_TENSORRT_TAG", "PYTHON_VERSION", "BEAM_VERSION"}  # no defaults: versions.env only
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    final_args = {rest for word, rest in ins[last_from:] if word == "ARG"}
    assert {"PYTHON_VERSION", "BEAM_VERSION", "CUDA_PYTHON_SPEC"} <= final_args
    copies = [rest for word, rest in ins if word == "COPY"]
    assert "--from=beam_sdk /opt/apache/beam /opt/apache/beam" in copies
    entry = [rest for word, rest in ins if word == "ENTRYPOINT"]
    assert entry == ['["/opt/apache/beam/boot"]']
    assert ins[-1][0] == "ENTRYPOINT"


def test_every_version_is_used_by_the_dockerfile() -> None:
    text = "\n".join(rest for _, rest in _instructions())
    for key in _versions():
        assert "${" + key + "}" in text, f"{key} from versions.env is not used by the Dockerfile"


def test_final_stage_installs_our_package_and_checks_versions() -> None:
    ins = _instructions()
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert 'pip install ".[gpu,gcp]" "${CUDA_PYTHON_SPEC}"' in runs
    assert "apache_beam.__version__ == '${BEAM_VERSION}'" in runs and "import apache_beam, tensorrt" in runs
    assert '!= "${PYTHON_VERSION}"' in runs  # the base image's Python is checked against versions.env
    env = " ".join(rest for word, rest in ins if word == "ENV")
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in env
    copied = {rest.split()[0] for word, rest in ins if word == "COPY" and not rest.startswith("--from")}
    assert {"setup.py", "trt_handler", "pipelines"} <= copied


@pytest.fixture()
def fake_docker(tmp_path: Path) -> Tuple[Dict[str, str], Path]:
    """A `docker` on PATH that records its arguments and the build context it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    script = bin_dir / "docker"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$@" > "{log}.$1"\n'
        'if [[ "$1" == build ]]; then ctx="${@: -1}"; '
        f'(cd "$ctx" && find . -type f | sort) > "{log}.context"; fi\n'
    )
    script.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return env, log


def test_build_sh_passes_every_version_as_build_arg(fake_docker: Tuple[Dict[str, str], Path]) -> None:
    env, log = fake_docker
    proc = subprocess.run(["bash", str(CONTAINER / "build.sh"), "registry/img:1", "--push"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    build = Path(f"{log}.build").read_text().splitlines()
    build_args = [build[i + 1] for i, a in enumerate(build) if a == "--build-arg"]
    assert build_args == [f"{k}={v}" for k, v in _versions().items()]
    assert build[build.index("-t") + 1] == "registry/img:1"
    assert build[build.index("-f") + 1] == str(CONTAINER / "Dockerfile")
    context = Path(f"{log}.context").read_text().splitlines()
    assert "./setup.py" in context and "./pipelines/qa_batch.py" in context and "./pipelines/records.py" in context
    assert not any(p.startswith(("./.venv", "./cache", "./tests")) or "__pycache__" in p for p in context)
    assert Path(f"{log}.push").read_text().split() == ["push", "registry/img:1"]


def test_build_sh_refuses_missing_image_and_unknown_option(fake_docker: Tuple[Dict[str, str], Path]) -> None:
    env, _ = fake_docker
    for argv in ([], ["img", "--pull"]):
        proc = subprocess.run(["bash", str(CONTAINER / "build.sh"), *argv], env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2 and proc.stderr.strip()
