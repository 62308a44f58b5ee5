"""Execute a notebook headless, on a kernel of THIS Python (the venv's), and fail if a cell fails.

    python -m pipelines.run_notebook notebooks/qa_interactive.ipynb [--output out/executed.ipynb]

The kernel is ``sys.executable -m ipykernel_launcher``, not an installed kernel spec (a ``python3``
spec registered elsewhere could point to another Python). Cells run in the notebook's folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence


def _kernel_manager() -> Any:
    """A KernelManager whose kernel is this interpreter running ipykernel."""
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import KernelManager

    spec = KernelSpec(
        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} ({sys.executable})",
        language="python",
    )

    class _ThisPythonKernelManager(KernelManager):
        @property
        def kernel_spec(self) -> KernelSpec:  # type: ignore[override]
            return spec

    return _ThisPythonKernelManager()


def execute_notebook(path: Path, output: Optional[Path] = None, timeout: int = 900) -> Any:
    """Run every cell of ``path``; returns the executed notebook (also written to ``output``, even when
    a cell fails: nbclient's CellExecutionError, naming the cell and its traceback)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, km=_kernel_manager(), timeout=timeout,
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    try:
        client.execute()
    finally:
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(output))
    return nb


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run_notebook", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path, help="the .ipynb to execute")
    parser.add_argument("--output", type=Path, default=None,
                        help="write the executed notebook here (default: out/<name>.executed.ipynb)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds a cell may run (default 900)")
    args = parser.parse_args(argv)
    if not args.notebook.is_file():
        parser.error(f"{args.notebook} does not exist")
    output = args.output or Path("out") / f"{args.notebook.stem}.executed.ipynb"
    from nbclient.exceptions import CellExecutionError

    t0 = time.perf_counter()
    try:
        execute_notebook(args.notebook, output, args.timeout)
    except CellExecutionError as exc:
        print(f"{args.notebook}: a cell failed (executed notebook with the error in {output}):\n{exc}", file=sys.stderr)
        return 1
    print(f"{args.notebook}: all cells ran in {time.perf_counter() - t0:.0f} s; executed notebook: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
