"""notebooks/qa_interactive.ipynb runs headless from top to bottom (so it cannot rot), answers its
questions and saves its plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "qa_interactive.ipynb"


def _outputs_text(nb: object) -> str:
    parts = []
    for cell in nb.cells:  # type: ignore[attr-defined]
        for out in cell.get("outputs", []):
            parts.append(str(out.get("text", "")))
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_notebook_executes(model_dir: Path, test_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.run_notebook import execute_notebook

    plot = tmp_path / "scores.png"
    monkeypatch.setenv("TRT_QA_MODEL", str(model_dir))
    monkeypatch.setenv("TRT_QA_CACHE", str(test_cache))
    monkeypatch.setenv("TRT_QA_QUESTIONS", "14")
    monkeypatch.setenv("TRT_QA_PLOT", str(plot))
    executed = tmp_path / "executed.ipynb"
    nb = execute_notebook(NOTEBOOK, executed, timeout=600)

    assert executed.is_file()
    text = _outputs_text(nb)
    assert "14 answered, 0 rejected" in text
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_run_notebook_reports_a_failing_cell(tmp_path: Path) -> None:
    """The runner exits non-zero and names the error when a cell raises."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from pipelines.run_notebook import main

    bad = tmp_path / "bad.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("raise ValueError('cell two broke')")]),
                   str(bad))
    assert main([str(bad), "--output", str(tmp_path / "out.ipynb"), "--timeout", "120"]) == 1
    saved = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    assert any(o.get("ename") == "ValueError" for o in saved.cells[1].get("outputs", []))
