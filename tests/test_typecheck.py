"""The strict type check (`make typecheck`) passes, catches errors, and really checks against TensorRT's API:
the builder against TensorRT-RTX's bindings, the engine session against TensorRT 11's lean runtime bindings."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tools.typecheck import repair_stub

pytest.importorskip("mypy", reason="the type check needs mypy: pip install 'trt-bert-qa-beam[dev]'")
pytest.importorskip("tensorrt_rtx_bindings", reason="stubs are generated from TensorRT-RTX: pip install 'trt-bert-qa-beam[rtx]'")


def _typecheck(*files: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "tools.typecheck", *files], cwd=REPO, env=env, check=False,
                          capture_output=True, text=True, timeout=600)


def test_engine_build_and_handler_modules_are_strict_clean() -> None:
    out = _typecheck()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trt_handler/engines/build.py" in out.stderr  # it checked the modules, not nothing
    assert "trt_handler/engines/session.py (TensorRT lean runtime stubs:" in out.stderr  # and the second run
    assert out.stdout.count("Success: no issues found") == 2


def _session_with(tmp_path: Path, old: str, new: str) -> Path:
    source = (REPO / "trt_handler" / "engines" / "session.py").read_text()
    assert source.count(old) >= 1
    bad = tmp_path / "session_misspelled.py"
    bad.write_text(source.replace(old, new))
    return bad


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        # the protocol and its call site renamed together: only TensorRT's real API can object
        ("execute_async_v3(", "execute_async_v4(", '"IExecutionContext" is missing following "TrtContext" protocol member'),
        ("get_tensor_profile_shape(", "get_tensor_profile_shapes(",
         'Incompatible return value type (got "tuple[IExecutionContext, ICudaEngine]", expected "tuple[TrtContext, TrtEngine]")'),
        # a runtime call on the deserialization path
        ("runtime.deserialize_cuda_engine(data)", "runtime.deserialize_engine(data)", '"Runtime" has no attribute "deserialize_engine"'),
    ],
)
def test_the_lean_run_fails_when_a_session_call_is_misspelled(tmp_path: Path, old: str, new: str, error: str) -> None:
    pytest.importorskip("tensorrt_lean_bindings", reason="pip install 'trt-bert-qa-beam[lean]'")
    out = _typecheck("--lean", str(_session_with(tmp_path, old, new)))
    assert out.returncode != 0, out.stdout + out.stderr
    assert "TensorRT lean runtime stubs" in out.stderr and "TensorRT-RTX stubs" not in out.stderr  # the lean run alone
    assert error in out.stdout, out.stdout


def test_lean_stubs_come_from_the_lean_bindings() -> None:
    pytest.importorskip("tensorrt_lean_bindings", reason="pip install 'trt-bert-qa-beam[lean]'")
    out = _typecheck("--lean", "trt_handler/engines/session.py")
    assert out.returncode == 0, out.stdout + out.stderr
    shim = (REPO / "typings" / "lean" / "tensorrt_lean" / "__init__.pyi").read_text()
    assert "from tensorrt_lean_bindings import *" in shim
    stubs = "".join(p.read_text() for p in (REPO / "typings" / "lean" / "tensorrt_lean_bindings").glob("*.pyi"))
    assert "def execute_async_v3(" in stubs and "def deserialize_cuda_engine(" in stubs
    assert "class Builder:" not in stubs and "class Builder(" not in stubs  # a runtime, not a builder


def test_it_fails_on_misuse_of_the_tensorrt_api(tmp_path: Path) -> None:
    bad = tmp_path / "bad_trt_use.py"
    bad.write_text(
        "from __future__ import annotations\n"
        "import tensorrt\n"
        "import tensorrt_rtx\n\n"
        "def threads(b: tensorrt_rtx.Builder) -> str:\n"
        "    return b.max_threads\n\n"
        "def flag() -> int:\n"
        "    return tensorrt.BuilderFlag.NOT_A_FLAG\n"
    )
    out = _typecheck(str(bad))
    assert out.returncode != 0
    assert 'Incompatible return value type (got "int", expected "str")' in out.stdout
    assert '"type[BuilderFlag]" has no attribute "NOT_A_FLAG"' in out.stdout


def test_repair_stub_makes_stubgen_output_valid() -> None:
    raw = (
        "bool: DataType\n"
        "class C:\n"
        "    def add_scale_nd(self, input: ITensor, shift: Weights = ..., power: Weights = ..., axis: typing.SupportsInt)"
        " -> IScaleLayer: ...\n"
        "    def ok(self) -> bool: ...\n"
    )
    with pytest.raises(SyntaxError):
        ast.parse(raw)
    fixed = repair_stub(raw)
    ast.parse(fixed)
    assert "axis: typing.SupportsInt = ..." in fixed
    assert "def ok(self) -> builtins.bool: ..." in fixed
    assert "\nbool: DataType\n" in fixed  # the DataType constant itself stays
