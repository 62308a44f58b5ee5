"""The strict type check (`make typecheck`) passes, catches errors, and really checks against TensorRT's API."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from trt_handler.engines.typecheck import repair_stub

pytest.importorskip("mypy", reason="the type check needs mypy: pip install 'trt-bert-qa-beam[dev]'")
pytest.importorskip("tensorrt_rtx_bindings", reason="stubs are generated from TensorRT-RTX: pip install 'trt-bert-qa-beam[rtx]'")


def _typecheck(*files: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "trt_handler.engines.typecheck", *files], cwd=REPO, env=env, check=False,
                          capture_output=True, text=True, timeout=600)


def test_engine_build_and_handler_modules_are_strict_clean() -> None:
    out = _typecheck()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trt_handler/engines/build.py" in out.stderr  # it checked the modules, not nothing


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
